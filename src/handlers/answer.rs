//! The answer handler: a strong FAQ match verbatim, a model answer grounded
//! in retrieved passages and checked against them (else the passage
//! quoted), an honest "not found", or, without a knowledge base or for small
//! talk, the model alone, streamed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concierge_adapter::{ConversationRef, DeltaStream, Outbound, Outbox};
use futures::StreamExt;

use super::{send_split, Settings};
use super::{Context, Model};
use crate::engine::{ChatRequest, EngineError, StreamEvent};
use crate::knowledge::support::Evidence;
use crate::knowledge::{answer, Hit, KnowledgeBase};
use crate::prompts::{Locale, Template};
use crate::session;
use crate::store::{Conversation, Role, SourceRef, StoredMessage};
use crate::telemetry;

/// Longest question put into a grounded prompt, in characters.
const GROUNDED_QUESTION_CHARS: usize = 1000;

/// What the answer handler may use.
#[derive(Clone, Copy)]
pub(crate) struct Answering<'a> {
    pub ctx: Context<'a>,
    pub model: Model<'a>,
    /// The knowledge base, when one is loaded.
    pub knowledge: Option<&'a KnowledgeBase>,
    pub settings: &'a Settings,
}

/// Answers a question whose message is stored in `conversation` after
/// `history`, and stores the answer with its sources.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    a: &Answering<'_>,
    conversation: &Conversation,
    history: &[StoredMessage],
    chat: &ConversationRef,
    adapter: &dyn Outbox,
    text: &str,
    was_cut: bool,
    locale: Locale,
    started: Instant,
) -> anyhow::Result<()> {
    if was_cut {
        let limit = a.settings.max_message_chars.to_string();
        let note = a
            .ctx
            .prompts
            .render(locale, Template::MessageCut, &[("limit", &limit)]);
        adapter.send(Outbound::text(chat.clone(), note)).await?;
    }

    let plan = plan(a, text, locale)?;
    let (reply, sources) = match plan {
        AnswerPlan::Fixed {
            text: reply,
            sources,
        } => {
            adapter
                .send(Outbound::text(chat.clone(), reply.clone()))
                .await?;
            (reply, sources)
        }
        AnswerPlan::Generate { prompt } => {
            let reply = generate(a, adapter, chat, history, &prompt, locale, started).await?;
            (reply, Vec::new())
        }
        AnswerPlan::Grounded {
            prompt,
            source_line,
            passages,
            sources,
        } => {
            let reply = grounded(
                a, adapter, chat, history, &prompt, text, &passages, locale, started,
            )
            .await?;
            let reply = format!("{}\n\n{source_line}", reply.trim());
            send_split(adapter, chat, &reply).await?;
            (reply, sources)
        }
    };
    if a.model.cancel.is_cancelled() {
        // Cut short by the stop: the message stays in the inbox and is
        // answered after the restart.
        return Ok(());
    }
    let reply = reply.trim();
    if reply.is_empty() {
        telemetry::reply_failed(&chat.platform);
        let apology = a.ctx.prompts.text(locale, Template::EngineError);
        adapter.send(Outbound::text(chat.clone(), apology)).await?;
        return Ok(());
    }
    a.ctx
        .store
        .append_message_with_sources(conversation.id, Role::Assistant, reply, sources)?;
    a.ctx.store.flush().await?;
    telemetry::reply_delivered(&chat.platform, "answer", started.elapsed());
    Ok(())
}

