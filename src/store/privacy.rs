//! Customers' data rights over the store: everything about one customer as
//! one export, erasure (records removed, then their data keys destroyed, so
//! the copies sled still keeps cannot be read), retention sweeps, and the
//! audit log of exports and erasures (who, when, which customer; no content).

use super::*;

/// Everything stored about one customer, as they may download it.
#[derive(Clone, Debug, Serialize)]
pub struct CustomerExport {
    /// What this file is.
    pub format: &'static str,
    /// Its layout version.
    pub version: u32,
    /// When it was made (Unix milliseconds).
    pub exported_ms: u64,
    /// The profile.
    pub profile: ExportProfile,
    /// The platform accounts joined in this customer.
    pub identities: Vec<ExportIdentity>,
    /// Every conversation with its messages and sources, oldest first.
    pub conversations: Vec<ExportConversation>,
    /// Interaction events (views, likes, ratings …).
    pub events: Vec<Event>,
    /// Tickets with their transcripts, without the agents' internal notes.
    pub tickets: Vec<ExportTicket>,
}

/// The profile part of an export.
#[derive(Clone, Debug, Serialize)]
pub struct ExportProfile {
    /// Store-wide id.
    pub id: u64,
    /// When the profile was made (Unix milliseconds).
    pub created_ms: u64,
    /// The customer sent `/start`.
    pub registered: bool,
    /// The language they are answered in.
    pub locale: Option<String>,
    /// The platform's display name.
    pub display_name: Option<String>,
}

/// A platform account of a customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExportIdentity {
    /// Platform name.
    pub platform: String,
    /// The platform's user id.
    pub user_id: String,
}

/// A conversation in an export.
#[derive(Clone, Debug, Serialize)]
pub struct ExportConversation {
    /// Store-wide id.
    pub id: u64,
    /// Platform of the chat.
    pub platform: String,
    /// The chat.
    pub chat_id: String,
    /// When it started (Unix milliseconds).
    pub started_ms: u64,
    /// Its messages, oldest first.
    pub messages: Vec<StoredMessage>,
}

/// A ticket in an export.
#[derive(Clone, Debug, Serialize)]
pub struct ExportTicket {
    /// `T-000123`.
    pub id: String,
    /// Where it stands.
    pub state: TicketState,
    /// Why it was opened.
    pub category: String,
    /// How urgent.
    pub priority: Priority,
    /// When it was opened (Unix milliseconds).
    pub created_ms: u64,
    /// The summary written for the agents.
    pub summary: String,
    /// The conversation with people; agents' internal notes left out.
    pub transcript: Vec<TranscriptLine>,
    /// Changes of state.
    pub transitions: Vec<Transition>,
    /// The customer's rating.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rating: Option<u8>,
}

/// What an erasure removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Erasure {
    /// The erased customer.
    pub customer_id: u64,
    /// Platform accounts unlinked.
    pub identities: usize,
    /// Conversations removed.
    pub conversations: usize,
    /// Messages removed.
    pub messages: usize,
    /// Interaction events removed.
    pub events: usize,
    /// Pending `/link` codes removed.
    pub link_codes: usize,
    /// Tickets kept for reporting without their text.
    pub tickets_anonymised: usize,
    /// Data keys destroyed.
    pub keys_destroyed: usize,
    /// Export files of theirs removed from `<data_dir>/exports/`.
    pub exports_removed: usize,
}

/// What a retention sweep removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sweep {
    /// Everything older than this went (Unix milliseconds).
    pub cutoff_ms: u64,
    /// Messages removed.
    pub messages: usize,
    /// Interaction events removed.
    pub events: usize,
    /// Closed tickets whose text was removed.
    pub tickets_anonymised: usize,
}

/// What the audit log records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A customer's data was exported.
    Export,
    /// A customer was erased.
    Forget,
    /// A retention sweep ran.
    RetentionSweep,
    /// Every customer got a fresh data key.
    KeyRotation,
}

/// One line of the audit log: never any content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Record schema version.
    pub v: u32,
    /// When (Unix milliseconds).
    pub ts_ms: u64,
    /// What was done.
    pub action: AuditAction,
    /// Who asked: `customer`, `operator (cli)`, `operator (api)`, `retention`.
    pub actor: String,
    /// The customer's id, for exports and erasures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<u64>,
    /// The platform account the request came from or named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// That account's platform user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Counts of what was removed or exported.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What a key rotation did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rotation {
    /// Customers given a fresh data key.
    pub customers: usize,
    /// Records sealed again under the fresh keys.
    pub records_resealed: usize,
    /// Old keys destroyed.
    pub keys_destroyed: usize,
}

