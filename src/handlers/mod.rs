//! Route handlers: answers, recommendations, commands (with link codes),
//! item buttons, tickets (hand-off, relay, rating) and the agents' side.
//! Each receives a small `Context` of what it reads and writes (and a
//! `Model` when it asks the engine, `Tickets` for tickets), not the pipeline.

pub(crate) mod agents;
pub(crate) mod answer;
pub(crate) mod choice;
pub(crate) mod command;
pub(crate) mod handoff;
pub(crate) mod privacy;
pub(crate) mod recommend;
pub(crate) mod small_talk;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use concierge_adapter::{ConversationRef, Outbound, Outbox};

use tokio_util::sync::CancellationToken;

use crate::engine::{ChatRequest, Llm, Sampling, StreamEvent};
use crate::prompts::{Locale, Prompts, Template};
use crate::store::{
    CatalogItem, Conversation, Customer, CustomerTurn, IntakeId, PendingFlush, Store, StoredMessage,
};

/// History messages read per reply before the token budget trims them.
const HISTORY_READ_LIMIT: usize = 64;

/// Settings of the handlers, from `[engine]` and `[chat]`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Sampling of replies.
    pub sampling: Sampling,
    /// Token budget of a whole prompt plus reply.
    pub context_tokens: usize,
    /// Longest customer message accepted, in characters.
    pub max_message_chars: usize,
    /// Longest a reply may take.
    pub reply_timeout: Duration,
    /// Locale when nothing else tells.
    pub default_locale: Locale,
    /// Passages retrieved per question.
    pub top_k: usize,
    /// Confidence at or above which an escalation hands off by itself.
    pub auto_handoff_confidence: f32,
    /// Escalation probabilities the model is asked about (`None`: never).
    pub tiebreak: Option<crate::escalation::tiebreak::Band>,
    /// `[privacy]`: what is masked, whether `/start` comes first.
    pub privacy: crate::config::PrivacyConfig,
}

/// The user id interaction events of `customer` are stored under.
pub fn event_user(customer: &Customer) -> String {
    Store::event_user(customer.id)
}

/// "89.95 EUR", or "-" for an item without a price.
pub(crate) fn price_text(item: &CatalogItem) -> String {
    match item.price {
        Some(price) => format!("{price:.2} {}", item.currency).trim().to_string(),
        None => "-".to_string(),
    }
}

/// Sends a complete text, split at the channel's limit.
pub(crate) async fn send_split(
    adapter: &dyn Outbox,
    chat: &ConversationRef,
    text: &str,
) -> anyhow::Result<()> {
    let limit = adapter.capabilities().max_message_chars;
    for part in concierge_adapter::split_message(text, limit) {
        adapter.send(Outbound::text(chat.clone(), part)).await?;
    }
    Ok(())
}

/// What a handler may use.
#[derive(Clone, Copy)]
pub(crate) struct Context<'a> {
    pub store: &'a Store,
    pub prompts: &'a Prompts,
    /// The running channels, by platform.
    pub outboxes: &'a HashMap<String, Arc<dyn Outbox>>,
    /// The language when a customer's is unknown.
    pub default_locale: Locale,
}

