//! Route handlers: answers, recommendations, commands (with link codes) and
//! item buttons. Each receives a small `Context` of what it reads and writes
//! (and a `Model` when it asks the engine), not the pipeline.

pub(crate) mod answer;
pub(crate) mod choice;
pub(crate) mod command;
pub(crate) mod recommend;

use std::collections::HashMap;
use std::sync::Arc;

use concierge_adapter::{Outbound, Outbox};

use tokio_util::sync::CancellationToken;

use crate::engine::{ChatRequest, Llm, Sampling, StreamEvent};
use crate::prompts::{Locale, Prompts, Template};
use crate::store::Store;

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
    /// The private chat of `sender` with the bot, where the platform has one.
    pub(crate) async fn private_chat(
        self,
        sender: &concierge_adapter::SenderRef,
    ) -> Option<concierge_adapter::ConversationRef> {
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
    pub(crate) async fn send_privately(
        self,
        chat: &concierge_adapter::ConversationRef,
        text: String,
    ) -> bool {
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
    /// Runs the model on one prompt (no history) to the end, or `None`.
    pub(crate) async fn complete(
        self,
        locale: Locale,
        prompt: &str,
        max_tokens: usize,
    ) -> Option<String> {
        let request = ChatRequest {
            messages: vec![
                crate::engine::ChatMessage::new(
                    crate::engine::ChatRole::System,
                    self.prompts.text(locale, Template::System),
                ),
                crate::engine::ChatMessage::new(
                    crate::engine::ChatRole::User,
                    crate::sanitize::neutralise_control_tokens(prompt, self.llm.special_tokens()),
                ),
            ],
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
