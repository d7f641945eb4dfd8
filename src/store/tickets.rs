//! Tickets and their indexes: each chat's ticket with agents, each customer's tickets, and the agents' posts that point at a ticket.

use super::*;

/// Where a ticket stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    /// Waiting for an agent.
    Open,
    /// An agent has it.
    Assigned,
    /// The agent asked the customer something.
    WaitingOnCustomer,
    /// The agent solved it; the bot is back and asks for a rating.
    Resolved,
    /// Done for good.
    Closed,
}

impl TicketState {
    /// The state as written in output and commands.
    pub fn label(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Assigned => "assigned",
            Self::WaitingOnCustomer => "waiting_on_customer",
            Self::Resolved => "resolved",
            Self::Closed => "closed",
        }
    }

    /// Whether a person handles the conversation (the bot stays silent).
    pub fn with_agents(self) -> bool {
        matches!(self, Self::Open | Self::Assigned | Self::WaitingOnCustomer)
    }

    /// Whether moving to `next` is allowed: forward through the workflow,
    /// back from waiting, and reopening a resolved or closed ticket.
    pub fn can_move_to(self, next: TicketState) -> bool {
        use TicketState::*;
        matches!(
            (self, next),
            (Open, Assigned)
                | (Open, Resolved)
                | (Assigned, Assigned)
                | (Assigned, WaitingOnCustomer)
                | (Assigned, Resolved)
                | (WaitingOnCustomer, Assigned)
                | (WaitingOnCustomer, Resolved)
                | (Resolved, Closed)
                | (Resolved, Open)
                | (Closed, Open)
        )
    }
}

/// How urgent a ticket is; higher is more urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// A plain request for a person.
    Normal,
    /// A complaint.
    High,
    /// A complaint with strong language or from a customer who came back.
    Urgent,
}

impl Priority {
    /// The priority as written in output.
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::High => "high",
            Self::Urgent => "urgent",
        }
    }

    /// One step more urgent.
    pub fn raised(self) -> Self {
        match self {
            Self::Normal => Self::High,
            Self::High | Self::Urgent => Self::Urgent,
        }
    }
}

/// Who wrote a line of a ticket's transcript; stored by these names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TranscriptRole {
    /// The customer.
    Customer,
    /// The bot.
    Bot,
    /// An agent's answer, delivered to the customer.
    Agent,
    /// An internal note, never sent to the customer.
    Note,
    /// An agent's answer the customer's platform refused.
    Undelivered,
}

impl TranscriptRole {
    /// The stored name.
    pub fn label(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Bot => "bot",
            Self::Agent => "agent",
            Self::Note => "note",
            Self::Undelivered => "undelivered",
        }
    }
}

impl std::fmt::Display for TranscriptRole {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.label())
    }
}

/// One line of a ticket's transcript.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TranscriptLine {
    /// When (Unix milliseconds).
    pub ts_ms: u64,
    /// Who wrote it.
    pub role: TranscriptRole,
    /// Who wrote it, for agents and notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The text.
    pub text: String,
}

/// One change of a ticket's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The state before (`None` at creation).
    pub from: Option<TicketState>,
    /// The state after.
    pub to: TicketState,
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// Who: `bot`, `sla`, `customer`, or an agent's name.
    pub actor: String,
}

/// Where agents see a ticket: a message in the agents' group, a topic, a thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentPost {
    /// Platform of the agents' space.
    pub platform: String,
    /// The chat, topic or thread agents answer in.
    pub chat_id: String,
    /// The posted ticket message, when agents answer by replying to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// A hand-off of one conversation to people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    /// Record schema version.
    pub v: u32,
    /// The number behind `T-000123`.
    pub id: u64,
    /// The customer.
    pub customer_id: u64,
    /// The customer's platform.
    pub platform: String,
    /// The customer's chat on it.
    pub chat_id: String,
    /// The customer's language (`en`/`zh`).
    pub locale: Locale,
    /// Why it was opened: `complaint`, `human_request`, or the intent that
    /// escalated.
    pub category: crate::intent::Intent,
    /// How urgent.
    pub priority: Priority,
    /// A short summary for agents.
    pub summary: String,
    /// The conversation, oldest first.
    pub transcript: Vec<TranscriptLine>,
    /// Where it stands.
    pub state: TicketState,
    /// Every change of state, oldest first.
    pub transitions: Vec<Transition>,
    /// The agent who has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// When it was opened (Unix milliseconds).
    pub created_ms: u64,
    /// When an agent must have answered (Unix milliseconds).
    pub due_ms: u64,
    /// The agents were reminded of the deadline.
    #[serde(default)]
    pub reminded: bool,
    /// The deadline passed without an answer.
    #[serde(default)]
    pub breached: bool,
    /// Where the agents see it.
    #[serde(default)]
    pub agent_posts: Vec<AgentPost>,
    /// The customer's rating, 1-5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<u8>,
}