/// Decides how to answer: an FAQ entry verbatim, the model grounded in
/// retrieved passages, an honest "not found", or (without a knowledge
/// base, or for small talk) the model alone.
fn plan(a: &Answering<'_>, text: &str, locale: Locale) -> anyhow::Result<AnswerPlan> {
    let plain = AnswerPlan::Generate {
        prompt: text.to_string(),
    };
    let Some(knowledge) = a.knowledge.filter(|kb| kb.passages() > 0) else {
        return Ok(plain);
    };
    let retrieval = knowledge.retrieve(text, a.settings.top_k)?;
    if retrieval.query_terms == 0 {
        return Ok(plain);
    }
    let source_of = |hit: &Hit| SourceRef {
        doc: hit.doc.clone(),
        title: hit.title.clone(),
        passage: hit.passage_index,
    };
    if let Some(faq) = retrieval.faq_answer() {
        let reply = a.ctx.prompts.render(
            locale,
            Template::FaqAnswer,
            &[("answer", &faq.passage), ("title", &faq.title)],
        );
        return Ok(AnswerPlan::Fixed {
            text: reply,
            sources: vec![source_of(faq)],
        });
    }
    if !retrieval.found() {
        return Ok(AnswerPlan::Fixed {
            text: a.ctx.prompts.text(locale, Template::NotFound).to_string(),
            sources: Vec::new(),
        });
    }
    // Passages close to the best one; weak tail hits only add noise.
    let best = retrieval.hits[0].score;
    let used: Vec<&Hit> = retrieval
        .hits
        .iter()
        .take(a.settings.top_k)
        .filter(|hit| hit.score >= best * 0.5)
        .collect();
    let listing = used
        .iter()
        .enumerate()
        .map(|(number, hit)| format!("[{}] {}\n{}", number + 1, hit.title, hit.passage))
        .collect::<Vec<_>>()
        .join("\n\n");
    // The context window cuts an over-long prompt from its start, which
    // here holds the instructions and sources: bound the question instead.
    let question: String = text.chars().take(GROUNDED_QUESTION_CHARS).collect();
    let prompt = a.ctx.prompts.render(
        locale,
        Template::GroundedQuestion,
        &[("sources", &listing), ("question", &question)],
    );
    let source_line = a.ctx.prompts.render(
        locale,
        Template::SourceLine,
        &[("title", &retrieval.hits[0].title)],
    );
    Ok(AnswerPlan::Grounded {
        prompt,
        source_line,
        sources: used.iter().map(|hit| source_of(hit)).collect(),
        passages: used.into_iter().cloned().collect(),
    })
}

/// The model's answer from the passages when every sentence of it rests on
/// a sentence of theirs (`knowledge::support`); otherwise the passage's
/// best-matching sentences. The answer is checked before the customer sees
/// it, so it is not streamed.
#[allow(clippy::too_many_arguments)]
async fn grounded(
    a: &Answering<'_>,
    adapter: &dyn Outbox,
    chat: &concierge_adapter::ConversationRef,
    history: &[crate::store::StoredMessage],
    prompt: &str,
    question: &str,
    passages: &[Hit],
    locale: Locale,
    started: Instant,
) -> anyhow::Result<String> {
    let buffer = BufferedReply;
    let generated = while_typing(
        adapter,
        chat,
        generate(a, &buffer, chat, history, prompt, locale, started),
    )
    .await?;
    let evidence = Evidence::new(
        passages
            .iter()
            .flat_map(|hit| [hit.title.as_str(), hit.passage.as_str()]),
    );
    match evidence.check_answer(&generated) {
        Ok(()) => return Ok(generated),
        Err(why) => tracing::info!(
            ?why,
            "generated answer strays from its sources; quoting the source instead"
        ),
    }
    Ok(passages
        .first()
        .map(|best| answer::extract(question, best))
        .unwrap_or_default())
}

/// Streams a model reply to `prompt` and returns what was delivered.
async fn generate(
    a: &Answering<'_>,
    adapter: &dyn Outbox,
    chat: &concierge_adapter::ConversationRef,
    history: &[crate::store::StoredMessage],
    prompt: &str,
    locale: Locale,
    started: Instant,
) -> anyhow::Result<String> {
    let system_prompt = a.ctx.prompts.text(locale, Template::System);
    let budget = a
        .settings
        .context_tokens
        .saturating_sub(a.settings.sampling.max_tokens);
    let window = session::build_window(a.model.llm, system_prompt, history, prompt, budget);
    tracing::debug!(
        prompt_tokens = window.prompt_tokens,
        dropped = window.dropped_history,
        "prompt built"
    );
    let request = ChatRequest {
        messages: window.messages,
        sampling: a.settings.sampling,
    };
    show_typing(adapter, chat).await;
    let cancel = a.model.cancel.child_token();
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let delivered = match a.model.llm.stream_chat(request, cancel.clone()).await {
        Ok(events) => {
            let deltas = delta_stream(events, Arc::clone(&outcome), started);
            let delivery = adapter.deliver_stream(chat, deltas);
            match tokio::time::timeout(a.settings.reply_timeout, delivery).await {
                Ok(result) => result?,
                Err(_) => {
                    cancel.cancel();
                    tracing::warn!("reply timed out after {:?}", a.settings.reply_timeout);
                    // Keep in history what the customer already saw.
                    outcome
                        .lock()
                        .map(|outcome| outcome.text.clone())
                        .unwrap_or_default()
                }
            }
        }
        Err(err) => {
            if let Ok(mut outcome) = outcome.lock() {
                outcome.error = Some(err);
            }
            String::new()
        }
    };
    let (usage, error, first_token) = match outcome.lock() {
        Ok(mut outcome) => (
            outcome.usage.take(),
            outcome.error.take(),
            outcome.first_token,
        ),
        Err(_) => (None, None, None),
    };
    if let Some(first_token) = first_token {
        telemetry::first_token(first_token);
    }
    if let Some(usage) = usage {
        telemetry::tokens_used(usage.prompt_tokens, usage.completion_tokens);
        tracing::info!(
            prompt_tokens = usage.prompt_tokens,
            cached_prompt_tokens = usage.cached_prompt_tokens,
            completion_tokens = usage.completion_tokens,
            prompt_tok_per_sec = format!("{:.1}", usage.prompt_tokens_per_sec),
            decode_tok_per_sec = format!("{:.1}", usage.decode_tokens_per_sec),
            "reply generated"
        );
    }
    if let Some(err) = &error {
        tracing::error!("engine error: {err}");
    }
    Ok(delivered)
}

