//! The answer handler: a strong FAQ match verbatim; a model answer around
//! the passages' best sentences, streamed as each of its sentences is
//! verified against them (else those sentences quoted); an honest "not
//! found"; small talk from templates; without a knowledge base, the model
//! alone, streamed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concierge_adapter::{ConversationRef, DeltaStream, Outbound, Outbox};
use futures::StreamExt;

use super::Settings;
use super::{Context, Model};
use crate::engine::{ChatRequest, EngineError, StreamEvent};
use crate::knowledge::support::Evidence;
use crate::knowledge::{answer, Hit, KnowledgeBase};
use crate::prompts::{Locale, Template};
use crate::session;
use crate::store::{Conversation, PendingFlush, Role, SourceRef, StoredMessage};
use crate::telemetry;

/// Longest question put into a grounded prompt, in characters.
const GROUNDED_QUESTION_CHARS: usize = 1000;
/// How long a grounded reply may go without verified text before the
/// shop's sentences are shown instead (the customer should see words
/// within a second).
const FIRST_TEXT_DEADLINE: Duration = Duration::from_millis(800);
/// Most sentences of the passages given to the model to answer from.
const SELECTED_SENTENCES: usize = 4;
/// Passages searched beyond `top_k`, for a page only the other language has.
const OTHER_LANGUAGE_HITS: usize = 3;
/// How much better, in question words of average weight, the other
/// language's best sentence must answer to be quoted instead.
const OTHER_LANGUAGE_MARGIN: f32 = 1.0;
/// Other-language passages whose sentences are compared by meaning.
const MEANING_HITS: usize = 3;

/// What the answer handler may use.
#[derive(Clone, Copy)]
pub(crate) struct Answering<'a> {
    pub ctx: Context<'a>,
    pub model: Model<'a>,
    /// The knowledge base, when one is loaded.
    pub knowledge: Option<&'a KnowledgeBase>,
    pub settings: &'a Settings,
    /// Whether the model's answers in a language are worth waiting for.
    pub fluency: &'a Fluency,
    /// The message is praise (the classifier's cues): thanked for, without
    /// passages or the model.
    pub praise: bool,
}

/// Grounded answers remembered per language for `Fluency`.
const FLUENCY_WINDOW: usize = 20;
/// While the model has had no sentence accepted in the window, one answer
/// in this many still asks it, to notice when it does better.
const FLUENCY_PROBE_EVERY: usize = 10;

/// Whether the model's grounded answers in each language pass the check
/// at all: a model that cannot write Chinese (or misstates every fact) is
/// not asked, and the customer gets the shop's sentences at once instead of
/// after the first-text deadline.
#[derive(Default)]
pub struct Fluency {
    recent: Mutex<std::collections::HashMap<Locale, std::collections::VecDeque<bool>>>,
    skipped: std::sync::atomic::AtomicUsize,
}

impl Fluency {
    /// Whether to ask the model for a grounded answer in `locale`.
    fn worth_asking(&self, locale: Locale) -> bool {
        let hopeless = self.recent.lock().is_ok_and(|recent| {
            recent.get(&locale).is_some_and(|outcomes| {
                outcomes.len() >= FLUENCY_WINDOW && !outcomes.iter().any(|accepted| *accepted)
            })
        });
        if !hopeless {
            return true;
        }
        let skipped = self
            .skipped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (skipped + 1).is_multiple_of(FLUENCY_PROBE_EVERY)
    }

    /// Records whether the model's reply had a sentence accepted.
    fn record(&self, locale: Locale, accepted: bool) {
        if let Ok(mut recent) = self.recent.lock() {
            let outcomes = recent.entry(locale).or_default();
            outcomes.push_back(accepted);
            while outcomes.len() > FLUENCY_WINDOW {
                outcomes.pop_front();
            }
        }
    }
}

/// The customer's question as stored.
pub(crate) struct Question<'q> {
    /// Where it is stored, after `history`.
    pub conversation: &'q Conversation,
    pub history: &'q [StoredMessage],
    /// Its flush, waited for before anything reaches the channel.
    pub flush: PendingFlush,
    pub text: &'q str,
    /// It was cut to the longest message taken.
    pub was_cut: bool,
}

