//! The Telegram channel: teloxide's Bot API client turned into a Concierge
//! `Adapter`. It receives updates by long polling (`getUpdates`, offsets
//! persisted so no update is handled twice or lost across restarts) or by
//! webhook (secret header checked), answers in private chats always and in
//! groups when triggered, streams replies by paced message edits, renders
//! choices as inline keyboards and honours `retry_after` on every call. In
//! the agents' group it takes every message and opens forum topics.
//!
//! Architecture invariant: depends on `concierge-adapter` only; the bot
//! token appears in no log line or error this crate produces.

mod offset;
mod update;
mod webhook;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use concierge_adapter::{
    redact, split_message, AdapterError, Capabilities, ChatPacer, Choice, ChoiceKeys, CommandSpec,
    ConversationRef, Document, EditPacing, InboundSink, Intake, Outbound, Outbox, SentMessage,
};
use teloxide::payloads::{
    GetUpdatesSetters, SendChatActionSetters, SendDocumentSetters, SendMessageSetters,
    SetMyCommandsSetters, SetWebhookSetters,
};
use teloxide::requests::{Output, Request, Requester};
use teloxide::types::{
    AllowedUpdate, BotCommand, ChatAction, ChatFullInfoKind, ChatFullInfoPublicKind, ChatId,
    InlineKeyboardButton, InlineKeyboardMarkup, MessageId, ReplyParameters, ThreadId,
};
use teloxide::{ApiError, Bot, RequestError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

pub use offset::{OffsetFile, SeenUpdates};

/// Platform name in conversation references.
pub const PLATFORM: &str = "telegram";
/// Telegram's limit on one message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4096;
/// Telegram's limit on callback data, in bytes.
const MAX_CALLBACK_BYTES: usize = 64;
/// Retries of one call that Telegram answered with `retry_after`.
const MAX_RATE_LIMIT_RETRIES: usize = 5;
/// Retries of one call after network errors (about a minute in all).
const MAX_NETWORK_RETRIES: usize = 8;
/// The longest wait between two tries of one call.
const MAX_CALL_BACKOFF: Duration = Duration::from_secs(15);
/// The longest wait between two polls while Telegram is unreachable.
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(30);

/// How updates reach the bot.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Long polling with `getUpdates`.
    Polling,
    /// Telegram posts updates to `public_url`, which proxies to `listen`.
    Webhook {
        /// The HTTPS address registered with `setWebhook`.
        public_url: Url,
        /// Local address the webhook server binds.
        listen: SocketAddr,
        /// Expected `X-Telegram-Bot-Api-Secret-Token`.
        secret_token: Option<String>,
    },
}

/// What makes the bot answer in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupTriggers {
    /// `@botname` in the text.
    pub mention: bool,
    /// A reply to one of the bot's messages.
    pub reply: bool,
    /// A `/command` (for this bot).
    pub command: bool,
}

/// Everything the Telegram channel needs.
#[derive(Clone)]
pub struct TelegramSettings {
    /// The bot token.
    pub token: String,
    /// Bot API base URL; the official API when `None`.
    pub api_url: Option<Url>,
    /// Polling or webhook.
    pub mode: Mode,
    /// When to answer in groups.
    pub group_triggers: GroupTriggers,
    /// Seconds one `getUpdates` call waits for updates.
    pub poll_timeout_secs: u32,
    /// Minimum time between two edits in one chat.
    pub edit_interval: Duration,
    /// File holding the id of the last handled update.
    pub offset_file: PathBuf,
    /// Commands for the platform's menu.
    pub commands: Vec<CommandSpec>,
    /// The agents' group, where every message is taken (not only triggers).
    pub agents_chat: Option<i64>,
}

impl std::fmt::Debug for TelegramSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramSettings")
            .field("api_url", &self.api_url)
            .field("mode", &self.mode)
            .field("agents_chat", &self.agents_chat)
            .finish_non_exhaustive()
    }
}

/// The bot's own identity, learned from `getMe`.
#[derive(Clone, Debug)]
struct BotIdentity {
    id: u64,
    username: String,
}

/// The Telegram channel.
pub struct TelegramAdapter {
    inner: Arc<Inner>,
}

struct Inner {
    bot: Bot,
    settings: TelegramSettings,
    identity: Mutex<Option<BotIdentity>>,
    /// Edits per chat, at most one per `edit_interval`.
    pacer: ChatPacer,
    /// Stand-ins for choice ids too long for callback data.
    choice_keys: ChoiceKeys,
    offsets: OffsetFile,
    /// The last call to Telegram succeeded.
    connected: AtomicBool,
    /// Whether a group has topics, by chat id (asked once per chat).
    forums: Mutex<HashMap<i64, bool>>,
}

