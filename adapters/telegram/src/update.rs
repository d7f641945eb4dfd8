//! Telegram updates turned into `Inbound` messages: which messages the bot
//! answers (private chats always; groups on a mention, a reply to the bot or
//! a command, as configured; every message of the agents' group) and how
//! button presses become choices. A forum topic is a conversation of its own.

use std::time::SystemTime;

use concierge_adapter::{ChatKind, ConversationRef, Inbound, InboundContent, SenderRef};
use teloxide::requests::Requester;
use teloxide::types::{CallbackQuery, Message, MessageEntityKind, Update, UpdateKind, User};

use crate::{BotIdentity, GroupTriggers, Inner, PLATFORM};

impl Inner {
    /// The inbound message of an update, or `None` when the bot ignores it.
    pub(crate) async fn to_inbound(&self, update: Update) -> Option<Inbound> {
        let identity = self.identity.lock().ok().and_then(|slot| slot.clone())?;
        match update.kind {
            UpdateKind::Message(message) => {
                let triggers = if Some(message.chat.id.0) == self.settings.agents_chat {
                    Triggers::Everything
                } else {
                    Triggers::Group(self.settings.group_triggers)
                };
                inbound_message(&message, &identity, triggers)
            }
            UpdateKind::CallbackQuery(query) => self.inbound_choice(query).await,
            _ => None,
        }
    }

    async fn inbound_choice(&self, query: CallbackQuery) -> Option<Inbound> {
        // Stops the client's progress indicator on the button.
        if let Err(err) = self
            .call_with(
                "answerCallbackQuery",
                self.bot.answer_callback_query(query.id.clone()),
                0,
                0,
            )
            .await
        {
            tracing::debug!("answering a callback query failed: {err}");
        }
        let data = query.data.as_deref()?;
        let message = query.message.as_ref()?;
        let (conversation, thread_parent) = match message.regular_message() {
            Some(message) => conversation_of(message),
            None => (
                ConversationRef {
                    platform: PLATFORM.into(),
                    chat_id: message.chat().id.0.to_string(),
                },
                None,
            ),
        };
        let chat = chat_kind(message.chat());
        Some(Inbound {
            conversation,
            chat,
            sender: sender(&query.from),
            content: InboundContent::Choice {
                id: self.choice_id(data),
            },
            message_id: Some(message.id().0.to_string()),
            delivery_id: Some(format!("press:{}", query.id)),
            in_reply_to: None,
            thread_parent,
            received_at: SystemTime::now(),
        })
    }
}

/// What makes the bot take a message of a group.
#[derive(Clone, Copy, Debug)]
enum Triggers {
    /// A customers' group: the configured triggers.
    Group(GroupTriggers),
    /// The agents' group: every message (the core decides what it means).
    Everything,
}

/// The conversation of a message (a forum topic is `<chat>/<topic>`) and,
/// for a topic, the chat that holds it.
fn conversation_of(message: &Message) -> (ConversationRef, Option<String>) {
    let chat = message.chat.id.0.to_string();
    match message.thread_id.filter(|_| message.is_topic_message) {
        Some(topic) => (
            ConversationRef {
                platform: PLATFORM.into(),
                chat_id: format!("{chat}/{}", topic.0 .0),
            },
            Some(chat),
        ),
        None => (
            ConversationRef {
                platform: PLATFORM.into(),
                chat_id: chat,
            },
            None,
        ),
    }
}

/// A private chat is the customer's own; groups, supergroups and channels are shared.
fn chat_kind(chat: &teloxide::types::Chat) -> ChatKind {
    if chat.is_private() {
        ChatKind::Private
    } else {
        ChatKind::Group
    }
}

fn sender(user: &User) -> SenderRef {
    SenderRef {
        platform: PLATFORM.into(),
        user_id: user.id.0.to_string(),
        display_name: Some(user.full_name()),
        language_hint: user.language_code.clone(),
    }
}

