//! Who the agents are and where they work. Agents work where they already
//! are: each ticket is posted to the agents' spaces from the configuration
//! (a Telegram group, with one topic per ticket when it is a forum; a
//! Discord channel, with one thread per ticket), and they answer from
//! there (`handlers::agents`). Only the agents named in
//! `[escalation.agents]` may act; anyone else is refused.

use concierge_adapter::{ConversationRef, Inbound, SenderRef};

use crate::config::{AgentConfig, Config};
use crate::escalation::ticket::parse_id;

/// The agents' spaces and who may act there.
#[derive(Clone, Debug, Default)]
pub struct AgentDesk {
    /// The agents' group or channel of each platform that has one.
    pub(crate) spaces: Vec<ConversationRef>,
    /// The configured agents.
    agents: Vec<AgentConfig>,
    /// Tickets being posted now, so the hand-off and the SLA clock's
    /// re-post never post one ticket twice.
    posting: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<u64>>>,
}

/// Releases a ticket's posting claim when the posting ends.
pub(crate) struct PostingClaim<'a> {
    desk: &'a AgentDesk,
    id: u64,
}

impl Drop for PostingClaim<'_> {
    fn drop(&mut self) {
        if let Ok(mut posting) = self.desk.posting.lock() {
            posting.remove(&self.id);
        }
    }
}

impl AgentDesk {
    /// Claims ticket `id` for posting; `None` while someone else posts it.
    pub(crate) fn claim(&self, id: u64) -> Option<PostingClaim<'_>> {
        let claimed = self.posting.lock().ok()?.insert(id);
        // The guard is gone here: a claim releases itself by locking.
        claimed.then(|| PostingClaim { desk: self, id })
    }
}

impl AgentDesk {
    /// A desk over `spaces` (one group or channel per platform) for `agents`.
    pub fn new(spaces: Vec<ConversationRef>, agents: Vec<AgentConfig>) -> Self {
        Self {
            spaces,
            agents,
            posting: Default::default(),
        }
    }

    /// Spaces of the enabled channels, when hand-off is enabled.
    pub fn from_config(config: &Config) -> Self {
        if !config.escalation.enabled {
            return Self::default();
        }
        let space = |platform: &str, enabled: bool, id: Option<String>| {
            id.filter(|_| enabled).map(|chat_id| ConversationRef {
                platform: platform.into(),
                chat_id,
            })
        };
        let telegram = space(
            "telegram",
            config.telegram.enabled,
            config.telegram.agents_chat_id.map(|id| id.to_string()),
        );
        let discord = space(
            "discord",
            config.discord.enabled,
            config.discord.agents_channel_id.map(|id| id.to_string()),
        );
        Self::new(
            telegram.into_iter().chain(discord).collect(),
            config.escalation.agents.clone(),
        )
    }

    /// The agent's name behind a platform account, if it is one.
    pub fn agent_name(&self, sender: &SenderRef) -> Option<&str> {
        self.agents
            .iter()
            .find(|agent| {
                agent
                    .identities
                    .iter()
                    .any(|(platform, id)| *platform == sender.platform && *id == sender.user_id)
            })
            .map(|agent| agent.name.as_str())
    }

    /// Whether `inbound` was written in an agents' space (the group or
    /// channel itself, or one of its topics or threads).
    pub fn is_agents_space(&self, inbound: &Inbound) -> bool {
        self.spaces.iter().any(|space| {
            space.platform == inbound.conversation.platform
                && (space.chat_id == inbound.conversation.chat_id
                    || inbound.thread_parent.as_deref() == Some(space.chat_id.as_str()))
        })
    }

    pub(crate) fn agent_named(&self, name: &str) -> Option<&str> {
        self.agents
            .iter()
            .find(|agent| agent.name.eq_ignore_ascii_case(name))
            .map(|agent| agent.name.as_str())
    }
}

/// What an agent asked for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AgentCommand {
    Assign,
    Note,
    Resolve,
    Reopen,
    Help,
}