/// A customer as listed for operators.
#[derive(Clone, Debug, Serialize)]
pub struct CustomerSummary {
    /// Store-wide id.
    pub id: u64,
    /// Their platform accounts.
    pub identities: Vec<ExportIdentity>,
    /// When the profile was made (Unix milliseconds).
    pub created_ms: u64,
    /// The platform's display name.
    pub display_name: Option<String>,
    /// The language they are answered in.
    pub locale: Option<String>,
    /// Conversations stored.
    pub conversations: usize,
    /// Tickets they had.
    pub tickets: usize,
}

/// The file name prefix of a customer's exports in `<data_dir>/exports/`.
pub fn export_file_prefix(customer_id: u64) -> String {
    format!("customer-{customer_id}-")
}

impl Store {
    /// Every identity, grouped by customer id.
    fn identities_by_customer(
        &self,
    ) -> Result<std::collections::BTreeMap<u64, Vec<ExportIdentity>>, StoreError> {
        let mut by_customer = std::collections::BTreeMap::<u64, Vec<ExportIdentity>>::new();
        for entry in self.identities.iter() {
            let (key, value) = entry.map_err(|err| self.err(err))?;
            let (Some(id), Some(split)) = (decode_u64(&value), key.iter().position(|b| *b == 0))
            else {
                continue;
            };
            by_customer.entry(id).or_default().push(ExportIdentity {
                platform: String::from_utf8_lossy(&key[..split]).into_owned(),
                user_id: String::from_utf8_lossy(&key[split + 1..]).into_owned(),
            });
        }
        Ok(by_customer)
    }

    /// A customer's platform accounts.
    pub fn customer_identities(&self, customer_id: u64) -> Result<Vec<ExportIdentity>, StoreError> {
        Ok(self
            .identities_by_customer()?
            .remove(&customer_id)
            .unwrap_or_default())
    }

    /// Every customer, for operators.
    pub fn customer_summaries(&self) -> Result<Vec<CustomerSummary>, StoreError> {
        let mut identities = self.identities_by_customer()?;
        let mut summaries = Vec::new();
        for customer in self.records::<Customer>(&self.customers, TREE_CUSTOMERS)? {
            let accounts = identities.remove(&customer.id).unwrap_or_default();
            summaries.push(self.summary_of(customer, accounts)?);
        }
        Ok(summaries)
    }

    /// One customer as listed for operators.
    pub fn customer_summary(&self, customer: Customer) -> Result<CustomerSummary, StoreError> {
        let accounts = self.customer_identities(customer.id)?;
        self.summary_of(customer, accounts)
    }

    fn summary_of(
        &self,
        customer: Customer,
        identities: Vec<ExportIdentity>,
    ) -> Result<CustomerSummary, StoreError> {
        Ok(CustomerSummary {
            id: customer.id,
            identities,
            created_ms: customer.created_ms,
            locale: customer.locale.map(|locale| locale.code().to_string()),
            conversations: self
                .customer_conversations
                .scan_prefix(customer.id.to_be_bytes())
                .count(),
            tickets: self.customer_ticket_count(customer.id)?,
            display_name: customer.display_name,
        })
    }

    /// Everything stored about a customer.
    pub fn export_customer(&self, customer_id: u64) -> Result<CustomerExport, StoreError> {
        let customer = self
            .customer(customer_id)?
            .ok_or_else(|| StoreError::NotFound(format!("customer {customer_id}")))?;
        let mut conversations = Vec::new();
        for conversation in self.customer_conversations(customer_id, None)? {
            conversations.push(ExportConversation {
                messages: self.conversation_messages(conversation.id)?,
                id: conversation.id,
                platform: conversation.platform,
                chat_id: conversation.chat_id,
                started_ms: conversation.started_ms,
            });
        }
        let mut tickets = Vec::new();
        for id in self.customer_ticket_ids(customer_id)? {
            let Some(ticket) = self.ticket(id)? else {
                continue;
            };
            tickets.push(ExportTicket {
                id: crate::escalation::ticket::display_id(ticket.id),
                state: ticket.state,
                category: ticket.category.label().to_string(),
                priority: ticket.priority,
                created_ms: ticket.created_ms,
                summary: ticket.summary,
                transcript: ticket
                    .transcript
                    .into_iter()
                    .filter(|line| line.role != TranscriptRole::Note)
                    .collect(),
                transitions: ticket.transitions,
                rating: ticket.rating,
            });
        }
        Ok(CustomerExport {
            format: "concierge-customer-export",
            version: 1,
            exported_ms: now_ms(),
            identities: self.customer_identities(customer_id)?,
            profile: ExportProfile {
                id: customer.id,
                created_ms: customer.created_ms,
                registered: customer.registered,
                locale: customer.locale.map(|locale| locale.code().to_string()),
                display_name: customer.display_name,
            },
            conversations,
            events: self.user_events(&Self::event_user(customer_id))?,
            tickets,
        })
    }

    /// A customer's tickets, oldest first.
    pub fn tickets_of_customer(&self, customer_id: u64) -> Result<Vec<Ticket>, StoreError> {
        let mut tickets = Vec::new();
        for id in self.customer_ticket_ids(customer_id)? {
            tickets.extend(self.ticket(id)?);
        }
        Ok(tickets)
    }

