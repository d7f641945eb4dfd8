//! The Discord channel: serenity's gateway client and REST API turned into a
//! Concierge `Adapter`. It answers in DMs and, in guilds, when mentioned or
//! in listed channels (as configured); streams replies by paced edits; shows
//! choices as buttons whose presses come back as choices; registers the
//! `/help` and `/reset` slash commands; opens threads; and reconnects a lost
//! gateway (serenity resumes or re-identifies).
//!
//! Architecture invariant: depends on `concierge-adapter` only; the bot
//! token appears in no log line or error this crate produces.

mod events;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use concierge_adapter::{
    redact, split_message, AdapterError, Capabilities, ChatPacer, Choice, ChoiceKeys, CommandSpec,
    ConversationRef, Document, EditPacing, InboundSink, Intake, Outbound, Outbox, SentMessage,
};
use serenity::all::{
    ButtonStyle, ChannelId, ChannelType, ClientBuilder, CommandInteraction, CreateActionRow,
    CreateAllowedMentions, CreateAttachment, CreateButton, CreateMessage, CreateThread,
    EditInteractionResponse, EditMessage, GatewayIntents, Http, HttpBuilder, MessageId,
};
use tokio_util::sync::CancellationToken;

/// Platform name in conversation references.
pub const PLATFORM: &str = "discord";
/// Discord's limit on one message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;
/// Retries of one call that Discord answered with 429.
const MAX_RATE_LIMIT_RETRIES: u32 = 5;
/// Buttons per action row and rows per message, Discord's limits.
const BUTTONS_PER_ROW: usize = 5;
const MAX_ROWS: usize = 5;
/// How long Discord accepts the answer to a deferred slash command.
const PENDING_COMMAND_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Discord's limit on a button's custom id, in characters.
const MAX_CUSTOM_ID_CHARS: usize = 100;

/// Where the bot answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RespondTo {
    /// Guild messages that mention the bot.
    pub mentions: bool,
    /// Direct messages.
    pub dms: bool,
    /// Every message in the listed channels.
    pub channels: bool,
}

/// Everything the Discord channel needs.
#[derive(Clone)]
pub struct DiscordSettings {
    /// The bot token.
    pub token: String,
    /// REST base (`http://host:port`) for a self-hosted or fake API; the
    /// official API when `None`. Setting it turns serenity's own rate
    /// limiter off, as serenity only proxies without it.
    pub api_url: Option<String>,
    /// Channels served in full.
    pub channels: BTreeSet<u64>,
    /// Where the bot answers.
    pub respond_to: RespondTo,
    /// Minimum time between two edits in one channel.
    pub edit_interval: Duration,
    /// Slash commands to register.
    pub commands: Vec<CommandSpec>,
    /// The agents' channel: every message there and in its threads is taken.
    pub agents_channel: Option<u64>,
    /// The gateway shards this process runs, of how many in all daemons.
    pub shards: (std::ops::Range<u32>, u32),
}

impl std::fmt::Debug for DiscordSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordSettings")
            .field("api_url", &self.api_url)
            .field("channels", &self.channels)
            .field("respond_to", &self.respond_to)
            .field("agents_channel", &self.agents_channel)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

/// The Discord channel.
pub struct DiscordAdapter {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    settings: DiscordSettings,
    /// REST client for replies; the gateway client of each run has its own.
    http: Arc<Http>,
    /// The bot's user id, known after READY.
    bot_id: Mutex<Option<u64>>,
    /// Slash commands waiting for their reply, by inbound message id, with
    /// when they arrived.
    pending_commands: Mutex<HashMap<String, (std::time::Instant, CommandInteraction)>>,
    /// Edits per channel, at most one per `edit_interval`.
    pacer: ChatPacer,
    /// Stand-ins for choice ids too long for a custom id.
    choice_keys: ChoiceKeys,
    /// The gateway session is up.
    pub(crate) connected: AtomicBool,
    /// The parent channel of each guild channel seen (`None`: not a
    /// thread), looked up once: a thread never changes its parent.
    parents: Mutex<HashMap<u64, Option<u64>>>,
}

fn build_http(settings: &DiscordSettings) -> Http {
    let builder = HttpBuilder::new(&settings.token);
    match &settings.api_url {
        Some(url) => builder
            .proxy(url.trim_end_matches('/'))
            .ratelimiter_disabled(true)
            .build(),
        None => builder.build(),
    }
}

