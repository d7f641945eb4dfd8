//! Gateway events turned into `Inbound` messages: which messages the bot
//! answers (DMs, mentions, listed channels, and everything in the agents'
//! channel and its threads), slash commands (deferred, and
//! answered by the next reply in their channel) and button presses (choices).
//! Slash commands are registered on READY.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use concierge_adapter::{
    ChatKind, ConversationRef, Inbound, InboundContent, InboundSink, SenderRef,
};
use serenity::all::{
    Command, ComponentInteraction, ConnectionStage, Context, CreateCommand,
    CreateInteractionResponse, CreateInteractionResponseMessage, EventHandler, Interaction,
    Message, Ready, ResumedEvent, ShardStageUpdateEvent, User,
};

use crate::{Inner, PLATFORM};

/// How long an event waits for earlier events of its channel.
const REORDER_WINDOW: Duration = Duration::from_millis(150);

/// Receives gateway events for one run of the client.
pub(crate) struct Handler {
    inner: Arc<Inner>,
    sink: InboundSink,
    /// serenity runs every handler call in its own task, so two quick
    /// messages of one channel can arrive here in either order. Events wait
    /// briefly per channel and go on in the order of their ids (Discord ids
    /// grow with time).
    waiting: tokio::sync::Mutex<HashMap<u64, BTreeMap<u64, Inbound>>>,
}