    fn customer_ticket_ids(&self, customer_id: u64) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::new();
        for entry in self.customer_tickets.scan_prefix(customer_id.to_be_bytes()) {
            let (key, _) = entry.map_err(|err| self.err(err))?;
            if let Some(id) = key.get(8..16).and_then(decode_u64) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// A ticket without its text: kept for reporting (state, times,
    /// rating). Erasure also cuts it from its customer and closes it.
    fn anonymised(mut ticket: Ticket, erased: bool) -> Ticket {
        ticket.summary.clear();
        ticket.transcript.clear();
        if erased {
            ticket.customer_id = 0;
            ticket.chat_id.clear();
            if ticket.state != TicketState::Closed {
                ticket.transitions.push(Transition {
                    from: Some(ticket.state),
                    to: TicketState::Closed,
                    at_ms: now_ms(),
                    actor: "erasure".into(),
                });
                ticket.state = TicketState::Closed;
            }
        }
        ticket
    }

    /// Erases a customer: profile, identities, conversations, messages,
    /// events and link codes are removed, tickets anonymised, then the
    /// customer's data keys and the inbox's key are destroyed, and their
    /// exports under `<data_dir>/exports/` deleted. Flushed on return.
    pub fn forget_customer(&self, customer_id: u64) -> Result<Erasure, StoreError> {
        let customer = self
            .customer(customer_id)?
            .ok_or_else(|| StoreError::NotFound(format!("customer {customer_id}")))?;
        let mut erasure = Erasure {
            customer_id,
            ..Erasure::default()
        };
        let _tickets = self.lock_tickets();
        // Recorded first, so a crash midway is finished at the next open.
        let key_ids: Vec<u64> = customer
            .data_keys()
            .into_iter()
            .filter_map(|key| match key {
                KeyId::Customer(id) => Some(id),
                KeyId::Inbox(_) => None,
            })
            .collect();
        self.pending_erasures
            .insert(customer_id.to_be_bytes(), Self::encode(&key_ids))
            .map_err(|err| self.err(err))?;
        self.flush_coalesced()?;
        // Unlinked first: from here on a message of theirs starts afresh.
        let mut identities = sled::Batch::default();
        for entry in self.identities.iter() {
            let (key, value) = entry.map_err(|err| self.err(err))?;
            if decode_u64(&value) == Some(customer_id) {
                identities.remove(key);
                erasure.identities += 1;
            }
        }
        self.identities
            .apply_batch(identities)
            .map_err(|err| self.err(err))?;

        let mut removed_messages = Vec::new();
        for (index_key, conversation) in self.indexed_conversations(customer_id)? {
            let prefix = conversation.id.to_be_bytes();
            let mut messages = sled::Batch::default();
            for entry in self.messages.scan_prefix(prefix) {
                let (key, _) = entry.map_err(|err| self.err(err))?;
                messages.remove(key);
                erasure.messages += 1;
            }
            self.messages
                .apply_batch(messages)
                .map_err(|err| self.err(err))?;
            removed_messages.push(prefix);
            self.conversations
                .remove(prefix)
                .map_err(|err| self.err(err))?;
            self.customer_conversations
                .remove(index_key)
                .map_err(|err| self.err(err))?;
            erasure.conversations += 1;
        }
        for entry in self.active.scan_prefix(customer_id.to_be_bytes()) {
            let (key, _) = entry.map_err(|err| self.err(err))?;
            self.active.remove(key).map_err(|err| self.err(err))?;
        }
        for entry in self.intake_messages.iter() {
            let (key, value) = entry.map_err(|err| self.err(err))?;
            if removed_messages
                .iter()
                .any(|prefix| value.starts_with(prefix))
            {
                self.intake_messages
                    .remove(key)
                    .map_err(|err| self.err(err))?;
            }
        }

        let mut prefix = Self::event_user(customer_id).into_bytes();
        prefix.push(0);
        for entry in self.events.scan_prefix(&prefix) {
            let (key, _) = entry.map_err(|err| self.err(err))?;
            self.events.remove(key).map_err(|err| self.err(err))?;
            erasure.events += 1;
        }
        for entry in self.link_codes.iter() {
            let (key, bytes) = entry.map_err(|err| self.err(err))?;
            let code: LinkCode = self.decode(TREE_LINK_CODES, &bytes)?;
            if code.customer_id == customer_id {
                self.link_codes.remove(key).map_err(|err| self.err(err))?;
                erasure.link_codes += 1;
            }
        }
        for id in self.customer_ticket_ids(customer_id)? {
            if let Some(ticket) = self.ticket(id)? {
                let chat_key =
                    Self::active_ticket_key(&ticket.platform, &ticket.chat_id, customer_id);
                if self
                    .active_tickets
                    .get(&chat_key)
                    .map_err(|err| self.err(err))?
                    == Some(sled::IVec::from(&id.to_be_bytes()))
                {
                    self.active_tickets
                        .remove(chat_key)
                        .map_err(|err| self.err(err))?;
                }
                let record = self.encode_ticket(&Self::anonymised(ticket, true))?;
                self.tickets
                    .insert(id.to_be_bytes(), record)
                    .map_err(|err| self.err(err))?;
                erasure.tickets_anonymised += 1;
            }
            self.customer_tickets
                .remove(Self::customer_ticket_key(customer_id, id))
                .map_err(|err| self.err(err))?;
        }
        self.customers
            .remove(customer_id.to_be_bytes())
            .map_err(|err| self.err(err))?;
        self.flush_coalesced()?;
        for key in customer.data_keys() {
            if self.keys.destroy(key)? {
                erasure.keys_destroyed += 1;
            }
        }
        self.rotate_inbox_key()?;
        erasure.exports_removed = self.remove_exports(customer_id)?;
        self.pending_erasures
            .remove(customer_id.to_be_bytes())
            .map_err(|err| self.err(err))?;
        self.flush_coalesced()?;
        Ok(erasure)
    }

    fn remove_exports(&self, customer_id: u64) -> Result<usize, StoreError> {
        let dir = self.data_dir().join("exports");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(0);
        };
        let prefix = export_file_prefix(customer_id);
        let mut removed = 0;
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                std::fs::remove_file(entry.path()).map_err(|err| StoreError::Io {
                    path: entry.path(),
                    detail: err.to_string(),
                })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes messages and events older than `cutoff_ms` and the text of
    /// tickets closed before it; then seals the inbox under a new key.
    pub fn sweep_retention(&self, cutoff_ms: u64) -> Result<Sweep, StoreError> {
        let mut sweep = Sweep {
            cutoff_ms,
            ..Sweep::default()
        };
        let mut messages = sled::Batch::default();
        for entry in self.messages.iter() {
            let (key, bytes) = entry.map_err(|err| self.err(err))?;
            // A message written for a customer while they were erased is
            // sealed under a destroyed key: unreadable, so it goes too.
            let expired = match self.keys.open_record(&bytes)? {
                None => true,
                Some(plain) => {
                    self.decode::<StoredMessage>(TREE_MESSAGES, &plain)?.ts_ms < cutoff_ms
                }
            };
            if expired {
                messages.remove(key);
                sweep.messages += 1;
            }
        }
        self.messages
            .apply_batch(messages)
            .map_err(|err| self.err(err))?;
        let mut events = sled::Batch::default();
        for entry in self.events.iter() {
            let (key, bytes) = entry.map_err(|err| self.err(err))?;
            let event: Event = self.decode(TREE_EVENTS, &bytes)?;
            if event.ts_ms < cutoff_ms {
                events.remove(key);
                sweep.events += 1;
            }
        }
        self.events
            .apply_batch(events)
            .map_err(|err| self.err(err))?;
        {
            let _tickets = self.lock_tickets();
            for ticket in self.tickets()? {
                let closed_at = ticket
                    .transitions
                    .iter()
                    .rev()
                    .find(|transition| transition.to == TicketState::Closed)
                    .map(|transition| transition.at_ms);
                let has_text = !ticket.summary.is_empty() || !ticket.transcript.is_empty();
                if ticket.state == TicketState::Closed
                    && has_text
                    && closed_at.is_some_and(|at| at < cutoff_ms)
                {
                    let id = ticket.id;
                    let record = self.encode_ticket(&Self::anonymised(ticket, false))?;
                    self.tickets
                        .insert(id.to_be_bytes(), record)
                        .map_err(|err| self.err(err))?;
                    sweep.tickets_anonymised += 1;
                }
            }
        }
        self.flush_coalesced()?;
        self.rotate_inbox_key()?;
        Ok(sweep)
    }

    /// Appends to the audit log and flushes.
    pub fn audit(&self, mut entry: AuditEntry) -> Result<(), StoreError> {
        entry.v = RECORD_VERSION;
        let key = self.next_id()?.to_be_bytes();
        self.audit
            .insert(key, Self::encode(&entry))
            .map_err(|err| self.err(err))?;
        self.flush_coalesced()?;
        Ok(())
    }

    /// The audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.records(&self.audit, TREE_AUDIT)
    }