impl TelegramAdapter {
    /// A channel for `settings`; nothing is contacted until `run`.
    pub fn new(settings: TelegramSettings) -> Result<Self, AdapterError> {
        let client = teloxide::net::default_reqwest_settings()
            // Long polls must end before the client gives up on them.
            .timeout(Duration::from_secs(
                u64::from(settings.poll_timeout_secs) + 15,
            ))
            .build()
            .map_err(|err| {
                AdapterError::Platform(format!("cannot build the HTTP client: {err}"))
            })?;
        let mut bot = Bot::with_client(settings.token.clone(), client);
        if let Some(url) = &settings.api_url {
            bot = bot.set_api_url(url.clone());
        }
        let offsets = OffsetFile::new(settings.offset_file.clone());
        let pacer = ChatPacer::new(settings.edit_interval);
        Ok(Self {
            inner: Arc::new(Inner {
                bot,
                settings,
                identity: Mutex::new(None),
                pacer,
                choice_keys: ChoiceKeys::new(MAX_CALLBACK_BYTES),
                offsets,
                connected: AtomicBool::new(false),
                forums: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Inner {
    fn redact(&self, text: &str) -> String {
        redact(text, &[self.settings.token.as_str()])
    }

    fn error(&self, err: RequestError) -> AdapterError {
        match err {
            RequestError::RetryAfter(seconds) => AdapterError::RateLimited {
                retry_after_secs: u64::from(seconds.seconds()),
            },
            RequestError::Api(ApiError::MessageIsTooLong | ApiError::EditedMessageIsTooLong) => {
                AdapterError::TooLong {
                    chars: 0,
                    limit: MAX_MESSAGE_CHARS,
                }
            }
            other => AdapterError::Platform(self.redact(&other.to_string())),
        }
    }

    /// Sends `request`, waiting and retrying whenever Telegram answers with
    /// `retry_after`, and after network errors with back-off: a reply must
    /// survive a short outage rather than stop half-shown.
    async fn call<R>(&self, what: &str, request: R) -> Result<Output<R>, AdapterError>
    where
        R: Request<Err = RequestError> + Clone,
    {
        self.call_with(what, request, MAX_NETWORK_RETRIES, MAX_RATE_LIMIT_RETRIES)
            .await
    }

    async fn call_with<R>(
        &self,
        what: &str,
        request: R,
        network_retries: usize,
        rate_limit_retries: usize,
    ) -> Result<Output<R>, AdapterError>
    where
        R: Request<Err = RequestError> + Clone,
    {
        let mut rate_limited = 0;
        let mut network_failures = 0;
        let mut backoff = Duration::from_millis(500);
        loop {
            match request.clone().send().await {
                Ok(output) => return Ok(output),
                Err(RequestError::RetryAfter(seconds)) if rate_limited < rate_limit_retries => {
                    rate_limited += 1;
                    tracing::warn!(
                        call = what,
                        retry_after_secs = seconds.seconds(),
                        "telegram asked to slow down; waiting"
                    );
                    tokio::time::sleep(seconds.duration()).await;
                }
                Err(RequestError::Network(err)) if network_failures < network_retries => {
                    network_failures += 1;
                    tracing::warn!(
                        call = what,
                        "telegram unreachable ({}); retrying in {backoff:?}",
                        self.redact(&err.to_string())
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_CALL_BACKOFF);
                }
                Err(err) => return Err(self.error(err)),
            }
        }
    }

    async fn learn_identity(&self) -> Result<BotIdentity, AdapterError> {
        let me = self.call("getMe", self.bot.get_me()).await?;
        let identity = BotIdentity {
            id: me.user.id.0,
            username: me.username().to_string(),
        };
        if let Ok(mut slot) = self.identity.lock() {
            *slot = Some(identity.clone());
        }
        Ok(identity)
    }

    async fn register_commands(&self) {
        let commands = &self.settings.commands;
        if commands.is_empty() {
            return;
        }
        for locale in [None, Some("zh")] {
            let list: Vec<BotCommand> = commands
                .iter()
                .map(|spec| BotCommand::new(&spec.name, spec.description(locale.unwrap_or("en"))))
                .collect();
            let mut request = self.bot.set_my_commands(list);
            if let Some(locale) = locale {
                request = request.language_code(locale);
            }
            if let Err(err) = self.call("setMyCommands", request).await {
                tracing::warn!(
                    locale = locale.unwrap_or("default"),
                    "could not register the bot's commands: {err}"
                );
            }
        }
    }

    /// The choice id behind callback data.
    fn choice_id(&self, data: &str) -> String {
        self.choice_keys.id(data)
    }

    fn keyboard(&self, choices: &[Choice]) -> InlineKeyboardMarkup {
        // A short set (a 1-5 rating) fits one row; longer sets go three per row.
        let per_row = if choices.len() <= 5 { 5 } else { 3 };
        let rows: Vec<Vec<InlineKeyboardButton>> = choices
            .chunks(per_row)
            .map(|row| {
                row.iter()
                    .map(|choice| {
                        InlineKeyboardButton::callback(
                            choice.label.clone(),
                            self.choice_keys.key(&choice.id),
                        )
                    })
                    .collect()
            })
            .collect();
        InlineKeyboardMarkup::new(rows)
    }

    async fn poll(
        &self,
        sink: &InboundSink,
        shutdown: &CancellationToken,
    ) -> Result<(), AdapterError> {
        let mut seen = SeenUpdates::new(
            self.offsets
                .load()
                .map_err(|err| AdapterError::Platform(err.to_string()))?,
        );
        let mut next_offset = seen.last().map_or(0, |last| last + 1);
        let mut backoff = Duration::from_secs(1);
        let mut unreachable_since: Option<Instant> = None;
        loop {
            let request = self
                .bot
                .get_updates()
                .offset(next_offset as i32)
                .timeout(self.settings.poll_timeout_secs)
                .allowed_updates(vec![AllowedUpdate::Message, AllowedUpdate::CallbackQuery]);
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                result = request.send() => result,
            };
            let updates = match result {
                Ok(updates) => {
                    self.connected.store(true, Ordering::Relaxed);
                    updates
                }
                Err(RequestError::RetryAfter(seconds)) => {
                    tracing::warn!(
                        retry_after_secs = seconds.seconds(),
                        "telegram asked to slow down polling"
                    );
                    if sleep_or_shutdown(seconds.duration(), shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(RequestError::Api(
                    error @ (ApiError::InvalidToken
                    | ApiError::TerminatedByOtherGetUpdates
                    | ApiError::CantGetUpdates),
                )) => {
                    self.connected.store(false, Ordering::Relaxed);
                    let hint = match error {
                        ApiError::InvalidToken => "the bot token was revoked or is wrong (401)",
                        ApiError::CantGetUpdates => {
                            "a webhook is set for this bot; polling cannot read its updates (409)"
                        }
                        _ => "another process is reading this bot's updates (409)",
                    };
                    return Err(AdapterError::Refused(hint.to_string()));
                }
                Err(err) => {
                    self.connected.store(false, Ordering::Relaxed);
                    unreachable_since.get_or_insert_with(Instant::now);
                    tracing::warn!(
                        "polling telegram failed: {}; retrying in {backoff:?}",
                        self.redact(&err.to_string())
                    );
                    if sleep_or_shutdown(backoff, shutdown).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(MAX_POLL_BACKOFF);
                    continue;
                }
            };
            if let Some(since) = unreachable_since.take() {
                tracing::info!(down_for = ?since.elapsed(), "telegram is reachable again");
            }
            backoff = Duration::from_secs(1);
            for update in updates {
                // Telegram returns only unconfirmed updates, so an id below
                // the offset means its ids restarted, not a repeat.
                let id = update.id.0;
                if seen.is_repeat(id) {
                    continue;
                }
                if let Some(inbound) = self.to_inbound(update).await {
                    if sink.send(inbound).await.is_err() {
                        return Ok(());
                    }
                }
                if seen.record(id) {
                    tracing::warn!(update_id = id, "telegram restarted its update ids lower");
                }
                next_offset = id + 1;
                if let Err(err) = self.offsets.save(id) {
                    tracing::error!("cannot record the last handled telegram update: {err}");
                }
            }
        }
    }
}

/// Sleeps for `duration`; true when shutdown came first.
async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

/// The chat of a conversation and, for a forum topic (`<chat>/<topic>`), the topic.
fn chat_target(conversation: &ConversationRef) -> Result<(ChatId, Option<ThreadId>), AdapterError> {
    let invalid =
        || AdapterError::Platform(format!("not a telegram chat id: {}", conversation.chat_id));
    let (chat, topic) = match conversation.chat_id.split_once('/') {
        Some((chat, topic)) => (chat, Some(topic)),
        None => (conversation.chat_id.as_str(), None),
    };
    let chat = chat.parse::<i64>().map(ChatId).map_err(|_| invalid())?;
    let topic = match topic {
        Some(topic) => Some(
            topic
                .parse::<i32>()
                .map(|id| ThreadId(MessageId(id)))
                .map_err(|_| invalid())?,
        ),
        None => None,
    };
    Ok((chat, topic))
}

fn chat_id(conversation: &ConversationRef) -> Result<ChatId, AdapterError> {
    chat_target(conversation).map(|(chat, _)| chat)
}

impl Inner {
    /// Whether the group `chat` has topics (asked once, then remembered).
    async fn is_forum(&self, chat: ChatId) -> Result<bool, AdapterError> {
        if let Some(known) = self
            .forums
            .lock()
            .ok()
            .and_then(|forums| forums.get(&chat.0).copied())
        {
            return Ok(known);
        }
        let info = self.call("getChat", self.bot.get_chat(chat)).await?;
        let forum = match &info.kind {
            ChatFullInfoKind::Public(public) => match &public.kind {
                ChatFullInfoPublicKind::Supergroup(group) => group.is_forum,
                _ => false,
            },
            ChatFullInfoKind::Private(_) => false,
        };
        if let Ok(mut forums) = self.forums.lock() {
            forums.insert(chat.0, forum);
        }
        Ok(forum)
    }
}

fn message_id(message: &SentMessage) -> Result<MessageId, AdapterError> {
    message
        .message_id
        .parse::<i32>()
        .map(MessageId)
        .map_err(|_| {
            AdapterError::Platform(format!("not a telegram message id: {}", message.message_id))
        })
}

impl TelegramAdapter {
    /// Connects, then receives updates until shutdown or an error.
    async fn run_until_error(
        &self,
        inbound: InboundSink,
        shutdown: CancellationToken,
    ) -> Result<(), AdapterError> {
        let inner = &self.inner;
        let identity = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            identity = inner.learn_identity() => identity?,
        };
        tracing::info!(bot = %identity.username, "telegram bot connected");
        inner.register_commands().await;
        match &inner.settings.mode {
            Mode::Polling => {
                // getUpdates fails while a webhook is set.
                inner
                    .call("deleteWebhook", inner.bot.delete_webhook())
                    .await?;
                inner.poll(&inbound, &shutdown).await
            }
            Mode::Webhook {
                public_url,
                listen,
                secret_token,
            } => {
                let mut request = inner
                    .bot
                    .set_webhook(public_url.clone())
                    // One delivery at a time keeps updates in order, so the
                    // last handled id can skip redeliveries safely.
                    .max_connections(1)
                    .allowed_updates(vec![AllowedUpdate::Message, AllowedUpdate::CallbackQuery]);
                if let Some(secret) = secret_token {
                    request = request.secret_token(secret.clone());
                }
                inner.call("setWebhook", request).await?;
                inner.connected.store(true, Ordering::Relaxed);
                webhook::serve(
                    Arc::clone(inner),
                    *listen,
                    public_url.path().to_string(),
                    inbound,
                    shutdown,
                )
                .await
            }
        }
    }
}

#[async_trait]
impl Intake for TelegramAdapter {
    async fn run(
        &self,
        inbound: InboundSink,
        shutdown: CancellationToken,
    ) -> Result<(), AdapterError> {
        let result = self.run_until_error(inbound, shutdown).await;
        self.inner.connected.store(false, Ordering::Relaxed);
        result
    }
    fn is_connected(&self) -> Option<bool> {
        Some(self.inner.connected.load(Ordering::Relaxed))
    }
}

#[async_trait]
impl Outbox for TelegramAdapter {
    fn platform(&self) -> &str {
        PLATFORM
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_message_chars: MAX_MESSAGE_CHARS,
            appends_stream: false,
            can_edit: true,
            buttons: true,
            threads: true,
            typing: true,
        }
    }

    async fn send(&self, message: Outbound) -> Result<SentMessage, AdapterError> {
        let inner = &self.inner;
        let (chat, topic) = chat_target(&message.conversation)?;
        let parts = split_message(&message.text, MAX_MESSAGE_CHARS);
        let last = parts.len().saturating_sub(1);
        let mut sent = None;
        for (index, part) in parts.into_iter().enumerate() {
            // Plain text: no parse mode, so nothing the customer or the model
            // writes can break formatting.
            let mut request = inner.bot.send_message(chat, part);
            if let Some(topic) = topic {
                request = request.message_thread_id(topic);
            }
            // In a group the answer quotes the customer's message, so it is
            // clear whom it answers.
            let quoted = message
                .reply_to
                .as_deref()
                .and_then(|id| id.parse::<i32>().ok());
            if let (true, 0, Some(id)) = (chat.0 < 0, index, quoted) {
                request = request.reply_parameters(
                    ReplyParameters::new(MessageId(id)).allow_sending_without_reply(),
                );
            }
            if index == last && !message.choices.is_empty() {
                request = request.reply_markup(inner.keyboard(&message.choices));
            }
            let reply = inner.call("sendMessage", request).await?;
            sent = Some(SentMessage {
                conversation: message.conversation.clone(),
                message_id: reply.id.0.to_string(),
            });
        }
        sent.ok_or(AdapterError::Platform("nothing to send".into()))
    }

    async fn send_document(&self, document: Document) -> Result<SentMessage, AdapterError> {
        let inner = &self.inner;
        let (chat, topic) = chat_target(&document.conversation)?;
        let file = teloxide::types::InputFile::memory(document.bytes).file_name(document.file_name);
        let mut request = inner.bot.send_document(chat, file);
        if !document.caption.is_empty() {
            // A caption holds at most 1,024 characters.
            request = request.caption(document.caption.chars().take(1024).collect::<String>());
        }
        if let Some(topic) = topic {
            request = request.message_thread_id(topic);
        }
        let reply = inner.call("sendDocument", request).await?;
        Ok(SentMessage {
            conversation: document.conversation,
            message_id: reply.id.0.to_string(),
        })
    }

    async fn edit(&self, message: &SentMessage, text: &str) -> Result<(), AdapterError> {
        let inner = &self.inner;
        let chat = chat_id(&message.conversation)?;
        let id = message_id(message)?;
        inner.pacer.wait(&message.conversation.chat_id).await;
        let request = inner.bot.edit_message_text(chat, id, text);
        match inner.call("editMessageText", request).await {
            Ok(_) => Ok(()),
            Err(AdapterError::Platform(detail)) if detail.contains("message is not modified") => {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// A user's private chat with the bot has the user's id; Telegram
    /// refuses messages there until the user has started the bot.
    async fn private_chat(&self, user_id: &str) -> Result<ConversationRef, AdapterError> {
        let id: i64 = user_id
            .parse()
            .map_err(|_| AdapterError::Platform(format!("not a telegram user id: {user_id}")))?;
        Ok(ConversationRef {
            platform: PLATFORM.into(),
            chat_id: id.to_string(),
        })
    }

    async fn typing(&self, conversation: &ConversationRef) -> Result<(), AdapterError> {
        let inner = &self.inner;
        let (chat, topic) = chat_target(conversation)?;
        let mut request = inner.bot.send_chat_action(chat, ChatAction::Typing);
        if let Some(topic) = topic {
            request = request.message_thread_id(topic);
        }
        // Best effort: a typing indicator is not worth waiting for.
        inner
            .call_with("sendChatAction", request, 0, 0)
            .await
            .map(|_| ())
    }

    /// A forum topic in `parent`, when that group has topics enabled (the
    /// bot needs the right to manage topics there).
    async fn create_thread(
        &self,
        parent: &ConversationRef,
        name: &str,
        first: Outbound,
    ) -> Result<ConversationRef, AdapterError> {
        let inner = &self.inner;
        let chat = chat_id(parent)?;
        if !inner.is_forum(chat).await? {
            return Err(AdapterError::Unsupported(
                "topics in a group without topics",
            ));
        }
        // Telegram limits topic names to 128 characters.
        let name: String = name.chars().take(128).collect();
        let topic = inner
            .call("createForumTopic", inner.bot.create_forum_topic(chat, name))
            .await?;
        let conversation = ConversationRef {
            platform: PLATFORM.into(),
            chat_id: format!("{}/{}", chat.0, topic.thread_id.0 .0),
        };
        self.send(Outbound {
            conversation: conversation.clone(),
            reply_to: None,
            ..first
        })
        .await?;
        Ok(conversation)
    }

    fn edit_pacing(&self) -> EditPacing {
        EditPacing {
            min_interval: self.inner.settings.edit_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_never_print_the_token() {
        let settings = TelegramSettings {
            token: "123456:SECRET-token-value".into(),
            api_url: None,
            mode: Mode::Polling,
            group_triggers: GroupTriggers {
                mention: true,
                reply: true,
                command: true,
            },
            poll_timeout_secs: 1,
            edit_interval: Duration::from_secs(1),
            offset_file: PathBuf::from("offset"),
            commands: Vec::new(),
            agents_chat: None,
        };
        assert!(!format!("{settings:?}").contains("SECRET"));
        let adapter = TelegramAdapter::new(settings).unwrap();
        let error = adapter.inner.redact("error sending request for url (https://api.telegram.org/bot123456:SECRET-token-value/GetMe)");
        assert!(!error.contains("SECRET"), "{error}");
    }
}
