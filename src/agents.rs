//! Agents work where they already are. Each ticket is posted to the agents'
//! spaces from the configuration (a Telegram group, with one topic per
//! ticket when it is a forum; a Discord channel, with one thread per
//! ticket), whatever happens to the ticket is announced there, and agents
//! answer the customer, `/assign`, `/note`, `/resolve` and `/reopen` from
//! there. Only the agents named in `[escalation.agents]` may act; anyone
//! else is refused.
//!
//! Architecture invariant: a message from an agents' space never reaches
//! the customer pipeline (no customer record, no classification, no model
//! answer), and a failure to post in an agents' space never fails the
//! customer's side of a hand-off.

use anyhow::Context;
use concierge_adapter::{ConversationRef, Inbound, InboundContent, Outbound, Outbox, SenderRef};

use crate::config::{AgentConfig, Config};
use crate::escalation::ticket::{display_id, parse_id};
use crate::pipeline::Pipeline;
use crate::prompts::Template;
use crate::store::{AgentPost, Ticket};
use crate::understand::split_command;

/// Age after which a ticket missing from an agents' space is posted again.
const REPOST_AFTER_MS: u64 = 2 * 60 * 1000;
/// Transcript lines shown in a new ticket's post.
const POST_TRANSCRIPT_LINES: usize = 10;
/// Longest transcript line shown in a post, in characters.
const POST_LINE_CHARS: usize = 300;
/// Longest transcript part of a post, so the post is one Telegram message
/// (agents reply to it) with room for the rest.
const POST_TRANSCRIPT_CHARS: usize = 2500;

/// The agents' spaces and who may act there.
#[derive(Clone, Debug, Default)]
pub struct AgentDesk {
    /// The agents' group or channel of each platform that has one.
    spaces: Vec<ConversationRef>,
    /// The configured agents.
    agents: Vec<AgentConfig>,
    /// Tickets being posted now, so the hand-off and the SLA clock's
    /// re-post never post one ticket twice.
    posting: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<u64>>>,
}

/// Releases a ticket's posting claim when the posting ends.
struct PostingClaim<'a> {
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
    fn claim(&self, id: u64) -> Option<PostingClaim<'_>> {
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

    fn agent_named(&self, name: &str) -> Option<&str> {
        self.agents
            .iter()
            .find(|agent| agent.name.eq_ignore_ascii_case(name))
            .map(|agent| agent.name.as_str())
    }
}

/// What an agent asked for.
#[derive(Debug, PartialEq, Eq)]
enum AgentCommand {
    Assign,
    Note,
    Resolve,
    Reopen,
    Help,
}