/// Text the bot posts comes from customers and the model, so it never
/// pings anyone: `@everyone`, a role or a user mention stays plain text.
fn no_pings() -> CreateAllowedMentions {
    CreateAllowedMentions::new()
}

impl DiscordAdapter {
    /// A channel for `settings`; nothing is contacted until `run`.
    pub fn new(settings: DiscordSettings) -> Self {
        let http = Arc::new(build_http(&settings));
        let pacer = ChatPacer::new(settings.edit_interval);
        Self {
            inner: Arc::new(Inner {
                settings,
                http,
                bot_id: Mutex::new(None),
                pending_commands: Mutex::new(HashMap::new()),
                pacer,
                choice_keys: ChoiceKeys::new(MAX_CUSTOM_ID_CHARS),
                connected: AtomicBool::new(false),
                parents: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Inner {
    pub(crate) fn redact(&self, text: &str) -> String {
        redact(text, &[self.settings.token.as_str()])
    }

    /// The parent of `channel` if it is a thread, asked of Discord once;
    /// `Err` when Discord could not be asked.
    pub(crate) async fn parent_of(&self, channel: u64) -> Result<Option<u64>, ()> {
        if let Some(known) = self
            .parents
            .lock()
            .ok()
            .and_then(|parents| parents.get(&channel).copied())
        {
            return Ok(known);
        }
        let parent = match ChannelId::new(channel).to_channel(self.http.as_ref()).await {
            Ok(serenity::all::Channel::Guild(guild_channel))
                if guild_channel.thread_metadata.is_some() =>
            {
                guild_channel.parent_id.map(|parent| parent.get())
            }
            Ok(_) => None,
            Err(err) => {
                // Not remembered: the next message asks again.
                tracing::warn!(
                    "looking up discord channel {channel} failed: {}",
                    self.redact(&err.to_string())
                );
                return Err(());
            }
        };
        if let Ok(mut parents) = self.parents.lock() {
            parents.insert(channel, parent);
        }
        Ok(parent)
    }

    fn error(&self, err: serenity::Error) -> AdapterError {
        match &err {
            serenity::Error::Model(serenity::all::ModelError::MessageTooLong(chars)) => {
                AdapterError::TooLong {
                    chars: *chars,
                    limit: MAX_MESSAGE_CHARS,
                }
            }
            _ => AdapterError::Platform(self.redact(&err.to_string())),
        }
    }

    /// Runs `call`, waiting and retrying when Discord answers 429. serenity's
    /// rate limiter does this on the official API; with `api_url` set it is
    /// off, so the 429 reaches us. The body's `retry_after` is not exposed by
    /// serenity, so the wait starts at one second and doubles.
    async fn with_retry<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, AdapterError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = serenity::Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(err) if is_rate_limited(&err) && attempt < MAX_RATE_LIMIT_RETRIES => {
                    let wait = Duration::from_secs(1 << attempt);
                    attempt += 1;
                    tracing::warn!(call = what, ?wait, "discord asked to slow down; waiting");
                    tokio::time::sleep(wait).await;
                }
                Err(err) => return Err(self.error(err)),
            }
        }
    }

    pub(crate) fn choice_id(&self, custom_id: &str) -> String {
        self.choice_keys.id(custom_id)
    }

    fn components(&self, choices: &[Choice]) -> Vec<CreateActionRow> {
        choices
            .chunks(BUTTONS_PER_ROW)
            .take(MAX_ROWS)
            .map(|row| {
                CreateActionRow::Buttons(
                    row.iter()
                        .map(|choice| {
                            let label: String = choice.label.chars().take(80).collect();
                            CreateButton::new(self.choice_keys.key(&choice.id))
                                .label(label)
                                .style(ButtonStyle::Secondary)
                        })
                        .collect(),
                )
            })
            .collect()
    }

    fn take_pending_command(&self, reply_to: Option<&str>) -> Option<CommandInteraction> {
        self.pending_commands
            .lock()
            .ok()?
            .remove(reply_to?)
            .map(|(_, interaction)| interaction)
    }

    /// Remembers a deferred slash command; returns the inbound message id
    /// that its answer will name in `Outbound::reply_to`.
    pub(crate) fn set_pending_command(&self, interaction: CommandInteraction) -> String {
        let key = format!("interaction:{}", interaction.id.get());
        if let Ok(mut pending) = self.pending_commands.lock() {
            // Discord drops a deferred response's token after 15 minutes.
            pending.retain(|_, (since, _)| since.elapsed() < PENDING_COMMAND_LIFETIME);
            pending.insert(key.clone(), (std::time::Instant::now(), interaction));
        }
        key
    }

    pub(crate) fn bot_id(&self) -> Option<u64> {
        self.bot_id.lock().ok().and_then(|id| *id)
    }

    pub(crate) fn set_bot_id(&self, id: u64) {
        if let Ok(mut slot) = self.bot_id.lock() {
            *slot = Some(id);
        }
    }

    async fn send_part(
        &self,
        channel: ChannelId,
        text: &str,
        choices: &[Choice],
        reply_to: Option<&str>,
    ) -> Result<u64, AdapterError> {
        if let Some(interaction) = self.take_pending_command(reply_to) {
            // A deferred slash command: its reply replaces "thinking…".
            let mut builder = EditInteractionResponse::new()
                .content(text)
                .allowed_mentions(no_pings());
            if !choices.is_empty() {
                builder = builder.components(self.components(choices));
            }
            let message = self
                .with_retry("edit interaction response", || {
                    interaction.edit_response(self.http.as_ref(), builder.clone())
                })
                .await?;
            return Ok(message.id.get());
        }
        let mut builder = CreateMessage::new()
            .content(text)
            .allowed_mentions(no_pings());
        if !choices.is_empty() {
            builder = builder.components(self.components(choices));
        }
        let message = self
            .with_retry("create message", || {
                channel.send_message(self.http.as_ref(), builder.clone())
            })
            .await?;
        Ok(message.id.get())
    }
}

fn is_rate_limited(err: &serenity::Error) -> bool {
    matches!(
        err,
        serenity::Error::Http(serenity::all::HttpError::UnsuccessfulRequest(response))
            if response.status_code.as_u16() == 429
    )
}

fn channel_id(conversation: &ConversationRef) -> Result<ChannelId, AdapterError> {
    conversation
        .chat_id
        .parse::<u64>()
        .ok()
        .filter(|id| *id != 0)
        .map(ChannelId::new)
        .ok_or_else(|| {
            AdapterError::Platform(format!(
                "not a discord channel id: {}",
                conversation.chat_id
            ))
        })
}

#[async_trait]
impl Intake for DiscordAdapter {
    async fn run(
        &self,
        inbound: InboundSink,
        shutdown: CancellationToken,
    ) -> Result<(), AdapterError> {
        let inner = Arc::clone(&self.inner);
        let intents = GatewayIntents::GUILD_MESSAGES
            | GatewayIntents::DIRECT_MESSAGES
            | GatewayIntents::MESSAGE_CONTENT;
        // serenity falls back to the official gateway when this fails; with
        // `api_url` set that would leave the configured API, so fail instead.
        if inner.settings.api_url.is_some() {
            inner
                .http
                .get_gateway()
                .await
                .map_err(|err| inner.error(err))?;
        }
        let handler = events::Handler::new(Arc::clone(&inner), inbound);
        let mut client = ClientBuilder::new_with_http(build_http(&inner.settings), intents)
            .event_handler(handler)
            .await
            .map_err(|err| inner.error(err))?;
        let shards = Arc::clone(&client.shard_manager);
        let (range, total) = inner.settings.shards.clone();
        let result = tokio::select! {
            result = client.start_shard_range(range, total) => result.map_err(|err| inner.error(err)),
            _ = shutdown.cancelled() => {
                shards.shutdown_all().await;
                Ok(())
            }
        };
        inner.connected.store(false, Ordering::Relaxed);
        result
    }
    fn is_connected(&self) -> Option<bool> {
        Some(self.inner.connected.load(Ordering::Relaxed))
    }
}

#[async_trait]
impl Outbox for DiscordAdapter {
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
        let channel = channel_id(&message.conversation)?;
        let parts = split_message(&message.text, MAX_MESSAGE_CHARS);
        let last = parts.len().saturating_sub(1);
        let mut sent = None;
        for (index, part) in parts.iter().enumerate() {
            let choices = if index == last {
                message.choices.as_slice()
            } else {
                &[]
            };
            // Only the first part can answer a slash command.
            let reply_to = if index == 0 {
                message.reply_to.as_deref()
            } else {
                None
            };
            let id = self
                .inner
                .send_part(channel, part, choices, reply_to)
                .await?;
            sent = Some(SentMessage {
                conversation: message.conversation.clone(),
                message_id: id.to_string(),
            });
        }
        sent.ok_or(AdapterError::Platform("nothing to send".into()))
    }

    async fn send_document(&self, document: Document) -> Result<SentMessage, AdapterError> {
        let channel = channel_id(&document.conversation)?;
        let caption: String = document.caption.chars().take(MAX_MESSAGE_CHARS).collect();
        let attachment = CreateAttachment::bytes(document.bytes, document.file_name);
        let inner = &self.inner;
        let id = if let Some(interaction) = inner.take_pending_command(document.reply_to.as_deref())
        {
            let builder = EditInteractionResponse::new()
                .content(caption)
                .new_attachment(attachment)
                .allowed_mentions(no_pings());
            inner
                .with_retry("edit interaction response", || {
                    interaction.edit_response(inner.http.as_ref(), builder.clone())
                })
                .await?
                .id
        } else {
            let builder = CreateMessage::new()
                .content(caption)
                .add_file(attachment)
                .allowed_mentions(no_pings());
            inner
                .with_retry("create message", || {
                    channel.send_message(inner.http.as_ref(), builder.clone())
                })
                .await?
                .id
        };
        Ok(SentMessage {
            conversation: document.conversation,
            message_id: id.get().to_string(),
        })
    }

    async fn edit(&self, message: &SentMessage, text: &str) -> Result<(), AdapterError> {
        let channel = channel_id(&message.conversation)?;
        let id = message
            .message_id
            .parse::<u64>()
            .ok()
            .filter(|id| *id != 0)
            .map(MessageId::new)
            .ok_or_else(|| {
                AdapterError::Platform(format!("not a discord message id: {}", message.message_id))
            })?;
        self.inner.pacer.wait(&message.conversation.chat_id).await;
        let builder = EditMessage::new()
            .content(text)
            .allowed_mentions(no_pings());
        self.inner
            .with_retry("edit message", || {
                channel.edit_message(self.inner.http.as_ref(), id, builder.clone())
            })
            .await
            .map(|_| ())
    }

    /// Opens (or finds) the DM channel with the user.
    async fn private_chat(&self, user_id: &str) -> Result<ConversationRef, AdapterError> {
        let user = user_id
            .parse::<u64>()
            .ok()
            .filter(|id| *id != 0)
            .map(serenity::all::UserId::new)
            .ok_or_else(|| AdapterError::Platform(format!("not a discord user id: {user_id}")))?;
        let channel = self
            .inner
            .with_retry("open a DM", || {
                user.create_dm_channel(self.inner.http.as_ref())
            })
            .await?;
        Ok(ConversationRef {
            platform: PLATFORM.into(),
            chat_id: channel.id.get().to_string(),
        })
    }

    async fn typing(&self, conversation: &ConversationRef) -> Result<(), AdapterError> {
        let channel = channel_id(conversation)?;
        self.inner
            .with_retry("typing", || {
                channel.broadcast_typing(self.inner.http.as_ref())
            })
            .await
    }

    async fn create_thread(
        &self,
        parent: &ConversationRef,
        name: &str,
        first: Outbound,
    ) -> Result<ConversationRef, AdapterError> {
        let channel = channel_id(parent)?;
        // Discord limits thread names to 100 characters.
        let name: String = name.chars().take(100).collect();
        let thread = self
            .inner
            .with_retry("create thread", || {
                channel.create_thread(
                    self.inner.http.as_ref(),
                    CreateThread::new(name.clone()).kind(ChannelType::PublicThread),
                )
            })
            .await?;
        if let Ok(mut parents) = self.inner.parents.lock() {
            parents.insert(thread.id.get(), Some(channel.get()));
        }
        let conversation = ConversationRef {
            platform: PLATFORM.into(),
            chat_id: thread.id.get().to_string(),
        };
        self.send(Outbound {
            conversation: conversation.clone(),
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
        let settings = DiscordSettings {
            token: "SECRET.discord.token".into(),
            api_url: None,
            channels: BTreeSet::new(),
            respond_to: RespondTo {
                mentions: true,
                dms: true,
                channels: true,
            },
            edit_interval: Duration::from_secs(1),
            commands: Vec::new(),
            agents_channel: None,
            shards: (0..1, 1),
        };
        assert!(!format!("{settings:?}").contains("SECRET"));
        let adapter = DiscordAdapter::new(settings);
        assert!(!adapter
            .inner
            .redact("401 for token SECRET.discord.token")
            .contains("SECRET"));
    }
}