/// A text message the bot should answer, with a mention of the bot removed.
fn inbound_message(
    message: &Message,
    identity: &BotIdentity,
    triggers: Triggers,
) -> Option<Inbound> {
    let from = message.from.as_ref()?;
    if from.is_bot {
        return None;
    }
    let text = message.text().or_else(|| message.caption())?;
    let text = match triggers {
        _ if message.chat.is_private() => strip_own_command_suffix(text, &identity.username)?,
        Triggers::Group(triggers) => group_text(message, text, identity, triggers)?,
        Triggers::Everything => {
            let text = strip_own_command_suffix(text, &identity.username)?;
            let cleaned = remove_ignore_case(&text, &format!("@{}", identity.username));
            let cleaned = cleaned.trim();
            (!cleaned.is_empty()).then(|| cleaned.to_string())?
        }
    };
    let (conversation, thread_parent) = conversation_of(message);
    Some(Inbound {
        conversation,
        chat: chat_kind(&message.chat),
        sender: sender(from),
        content: InboundContent::Text(text),
        message_id: Some(message.id.0.to_string()),
        delivery_id: Some(format!("message:{}:{}", message.chat.id.0, message.id.0)),
        in_reply_to: message
            .reply_to_message()
            .map(|original| original.id.0.to_string()),
        thread_parent,
        received_at: SystemTime::now(),
    })
}

/// The text of a group message when one of the enabled triggers holds.
fn group_text(
    message: &Message,
    text: &str,
    identity: &BotIdentity,
    triggers: GroupTriggers,
) -> Option<String> {
    let is_command = text.starts_with('/');
    if is_command {
        // `/help@otherbot` is for another bot.
        let text = strip_own_command_suffix(text, &identity.username)?;
        return triggers.command.then_some(text);
    }
    let mention = format!("@{}", identity.username);
    let mentioned = contains_ignore_case(text, &mention)
        || message.parse_entities().is_some_and(|entities| {
            entities.iter().any(|entity| {
                matches!(entity.kind(), MessageEntityKind::TextMention { user } if user.id.0 == identity.id)
            })
        });
    let replied_to_bot = message
        .reply_to_message()
        .and_then(|original| original.from.as_ref())
        .is_some_and(|author| author.id.0 == identity.id);
    if (triggers.mention && mentioned) || (triggers.reply && replied_to_bot) {
        let cleaned = remove_ignore_case(text, &mention);
        let cleaned = cleaned.trim();
        return (!cleaned.is_empty()).then(|| cleaned.to_string());
    }
    None
}

