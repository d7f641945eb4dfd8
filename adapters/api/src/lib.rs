//! The contract between Concierge's core and its channels: platform-neutral
//! `Inbound`/`Outbound` messages, channel `Capabilities`, the `Adapter` trait,
//! and reply-delivery helpers (splitting long replies, pacing edits).
//!
//! Architecture invariant: this crate depends on no other Concierge crate.
//! The core and every channel crate depend on it, never on each other.

mod delivery;
mod platform;
mod split;

pub use delivery::{collect_stream, deliver_by_editing, EditPacing};
pub use platform::{ChatPacer, ChoiceKeys};
pub use split::split_message;

use std::time::SystemTime;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where a message lives on a platform: one chat, channel or console session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConversationRef {
    /// Platform name, e.g. `console`, `telegram`, `discord`.
    pub platform: String,
    /// The platform's id of the chat (chat id, channel id, console session).
    /// A Telegram forum topic is `<chat id>/<topic id>`; a Discord thread is
    /// a channel of its own.
    pub chat_id: String,
}

/// Who wrote an inbound message, as the platform identifies them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderRef {
    /// Platform name, the same as the conversation's.
    pub platform: String,
    /// The platform's stable user id.
    pub user_id: String,
    /// A display name, when the platform has one.
    pub display_name: Option<String>,
    /// The client's language setting (e.g. Telegram's `language_code`), if known.
    pub language_hint: Option<String>,
}

/// Whether a chat is one person's own with the bot, or shared with others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatKind {
    /// A private chat or DM: only the sender reads the replies.
    #[default]
    Private,
    /// A group, channel, topic or thread that others read too.
    Group,
}

/// A message from a customer, in platform-neutral form.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Inbound {
    /// The chat it arrived in; replies go back there.
    pub conversation: ConversationRef,
    /// Whether others read that chat.
    #[serde(default)]
    pub chat: ChatKind,
    /// Who wrote it.
    pub sender: SenderRef,
    /// What the customer wrote or chose.
    pub content: InboundContent,
    /// The platform's id of the message, when it has one.
    pub message_id: Option<String>,
    /// The platform's unique id of this delivery (a message, a button
    /// press), where it has one: a platform that delivers it again (it never
    /// heard that it was taken) gets it taken once. Never reused by the
    /// platform, unlike Telegram's update ids.
    #[serde(default)]
    pub delivery_id: Option<String>,
    /// The id of the message this one replies to, when it is a reply.
    pub in_reply_to: Option<String>,
    /// The chat id of the group or channel that holds the thread or topic
    /// this message was written in, when it was written in one.
    pub thread_parent: Option<String>,
    /// When the adapter received it.
    pub received_at: SystemTime,
}

/// The payload of an inbound message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InboundContent {
    /// Free text (commands included: they start with `/`).
    Text(String),
    /// The customer pressed a button that the bot offered.
    Choice {
        /// The `Choice::id` that was pressed.
        id: String,
    },
}

/// A button under a message. Channels without buttons render them as text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    /// Opaque id routed back in `InboundContent::Choice`.
    pub id: String,
    /// What the customer sees.
    pub label: String,
}

/// A complete message from the bot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    /// Where to send it.
    pub conversation: ConversationRef,
    /// Plain text; adapters escape it for their platform's markup.
    pub text: String,
    /// Buttons to show under the message.
    pub choices: Vec<Choice>,
    /// The `Inbound::message_id` this answers, when the channel can thread
    /// replies (a Discord slash command is answered in its own response).
    pub reply_to: Option<String>,
}

impl Outbound {
    /// A plain text message without buttons.
    pub fn text(conversation: ConversationRef, text: impl Into<String>) -> Self {
        Self {
            conversation,
            text: text.into(),
            choices: Vec::new(),
            reply_to: None,
        }
    }
}

/// A file the bot sends (a customer's data export).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// Where to send it.
    pub conversation: ConversationRef,
    /// The file's name as the customer sees it.
    pub file_name: String,
    /// Its content.
    pub bytes: Vec<u8>,
    /// Text shown with it.
    pub caption: String,
    /// The `Inbound::message_id` this answers, where the channel threads replies.
    pub reply_to: Option<String>,
}

/// A message the platform accepted, so it can be edited later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentMessage {
    /// Where it was sent.
    pub conversation: ConversationRef,
    /// The platform's id of the message.
    pub message_id: String,
}

