//! The bot steps aside: a complaint or a request for a person opens a
//! ticket, the customer is told (in their language, with the ticket id), and
//! from then on their messages go to the ticket's transcript while the bot
//! stays silent. Agents answer through `agent_*` (from the agents' spaces,
//! see `handlers::agents`, the operator API and the `concierge tickets`
//! command);
//! resolving brings the bot back, which asks for a 1-5 rating with buttons.
//!
//! Architecture invariant: every change to a ticket is stored and flushed
//! (by `Escalation`) before anyone is told about it.

use anyhow::Context;
use concierge_adapter::{ChatKind, Choice, ConversationRef, Inbound, Outbound, Outbox};

use super::Model;
use crate::agents::AgentDesk;
use crate::escalation::ticket::{display_id, TicketState};
use crate::escalation::{Escalation, EscalationError, NewTicket};
use crate::intent::Intent;
use crate::prompts::{Locale, Template};
use crate::store::{Customer, IntakeId, Role, Ticket, TranscriptRole};

/// Earlier messages of the conversation copied into a new ticket.
const TRANSCRIPT_HISTORY: usize = 9;
/// Customer messages that go into a new ticket's first summary.
const SUMMARY_MESSAGES: usize = 3;
/// Most tokens of an engine-written summary.
const SUMMARY_TOKENS: usize = 60;
/// Longest summary kept, in characters.
const SUMMARY_CHARS: usize = 300;
/// Longest wait for the engine's summary before the ticket goes to the agents.
const SUMMARY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What the ticket handlers use: hand-off, relay, rating, and the agents'
/// side (`handlers::agents`).
#[derive(Clone, Copy)]
pub struct Tickets<'a> {
    pub(crate) ctx: super::Context<'a>,
    pub(crate) model: Model<'a>,
    pub(crate) escalation: &'a Escalation,
    pub(crate) agents: &'a AgentDesk,
    /// Longest message accepted from an agent, in characters.
    pub(crate) max_message_chars: usize,
}