/// Answers `question` and stores the answer with its sources (flushed by
/// the pipeline once the reply is over).
pub(crate) async fn run(
    a: &Answering<'_>,
    question: Question<'_>,
    chat: &ConversationRef,
    adapter: &dyn Outbox,
    locale: Locale,
    started: Instant,
) -> anyhow::Result<()> {
    let Question {
        conversation,
        history,
        mut flush,
        text,
        was_cut,
    } = question;
    if was_cut {
        flush.wait().await?;
        let limit = a.settings.max_message_chars.to_string();
        let note = a
            .ctx
            .prompts
            .render(locale, Template::MessageCut, &[("limit", &limit)]);
        adapter.send(Outbound::text(chat.clone(), note)).await?;
    }

    let plan = plan(a, text, locale)?;
    let (reply, sources, whole) = match plan {
        AnswerPlan::Fixed {
            text: reply,
            sources,
        } => {
            flush.wait().await?;
            adapter
                .send(Outbound::text(chat.clone(), reply.clone()))
                .await?;
            (reply, sources, true)
        }
        AnswerPlan::Generate { prompt } => {
            let (reply, whole) = generate(
                a,
                adapter,
                chat,
                (history, &mut flush),
                &prompt,
                locale,
                started,
            )
            .await?;
            (reply, Vec::new(), whole)
        }
        AnswerPlan::Grounded(grounding) => {
            let sources = grounding.sources.clone();
            let (reply, whole) = grounded(
                a,
                adapter,
                chat,
                (history, &mut flush),
                *grounding,
                locale,
                started,
            )
            .await?;
            (reply, sources, whole)
        }
    };
    if a.model.cancel.is_cancelled() && !whole {
        // Cut short by the stop: the message stays in the inbox and is
        // answered after the restart. A reply that came to its end before
        // the stop (its last edit still going out) is kept, or the restart
        // would answer it twice.
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
    telemetry::reply_delivered(&chat.platform, "answer", started.elapsed());
    Ok(())
}

/// Decides how to answer: small talk from a template, an FAQ entry
/// verbatim, the model grounded in selected sentences, an honest "not
/// found", or (without a knowledge base) the model alone.
fn plan(a: &Answering<'_>, text: &str, locale: Locale) -> anyhow::Result<AnswerPlan> {
    let small_talk = super::small_talk::recognise(text).or_else(|| {
        crate::knowledge::text::query_units(text)
            .is_empty()
            .then(|| super::small_talk::kind_of(text))
    });
    if let Some(kind) = small_talk {
        // Small talk: the shop's own words, in the customer's language and
        // in role, at once; a small model would wander off both.
        let template = match kind {
            super::small_talk::SmallTalk::Thanks => Template::Thanks,
            super::small_talk::SmallTalk::Greeting => Template::Greeting,
        };
        return Ok(AnswerPlan::Fixed {
            text: a.ctx.prompts.text(locale, template).to_string(),
            sources: Vec::new(),
        });
    }
    if a.praise {
        // Feedback, not a question: thanked for, not answered with passages.
        return Ok(AnswerPlan::Fixed {
            text: a.ctx.prompts.text(locale, Template::Praise).to_string(),
            sources: Vec::new(),
        });
    }
    let plain = AnswerPlan::Generate {
        prompt: text.to_string(),
    };
    let Some(knowledge) = a.knowledge.filter(|kb| kb.passages() > 0) else {
        return Ok(plain);
    };
    // The documents are searched for the request alone, typos repaired; the
    // steps below work on that same question.
    let retrieval = knowledge.retrieve(
        super::small_talk::without_social_clauses(text),
        a.settings.top_k + OTHER_LANGUAGE_HITS,
    )?;
    let text = &retrieval.question.clone();
    let searched = retrieval.searched.as_str();
    let faq_answer = retrieval
        .faq_answer()
        .filter(|faq| answer::states_asked_figure(text, &faq.passage));
    if let Some(faq) = faq_answer {
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
    // "Do you sell X?" where the shop never writes X: a passage about its
    // neighbours (other products, other cards) does not answer it.
    let unknown_thing = crate::knowledge::text::existence_asked(text)
        .is_some_and(|asked| !knowledge.unknown_topic_units(&asked).is_empty());
    let not_found = || AnswerPlan::Fixed {
        text: a.ctx.prompts.text(locale, Template::NotFound).to_string(),
        sources: Vec::new(),
    };
    if unknown_thing {
        return Ok(not_found());
    }
    if !retrieval.found() {
        return Ok(
            other_language_by_meaning(a, knowledge, text, locale, &retrieval.hits)
                .unwrap_or_else(not_found),
        );
    }
    // Passages close to the best one; weak tail hits only add noise.
    let best = retrieval.hits[0].score;
    let used: Vec<Hit> = retrieval
        .hits
        .iter()
        .take(a.settings.top_k)
        .filter(|hit| hit.score >= best * 0.5)
        .cloned()
        .collect();
    // The customer's language where the shop wrote in it: a bilingual shop's
    // other-language passage says the same, in words they may not read.
    let in_language = |hit: &Hit| in_language(hit, locale);
    let in_customer_language = used.iter().any(in_language);
    let used: Vec<Hit> = if in_customer_language {
        used.into_iter().filter(in_language).collect()
    } else {
        used
    };
    // The facts are chosen before the model writes: it phrases an answer
    // around these sentences, and each of its sentences must rest on one.
    let weights = knowledge.unit_weights(searched);
    let weight = |unit: &crate::knowledge::text::QueryUnit| weights.of(unit);
    let mut selected = answer::select_weighted(searched, &used, SELECTED_SENTENCES, weight);
    let answered = answer::answers_weighted(searched, &selected, weight);
    // A page the shop wrote only in the other language may answer what its
    // pages in the customer's language only touch on, or do not hold: its
    // sentences are quoted as written, introduced in the customer's
    // language (a model asked to translate them could not be checked).
    let other_language = if in_customer_language {
        let others: Vec<Hit> = retrieval
            .hits
            .iter()
            .filter(|hit| !in_language(hit))
            .cloned()
            .collect();
        let other_selected = answer::select_weighted(searched, &others, SELECTED_SENTENCES, weight);
        let ours = selected.first().map_or(0.0, |best| best.score);
        let theirs = other_selected.first().map_or(0.0, |best| best.score);
        // Or its page holds more of what the question is about than any of
        // the customer's language ("Trail Club 积分 过期" against a page on
        // deleting an account, which names the club and its points).
        let our_coverage = crate::knowledge::topic_coverage(searched, &used);
        let their_coverage = crate::knowledge::topic_coverage(
            searched,
            other_selected.first().map(|best| &others[best.hit]),
        );
        // Or our best sentence shares one topic word with the question and
        // theirs holds it and more ("礼品卡 有效期" against a sentence on how
        // long a student status is valid, on a page that names gift cards
        // elsewhere).
        let holds_more = || {
            let our_held = answer::topic_units_in_best(searched, &selected);
            let their_held = answer::topic_units_in_best(searched, &other_selected);
            let count = |held: &[bool]| held.iter().filter(|&&held| held).count();
            count(&our_held) <= 1
                && count(&their_held) > count(&our_held)
                && our_held
                    .iter()
                    .zip(&their_held)
                    .all(|(ours, theirs)| !ours || *theirs)
        };
        let better = answer::answers_weighted(searched, &other_selected, weight)
            && (!answered
                || theirs >= ours + OTHER_LANGUAGE_MARGIN * weights.mean()
                || their_coverage > our_coverage + f32::EPSILON
                || holds_more());
        better.then_some((other_selected, others))
    } else {
        answered.then(|| (selected.clone(), used.clone()))
    };
    if let Some((other_selected, others)) = other_language {
        return Ok(other_language_quote(a, locale, &other_selected, &others));
    }
    // The passage is about the topic, but no sentence of it answers.
    if !answered {
        return Ok(
            other_language_by_meaning(a, knowledge, text, locale, &retrieval.hits)
                .unwrap_or_else(not_found),
        );
    }
    let quoted = answer::quoted(&selected);
    let answering: Vec<String> = quoted
        .iter()
        .map(|sentence| sentence.text.clone())
        .collect();
    // Every passage a quoted sentence comes from, in the order quoted.
    let mut quoted_hits: Vec<usize> = quoted.iter().map(|sentence| sentence.hit).collect();
    quoted_hits.dedup();
    let quoted_titles = quoted_hits
        .iter()
        .map(|&hit| used[hit].title.as_str())
        .collect::<Vec<_>>()
        .join(if locale == Locale::Zh { "；" } else { "; " });
    selected.sort_by_key(|sentence| (sentence.hit, sentence.position));
    let mut listing = String::new();
    let mut evidence_texts = Vec::new();
    let mut sources = Vec::new();
    let mut hits_used: Vec<usize> = selected.iter().map(|sentence| sentence.hit).collect();
    hits_used.dedup();
    for (number, &hit_index) in hits_used.iter().enumerate() {
        let hit = &used[hit_index];
        let sentences = answer::join_sentences(
            selected
                .iter()
                .filter(|sentence| sentence.hit == hit_index)
                .map(|sentence| sentence.text.as_str()),
        );
        if !listing.is_empty() {
            listing.push_str("\n\n");
        }
        listing.push_str(&format!("[{}] {}\n{sentences}", number + 1, hit.title));
        evidence_texts.push(hit.title.clone());
        evidence_texts.push(sentences);
        sources.push(source_of(hit));
    }
    // The context window cuts an over-long prompt from its start, which
    // here holds the instructions and sources: bound the question instead.
    let question: String = text.chars().take(GROUNDED_QUESTION_CHARS).collect();
    let prompt = a.ctx.prompts.render(
        locale,
        Template::GroundedQuestion,
        &[("sources", &listing), ("question", &question)],
    );
    let source_line =
        a.ctx
            .prompts
            .render(locale, Template::SourceLine, &[("title", &quoted_titles)]);
    Ok(AnswerPlan::Grounded(Box::new(Grounding {
        prompt,
        source_line,
        evidence: Evidence::new(evidence_texts.iter().map(String::as_str))
            .asked(text)
            .answering(answering.iter().map(String::as_str)),
        answering,
        sources,
    })))
}

/// Whether a passage is written in the customer's language. Counted by
/// Han characters: a Chinese passage may hold more Latin letters (brand
/// names) than Han ones.
fn in_language(hit: &Hit, locale: Locale) -> bool {
    let han = hit
        .passage
        .chars()
        .filter(|&ch| crate::knowledge::text::is_han(ch))
        .count();
    (han >= 2) == (locale == Locale::Zh)
}

/// Where words cannot tell, a page in the other language may still answer
/// by meaning ("礼品卡有效期多久" and a gift-card page the shop wrote only
/// in English): its sentences closest to the question are quoted as
/// written, when the closest is close enough.
fn other_language_by_meaning(
    a: &Answering<'_>,
    knowledge: &KnowledgeBase,
    question: &str,
    locale: Locale,
    hits: &[Hit],
) -> Option<AnswerPlan> {
    let others: Vec<Hit> = hits
        .iter()
        .filter(|hit| !in_language(hit, locale))
        .take(MEANING_HITS)
        .cloned()
        .collect();
    // Embedding a dozen sentences the first time takes a few hundred
    // milliseconds: the runtime's other tasks move to another worker.
    let selected = off_the_runtime(|| knowledge.answering_by_meaning(question, &others));
    if selected.is_empty() {
        return None;
    }
    Some(other_language_quote(a, locale, &selected, &others))
}

/// Runs blocking `work` so that, on a multi-thread runtime, the worker's
/// other tasks go on meanwhile; elsewhere (a current-thread runtime, no
/// runtime) it just runs.
fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    let flavor = tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor());
    if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Where a passage comes from, for the reply's source line.
fn source_of(hit: &Hit) -> SourceRef {
    SourceRef {
        doc: hit.doc.clone(),
        title: hit.title.clone(),
        passage: hit.passage_index,
    }
}

/// The sentences of pages written in the other language, quoted as
/// written after an introduction in the customer's language, with every
/// passage they come from as a source.
fn other_language_quote(
    a: &Answering<'_>,
    locale: Locale,
    selected: &[answer::Selected],
    hits: &[Hit],
) -> AnswerPlan {
    let quoted = answer::quoted(selected);
    let mut titles: Vec<&str> = quoted
        .iter()
        .map(|sentence| hits[sentence.hit].title.as_str())
        .collect();
    titles.dedup();
    let mut sources: Vec<SourceRef> = quoted
        .iter()
        .map(|sentence| source_of(&hits[sentence.hit]))
        .collect();
    sources.dedup_by(|a, b| a.doc == b.doc && a.passage == b.passage);
    let separator = if locale == Locale::Zh { "；" } else { "; " };
    let text = a.ctx.prompts.render(
        locale,
        Template::OtherLanguageAnswer,
        &[
            ("answer", &answer::quote(selected)),
            ("title", &titles.join(separator)),
        ],
    );
    AnswerPlan::Fixed { text, sources }
}

/// Whether the documents answer `text` by its words: retrieval finds
/// passages and one of their sentences answers (the test `plan` makes
/// before the model, without the help of closeness in meaning, which would
/// turn "I want to buy a hiking backpack" into a warranty question).
pub(crate) fn documents_answer(knowledge: &KnowledgeBase, text: &str, top_k: usize) -> bool {
    let text = super::small_talk::without_social_clauses(text);
    let Ok(retrieval) = knowledge.retrieve(text, top_k) else {
        return false;
    };
    let text = retrieval.searched.as_str();
    if retrieval.faq_answer().is_some() {
        return true;
    }
    let weights = knowledge.unit_weights(text);
    let weight = |unit: &crate::knowledge::text::QueryUnit| weights.of(unit);
    retrieval.found_by_words()
        && answer::answers_weighted(
            text,
            &answer::select_weighted(text, &retrieval.hits, SELECTED_SENTENCES, weight),
            weight,
        )
}

/// The model's answer around the selected sentences, streamed sentence by
/// sentence as each is found to rest on one of them
/// (`knowledge::support`). At the first sentence that does not, generation
/// stops and the customer gets the shop's own sentences instead (unless the
/// model had already stated a verified fact). Ends with the source line.
/// Returns what the customer was shown.
async fn grounded(
    a: &Answering<'_>,
    adapter: &dyn Outbox,
    chat: &ConversationRef,
    (history, flush): (&[StoredMessage], &mut PendingFlush),
    grounding: Grounding,
    locale: Locale,
    started: Instant,
) -> anyhow::Result<(String, bool)> {
    let cancel = a.model.cancel.child_token();
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let asked = a.fluency.worth_asking(locale);
    let events = if asked {
        let request = request(a, history, &grounding.prompt, locale);
        show_typing(adapter, chat).await;
        match a.model.llm.stream_chat(request, cancel.clone()).await {
            Ok(events) => Some(events),
            Err(err) => {
                tracing::error!("engine error: {err}");
                None
            }
        }
    } else {
        tracing::debug!(
            ?locale,
            "the model's recent answers all failed the check; quoting at once"
        );
        None
    };
    // The engine starts while the customer's message is flushed.
    flush.wait().await?;
    // Without the model, the shop's sentences are quoted whole.
    let quoted_at_once = events.is_none();
    let verified = VerifiedReply {
        events,
        pending: String::new(),
        ready: std::collections::VecDeque::new(),
        stated_fact: false,
        answered: HashSet::new(),
        finished: false,
        grounding,
        cancel: cancel.clone(),
        outcome: Arc::clone(&outcome),
        started,
        locale,
    };
    let deltas = futures::stream::unfold(verified, |mut reply| async move {
        let next = reply.next().await?;
        Some((next, reply))
    })
    .boxed();
    let delivered = deliver_in_time(a, adapter, chat, deltas, &cancel, &outcome).await?;
    let model_accepted = outcome
        .lock()
        .map(|outcome| outcome.model_sentences_accepted > 0)
        .unwrap_or(false);
    if asked && !a.model.cancel.is_cancelled() {
        a.fluency.record(locale, model_accepted);
    }
    note_outcome(&outcome);
    Ok((delivered, quoted_at_once || is_whole(&outcome)))
}

/// A grounded reply being generated and verified: what the model wrote
/// but is not yet checked, and checked text waiting to be shown.
struct VerifiedReply {
    events: Option<crate::engine::ReplyStream>,
    pending: String,
    ready: std::collections::VecDeque<String>,
    stated_fact: bool,
    /// The answering sentences that shown sentences rest on.
    answered: HashSet<String>,
    finished: bool,
    grounding: Grounding,
    cancel: tokio_util::sync::CancellationToken,
    outcome: Arc<Mutex<Outcome>>,
    started: Instant,
    locale: Locale,
}

impl VerifiedReply {
    /// The next piece of verified text, `None` at the end.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(piece) = self.ready.pop_front() {
                if let Ok(mut outcome) = self.outcome.lock() {
                    outcome.shown.get_or_insert_with(|| self.started.elapsed());
                    outcome.text.push_str(&piece);
                }
                return Some(piece);
            }
            if self.finished {
                return None;
            }
            let nothing_shown = !self.stated_fact
                && self
                    .outcome
                    .lock()
                    .map(|outcome| outcome.text.is_empty())
                    .unwrap_or(true);
            let event = match self.events.as_mut() {
                Some(events) if nothing_shown => {
                    let left = FIRST_TEXT_DEADLINE.saturating_sub(self.started.elapsed());
                    match tokio::time::timeout(left, events.recv()).await {
                        Ok(event) => event,
                        Err(_) => {
                            // Too slow to be worth waiting for: the customer
                            // gets the shop's sentences now.
                            tracing::info!("no verified sentence in time; quoting the source");
                            self.finish();
                            continue;
                        }
                    }
                }
                Some(events) => events.recv().await,
                None => None,
            };
            match event {
                Some(Ok(StreamEvent::Delta(text))) => {
                    if let Ok(mut outcome) = self.outcome.lock() {
                        outcome
                            .first_token
                            .get_or_insert_with(|| self.started.elapsed());
                    }
                    self.pending.push_str(&text);
                    self.verify_complete_sentences();
                }
                Some(Ok(StreamEvent::Done(usage))) => {
                    if let Ok(mut outcome) = self.outcome.lock() {
                        outcome.usage = Some(usage);
                        outcome.whole = true;
                    }
                    self.verify_rest();
                }
                Some(Err(err)) => {
                    // Logged once, with the reply's outcome (`note_outcome`).
                    if let Ok(mut outcome) = self.outcome.lock() {
                        outcome.error = Some(err);
                        outcome.whole = true;
                    }
                    self.finish();
                }
                None => self.verify_rest(),
            }
        }
    }

    /// Checks the sentences the model has finished: all but the last one,
    /// which may still grow ("costs 3." before "90").
    fn verify_complete_sentences(&mut self) {
        self.verify_pending(false);
    }

    /// The model is done: checks what is left, then ends the reply.
    fn verify_rest(&mut self) {
        if self.verify_pending(true) {
            self.finish_complete();
        }
    }

    /// Checks the pending sentences (all, or all but the last); keeps the
    /// unchecked rest. Returns whether every checked one was accepted.
    fn verify_pending(&mut self, all: bool) -> bool {
        let pending = std::mem::take(&mut self.pending);
        let parts = answer::sentences(&pending);
        let complete = if all {
            parts.len()
        } else {
            parts.len().saturating_sub(1)
        };
        let mut consumed = 0;
        for sentence in &parts[..complete] {
            let end = sentence.as_ptr() as usize - pending.as_ptr() as usize + sentence.len();
            if !self.accept(sentence, &pending[consumed..end]) {
                return false;
            }
            consumed = end;
        }
        self.pending = pending[consumed..].to_string();
        true
    }

    /// Shows `raw` (the sentence as the model spaced it) if `sentence`
    /// rests on the shop's sentences; otherwise stops the model and ends
    /// the reply. Returns whether it was accepted.
    fn accept(&mut self, sentence: &str, raw: &str) -> bool {
        let verdict = if self.locale == Locale::Zh
            && !sentence.chars().any(crate::knowledge::text::is_han)
            && sentence.chars().any(char::is_alphabetic)
        {
            Err(crate::knowledge::support::Unsupported::Language(
                sentence.to_string(),
            ))
        } else {
            self.grounding.evidence.check_statement_answering(sentence)
        };
        match verdict {
            Ok(statement) => {
                let states = statement.states;
                self.stated_fact |= states;
                self.answered.extend(statement.answering);
                if let Ok(mut outcome) = self.outcome.lock() {
                    outcome.model_sentences_accepted += usize::from(states);
                }
                let shown_before = !self.ready.is_empty()
                    || self
                        .outcome
                        .lock()
                        .map(|outcome| !outcome.text.is_empty())
                        .unwrap_or(false);
                let piece = if shown_before {
                    raw.to_string()
                } else {
                    raw.trim_start().to_string()
                };
                if !piece.trim().is_empty() {
                    self.ready.push_back(piece);
                }
                true
            }
            Err(why) => {
                tracing::info!(
                    ?why,
                    "generated sentence strays from its sources; quoting the source instead"
                );
                if let Ok(mut outcome) = self.outcome.lock() {
                    outcome.whole = true;
                }
                self.finish();
                false
            }
        }
    }

    /// The model ended with every sentence verified: what it said stands
    /// alone if it rests on an answering sentence.
    fn finish_complete(&mut self) {
        let answered = !self.answered.is_empty();
        self.finish_with(answered);
    }

    /// The model was cut short (it strayed, was too slow or failed).
    fn finish(&mut self) {
        self.finish_with(false);
    }

    /// Stops the model, adds the shop's answering sentences that the model
    /// did not already restate, unless `answered` (a true sentence beside
    /// the point answers nothing), and the source line.
    fn finish_with(&mut self, answered: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.cancel.cancel();
        self.events = None;
        let mut shown = self
            .outcome
            .lock()
            .map(|outcome| outcome.text.clone())
            .unwrap_or_default();
        shown.extend(self.ready.iter().map(String::as_str));
        let untold = if answered {
            String::new()
        } else {
            answer::join_sentences(
                self.grounding
                    .answering
                    .iter()
                    .filter(|sentence| !self.answered.contains(sentence.trim()))
                    // The model may repeat a sentence word for word while
                    // its check credits another one, leaving it unanswered.
                    .filter(|sentence| !shown.contains(sentence.trim()))
                    .map(String::as_str),
            )
        };
        let mut text = if untold.is_empty() {
            String::new()
        } else if shown.trim().is_empty() {
            untold
        } else {
            let joined = answer::join_sentences([shown.trim_end(), untold.as_str()]);
            joined[shown.trim_end().len()..].to_string()
        };
        if !(shown.trim().is_empty() && text.trim().is_empty()) {
            text.push_str("\n\n");
            text.push_str(&self.grounding.source_line);
        }
        if !text.is_empty() {
            self.ready.push_back(text);
        }
    }
}