/// What a channel can do; the core adapts its output to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Longest message the platform accepts, in characters (Unicode scalar values).
    pub max_message_chars: usize,
    /// Text can be appended as it is generated (a terminal).
    pub appends_stream: bool,
    /// Sent messages can be edited (streaming by edits).
    pub can_edit: bool,
    /// Buttons under messages.
    pub buttons: bool,
    /// Threads or topics can be created.
    pub threads: bool,
    /// A typing indicator exists.
    pub typing: bool,
}

/// A command that channels register with their platform's command menu.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandSpec {
    /// The name without the slash, e.g. `help`.
    pub name: String,
    /// Short descriptions by locale (`en`, `zh`); `en` is the default.
    pub descriptions: Vec<(String, String)>,
}

impl CommandSpec {
    /// The description in `locale`, else the first one.
    pub fn description(&self, locale: &str) -> &str {
        self.descriptions
            .iter()
            .find(|(candidate, _)| candidate == locale)
            .or_else(|| self.descriptions.first())
            .map_or("", |(_, text)| text.as_str())
    }
}

/// Replaces every occurrence of each non-empty secret in `text`, so tokens
/// never reach logs or error messages even when a library prints a URL.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut redacted = text.to_string();
    for secret in secrets.iter().filter(|secret| secret.len() >= 4) {
        redacted = redacted.replace(secret, "[redacted]");
    }
    redacted
}

/// Errors a channel reports to the core.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The platform asked us to slow down.
    #[error("rate limited by the platform: retry after {retry_after_secs} s")]
    RateLimited {
        /// Seconds to wait before the next call.
        retry_after_secs: u64,
    },
    /// The message exceeds the platform's limit.
    #[error("message of {chars} characters exceeds the platform limit of {limit}")]
    TooLong {
        /// Length of the rejected text.
        chars: usize,
        /// The platform's limit.
        limit: usize,
    },
    /// This channel cannot do what was asked.
    #[error("{0} is not supported by this channel")]
    Unsupported(&'static str),
    /// Reading or writing the local terminal or socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The platform is unreachable or answered with an error.
    #[error("platform error: {0}")]
    Platform(String),
    /// The platform refuses this bot (a revoked token, another instance
    /// reading its updates): retrying cannot help until an operator acts,
    /// so the channel is reported failed until it runs again.
    #[error("refused by the platform: {0}")]
    Refused(String),
}

/// Where adapters push what customers write. `send` returns once the core
/// has taken the message for good (the daemon has stored it), so a channel
/// acknowledges a message to its platform only after `send` succeeded.
/// Dropping every sink tells the core that the channels have no more input.
#[derive(Clone, Debug)]
pub struct InboundSink {
    queue: mpsc::Sender<Handover>,
}

/// The core's end of the sinks: messages with the receipts to answer.
#[derive(Debug)]
pub struct InboundSource {
    queue: mpsc::Receiver<Handover>,
}

/// One message handed over by a channel, waiting for the core to take it.
#[derive(Debug)]
pub struct Handover {
    /// The message.
    pub message: Inbound,
    receipt: Receipt,
}

/// Tells the channel that handed a message over that the core has taken it.
/// Dropped without `taken`, the channel's `send` fails and it must not
/// acknowledge the message to its platform.
#[derive(Debug)]
pub struct Receipt(tokio::sync::oneshot::Sender<()>);

impl Receipt {
    /// The message is stored: the channel may acknowledge it.
    pub fn taken(self) {
        let _ = self.0.send(());
    }
}

impl Handover {
    /// The message and its receipt.
    pub fn into_parts(self) -> (Inbound, Receipt) {
        (self.message, self.receipt)
    }
}

/// The core did not take a message: it is shutting down or could not store
/// it. The channel must leave the message unacknowledged.
#[derive(Debug, thiserror::Error)]
#[error("the core did not take the message (shutting down or its store failed)")]
pub struct NotTaken;

/// A queue from the channels to the core holding at most `buffer` messages
/// that the core has not looked at yet.
pub fn inbound_queue(buffer: usize) -> (InboundSink, InboundSource) {
    let (queue, receiver) = mpsc::channel(buffer.max(1));
    (InboundSink { queue }, InboundSource { queue: receiver })
}

