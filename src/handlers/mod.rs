//! Handlers of the routes that need no model: commands (with link codes)
//! and item buttons. Each receives a small `Context` of what it reads and
//! writes, not the pipeline.

pub(crate) mod choice;
pub(crate) mod command;

use std::collections::HashMap;
use std::sync::Arc;

use concierge_adapter::{Outbound, Outbox};

use crate::prompts::{Locale, Prompts};
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