impl Tickets<'_> {
    /// The customer's `ticket` is in people's hands: stores the message in
    /// the conversation and the ticket, and returns true (the bot says
    /// nothing); false when the ticket was resolved meanwhile.
    pub(crate) async fn relay(
        &self,
        customer: &Customer,
        chat: &ConversationRef,
        text: &str,
        intake: Option<IntakeId>,
        ticket: u64,
    ) -> anyhow::Result<bool> {
        let escalation = self.escalation;
        let conversation =
            self.ctx
                .store
                .current_conversation(customer.id, &chat.platform, &chat.chat_id)?;
        // Stored without a flush of its own: the ticket line's flush makes
        // both durable, so a replay that finds the message finds the relay.
        let turn = self
            .ctx
            .store
            .append_customer_message(conversation.id, text, intake, 0)?;
        if turn.replayed.is_some() {
            return Ok(true);
        }
        let Some(ticket) = escalation.add_customer_line(ticket, text).await? else {
            // Resolved meanwhile: the bot answers the stored message.
            return Ok(false);
        };
        self.tell_agents(
            &ticket,
            Template::AgentCustomerSaid,
            &[("text", text)],
            None,
        )
        .await;
        tracing::info!(ticket = %display_id(ticket.id), "customer message relayed to the ticket");
        Ok(true)
    }

    /// Opens a ticket for the chat and tells the customer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn hand_off(
        &self,
        customer: &Customer,
        inbound: &Inbound,
        intake: Option<IntakeId>,
        adapter: &dyn Outbox,
        text: &str,
        intent: Intent,
        locale: Locale,
    ) -> anyhow::Result<Ticket> {
        let escalation = self.escalation;
        let chat = &inbound.conversation;
        let (conversation, turn, mut flush) = self
            .ctx
            .store_customer_message(customer, chat, text, intake)?;
        flush.wait().await?;
        let history = turn.history;
        // The new message ends the transcript (`Escalation::open` adds it).
        let recent: Vec<(TranscriptRole, String)> = history
            .into_iter()
            .rev()
            .take(TRANSCRIPT_HISTORY)
            .rev()
            .map(|message| {
                let role = match message.role {
                    Role::User => TranscriptRole::Customer,
                    Role::Assistant => TranscriptRole::Bot,
                };
                (role, message.text)
            })
            .collect();
        // The first summary is the customer's own last words.
        let customer_words: Vec<&str> = recent
            .iter()
            .filter(|(role, _)| *role == TranscriptRole::Customer)
            .map(|(_, text)| text.as_str())
            .chain(std::iter::once(text))
            .collect();
        let summary: String = customer_words
            [customer_words.len().saturating_sub(SUMMARY_MESSAGES)..]
            .join(" / ")
            .chars()
            .take(SUMMARY_CHARS)
            .collect();
        // In a group, the person answers in the customer's private chat, so
        // that only they read the answers and press the rating.
        let private = match inbound.chat {
            ChatKind::Group => self.ctx.private_chat(&inbound.sender).await,
            ChatKind::Private => None,
        };
        let ticket_chat = private.as_ref().unwrap_or(chat);
        let ticket = escalation
            .open(NewTicket {
                customer_id: customer.id,
                platform: chat.platform.clone(),
                chat_id: ticket_chat.chat_id.clone(),
                locale,
                intent,
                text: text.to_string(),
                recent,
                summary,
            })
            .await?;
        let id = display_id(ticket.id);
        let notice = self
            .ctx
            .prompts
            .render(locale, Template::TicketOpened, &[("ticket", &id)]);
        let mut ticket = ticket;
        let mut in_chat = notice.clone();
        if let Some(private) = &private {
            if self.ctx.send_privately(private, notice.clone()).await {
                in_chat = self.ctx.prompts.render(
                    locale,
                    Template::TicketOpenedPrivately,
                    &[("ticket", &id)],
                );
            } else {
                // Not reachable privately: the ticket stays with this
                // customer in the group.
                ticket = escalation.move_to_chat(ticket.id, &chat.chat_id).await?;
            }
        }
        self.ctx
            .store
            .append_message(conversation.id, Role::Assistant, &in_chat)?;
        self.ctx.store.flush().await?;
        adapter.send(Outbound::text(chat.clone(), in_chat)).await?;
        crate::telemetry::ticket_opened(ticket.category.label(), ticket.priority.label());
        tracing::info!(ticket = %id, priority = ticket.priority.label(), category = ticket.category.label(), "ticket opened");
        // After the customer is told: the engine may take a while.
        // Bounded, so the agents get the ticket soon even from a busy engine.
        let written = tokio::time::timeout(SUMMARY_TIMEOUT, self.written_summary(&ticket))
            .await
            .ok()
            .flatten();
        let ticket = match written {
            Some(summary) => escalation.set_summary(ticket.id, &summary).await?,
            None => ticket,
        };
        self.post_ticket_to_agents(&ticket).await;
        Ok(escalation.get(ticket.id)?)
    }

    /// A one-sentence summary written by the engine from the transcript,
    /// kept only if its words and figures come from the transcript.
    async fn written_summary(&self, ticket: &Ticket) -> Option<String> {
        let transcript: String = ticket
            .transcript
            .iter()
            .map(|line| format!("{}: {}", line.role, line.text))
            .collect::<Vec<_>>()
            .join("\n");
        let prompt = self.ctx.prompts.render(
            ticket.locale,
            Template::TicketSummary,
            &[("transcript", &transcript)],
        );
        let written = self
            .model
            .complete(ticket.locale, &prompt, SUMMARY_TOKENS)
            .await?;
        let sentence: String = written
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())?
            .chars()
            .take(SUMMARY_CHARS)
            .collect();
        // Every clause must restate a line of the transcript the same way
        // round: same polarity, same figures (an order number, a date).
        let evidence = crate::knowledge::support::Evidence::new(
            ticket.transcript.iter().map(|line| line.text.as_str()),
        );
        match evidence.check_answer(&sentence) {
            Ok(()) => Some(sentence),
            Err(why) => {
                tracing::debug!(?why, "the engine's ticket summary strays from the transcript; keeping the customer's words");
                None
            }
        }
    }

    /// A rating button: stores the rating (which closes the ticket) and thanks.
    pub(crate) async fn handle_rating(
        &self,
        inbound: &Inbound,
        adapter: &dyn Outbox,
        ticket: u64,
        rating: u8,
    ) -> anyhow::Result<()> {
        let escalation = self.escalation;
        let stored = escalation.get(ticket)?;
        // Only the ticket's own customer rates it, in a group too.
        let presser = self
            .ctx
            .store
            .find_customer(&inbound.sender.platform, &inbound.sender.user_id)?;
        if stored.platform != inbound.sender.platform
            || presser.map(|customer| customer.id) != Some(stored.customer_id)
        {
            tracing::info!(ticket = %display_id(ticket), "rating from someone other than the ticket's customer ignored");
            return Ok(());
        }
        let rated = match escalation.rate(ticket, rating).await {
            Ok(rated) => rated,
            // An old button, a second press, or a ticket reopened meanwhile.
            Err(EscalationError::Transition { .. }) => {
                tracing::debug!(ticket = %display_id(ticket), "rating ignored: the ticket is not waiting for one");
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        };
        self.tell_agents(
            &rated,
            Template::AgentRated,
            &[("rating", &rating.to_string())],
            None,
        )
        .await;
        let thanks = self
            .ctx
            .prompts
            .text(rated.locale, Template::RatingThanks)
            .to_string();
        adapter
            .send(Outbound::text(inbound.conversation.clone(), thanks))
            .await?;
        Ok(())
    }

    fn customer_channel(
        &self,
        ticket: &Ticket,
    ) -> anyhow::Result<(std::sync::Arc<dyn Outbox>, ConversationRef)> {
        let adapter = self
            .ctx
            .outboxes
            .get(&ticket.platform)
            .cloned()
            .with_context(|| format!("the {} channel is not running", ticket.platform))?;
        Ok((
            adapter,
            ConversationRef {
                platform: ticket.platform.clone(),
                chat_id: ticket.chat_id.clone(),
            },
        ))
    }

    /// An agent's answer: goes to the customer on their platform and into
    /// the transcript. The first answer assigns the ticket to the agent.
    pub async fn agent_reply(&self, id: u64, agent: &str, text: &str) -> anyhow::Result<Ticket> {
        self.agent_reply_from(id, agent, text, None).await
    }

    /// `agent_reply` written in the agents' space `origin`, whose other
    /// spaces are shown the answer.
    pub(crate) async fn agent_reply_from(
        &self,
        id: u64,
        agent: &str,
        text: &str,
        origin: Option<&ConversationRef>,
    ) -> anyhow::Result<Ticket> {
        let escalation = self.escalation;
        let current = escalation.get(id)?;
        if !current.state.with_agents() {
            anyhow::bail!(
                "{} is {}; /reopen it to answer",
                display_id(id),
                current.state.label()
            );
        }
        let (adapter, chat) = self.customer_channel(&current)?;
        // Delivered first: the ticket counts as answered (its SLA stops) only
        // once the customer has the answer. The channel itself retries what
        // may pass on a second try (rate limits, network errors).
        if let Err(err) = adapter.send(Outbound::text(chat.clone(), text)).await {
            escalation
                .add_line(id, TranscriptRole::Undelivered, Some(agent), text)
                .await?;
            return Err(anyhow::anyhow!(
                "the answer could not be delivered to the customer ({err}); it is kept in the ticket as undelivered and the ticket still waits for an answer"
            ));
        }
        let ticket = escalation.add_agent_answer(id, agent, text).await?;
        let conversation = self.ctx.store.current_conversation(
            ticket.customer_id,
            &chat.platform,
            &chat.chat_id,
        )?;
        self.ctx
            .store
            .append_message(conversation.id, Role::Assistant, text)?;
        self.ctx.store.flush().await?;
        self.tell_agents(
            &ticket,
            Template::AgentAnswered,
            &[("agent", agent), ("text", text)],
            origin,
        )
        .await;
        Ok(ticket)
    }

    /// An internal note: in the transcript, never sent to the customer.
    /// Every agents' space is shown it, the one it was written in too, so
    /// the agent sees it was kept.
    pub async fn agent_note(&self, id: u64, agent: &str, text: &str) -> anyhow::Result<Ticket> {
        let ticket = self
            .escalation
            .add_line(id, TranscriptRole::Note, Some(agent), text)
            .await?;
        self.tell_agents(
            &ticket,
            Template::AgentNote,
            &[("agent", agent), ("text", text)],
            None,
        )
        .await;
        Ok(ticket)
    }

    /// An agent takes the ticket.
    pub async fn agent_assign(&self, id: u64, agent: &str) -> anyhow::Result<Ticket> {
        self.move_and_tell(id, TicketState::Assigned, agent, Template::AgentAssigned)
            .await
    }

    /// A resolved or closed ticket is opened again: the chat goes back to people.
    pub async fn agent_reopen(&self, id: u64, agent: &str) -> anyhow::Result<Ticket> {
        self.move_and_tell(id, TicketState::Open, agent, Template::AgentReopened)
            .await
    }

    /// Moves the ticket for `agent` and tells the agents' spaces `template`.
    async fn move_and_tell(
        &self,
        id: u64,
        to: TicketState,
        agent: &str,
        template: Template,
    ) -> anyhow::Result<Ticket> {
        let ticket = self.escalation.transition(id, to, agent).await?;
        self.tell_agents(&ticket, template, &[("agent", agent)], None)
            .await;
        Ok(ticket)
    }

    /// The agent solved it: the bot is back and asks the customer for a rating.
    pub async fn agent_resolve(&self, id: u64, agent: &str) -> anyhow::Result<Ticket> {
        let escalation = self.escalation;
        let ticket = escalation
            .transition(id, TicketState::Resolved, agent)
            .await?;
        let (adapter, chat) = self.customer_channel(&ticket)?;
        let ticket_id = display_id(ticket.id);
        let text = self.ctx.prompts.render(
            ticket.locale,
            Template::TicketResolved,
            &[("ticket", &ticket_id)],
        );
        let choices = (1..=5)
            .map(|stars| Choice {
                id: crate::buttons::Button::Rate {
                    ticket: ticket.id,
                    stars,
                }
                .id(),
                label: format!("{stars}★"),
            })
            .collect();
        adapter
            .send(Outbound {
                conversation: chat,
                text,
                choices,
                reply_to: None,
            })
            .await?;
        self.tell_agents(&ticket, Template::AgentResolved, &[("agent", agent)], None)
            .await;
        Ok(ticket)
    }
}