/// `/cmd@thisbot args` becomes `/cmd args`; `/cmd@otherbot` is `None`.
fn strip_own_command_suffix(text: &str, username: &str) -> Option<String> {
    if !text.starts_with('/') {
        return Some(text.to_string());
    }
    let (head, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let Some((command, addressee)) = head.split_once('@') else {
        return Some(text.to_string());
    };
    if !addressee.eq_ignore_ascii_case(username) {
        return None;
    }
    Some(if rest.is_empty() {
        command.to_string()
    } else {
        format!("{command} {rest}")
    })
}

fn contains_ignore_case(text: &str, needle: &str) -> bool {
    text.to_lowercase().contains(&needle.to_lowercase())
}

/// `text` without any occurrence of `needle`, compared case-insensitively
/// character by character (never slicing by offsets of a lowercased copy,
/// whose byte lengths can differ).
fn remove_ignore_case(text: &str, needle: &str) -> String {
    let needle: Vec<char> = needle.chars().flat_map(char::to_lowercase).collect();
    let chars: Vec<char> = text.chars().collect();
    let mut result = String::with_capacity(text.len());
    let mut at = 0;
    while at < chars.len() {
        let matches = chars.len() - at >= needle.len()
            && chars[at..at + needle.len()]
                .iter()
                .zip(&needle)
                .all(|(ch, want)| {
                    let mut lower = ch.to_lowercase();
                    lower.next() == Some(*want) && lower.next().is_none()
                });
        if matches && !needle.is_empty() {
            at += needle.len();
        } else {
            result.push(chars[at]);
            at += 1;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> BotIdentity {
        BotIdentity {
            id: 42,
            username: "shop_bot".into(),
        }
    }

    fn message(chat_type: &str, text: &str, reply_to_bot: bool) -> Message {
        let chat = if chat_type == "private" {
            serde_json::json!({"id": 7, "type": "private", "first_name": "Ann"})
        } else {
            serde_json::json!({"id": -100, "type": "supergroup", "title": "Shop fans"})
        };
        let mut json = serde_json::json!({
            "message_id": 5,
            "date": 1_700_000_000,
            "chat": chat,
            "from": {"id": 7, "is_bot": false, "first_name": "Ann", "language_code": "en"},
            "text": text,
        });
        if reply_to_bot {
            json["reply_to_message"] = serde_json::json!({
                "message_id": 4,
                "date": 1_700_000_000,
                "chat": json["chat"].clone(),
                "from": {"id": 42, "is_bot": true, "first_name": "Shop", "username": "shop_bot"},
                "text": "Hello",
            });
        }
        serde_json::from_value(json).expect("a valid message")
    }

    fn text_of(message: &Message, triggers: GroupTriggers) -> Option<String> {
        inbound_message(message, &identity(), Triggers::Group(triggers)).map(
            |inbound| match inbound.content {
                InboundContent::Text(text) => text,
                InboundContent::Choice { id } => id,
            },
        )
    }

    const ALL: GroupTriggers = GroupTriggers {
        mention: true,
        reply: true,
        command: true,
    };

    #[test]
    fn private_chats_are_always_answered() {
        assert_eq!(
            text_of(&message("private", "hello", false), ALL).as_deref(),
            Some("hello")
        );
    }

    #[test]
    fn groups_need_a_trigger() {
        assert_eq!(text_of(&message("group", "hello all", false), ALL), None);
        assert_eq!(
            text_of(
                &message("group", "@Shop_Bot where is my order?", false),
                ALL
            )
            .as_deref(),
            Some("where is my order?")
        );
        assert_eq!(
            text_of(&message("group", "thanks!", true), ALL).as_deref(),
            Some("thanks!")
        );
        assert_eq!(
            text_of(&message("group", "/help@shop_bot", false), ALL).as_deref(),
            Some("/help")
        );
        assert_eq!(
            text_of(&message("group", "/help@other_bot", false), ALL),
            None
        );
    }

    #[test]
    fn mentions_are_removed_from_any_text_without_panicking() {
        assert_eq!(remove_ignore_case("İ@shop_botéẞ", "@shop_bot"), "İéẞ");
        assert_eq!(
            remove_ignore_case("@SHOP_BOT hi @shop_bot", "@shop_bot"),
            " hi "
        );
        assert_eq!(
            text_of(&message("group", "İ@shop_botéẞ", false), ALL).as_deref(),
            Some("İéẞ")
        );
    }

    #[test]
    fn disabled_triggers_are_ignored() {
        let only_commands = GroupTriggers {
            mention: false,
            reply: false,
            command: true,
        };
        assert_eq!(
            text_of(&message("group", "@shop_bot hi", false), only_commands),
            None
        );
        assert_eq!(text_of(&message("group", "hi", true), only_commands), None);
        assert_eq!(
            text_of(&message("group", "/reset", false), only_commands).as_deref(),
            Some("/reset")
        );
    }

    #[test]
    fn the_agents_group_passes_every_message_and_topics_are_conversations() {
        let plain = message("group", "I'll take this one", false);
        assert_eq!(text_of(&plain, ALL), None);
        let inbound = inbound_message(&plain, &identity(), Triggers::Everything).unwrap();
        assert_eq!(
            inbound.content,
            InboundContent::Text("I'll take this one".into())
        );
        assert_eq!(inbound.conversation.chat_id, "-100");
        assert_eq!(inbound.thread_parent, None);

        let reply = message("group", "on it", true);
        let inbound = inbound_message(&reply, &identity(), Triggers::Everything).unwrap();
        assert_eq!(inbound.in_reply_to.as_deref(), Some("4"));

        let topic: Message = serde_json::from_value(serde_json::json!({
            "message_id": 9,
            "message_thread_id": 3,
            "is_topic_message": true,
            "date": 1_700_000_000,
            "chat": {"id": -100, "type": "supergroup", "title": "Agents", "is_forum": true},
            "from": {"id": 8, "is_bot": false, "first_name": "Bo"},
            "text": "/resolve@other_bot",
        }))
        .unwrap();
        assert!(inbound_message(&topic, &identity(), Triggers::Everything).is_none());
        let mut topic = topic;
        topic.kind = message("group", "/resolve@shop_bot", false).kind;
        let inbound = inbound_message(&topic, &identity(), Triggers::Everything).unwrap();
        assert_eq!(inbound.content, InboundContent::Text("/resolve".into()));
        assert_eq!(inbound.conversation.chat_id, "-100/3");
        assert_eq!(inbound.thread_parent.as_deref(), Some("-100"));
    }
}