    /// Gives every customer a fresh data key: their profile, messages and
    /// tickets are sealed again under it, then their old keys are destroyed
    /// (the inbox's too). For a key directory that may have leaked, or as a
    /// routine. The caller must hold the store alone (no daemon running):
    /// a record sealed under an old key meanwhile would be lost.
    pub fn rotate_keys(&self) -> Result<Rotation, StoreError> {
        let mut rotation = Rotation::default();
        let _tickets = self.lock_tickets();
        for mut customer in self.records::<Customer>(&self.customers, TREE_CUSTOMERS)? {
            let old_keys = customer.data_keys();
            let fresh = self.next_id()?;
            self.keys.ensure(KeyId::Customer(fresh))?;
            customer.key = Some(fresh);
            customer.inherited_keys.clear();
            self.customers
                .insert(
                    customer.id.to_be_bytes(),
                    self.seal(customer.sealing_key(), &customer)?,
                )
                .map_err(|err| self.err(err))?;
            let mut messages = sled::Batch::default();
            for conversation in self.customer_conversations(customer.id, None)? {
                for entry in self.messages.scan_prefix(conversation.id.to_be_bytes()) {
                    let (key, bytes) = entry.map_err(|err| self.err(err))?;
                    let message: StoredMessage = self.decode(TREE_MESSAGES, &bytes)?;
                    messages.insert(key, self.seal(customer.sealing_key(), &message)?);
                    rotation.records_resealed += 1;
                }
            }
            self.messages
                .apply_batch(messages)
                .map_err(|err| self.err(err))?;
            for id in self.customer_ticket_ids(customer.id)? {
                if let Some(ticket) = self.ticket(id)? {
                    let record = self.encode_ticket(&ticket)?;
                    self.tickets
                        .insert(id.to_be_bytes(), record)
                        .map_err(|err| self.err(err))?;
                    rotation.records_resealed += 1;
                }
            }
            rotation.records_resealed += 1;
            self.flush_coalesced()?;
            for key in old_keys {
                if self.keys.destroy(key)? {
                    rotation.keys_destroyed += 1;
                }
            }
            rotation.customers += 1;
        }
        self.rotate_inbox_key()?;
        Ok(rotation)
    }

