//! The agents' side of a ticket: posting it in the agents' spaces, telling
//! them what happens to it, their messages and commands there (answers,
//! `/assign`, `/note`, `/resolve`, `/reopen`), and the SLA clock. Who the
//! agents are and where they work is `crate::agents`.
//!
//! Architecture invariant: a message from an agents' space never reaches
//! the customer handlers (no customer record, no classification, no model
//! answer), and a failure to post in an agents' space never fails the
//! customer's side of a hand-off.

use anyhow::Context;
use concierge_adapter::{ConversationRef, Inbound, InboundContent, Outbound, Outbox};

use super::handoff::Tickets;
use crate::agents::{named_ticket, AgentCommand};
use crate::escalation::ticket::display_id;
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

impl Tickets<'_> {
    /// Posts the ticket in every agents' space that has no post of it yet,
    /// and remembers where. Called when a ticket opens, and again by the
    /// SLA clock for tickets whose post failed (a platform outage).
    pub(crate) async fn post_ticket_to_agents(&self, ticket: &Ticket) {
        if self.agents.spaces.is_empty() {
            return;
        }
        let Some(_claim) = self.agents.claim(ticket.id) else {
            return;
        };
        // Read again under the claim: another posting may have just ended.
        let ticket = match self.ctx.store.ticket(ticket.id) {
            Ok(Some(ticket)) => ticket,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(ticket = %display_id(ticket.id), "could not read the ticket to post it: {err}");
                return;
            }
        };
        let ticket = &ticket;
        let missing: Vec<ConversationRef> = self
            .agents
            .spaces
            .iter()
            .filter(|space| {
                !ticket
                    .agent_posts
                    .iter()
                    .any(|post| post.platform == space.platform)
            })
            .filter(|space| self.ctx.outboxes.contains_key(&space.platform))
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
            let Some(adapter) = self.ctx.outboxes.get(&space.platform).cloned() else {
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
        self.ctx.store.index_agent_post(
            &post.platform,
            &post.chat_id,
            post.message_id.as_deref(),
            id,
        )?;
        self.escalation.add_agent_post(id, post).await?;
        Ok(())
    }

    fn ticket_post(&self, ticket: &Ticket) -> anyhow::Result<String> {
        let customer = self
            .ctx
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
        Ok(self.ctx.prompts.render(
            self.ctx.default_locale,
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
            .ctx
            .prompts
            .render(self.ctx.default_locale, template, &all);
        for post in &ticket.agent_posts {
            let conversation = ConversationRef {
                platform: post.platform.clone(),
                chat_id: post.chat_id.clone(),
            };
            if except == Some(&conversation) {
                continue;
            }
            let Some(adapter) = self.ctx.outboxes.get(&post.platform) else {
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
                    if let Err(err) = self.ctx.store.index_agent_post(
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
        if let Some(id) =
            self.ctx
                .store
                .ticket_for_agent_post(&chat.platform, &chat.chat_id, None)?
        {
            return Ok(Some(id));
        }
        let Some(original) = inbound.in_reply_to.as_deref() else {
            return Ok(None);
        };
        Ok(self
            .ctx
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
        let (text, _) = crate::sanitize::message(raw, self.max_message_chars);
        if text.is_empty() {
            return Ok(());
        }
        let chat = &inbound.conversation;
        let agent = self.agents.agent_name(&inbound.sender).map(str::to_string);
        let locale = self.ctx.default_locale;
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
                    .ctx
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
            let text = self.ctx.prompts.render(
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
                    Some(wanted) => self.agents.agent_named(wanted).map(str::to_string),
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
        self.ctx.prompts.render(
            self.ctx.default_locale,
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
        let text = self.ctx.prompts.render(
            self.ctx.default_locale,
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
        let escalation = self.escalation;
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
        if !self.agents.spaces.is_empty() {
            for ticket in self.ctx.store.active_tickets()? {
                // A fresh ticket's hand-off may still be posting it.
                if now_ms.saturating_sub(ticket.created_ms) >= REPOST_AFTER_MS {
                    self.post_ticket_to_agents(&ticket).await;
                }
            }
        }
        Ok(())
    }
}