/// Streams a model reply to `prompt` and returns what was delivered.
async fn generate(
    a: &Answering<'_>,
    adapter: &dyn Outbox,
    chat: &concierge_adapter::ConversationRef,
    (history, flush): (&[StoredMessage], &mut PendingFlush),
    prompt: &str,
    locale: Locale,
    started: Instant,
) -> anyhow::Result<(String, bool)> {
    let request = request(a, history, prompt, locale);
    show_typing(adapter, chat).await;
    let cancel = a.model.cancel.child_token();
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let started_engine = a.model.llm.stream_chat(request, cancel.clone()).await;
    // The engine starts while the customer's message is flushed.
    flush.wait().await?;
    let delivered = match started_engine {
        Ok(events) => {
            let deltas = delta_stream(events, Arc::clone(&outcome), started);
            deliver_in_time(a, adapter, chat, deltas, &cancel, &outcome).await?
        }
        Err(err) => {
            if let Ok(mut outcome) = outcome.lock() {
                outcome.error = Some(err);
                outcome.whole = true;
            }
            String::new()
        }
    };
    note_outcome(&outcome);
    Ok((delivered, is_whole(&outcome)))
}

/// Whether the reply came to its own end (`Outcome::whole`).
fn is_whole(outcome: &Mutex<Outcome>) -> bool {
    outcome.lock().is_ok_and(|outcome| outcome.whole)
}