    /// Schema 4: records written in the clear by earlier versions are sealed
    /// under their customer's key (the inbox's under its key).
    pub(super) fn seal_plain_records(&self) -> Result<(), StoreError> {
        let plain = |bytes: &[u8]| keyring::sealed_by(bytes).is_none();
        let mut customers = sled::Batch::default();
        for entry in self.customers.iter() {
            let (key, bytes) = entry.map_err(|err| self.err(err))?;
            if plain(&bytes) {
                let customer: Customer = self.decode(TREE_CUSTOMERS, &bytes)?;
                customers.insert(key, self.seal(customer.sealing_key(), &customer)?);
            }
        }
        self.customers
            .apply_batch(customers)
            .map_err(|err| self.err(err))?;
        let mut owners = std::collections::HashMap::new();
        let mut messages = sled::Batch::default();
        for entry in self.messages.iter() {
            let (key, bytes) = entry.map_err(|err| self.err(err))?;
            let Some(conversation) = key.get(..8).and_then(decode_u64) else {
                continue;
            };
            if !plain(&bytes) {
                continue;
            }
            let sealing_key = match owners.get(&conversation) {
                Some(key) => *key,
                None => {
                    let key = self.conversation_key(conversation)?;
                    owners.insert(conversation, key);
                    key
                }
            };
            let message: StoredMessage = self.decode(TREE_MESSAGES, &bytes)?;
            messages.insert(key, self.seal(sealing_key, &message)?);
        }
        self.messages
            .apply_batch(messages)
            .map_err(|err| self.err(err))?;
        for entry in self.tickets.iter() {
            let (key, bytes) = entry.map_err(|err| self.err(err))?;
            let stored: serde_json::Value = self.decode(TREE_TICKETS, &bytes)?;
            if stored.get("sealed").is_none() {
                let ticket = self.decode_ticket(&bytes)?;
                self.tickets
                    .insert(key, self.encode_ticket(&ticket)?)
                    .map_err(|err| self.err(err))?;
            }
        }
        let inbox_key = self.inbox_key()?;
        for entry in self.inbox.iter() {
            let (key, bytes) = entry.map_err(|err| self.err(err))?;
            if plain(&bytes) {
                let record: serde_json::Value = self.decode(TREE_INBOX, &bytes)?;
                self.inbox
                    .insert(key, self.seal(inbox_key, &record)?)
                    .map_err(|err| self.err(err))?;
            }
        }
        Ok(())
    }

    /// Finishes erasures that a crash cut short (recorded in
    /// `pending_erasures` before they start), and destroys inbox keys older
    /// than the current one.
    pub(super) fn finish_interrupted_erasures(&self) -> Result<(), StoreError> {
        for entry in self.pending_erasures.iter() {
            let (key, keys) = entry.map_err(|err| self.err(err))?;
            let Some(customer_id) = decode_u64(&key) else {
                continue;
            };
            if self.customer(customer_id)?.is_some() {
                tracing::warn!(
                    customer = customer_id,
                    "finishing an erasure a stop cut short"
                );
                self.forget_customer(customer_id)?;
                continue;
            }
            let keys: Vec<u64> = serde_json::from_slice(&keys).unwrap_or_default();
            for id in keys {
                self.keys.destroy(KeyId::Customer(id))?;
            }
            self.pending_erasures
                .remove(key)
                .map_err(|err| self.err(err))?;
        }
        if let KeyId::Inbox(current) = self.inbox_key()? {
            for key in self.keys.list()? {
                if matches!(key, KeyId::Inbox(generation) if generation < current) {
                    self.keys.destroy(key)?;
                }
            }
        }
        self.flush_coalesced()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{inbound, plain_ticket, reopen};

    /// Every file under `dir` that holds `needle`.
    fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(next) = pending.pop() {
            for entry in std::fs::read_dir(&next).unwrap().filter_map(Result::ok) {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if std::fs::read(&path)
                    .unwrap_or_default()
                    .windows(needle.len())
                    .any(|window| window == needle)
                {
                    found.push(path);
                }
            }
        }
        found
    }