/// Platforms drop a typing indicator after about five seconds.
const TYPING_REFRESH: Duration = Duration::from_secs(4);

/// Runs `work` while the channel shows that the bot is typing.
async fn while_typing<T>(
    adapter: &dyn Outbox,
    chat: &concierge_adapter::ConversationRef,
    work: impl std::future::Future<Output = T>,
) -> T {
    if !adapter.capabilities().typing {
        return work.await;
    }
    let keep_typing = async {
        loop {
            show_typing(adapter, chat).await;
            tokio::time::sleep(TYPING_REFRESH).await;
        }
    };
    // Both run together: a slow typing call never holds up the work.
    tokio::pin!(work);
    tokio::pin!(keep_typing);
    tokio::select! {
        result = &mut work => result,
        _ = &mut keep_typing => work.await,
    }
}

/// Longest a typing indicator may take before it is given up.
const TYPING_TIMEOUT: Duration = Duration::from_secs(2);

/// Shows the typing indicator, best effort and briefly.
async fn show_typing(adapter: &dyn Outbox, chat: &concierge_adapter::ConversationRef) {
    match tokio::time::timeout(TYPING_TIMEOUT, adapter.typing(chat)).await {
        Ok(Err(err)) => tracing::debug!("typing indicator failed: {err}"),
        Err(_) => tracing::debug!("typing indicator timed out"),
        Ok(Ok(())) => {}
    }
}

/// How a generated reply ended.
#[derive(Default)]
struct Outcome {
    /// The text streamed so far (kept when a reply times out).
    text: String,
    usage: Option<crate::engine::Usage>,
    error: Option<EngineError>,
    first_token: Option<Duration>,
}

/// How a question will be answered.
enum AnswerPlan {
    /// A reply that needs no model.
    Fixed {
        text: String,
        sources: Vec<SourceRef>,
    },
    /// A model reply to `prompt`, without documents.
    Generate { prompt: String },
    /// A model reply from retrieved passages, checked against them.
    Grounded {
        prompt: String,
        source_line: String,
        passages: Vec<Hit>,
        sources: Vec<SourceRef>,
    },
}

/// Collects a generated reply instead of showing it, so it can be checked.
struct BufferedReply;

#[async_trait::async_trait]
impl Outbox for BufferedReply {
    fn platform(&self) -> &str {
        "buffer"
    }
    fn capabilities(&self) -> concierge_adapter::Capabilities {
        concierge_adapter::Capabilities {
            max_message_chars: usize::MAX,
            appends_stream: true,
            can_edit: false,
            buttons: false,
            threads: false,
            typing: false,
        }
    }
    async fn send(
        &self,
        message: Outbound,
    ) -> Result<concierge_adapter::SentMessage, concierge_adapter::AdapterError> {
        Ok(concierge_adapter::SentMessage {
            conversation: message.conversation,
            message_id: String::new(),
        })
    }
}

/// Turns engine events into the plain text deltas a channel shows, noting
/// usage, errors and the first token's latency on the side.
fn delta_stream(
    events: crate::engine::ReplyStream,
    outcome: Arc<Mutex<Outcome>>,
    started: Instant,
) -> DeltaStream {
    futures::stream::unfold(Some(events), move |events| {
        let outcome = Arc::clone(&outcome);
        async move {
            let mut events = events?;
            let event = events.recv().await;
            let mut outcome = outcome.lock().ok()?;
            match event {
                Some(Ok(StreamEvent::Delta(text))) => {
                    outcome.first_token.get_or_insert_with(|| started.elapsed());
                    outcome.text.push_str(&text);
                    Some((text, Some(events)))
                }
                Some(Ok(StreamEvent::Done(usage))) => {
                    outcome.usage = Some(usage);
                    None
                }
                Some(Err(err)) => {
                    outcome.error = Some(err);
                    None
                }
                None => None,
            }
        }
    })
    .boxed()
}