impl AgentCommand {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "assign" => Self::Assign,
            "note" => Self::Note,
            "resolve" => Self::Resolve,
            "reopen" => Self::Reopen,
            "help" => Self::Help,
            _ => return None,
        })
    }
}

/// Whether `/name` is an agent command (so a customer using it is refused).
pub(crate) fn is_agent_command(name: &str) -> bool {
    AgentCommand::parse(name).is_some_and(|command| command != AgentCommand::Help)
}

/// A ticket named in a command: `T-000123` (any case), never a bare
/// number, which is part of a note or a name.
pub(crate) fn named_ticket(word: &str) -> Option<u64> {
    let digits = word
        .strip_prefix("T-")
        .or_else(|| word.strip_prefix("t-"))?;
    parse_id(digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::understand::split_command;
    use concierge_adapter::InboundContent;

    fn sender(platform: &str, user: &str) -> SenderRef {
        SenderRef {
            platform: platform.into(),
            user_id: user.into(),
            display_name: None,
            language_hint: None,
        }
    }

    fn inbound(chat: &str, parent: Option<&str>) -> Inbound {
        Inbound {
            chat: concierge_adapter::ChatKind::Group,
            conversation: ConversationRef {
                platform: "telegram".into(),
                chat_id: chat.into(),
            },
            sender: sender("telegram", "1"),
            content: InboundContent::Text("hi".into()),
            message_id: None,
            delivery_id: None,
            in_reply_to: None,
            thread_parent: parent.map(str::to_string),
            received_at: std::time::SystemTime::now(),
        }
    }

    fn desk() -> AgentDesk {
        AgentDesk::new(
            vec![ConversationRef {
                platform: "telegram".into(),
                chat_id: "-100".into(),
            }],
            vec![AgentConfig {
                name: "alice".into(),
                identities: vec![
                    ("telegram".into(), "5".into()),
                    ("discord".into(), "9".into()),
                ],
            }],
        )
    }

    #[test]
    fn a_ticket_is_claimed_for_posting_by_one_caller_at_a_time() {
        let desk = desk();
        let first = desk.claim(1).unwrap();
        assert!(desk.claim(1).is_none());
        assert!(desk.claim(2).is_some());
        drop(first);
        assert!(desk.claim(1).is_some());
    }

    #[test]
    fn agents_are_known_by_their_accounts_only() {
        let desk = desk();
        assert_eq!(desk.agent_name(&sender("telegram", "5")), Some("alice"));
        assert_eq!(desk.agent_name(&sender("discord", "9")), Some("alice"));
        assert_eq!(desk.agent_name(&sender("discord", "5")), None);
        assert_eq!(desk.agent_name(&sender("telegram", "6")), None);
        assert_eq!(desk.agent_named("Alice"), Some("alice"));
    }

    #[test]
    fn the_group_and_its_topics_are_the_agents_space() {
        let desk = desk();
        assert!(desk.is_agents_space(&inbound("-100", None)));
        assert!(desk.is_agents_space(&inbound("-100/7", Some("-100"))));
        assert!(!desk.is_agents_space(&inbound("-200", None)));
        assert!(!desk.is_agents_space(&inbound("-200/7", Some("-200"))));
        assert!(!AgentDesk::default().is_agents_space(&inbound("-100", None)));
    }

    #[test]
    fn commands_are_split_from_their_arguments() {
        assert_eq!(
            split_command("/note@shop_bot T-000001 called back"),
            Some(("note".into(), "T-000001 called back"))
        );
        assert_eq!(split_command("/RESOLVE"), Some(("resolve".into(), "")));
        assert_eq!(split_command("thanks, on it"), None);
        assert_eq!(named_ticket("T-000012"), Some(12));
        assert_eq!(named_ticket("t-7"), Some(7));
        assert_eq!(named_ticket("3"), None);
        assert_eq!(named_ticket("T-"), None);
        assert!(is_agent_command("resolve"));
        assert!(!is_agent_command("help"));
        assert!(!is_agent_command("start"));
    }
}