    fn no_customer_keys_left(store: &Store) -> bool {
        store
            .keys
            .list()
            .unwrap()
            .iter()
            .all(|key| matches!(key, KeyId::Inbox(_)))
    }

    fn line(role: TranscriptRole, text: &str) -> TranscriptLine {
        TranscriptLine {
            ts_ms: now_ms(),
            role,
            author: None,
            text: text.into(),
        }
    }

    /// A customer with a message, a reply, an event, a link code and a
    /// ticket, each holding `marker`.
    fn customer_with_history(store: &Store, user: &str, marker: &str) -> (Customer, u64) {
        let customer = store
            .customer_for_identity("telegram", user, Some(marker))
            .unwrap();
        let conversation = store
            .current_conversation(customer.id, "telegram", user)
            .unwrap();
        let ids = store
            .inbox_put(&[inbound(&format!("hello {marker}"))])
            .unwrap();
        store
            .append_customer_message(conversation.id, &format!("hello {marker}"), ids[0], 10)
            .unwrap();
        store.inbox_done(ids[0].unwrap()).unwrap();
        store
            .append_message(conversation.id, Role::Assistant, &format!("reply {marker}"))
            .unwrap();
        store
            .events_append(&[Event {
                v: RECORD_VERSION,
                user: Store::event_user(customer.id),
                item: "boots".into(),
                kind: EventKind::Like,
                ts_ms: now_ms(),
                value: None,
                id: None,
            }])
            .unwrap();
        store
            .create_link_code(
                &format!("LINK-CODE{user}"),
                customer.id,
                now_ms() + 60_000,
                ("telegram", user),
            )
            .unwrap();
        let ticket_id = store.next_ticket_number().unwrap();
        let mut ticket = plain_ticket(ticket_id, customer.id);
        ticket.state = TicketState::Assigned;
        ticket.chat_id = user.into();
        ticket.summary = format!("summary {marker}");
        ticket.transcript = vec![
            line(TranscriptRole::Customer, &format!("complaint {marker}")),
            line(TranscriptRole::Note, &format!("internal note {marker}")),
            line(TranscriptRole::Agent, "sorry about that"),
        ];
        store.put_ticket(&ticket).unwrap();
        store.flush_blocking().unwrap();
        (customer, ticket_id)
    }