/// A ticket as stored: what the customer and the agents wrote (summary and
/// transcript) sealed under the customer's data key, the rest in the clear
/// for reporting. An anonymised ticket has nothing sealed.
#[derive(Serialize, Deserialize)]
struct StoredTicket {
    #[serde(flatten)]
    ticket: Ticket,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

/// The sealed part of a ticket.
#[derive(Serialize, Deserialize)]
struct TicketText {
    summary: String,
    transcript: Vec<TranscriptLine>,
}

impl Store {
    /// A ticket's record, its text sealed under its customer's key.
    pub(super) fn encode_ticket(&self, ticket: &Ticket) -> Result<Vec<u8>, StoreError> {
        use base64::Engine;
        let mut clear = ticket.clone();
        let text = TicketText {
            summary: std::mem::take(&mut clear.summary),
            transcript: std::mem::take(&mut clear.transcript),
        };
        let sealed = if text.summary.is_empty() && text.transcript.is_empty() {
            None
        } else {
            let sealed = self.seal(self.sealing_key_of(ticket.customer_id)?, &text)?;
            Some(base64::engine::general_purpose::STANDARD.encode(sealed))
        };
        Ok(Self::encode(&StoredTicket {
            ticket: clear,
            sealed,
        }))
    }

    pub(super) fn decode_ticket(&self, bytes: &[u8]) -> Result<Ticket, StoreError> {
        use base64::Engine;
        let stored: StoredTicket = self.decode(TREE_TICKETS, bytes)?;
        let mut ticket = stored.ticket;
        if let Some(sealed) = stored.sealed {
            let sealed = base64::engine::general_purpose::STANDARD
                .decode(sealed)
                .map_err(|err| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("ticket {} has a damaged sealed part: {err}", ticket.id),
                })?;
            let text: TicketText = self.decode(TREE_TICKETS, &sealed)?;
            ticket.summary = text.summary;
            ticket.transcript = text.transcript;
        }
        Ok(ticket)
    }

    /// Schema 2: the index of each customer's tickets, from the tickets.
    pub(super) fn index_customer_tickets(&self) -> Result<(), StoreError> {
        for ticket in self.tickets()? {
            self.customer_tickets
                .insert(
                    Self::customer_ticket_key(ticket.customer_id, ticket.id),
                    &[],
                )
                .map_err(|err| self.err(err))?;
        }
        Ok(())
    }

    pub(super) fn customer_ticket_key(customer_id: u64, ticket_id: u64) -> Vec<u8> {
        let mut key = customer_id.to_be_bytes().to_vec();
        key.extend_from_slice(&ticket_id.to_be_bytes());
        key
    }

    /// A new ticket number, durable once the store is flushed.
    pub fn next_ticket_number(&self) -> Result<u64, StoreError> {
        let next = self
            .meta
            .update_and_fetch(KEY_TICKET_COUNTER, |old| {
                let current = old.and_then(decode_u64).unwrap_or(0);
                Some((current + 1).to_be_bytes().to_vec())
            })
            .map_err(|err| self.err(err))?
            .and_then(|bytes| decode_u64(&bytes))
            .unwrap_or(1);
        Ok(next)
    }

    /// Saves a ticket (new or changed) and the index of chats that people
    /// handle, in one transaction. Call `flush` before telling anyone.
    pub fn put_ticket(&self, ticket: &Ticket) -> Result<(), StoreError> {
        let chat_key =
            Self::active_ticket_key(&ticket.platform, &ticket.chat_id, ticket.customer_id);
        let id = ticket.id.to_be_bytes();
        let record = self.encode_ticket(ticket)?;
        let active = ticket.state.with_agents();
        let customer_key = Self::customer_ticket_key(ticket.customer_id, ticket.id);
        let _one = self.one_transaction();
        (&self.tickets, &self.active_tickets, &self.customer_tickets)
            .transaction(|(tickets, index, by_customer)| {
                // A link moves a ticket to another customer: its old key goes.
                let previous = tickets
                    .insert(&id, record.as_slice())?
                    .and_then(|bytes| serde_json::from_slice::<Ticket>(&bytes).ok())
                    .map(|old| {
                        Self::active_ticket_key(&old.platform, &old.chat_id, old.customer_id)
                    })
                    .filter(|old| *old != chat_key);
                if let Some(old) = previous {
                    if index.get(&old)?.as_deref() == Some(id.as_slice()) {
                        index.remove(old.as_slice())?;
                    }
                }
                by_customer.insert(customer_key.as_slice(), &[])?;
                if active {
                    index.insert(chat_key.as_slice(), &id)?;
                } else if index.get(&chat_key)?.as_deref() == Some(id.as_slice()) {
                    index.remove(chat_key.as_slice())?;
                }
                Ok(())
            })
            .map_err(|err| self.transaction_error(err))
    }