impl Context<'_> {
    /// Stores the customer's message in their current conversation and
    /// starts its flush, which the caller waits for before any reply reaches
    /// the channel; returns the conversation, the recent history that
    /// preceded the message, and the flush. A message from the inbox is
    /// stored once however often its handling is replayed.
    pub(crate) fn store_customer_message(
        self,
        customer: &Customer,
        chat: &ConversationRef,
        text: &str,
        intake: Option<IntakeId>,
    ) -> anyhow::Result<(Conversation, CustomerTurn, PendingFlush)> {
        let conversation =
            self.store
                .current_conversation(customer.id, &chat.platform, &chat.chat_id)?;
        let turn = self.store.append_customer_message(
            conversation.id,
            text,
            intake,
            HISTORY_READ_LIMIT,
        )?;
        Ok((conversation, turn, self.store.flush_soon()))
    }

    /// `store_customer_message`, or `None` when a replay finds the message
    /// answered already.
    #[allow(clippy::type_complexity)]
    pub(crate) fn store_unless_answered(
        self,
        customer: &Customer,
        chat: &ConversationRef,
        text: &str,
        intake: Option<IntakeId>,
    ) -> anyhow::Result<Option<(Conversation, Vec<StoredMessage>, PendingFlush)>> {
        let (conversation, turn, flush) =
            self.store_customer_message(customer, chat, text, intake)?;
        Ok(
            (!turn.replayed.is_some_and(|replayed| replayed.answered)).then_some((
                conversation,
                turn.history,
                flush,
            )),
        )
    }

    /// The private chat of `sender` with the bot, where the platform has one.
    pub(crate) async fn private_chat(
        self,
        sender: &concierge_adapter::SenderRef,
    ) -> Option<ConversationRef> {
        let adapter = self.outboxes.get(&sender.platform)?;
        match adapter.private_chat(&sender.user_id).await {
            Ok(chat) => Some(chat),
            Err(err) => {
                tracing::info!(platform = %sender.platform, "no private chat with the customer: {err}");
                None
            }
        }
    }

    /// Sends `text` into a private chat; false when the platform refused it
    /// (a Telegram user who never started the bot).
    pub(crate) async fn send_privately(self, chat: &ConversationRef, text: String) -> bool {
        let Some(adapter) = self.outboxes.get(&chat.platform) else {
            return false;
        };
        match adapter.send(Outbound::text(chat.clone(), text)).await {
            Ok(_) => true,
            Err(err) => {
                tracing::info!(platform = %chat.platform, "cannot write to the customer privately: {err}");
                false
            }
        }
    }
}

/// What a handler that asks the model may use besides the `Context`.
#[derive(Clone, Copy)]
pub(crate) struct Model<'a> {
    pub llm: &'a dyn Llm,
    pub prompts: &'a Prompts,
    /// The configured sampling; `max_tokens` is set per request.
    pub sampling: Sampling,
    /// Cancelled when the daemon stops past its deadline.
    pub cancel: &'a CancellationToken,
}

impl Model<'_> {
    /// The shop's system prompt and one user `prompt` (no history).
    fn one_turn(self, locale: Locale, prompt: &str) -> Vec<crate::engine::ChatMessage> {
        vec![
            crate::engine::ChatMessage::new(
                crate::engine::ChatRole::System,
                self.prompts.text(locale, Template::System),
            ),
            crate::engine::ChatMessage::new(
                crate::engine::ChatRole::User,
                crate::sanitize::neutralise_control_tokens(prompt, self.llm.special_tokens()),
            ),
        ]
    }

    /// Which of `labels` the model's reply to `prompt` likeliest begins
    /// with, where the engine can score them (a tie goes to the later
    /// label); `None` otherwise, or when the daemon stops first.
    pub(crate) async fn choose(
        self,
        locale: Locale,
        prompt: &str,
        labels: &[&str],
    ) -> Option<usize> {
        let messages = self.one_turn(locale, prompt);
        let scored = tokio::select! {
            _ = self.cancel.cancelled() => return None,
            scored = self.llm.label_log_probs(&messages, labels) => scored,
        };
        let scores = match scored {
            Ok(scores) => scores?,
            Err(err) => {
                tracing::debug!("scoring the labels failed: {err}");
                return None;
            }
        };
        scores
            .iter()
            .enumerate()
            .filter(|(_, score)| score.is_finite())
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(index, _)| index)
    }

    /// Runs the model on one prompt (no history) to the end, or `None`.
    pub(crate) async fn complete(
        self,
        locale: Locale,
        prompt: &str,
        max_tokens: usize,
    ) -> Option<String> {
        let request = ChatRequest {
            messages: self.one_turn(locale, prompt),
            sampling: Sampling {
                max_tokens,
                ..self.sampling
            },
        };
        let mut events = self
            .llm
            .stream_chat(request, self.cancel.child_token())
            .await
            .ok()?;
        let mut text = String::new();
        while let Some(event) = events.recv().await {
            match event {
                Ok(StreamEvent::Delta(delta)) => text.push_str(&delta),
                Ok(StreamEvent::Done(_)) => break,
                Err(err) => {
                    tracing::debug!("reason generation failed: {err}");
                    return None;
                }
            }
        }
        Some(text)
    }
}