    #[test]
    fn an_export_holds_everything_but_the_agents_notes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (customer, ticket_id) = customer_with_history(&store, "1", "marker-export");
        let export = store.export_customer(customer.id).unwrap();
        assert_eq!(
            export.profile.display_name.as_deref(),
            Some("marker-export")
        );
        assert_eq!(
            export.identities,
            vec![ExportIdentity {
                platform: "telegram".into(),
                user_id: "1".into()
            }]
        );
        let texts: Vec<&str> = export.conversations[0]
            .messages
            .iter()
            .map(|message| message.text.as_str())
            .collect();
        assert_eq!(texts, ["hello marker-export", "reply marker-export"]);
        assert_eq!(export.events.len(), 1);
        assert_eq!(
            export.tickets[0].id,
            crate::escalation::ticket::display_id(ticket_id)
        );
        let roles: Vec<TranscriptRole> = export.tickets[0]
            .transcript
            .iter()
            .map(|line| line.role)
            .collect();
        assert_eq!(roles, [TranscriptRole::Customer, TranscriptRole::Agent]);
        let json = String::from_utf8(crate::privacy::export_json(&export)).unwrap();
        assert!(!json.contains("internal note"));
    }

    #[test]
    fn an_erased_customer_leaves_no_readable_text_in_any_file_of_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let marker = "marker-5b1e0c";
        let kept = "kept-c0ffee";
        let (erased_id, ticket_id, sealed_message) = {
            let store = Store::open(dir.path()).unwrap();
            let (customer, ticket_id) = customer_with_history(&store, "1", marker);
            customer_with_history(&store, "2", kept);
            let export = store.export_customer(customer.id).unwrap();
            crate::privacy::write_export(store.data_dir(), &export).unwrap();
            // The export is the one plain copy, and the scan finds it.
            assert_eq!(files_holding(dir.path(), marker.as_bytes()).len(), 1);
            let conversation = store.customer_conversations(customer.id, None).unwrap()[0].id;
            let sealed_message = store
                .messages
                .scan_prefix(conversation.to_be_bytes())
                .next()
                .unwrap()
                .unwrap()
                .1
                .to_vec();

            let erasure = store.forget_customer(customer.id).unwrap();
            assert_eq!(
                erasure,
                Erasure {
                    customer_id: customer.id,
                    identities: 1,
                    conversations: 1,
                    messages: 2,
                    events: 1,
                    link_codes: 1,
                    tickets_anonymised: 1,
                    keys_destroyed: 1,
                    exports_removed: 1,
                }
            );
            (customer.id, ticket_id, sealed_message)
        };
        assert!(files_holding(dir.path(), marker.as_bytes()).is_empty());
        let store = reopen(dir.path()).unwrap();
        // The copies sled may still keep cannot be opened any more.
        assert!(store.keys.open_record(&sealed_message).unwrap().is_none());
        assert!(store.find_customer("telegram", "1").unwrap().is_none());
        assert!(store.customer(erased_id).unwrap().is_none());
        assert!(store
            .user_events(&Store::event_user(erased_id))
            .unwrap()
            .is_empty());
        let ticket = store.ticket(ticket_id).unwrap().unwrap();
        assert_eq!(
            (
                ticket.state,
                ticket.customer_id,
                ticket.summary.as_str(),
                ticket.transcript.len()
            ),
            (TicketState::Closed, 0, "", 0)
        );
        assert!(
            store.active_tickets().unwrap().is_empty()
                || store
                    .active_tickets()
                    .unwrap()
                    .iter()
                    .all(|t| t.id != ticket_id)
        );
        // The other customer is untouched, and a new message starts afresh.
        let other = store.find_customer("telegram", "2").unwrap().unwrap();
        assert_eq!(
            store.export_customer(other.id).unwrap().conversations[0]
                .messages
                .len(),
            2
        );
        let stranger = store.customer_for_identity("telegram", "1", None).unwrap();
        assert_ne!(stranger.id, erased_id);
        assert!(store
            .customer_conversations(stranger.id, None)
            .unwrap()
            .is_empty());
        assert_eq!(store.audit_log().unwrap().len(), 0);
    }

    #[test]
    fn a_linked_customer_is_erased_with_the_keys_of_everyone_joined_into_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (first, _) = customer_with_history(&store, "1", "first-marker");
        let (second, _) = customer_with_history(&store, "2", "second-marker");
        store
            .create_link_code(
                "LINK-JOIN23",
                first.id,
                now_ms() + 60_000,
                ("telegram", "1"),
            )
            .unwrap();
        let outcome = store
            .redeem_link_code("LINK-JOIN23", "telegram", "2", now_ms())
            .unwrap();
        assert!(matches!(outcome, LinkOutcome::Linked { .. }));
        let joined = store.customer(first.id).unwrap().unwrap();
        assert_eq!(joined.inherited_keys, vec![second.id]);
        // The joined history still reads.
        let export = store.export_customer(first.id).unwrap();
        assert_eq!(export.conversations.len(), 2);
        assert_eq!(export.tickets.len(), 2);
        let erasure = store.forget_customer(first.id).unwrap();
        assert_eq!((erasure.identities, erasure.keys_destroyed), (2, 2));
        assert!(no_customer_keys_left(&store));
    }

    #[test]
    fn an_erasure_cut_short_by_a_crash_is_finished_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let (erased, kept) = {
            let store = Store::open(dir.path()).unwrap();
            let (erased, _) = customer_with_history(&store, "1", "cut-short");
            let (kept, _) = customer_with_history(&store, "2", "kept");
            // What `forget_customer` records before it removes anything.
            store
                .pending_erasures
                .insert(erased.id.to_be_bytes(), Store::encode(&vec![erased.id]))
                .unwrap();
            store.flush_blocking().unwrap();
            (erased.id, kept.id)
        };
        let store = reopen(dir.path()).unwrap();
        assert!(store.customer(erased).unwrap().is_none());
        assert!(store.find_customer("telegram", "1").unwrap().is_none());
        assert!(!store.keys.has(KeyId::Customer(erased)));
        assert!(store.keys.has(KeyId::Customer(kept)));
        assert_eq!(store.pending_erasures.len(), 0);
        // Tickets whose customer has no profile keep their key.
        let mut orphan = plain_ticket(99, 4242);
        orphan.summary = "no profile".into();
        store.put_ticket(&orphan).unwrap();
        drop(store);
        let store = reopen(dir.path()).unwrap();
        assert_eq!(store.ticket(99).unwrap().unwrap().summary, "no profile");
    }

    #[test]
    fn rotating_the_keys_reseals_everything_and_the_old_keys_open_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (customer, ticket_id) = customer_with_history(&store, "1", "rotated");
        let conversation = store.customer_conversations(customer.id, None).unwrap()[0].id;
        let before = store
            .messages
            .scan_prefix(conversation.to_be_bytes())
            .next()
            .unwrap()
            .unwrap()
            .1
            .to_vec();
        let rotation = store.rotate_keys().unwrap();
        assert_eq!(
            (
                rotation.customers,
                rotation.records_resealed,
                rotation.keys_destroyed
            ),
            (1, 4, 1)
        );
        assert!(store.keys.open_record(&before).unwrap().is_none());
        drop(store);
        let store = reopen(dir.path()).unwrap();
        let export = store.export_customer(customer.id).unwrap();
        assert_eq!(export.conversations[0].messages.len(), 2);
        assert_eq!(
            store.ticket(ticket_id).unwrap().unwrap().summary,
            "summary rotated"
        );
        // New records go under the fresh key, and erasure destroys it.
        store
            .append_message(conversation, Role::User, "after the rotation")
            .unwrap();
        let erasure = store.forget_customer(customer.id).unwrap();
        assert_eq!(erasure.keys_destroyed, 1);
        assert!(no_customer_keys_left(&store));
    }

    #[test]
    fn a_schema_3_store_has_its_plain_records_sealed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (customer, conversation) = {
            let store = Store::open(dir.path()).unwrap();
            let (customer, ticket_id) = customer_with_history(&store, "1", "was-plain");
            let conversation = store.customer_conversations(customer.id, None).unwrap()[0].id;
            // Rewrite everything as schema 3 wrote it: plain JSON.
            store
                .customers
                .insert(customer.id.to_be_bytes(), Store::encode(&customer))
                .unwrap();
            for entry in store.messages.iter() {
                let (key, bytes) = entry.unwrap();
                let message: StoredMessage = store.decode(TREE_MESSAGES, &bytes).unwrap();
                store.messages.insert(key, Store::encode(&message)).unwrap();
            }
            let ticket = store.ticket(ticket_id).unwrap().unwrap();
            store
                .tickets
                .insert(ticket_id.to_be_bytes(), Store::encode(&ticket))
                .unwrap();
            store.inbox_put(&[inbound("waiting was-plain")]).unwrap();
            for entry in store.inbox.iter() {
                let (key, bytes) = entry.unwrap();
                let record: serde_json::Value = store.decode(TREE_INBOX, &bytes).unwrap();
                store.inbox.insert(key, Store::encode(&record)).unwrap();
            }
            store.meta.insert(KEY_SCHEMA, &3u32.to_be_bytes()).unwrap();
            store.flush_blocking().unwrap();
            (customer, conversation)
        };
        let store = reopen(dir.path()).unwrap();
        let sealed = |tree: &sled::Tree| {
            tree.iter()
                .all(|entry| keyring::sealed_by(&entry.unwrap().1).is_some())
        };
        assert!(sealed(&store.customers) && sealed(&store.messages) && sealed(&store.inbox));
        assert_eq!(store.conversation_messages(conversation).unwrap().len(), 2);
        let ticket = store.tickets().unwrap().remove(0);
        assert_eq!(ticket.summary, "summary was-plain");
        assert_eq!(store.customer(customer.id).unwrap().unwrap(), customer);
        assert_eq!(store.inbox_pending().unwrap().len(), 1);
    }

    #[test]
    fn a_retention_sweep_removes_what_is_older_than_its_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (customer, ticket_id) = customer_with_history(&store, "1", "old");
        let mut ticket = store.ticket(ticket_id).unwrap().unwrap();
        ticket.state = TicketState::Closed;
        ticket.transitions.push(Transition {
            from: Some(TicketState::Resolved),
            to: TicketState::Closed,
            at_ms: 1_000,
            actor: "bot".into(),
        });
        store.put_ticket(&ticket).unwrap();
        assert_eq!(
            store.sweep_retention(500).unwrap(),
            Sweep {
                cutoff_ms: 500,
                ..Sweep::default()
            }
        );
        let cutoff = now_ms() + 1;
        let sweep = store.sweep_retention(cutoff).unwrap();
        assert_eq!(
            (sweep.messages, sweep.events, sweep.tickets_anonymised),
            (2, 1, 1)
        );
        let export = store.export_customer(customer.id).unwrap();
        assert!(export.conversations[0].messages.is_empty());
        assert!(export.tickets[0].transcript.is_empty());
        assert_eq!(export.tickets[0].state, TicketState::Closed);
        // The customer and their ticket's numbers stay.
        assert_eq!(store.customer_ticket_count(customer.id).unwrap(), 1);
    }

    #[test]
    fn the_audit_log_keeps_who_and_when_but_no_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        crate::privacy::audit(
            &store,
            AuditAction::Forget,
            "operator (cli)",
            7,
            Some(("telegram", "42")),
            "3 messages".into(),
        );
        let log = store.audit_log().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(
            (log[0].action, log[0].customer_id, log[0].user.as_deref()),
            (AuditAction::Forget, Some(7), Some("42"))
        );
    }
}