impl InboundSink {
    /// Hands `message` to the core and waits until it has been taken.
    pub async fn send(&self, message: Inbound) -> Result<(), NotTaken> {
        let (receipt, taken) = tokio::sync::oneshot::channel();
        self.queue
            .send(Handover {
                message,
                receipt: Receipt(receipt),
            })
            .await
            .map_err(|_| NotTaken)?;
        taken.await.map_err(|_| NotTaken)
    }
}

impl InboundSource {
    /// The next message, or `None` once every sink is dropped.
    pub async fn recv(&mut self) -> Option<Handover> {
        self.queue.recv().await
    }

    /// A message that is already waiting, without waiting for one.
    pub fn try_recv(&mut self) -> Option<Handover> {
        self.queue.try_recv().ok()
    }
}

/// A reply as it is generated: text deltas in order.
pub type DeltaStream = BoxStream<'static, String>;

/// What a channel receives: it pushes customers' messages into the core.
#[async_trait]
pub trait Intake: Send + Sync + 'static {
    /// Receives from the platform and pushes every customer message into
    /// `inbound`, until `shutdown` fires or the input ends (console EOF).
    async fn run(
        &self,
        inbound: InboundSink,
        shutdown: CancellationToken,
    ) -> Result<(), AdapterError>;

    /// Whether the platform connection is up now; `None` for channels
    /// without one (the console). Read for health reports.
    fn is_connected(&self) -> Option<bool> {
        None
    }
}

/// What a channel sends: the bot's messages, edits and typing, in the
/// platform's terms. Wrappers that change how replies go out (threading
/// them, buffering them) are outboxes only.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Platform name used in `ConversationRef::platform`.
    fn platform(&self) -> &str;

    /// What this channel can render.
    fn capabilities(&self) -> Capabilities;

    /// Sends one complete message (at most `max_message_chars`).
    async fn send(&self, message: Outbound) -> Result<SentMessage, AdapterError>;

    /// Sends a file with a caption. Channels without files (the console)
    /// answer `Unsupported`, and the core writes the file where the
    /// operator's machine keeps it instead.
    async fn send_document(&self, _document: Document) -> Result<SentMessage, AdapterError> {
        Err(AdapterError::Unsupported("files"))
    }

    /// Opens a thread (or topic) under `parent` named `name`, posts `first`
    /// there, and returns the thread as a conversation to send into.
    async fn create_thread(
        &self,
        _parent: &ConversationRef,
        _name: &str,
        _first: Outbound,
    ) -> Result<ConversationRef, AdapterError> {
        Err(AdapterError::Unsupported("threads"))
    }

    /// The private chat (DM) between the bot and the platform user
    /// `user_id`, to send what only they may read. Sending into it can still
    /// fail where the platform lets the bot write only to users who wrote
    /// to it first (Telegram).
    async fn private_chat(&self, _user_id: &str) -> Result<ConversationRef, AdapterError> {
        Err(AdapterError::Unsupported("private chats"))
    }

    /// Replaces the text of a message sent earlier.
    async fn edit(&self, _message: &SentMessage, _text: &str) -> Result<(), AdapterError> {
        Err(AdapterError::Unsupported("editing"))
    }

    /// Shows that the bot is working on a reply.
    async fn typing(&self, _conversation: &ConversationRef) -> Result<(), AdapterError> {
        Ok(())
    }

    /// Called once a reply (streamed or not) to an inbound message is complete,
    /// so interactive channels can prompt for the next one.
    async fn reply_finished(&self, _conversation: &ConversationRef) {}

    /// How often a streamed reply may be edited, on channels that edit.
    fn edit_pacing(&self) -> EditPacing {
        EditPacing::default()
    }

    /// Delivers a streamed reply and returns its full text. Channels that
    /// edit show it growing by paced edits; others get the whole text, split
    /// at the platform limit. Channels that append (a terminal) override this.
    async fn deliver_stream(
        &self,
        conversation: &ConversationRef,
        deltas: DeltaStream,
    ) -> Result<String, AdapterError> {
        if self.capabilities().can_edit {
            return deliver_by_editing(self, conversation, deltas, self.edit_pacing()).await;
        }
        let text = collect_stream(deltas).await;
        let limit = self.capabilities().max_message_chars;
        for part in split_message(&text, limit) {
            self.send(Outbound::text(conversation.clone(), part))
                .await?;
        }
        Ok(text)
    }
}

/// One platform connection: its intake and its outbox. Implementations
/// live in their own crates.
pub trait Adapter: Intake + Outbox {}

impl<T: Intake + Outbox> Adapter for T {}