impl AgentCommand {
    fn parse(name: &str) -> Option<Self> {
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
fn named_ticket(word: &str) -> Option<u64> {
    let digits = word
        .strip_prefix("T-")
        .or_else(|| word.strip_prefix("t-"))?;
    parse_id(digits)
}

impl Pipeline {
    /// Posts the ticket in every agents' space that has no post of it yet,
    /// and remembers where. Called when a ticket opens, and again by the
    /// SLA clock for tickets whose post failed (a platform outage).
    pub(crate) async fn post_ticket_to_agents(&self, ticket: &Ticket) {
        if self.desk.spaces.is_empty() {
            return;
        }
        let Some(_claim) = self.desk.claim(ticket.id) else {
            return;
        };
        // Read again under the claim: another posting may have just ended.
        let ticket = match self.store.ticket(ticket.id) {
            Ok(Some(ticket)) => ticket,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(ticket = %display_id(ticket.id), "could not read the ticket to post it: {err}");
                return;
            }
        };
        let ticket = &ticket;
        let missing: Vec<ConversationRef> = self
            .desk
            .spaces
            .iter()
            .filter(|space| {
                !ticket
                    .agent_posts
                    .iter()
                    .any(|post| post.platform == space.platform)
            })
            .filter(|space| self.adapters.contains_key(&space.platform))
            .cloned()
            .collect();
        if missing.is_empty() {
            return;
        }
        let text = match self.ticket_post(ticket) {
            Ok(text) => text,
            Err(err) => {
                tracing::warn!(ticket = %display_id(ticket.id), "could not write the ticket's post: {err:#}");
                return;
            }
        };
        let name = format!(
            "{} · {} · {}",
            display_id(ticket.id),
            ticket.category.label(),
            ticket.priority.label()
        );
        for space in missing {
            let Some(adapter) = self.adapters.get(&space.platform).cloned() else {
                continue;
            };
            let first = Outbound::text(space.clone(), text.clone());
            let post = match adapter.create_thread(&space, &name, first.clone()).await {
                Ok(thread) => Ok(AgentPost {
                    platform: space.platform.clone(),
                    chat_id: thread.chat_id,
                    message_id: None,
                }),
                // No topics there, or no right to open one: agents answer
                // by replying to the post instead.
                Err(err) => {
                    if !matches!(err, concierge_adapter::AdapterError::Unsupported(_)) {
                        tracing::warn!(ticket = %display_id(ticket.id), platform = %space.platform, "could not open a thread for the ticket, posting it instead: {err}");
                    }
                    adapter.send(first).await.map(|sent| AgentPost {
                        platform: space.platform.clone(),
                        chat_id: space.chat_id.clone(),
                        message_id: Some(sent.message_id),
                    })
                }
            };
            match post {
                Ok(post) => {
                    if let Err(err) = self.remember_agent_post(ticket.id, post).await {
                        tracing::warn!(ticket = %display_id(ticket.id), "could not store the agents' post: {err:#}");
                    }
                }
                Err(err) => tracing::warn!(
                    ticket = %display_id(ticket.id),
                    platform = %space.platform,
                    "could not post the ticket to the agents (tried again with the deadline checks): {err}"
                ),
            }
        }
    }

    async fn remember_agent_post(&self, id: u64, post: AgentPost) -> anyhow::Result<()> {
        self.store.index_agent_post(
            &post.platform,
            &post.chat_id,
            post.message_id.as_deref(),
            id,
        )?;
        self.escalation()?.add_agent_post(id, post).await?;
        Ok(())
    }

    fn ticket_post(&self, ticket: &Ticket) -> anyhow::Result<String> {
        let customer = self
            .store
            .customer(ticket.customer_id)?
            .and_then(|customer| customer.display_name)
            .unwrap_or_else(|| format!("customer {}", ticket.customer_id));
        let mut lines: Vec<String> = Vec::new();
        let mut length = 0;
        for line in ticket.transcript.iter().rev().take(POST_TRANSCRIPT_LINES) {
            let text: String = line.text.chars().take(POST_LINE_CHARS).collect();
            let line = format!("{}: {text}", line.role);
            length += line.chars().count() + 1;
            if length > POST_TRANSCRIPT_CHARS {
                break;
            }
            lines.push(line);
        }
        lines.reverse();
        let transcript = lines.join("\n");
        let minutes = (ticket.due_ms.saturating_sub(ticket.created_ms) / 60_000).to_string();
        Ok(self.prompts.render(
            self.settings.default_locale,
            Template::AgentTicket,
            &[
                ("ticket", &display_id(ticket.id)),
                ("category", ticket.category.label()),
                ("priority", ticket.priority.label()),
                ("customer", &customer),
                ("platform", &ticket.platform),
                ("minutes", &minutes),
                ("summary", &ticket.summary),
                ("transcript", &transcript),
            ],
        ))
    }

    /// Tells every agents' space of `ticket` (but `except`, where it was
    /// written) one agent-facing `template`. Best effort: failures are logged.
    pub(crate) async fn tell_agents(
        &self,
        ticket: &Ticket,
        template: Template,
        values: &[(&str, &str)],
        except: Option<&ConversationRef>,
    ) {
        if ticket.agent_posts.is_empty() {
            return;
        }
        let id = display_id(ticket.id);
        let mut all = vec![("ticket", id.as_str())];
        all.extend_from_slice(values);
        let text = self
            .prompts
            .render(self.settings.default_locale, template, &all);
        for post in &ticket.agent_posts {
            let conversation = ConversationRef {
                platform: post.platform.clone(),
                chat_id: post.chat_id.clone(),
            };
            if except == Some(&conversation) {
                continue;
            }
            let Some(adapter) = self.adapters.get(&post.platform) else {
                continue;
            };
            let message = Outbound {
                conversation,
                text: text.clone(),
                choices: Vec::new(),
                reply_to: post.message_id.clone(),
            };
            match adapter.send(message).await {
                // In a group without topics, a reply to this message is
                // about the ticket too.
                Ok(sent) if post.message_id.is_some() => {
                    if let Err(err) = self.store.index_agent_post(
                        &post.platform,
                        &post.chat_id,
                        Some(&sent.message_id),
                        ticket.id,
                    ) {
                        tracing::warn!(ticket = %id, "could not index an agents' message: {err}");
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(ticket = %id, platform = %post.platform, "could not tell the agents: {err}")
                }
            }
        }
    }

    /// The ticket a message in an agents' space is about: its topic or
    /// thread, else the ticket message it replies to.
    fn ticket_in_context(&self, inbound: &Inbound) -> anyhow::Result<Option<u64>> {
        let chat = &inbound.conversation;
        if let Some(id) = self
            .store
            .ticket_for_agent_post(&chat.platform, &chat.chat_id, None)?
        {
            return Ok(Some(id));
        }
        let Some(original) = inbound.in_reply_to.as_deref() else {
            return Ok(None);
        };
        Ok(self
            .store
            .ticket_for_agent_post(&chat.platform, &chat.chat_id, Some(original))?)
    }

    /// A message written in an agents' space.
    pub(crate) async fn handle_agent_message(
        &self,
        inbound: &Inbound,
        adapter: &dyn Outbox,
    ) -> anyhow::Result<()> {
        let InboundContent::Text(raw) = &inbound.content else {
            return Ok(());
        };
        let (text, _) = crate::sanitize::message(raw, self.settings.max_message_chars);
        if text.is_empty() {
            return Ok(());
        }
        let chat = &inbound.conversation;
        let agent = self.desk.agent_name(&inbound.sender).map(str::to_string);
        let locale = self.settings.default_locale;
        let say = |text: String| Outbound::text(chat.clone(), text);
        let in_context = self.ticket_in_context(inbound)?;
        let Some((name, rest)) = split_command(&text) else {
            // Agents talking among themselves outside any ticket.
            let Some(id) = in_context else {
                return Ok(());
            };
            let Some(agent) = agent else {
                self.refuse(inbound, adapter, "").await?;
                return Ok(());
            };
            if let Err(err) = self.agent_reply_from(id, &agent, &text, Some(chat)).await {
                let failed = self.agent_failure(id, &err);
                adapter.send(say(failed)).await?;
            }
            return Ok(());
        };
        let Some(command) = AgentCommand::parse(&name) else {
            // Another bot's command, or a customer command: not for us here.
            return Ok(());
        };
        if command == AgentCommand::Help {
            adapter
                .send(say(self
                    .prompts
                    .text(locale, Template::AgentHelp)
                    .to_string()))
                .await?;
            return Ok(());
        }
        let Some(agent) = agent else {
            self.refuse(inbound, adapter, &format!("/{name}")).await?;
            return Ok(());
        };
        // An explicit ticket id first, else the thread, topic or reply.
        let (first, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let named = named_ticket(first);
        let rest = if named.is_some() { after.trim() } else { rest };
        let Some(id) = named.or(in_context) else {
            let text = self.prompts.render(
                locale,
                Template::AgentWhichTicket,
                &[("command", &format!("/{name}"))],
            );
            adapter.send(say(text)).await?;
            return Ok(());
        };
        let result = match command {
            AgentCommand::Assign => {
                let assignee = match rest.split_whitespace().next() {
                    None => Some(agent.clone()),
                    Some(wanted) => self.desk.agent_named(wanted).map(str::to_string),
                };
                match assignee {
                    Some(assignee) => self.agent_assign(id, &assignee).await.map(|_| ()),
                    None => Err(anyhow::anyhow!(
                        "no agent is named {:?} in [escalation.agents]",
                        rest.trim()
                    )),
                }
            }
            AgentCommand::Note if rest.is_empty() => {
                Err(anyhow::anyhow!("write the note after /note"))
            }
            AgentCommand::Note => self.agent_note(id, &agent, rest).await.map(|_| ()),
            AgentCommand::Resolve => self.agent_resolve(id, &agent).await.map(|_| ()),
            AgentCommand::Reopen => self.agent_reopen(id, &agent).await.map(|_| ()),
            AgentCommand::Help => Ok(()),
        };
        if let Err(err) = result {
            let failed = self.agent_failure(id, &err);
            adapter.send(say(failed)).await?;
        }
        Ok(())
    }

    fn agent_failure(&self, id: u64, err: &anyhow::Error) -> String {
        self.prompts.render(
            self.settings.default_locale,
            Template::AgentFailed,
            &[("ticket", &display_id(id)), ("error", &format!("{err:#}"))],
        )
    }

    /// Someone who is not an agent tried to act on a ticket.
    pub(crate) async fn refuse(
        &self,
        inbound: &Inbound,
        adapter: &dyn Outbox,
        command: &str,
    ) -> anyhow::Result<()> {
        tracing::warn!(
            platform = %inbound.sender.platform,
            user = %inbound.sender.user_id,
            command,
            "agent action refused: not a configured agent"
        );
        let command = if command.is_empty() {
            "Answering tickets"
        } else {
            command
        };
        let text = self.prompts.render(
            self.settings.default_locale,
            Template::AgentOnly,
            &[("command", command)],
        );
        adapter
            .send(Outbound::text(inbound.conversation.clone(), text))
            .await?;
        Ok(())
    }

    /// Reminds the agents of tickets whose deadline is near and records
    /// breaches; run by `serve` every `escalation.sla_check_secs`.
    pub async fn check_deadlines(&self, now_ms: u64) -> anyhow::Result<()> {
        let escalation = self.escalation()?;
        let report = escalation
            .check_deadlines(now_ms)
            .await
            .context("checking ticket deadlines")?;
        for ticket in &report.reminders {
            tracing::warn!(ticket = %display_id(ticket.id), priority = ticket.priority.label(), "ticket nears its deadline without an answer");
            let minutes = ticket
                .due_ms
                .saturating_sub(now_ms)
                .div_ceil(60_000)
                .to_string();
            self.tell_agents(
                ticket,
                Template::AgentSlaReminder,
                &[("priority", ticket.priority.label()), ("minutes", &minutes)],
                None,
            )
            .await;
        }
        for ticket in &report.breached {
            crate::telemetry::sla_breached(ticket.priority.label());
            tracing::error!(ticket = %display_id(ticket.id), priority = ticket.priority.label(), "ticket deadline breached");
            self.tell_agents(
                ticket,
                Template::AgentSlaBreached,
                &[("priority", ticket.priority.label())],
                None,
            )
            .await;
        }
        // After the deadlines, so an outage's retries never delay them.
        if !self.desk.spaces.is_empty() {
            for ticket in self.store.active_tickets()? {
                // A fresh ticket's hand-off may still be posting it.
                if now_ms.saturating_sub(ticket.created_ms) >= REPOST_AFTER_MS {
                    self.post_ticket_to_agents(&ticket).await;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