/// Streams `deltas` to the customer within `chat.reply_timeout`; past it,
/// stops the engine and returns what the customer already saw (kept in
/// history).
async fn deliver_in_time(
    a: &Answering<'_>,
    adapter: &dyn Outbox,
    chat: &ConversationRef,
    deltas: DeltaStream,
    cancel: &tokio_util::sync::CancellationToken,
    outcome: &Mutex<Outcome>,
) -> anyhow::Result<String> {
    match tokio::time::timeout(
        a.settings.reply_timeout,
        adapter.deliver_stream(chat, deltas),
    )
    .await
    {
        Ok(result) => Ok(result?),
        Err(_) => {
            cancel.cancel();
            tracing::warn!("reply timed out after {:?}", a.settings.reply_timeout);
            Ok(outcome
                .lock()
                .map(|outcome| outcome.text.clone())
                .unwrap_or_default())
        }
    }
}

/// The engine request: system prompt, as much history as fits, `prompt`.
fn request(
    a: &Answering<'_>,
    history: &[StoredMessage],
    prompt: &str,
    locale: Locale,
) -> ChatRequest {
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
    ChatRequest {
        messages: window.messages,
        sampling: a.settings.sampling,
    }
}

/// Logs and counts how a reply went: latency, tokens, errors.
fn note_outcome(outcome: &Mutex<Outcome>) {
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
    /// When the customer first saw verified text.
    shown: Option<Duration>,
    /// The model's sentences that stated a verified fact.
    model_sentences_accepted: usize,
    /// The reply came to its own end (the engine finished, failed, or was
    /// stopped by the check and the shop's sentences quoted), rather than
    /// being cut by the daemon's stop.
    whole: bool,
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
    /// A model reply around selected sentences, checked against them.
    Grounded(Box<Grounding>),
}

/// What a grounded answer is built from.
struct Grounding {
    /// The prompt with the selected sentences and the question.
    prompt: String,
    /// "Source: …", after the answer.
    source_line: String,
    /// The selected sentences with their passages' titles.
    evidence: Evidence,
    /// The shop's own sentences that answer, in the order quoted when the
    /// model strays.
    answering: Vec<String>,
    /// The passages the sentences come from.
    sources: Vec<SourceRef>,
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
                    outcome.whole = true;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_whose_answers_all_fail_in_a_language_is_asked_only_now_and_then() {
        let fluency = Fluency::default();
        for _ in 0..FLUENCY_WINDOW {
            assert!(fluency.worth_asking(Locale::Zh));
            fluency.record(Locale::Zh, false);
        }
        let asked = (0..FLUENCY_PROBE_EVERY * 3)
            .filter(|_| fluency.worth_asking(Locale::Zh))
            .count();
        assert_eq!(asked, 3, "one probe in {FLUENCY_PROBE_EVERY}");
        assert!(fluency.worth_asking(Locale::En), "English is judged apart");
        fluency.record(Locale::Zh, true);
        assert!(fluency.worth_asking(Locale::Zh), "one success is enough");
    }
}