impl Handler {
    pub(crate) fn new(inner: Arc<Inner>, sink: InboundSink) -> Self {
        Self {
            inner,
            sink,
            waiting: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Passes `inbound` (event id `id`) on after any earlier event of its channel.
    async fn push(&self, channel: u64, id: u64, inbound: Inbound) {
        self.waiting
            .lock()
            .await
            .entry(channel)
            .or_default()
            .insert(id, inbound);
        tokio::time::sleep(REORDER_WINDOW).await;
        // Held while sending, so events of a channel leave in order.
        let mut waiting = self.waiting.lock().await;
        let Some(queue) = waiting.get_mut(&channel) else {
            return;
        };
        let ready: Vec<u64> = queue.range(..=id).map(|(id, _)| *id).collect();
        for id in ready {
            let Some(inbound) = queue.remove(&id) else {
                continue;
            };
            if self.sink.send(inbound).await.is_err() {
                tracing::debug!("discord message arrived while shutting down");
            }
        }
        if queue.is_empty() {
            waiting.remove(&channel);
        }
    }

    /// The parent of a guild channel that is a thread, when an agents'
    /// channel is configured (so the core can tell agents' threads apart).
    async fn thread_parent(
        &self,
        guild: &Option<serenity::all::GuildId>,
        channel: u64,
    ) -> Result<Option<String>, ()> {
        if guild.is_none() || self.inner.settings.agents_channel.is_none() {
            return Ok(None);
        }
        Ok(self
            .inner
            .parent_of(channel)
            .await?
            .map(|parent| parent.to_string()))
    }

    async fn register_commands(&self, ctx: &Context) {
        let commands: Vec<CreateCommand> = self
            .inner
            .settings
            .commands
            .iter()
            .filter(|spec| matches!(spec.name.as_str(), "help" | "reset"))
            .map(|spec| {
                CreateCommand::new(spec.name.clone())
                    .description(spec.description("en"))
                    .description_localized("zh-CN", spec.description("zh"))
            })
            .collect();
        if commands.is_empty() {
            return;
        }
        if let Err(err) = Command::set_global_commands(&ctx.http, commands).await {
            tracing::warn!(
                "could not register discord slash commands: {}",
                self.inner.redact(&err.to_string())
            );
        }
    }

    async fn component(&self, ctx: &Context, interaction: ComponentInteraction) {
        // Acknowledged at once; the reply follows as a normal message.
        if let Err(err) = interaction
            .create_response(&ctx.http, CreateInteractionResponse::Acknowledge)
            .await
        {
            tracing::debug!(
                "acknowledging a button failed: {}",
                self.inner.redact(&err.to_string())
            );
        }
        self.push(
            interaction.channel_id.get(),
            interaction.id.get(),
            Inbound {
                conversation: conversation(interaction.channel_id.get()),
                chat: chat_kind(interaction.guild_id.is_some()),
                sender: sender(&interaction.user),
                content: InboundContent::Choice {
                    id: self.inner.choice_id(&interaction.data.custom_id),
                },
                message_id: Some(interaction.message.id.get().to_string()),
                delivery_id: Some(format!("interaction:{}", interaction.id.get())),
                in_reply_to: None,
                thread_parent: match self
                    .thread_parent(&interaction.guild_id, interaction.channel_id.get())
                    .await
                {
                    Ok(parent) => parent,
                    Err(()) => return,
                },
                received_at: SystemTime::now(),
            },
        )
        .await;
    }
}

/// A DM is the customer's own; a guild channel or thread is shared.
fn chat_kind(in_guild: bool) -> ChatKind {
    if in_guild {
        ChatKind::Group
    } else {
        ChatKind::Private
    }
}

fn conversation(channel: u64) -> ConversationRef {
    ConversationRef {
        platform: PLATFORM.into(),
        chat_id: channel.to_string(),
    }
}

fn sender(user: &User) -> SenderRef {
    SenderRef {
        platform: PLATFORM.into(),
        user_id: user.id.get().to_string(),
        display_name: Some(
            user.global_name
                .clone()
                .unwrap_or_else(|| user.name.clone()),
        ),
        language_hint: None,
    }
}

/// The text of a message with mentions of the bot removed.
fn without_mention(content: &str, bot_id: u64) -> String {
    content
        .replace(&format!("<@{bot_id}>"), "")
        .replace(&format!("<@!{bot_id}>"), "")
        .trim()
        .to_string()
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, ctx: Context, ready: Ready) {
        self.inner.set_bot_id(ready.user.id.get());
        self.inner.connected.store(true, Ordering::Relaxed);
        self.inner.http.set_application_id(ready.application.id);
        tracing::info!(bot = %ready.user.name, "discord gateway ready");
        self.register_commands(&ctx).await;
    }

    async fn resume(&self, _ctx: Context, _event: ResumedEvent) {
        self.inner.connected.store(true, Ordering::Relaxed);
        tracing::info!("discord gateway session resumed");
    }

    async fn shard_stage_update(&self, _ctx: Context, event: ShardStageUpdateEvent) {
        let up = matches!(event.new, ConnectionStage::Connected);
        self.inner.connected.store(up, Ordering::Relaxed);
        if !up {
            tracing::info!(stage = %event.new, "discord gateway connection changed");
        }
    }

    async fn message(&self, _ctx: Context, message: Message) {
        if message.author.bot {
            return;
        }
        let Some(bot_id) = self.inner.bot_id() else {
            return;
        };
        let respond_to = self.inner.settings.respond_to;
        let channel = message.channel_id.get();
        let agents_channel = self.inner.settings.agents_channel;
        // Every message of the agents' channel and its threads goes on.
        let thread_parent = match agents_channel {
            Some(agents) if message.guild_id.is_some() && channel != agents => {
                match self.inner.parent_of(channel).await {
                    Ok(parent) => parent,
                    // It may be an agents' thread: never let it reach
                    // the customer side unsure.
                    Err(()) => return,
                }
            }
            _ => None,
        };
        let in_agents_space =
            agents_channel.is_some_and(|agents| channel == agents || thread_parent == Some(agents));
        let wanted = in_agents_space
            || if message.guild_id.is_none() {
                respond_to.dms
            } else {
                (respond_to.mentions && message.mentions_user_id(bot_id))
                    || (respond_to.channels && self.inner.settings.channels.contains(&channel))
            };
        if !wanted {
            return;
        }
        let text = without_mention(&message.content, bot_id);
        if text.is_empty() {
            return;
        }
        self.push(
            message.channel_id.get(),
            message.id.get(),
            Inbound {
                conversation: conversation(message.channel_id.get()),
                chat: chat_kind(message.guild_id.is_some()),
                sender: sender(&message.author),
                content: InboundContent::Text(text),
                message_id: Some(message.id.get().to_string()),
                delivery_id: Some(format!("message:{}", message.id.get())),
                in_reply_to: message
                    .message_reference
                    .as_ref()
                    .and_then(|reference| reference.message_id)
                    .map(|id| id.get().to_string()),
                thread_parent: thread_parent.map(|parent| parent.to_string()),
                received_at: SystemTime::now(),
            },
        )
        .await;
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        match interaction {
            Interaction::Command(command) => {
                let name = command.data.name.clone();
                // Discord wants an answer within 3 s; the reply edits it.
                let deferred =
                    CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new());
                if let Err(err) = command.create_response(&ctx.http, deferred).await {
                    tracing::warn!(
                        "acknowledging /{name} failed: {}",
                        self.inner.redact(&err.to_string())
                    );
                    return;
                }
                let channel = command.channel_id.get();
                let Ok(thread_parent) = self.thread_parent(&command.guild_id, channel).await else {
                    return;
                };
                let id = command.id.get();
                let user = command.user.clone();
                let in_guild = command.guild_id.is_some();
                let message_id = self.inner.set_pending_command(command);
                self.push(
                    channel,
                    id,
                    Inbound {
                        conversation: conversation(channel),
                        chat: chat_kind(in_guild),
                        sender: sender(&user),
                        content: InboundContent::Text(format!("/{name}")),
                        message_id: Some(message_id),
                        delivery_id: Some(format!("interaction:{id}")),
                        in_reply_to: None,
                        thread_parent,
                        received_at: SystemTime::now(),
                    },
                )
                .await;
            }
            Interaction::Component(component) => self.component(&ctx, component).await,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_of_the_bot_are_removed() {
        assert_eq!(
            without_mention("<@42> where is my order?", 42),
            "where is my order?"
        );
        assert_eq!(without_mention("hi <@!42>", 42), "hi");
        assert_eq!(without_mention("<@7> hi", 42), "<@7> hi");
    }
}