    /// The key of a customer's ticket with agents in one chat: in a group,
    /// each customer has their own.
    pub(super) fn active_ticket_key(platform: &str, chat_id: &str, customer_id: u64) -> Vec<u8> {
        let mut key = Self::identity_key(platform, chat_id);
        key.extend_from_slice(&customer_id.to_be_bytes());
        key
    }

    /// Schema 3: tickets with agents are indexed per customer in a chat.
    pub(super) fn index_active_tickets_per_customer(&self) -> Result<(), StoreError> {
        self.active_tickets.clear().map_err(|err| self.err(err))?;
        for ticket in self.tickets()? {
            if ticket.state.with_agents() {
                let key =
                    Self::active_ticket_key(&ticket.platform, &ticket.chat_id, ticket.customer_id);
                self.active_tickets
                    .insert(key, &ticket.id.to_be_bytes())
                    .map_err(|err| self.err(err))?;
            }
        }
        Ok(())
    }

    /// A ticket by number.
    pub fn ticket(&self, id: u64) -> Result<Option<Ticket>, StoreError> {
        match self
            .tickets
            .get(id.to_be_bytes())
            .map_err(|err| self.err(err))?
        {
            Some(bytes) => self.decode_ticket(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Every ticket, oldest first.
    pub fn tickets(&self) -> Result<Vec<Ticket>, StoreError> {
        self.tickets
            .iter()
            .map(|entry| {
                let (_, bytes) = entry.map_err(|err| self.err(err))?;
                self.decode_ticket(&bytes)
            })
            .collect()
    }

    /// The ticket write lock: hold it from reading a ticket to writing it
    /// back. Never held across an `await`.
    pub fn lock_tickets(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ticket_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many tickets a customer has had.
    pub fn customer_ticket_count(&self, customer_id: u64) -> Result<usize, StoreError> {
        let mut count = 0;
        for entry in self.customer_tickets.scan_prefix(customer_id.to_be_bytes()) {
            entry.map_err(|err| self.err(err))?;
            count += 1;
        }
        Ok(count)
    }

    /// Every ticket that people handle now (one per chat at most).
    pub fn active_tickets(&self) -> Result<Vec<Ticket>, StoreError> {
        let mut active = Vec::new();
        for entry in self.active_tickets.iter() {
            let (_, id) = entry.map_err(|err| self.err(err))?;
            let Some(id) = decode_u64(&id) else {
                continue;
            };
            if let Some(ticket) = self.ticket(id)? {
                if ticket.state.with_agents() {
                    active.push(ticket);
                }
            }
        }
        Ok(active)
    }

    /// The customer's ticket in a chat that people handle now, if any.
    pub fn active_ticket_for(
        &self,
        platform: &str,
        chat_id: &str,
        customer_id: u64,
    ) -> Result<Option<Ticket>, StoreError> {
        let key = Self::active_ticket_key(platform, chat_id, customer_id);
        let Some(id) = self.active_tickets.get(key).map_err(|err| self.err(err))? else {
            return Ok(None);
        };
        let Some(id) = decode_u64(&id) else {
            return Ok(None);
        };
        Ok(self
            .ticket(id)?
            .filter(|ticket| ticket.state.with_agents() && ticket.customer_id == customer_id))
    }

    pub(super) fn agent_post_key(
        platform: &str,
        chat_id: &str,
        message_id: Option<&str>,
    ) -> Vec<u8> {
        let mut key = Self::identity_key(platform, chat_id);
        if let Some(message_id) = message_id {
            key.push(0);
            key.extend_from_slice(message_id.as_bytes());
        }
        key
    }

    /// Remembers that a thread or topic (`message_id` `None`), or a message
    /// posted in an agents' chat, is about ticket `id`.
    pub fn index_agent_post(
        &self,
        platform: &str,
        chat_id: &str,
        message_id: Option<&str>,
        id: u64,
    ) -> Result<(), StoreError> {
        self.agent_posts
            .insert(
                Self::agent_post_key(platform, chat_id, message_id),
                &id.to_be_bytes(),
            )
            .map(|_| ())
            .map_err(|err| self.err(err))
    }

    /// The ticket a thread or topic, or a posted message, is about.
    pub fn ticket_for_agent_post(
        &self,
        platform: &str,
        chat_id: &str,
        message_id: Option<&str>,
    ) -> Result<Option<u64>, StoreError> {
        let key = Self::agent_post_key(platform, chat_id, message_id);
        Ok(self
            .agent_posts
            .get(key)
            .map_err(|err| self.err(err))?
            .and_then(|bytes| decode_u64(&bytes)))
    }
}
