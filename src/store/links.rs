//! `/link` codes: one-time codes, and joining two identities' customers when a code is redeemed.

use super::*;

/// The writes of one join of two customers.
#[derive(Default)]
struct JoinPlan {
    identities: Vec<Vec<u8>>,
    conversations: Vec<MovedConversation>,
    /// The current conversation of each chat: (old key, new key, conversation id).
    active: Vec<[Vec<u8>; 3]>,
    tickets: Vec<MovedTicket>,
    old_events: Vec<Vec<u8>>,
    new_events: Vec<(Vec<u8>, Vec<u8>)>,
    /// The joined customer, holding the data keys of both.
    into_record: Vec<u8>,
}

/// A conversation that follows its customer into another.
struct MovedConversation {
    id: u64,
    record: Vec<u8>,
    old_index: Vec<u8>,
    new_index: Vec<u8>,
}

/// A ticket that follows its customer into another.
struct MovedTicket {
    id: u64,
    record: Vec<u8>,
    old_active: Vec<u8>,
    new_active: Option<Vec<u8>>,
    old_index: Vec<u8>,
    new_index: Vec<u8>,
}

/// A pending `/link` code: whoever enters it joins this customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCode {
    /// Record schema version.
    pub v: u32,
    /// The customer who asked for the code.
    pub customer_id: u64,
    /// When the code stops working (Unix milliseconds).
    pub expires_ms: u64,
    /// Platform of the chat the code was asked for in (told when it is used).
    #[serde(default)]
    pub platform: String,
    /// That chat's id.
    #[serde(default)]
    pub chat_id: String,
}

/// What entering a link code did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkOutcome {
    /// The identity now belongs to `into`; `from` (its former customer) was
    /// merged into it and removed.
    Linked {
        /// The customer that no longer exists.
        from: u64,
        /// The customer that now holds both identities.
        into: u64,
        /// The code used, with the chat it was asked for in.
        code: LinkCode,
    },
    /// The identity already belonged to the code's customer.
    AlreadyLinked,
    /// No such code, or it was used already.
    Unknown,
    /// The code is older than its validity.
    Expired,
}

impl Store {
    /// Stores a one-time link code for `customer_id`.
    pub fn create_link_code(
        &self,
        code: &str,
        customer_id: u64,
        expires_ms: u64,
        origin: (&str, &str),
    ) -> Result<(), StoreError> {
        let record = LinkCode {
            v: RECORD_VERSION,
            customer_id,
            expires_ms,
            platform: origin.0.to_string(),
            chat_id: origin.1.to_string(),
        };
        self.link_codes
            .insert(code.as_bytes(), Self::encode(&record))
            .map_err(|err| self.err(err))?;
        // Expired codes are swept whenever a new one is made.
        let now = now_ms();
        for entry in self.link_codes.iter() {
            let (key, bytes) = entry.map_err(|err| self.err(err))?;
            let expired = self
                .decode::<LinkCode>(TREE_LINK_CODES, &bytes)
                .map_or(true, |code| code.expires_ms < now);
            if expired {
                self.link_codes.remove(key).map_err(|err| self.err(err))?;
            }
        }
        Ok(())
    }

    /// Redeems a link code for the identity `platform`/`user_id`: that
    /// identity's customer (with every identity, conversation, ticket and
    /// event of theirs) joins the code's customer, in one transaction. The
    /// code works once.
    pub fn redeem_link_code(
        &self,
        code: &str,
        platform: &str,
        user_id: &str,
        now_ms: u64,
    ) -> Result<LinkOutcome, StoreError> {
        let Some(bytes) = self
            .link_codes
            .get(code.as_bytes())
            .map_err(|err| self.err(err))?
        else {
            return Ok(LinkOutcome::Unknown);
        };
        let link: LinkCode = self.decode(TREE_LINK_CODES, &bytes)?;
        if link.expires_ms < now_ms {
            self.link_codes
                .remove(code.as_bytes())
                .map_err(|err| self.err(err))?;
            return Ok(LinkOutcome::Expired);
        }
        let into = link.customer_id;
        if self.customer(into)?.is_none() {
            return Ok(LinkOutcome::Unknown);
        }
        let from = match self.find_customer(platform, user_id)? {
            Some(customer) if customer.id == into => return Ok(LinkOutcome::AlreadyLinked),
            Some(customer) => customer.id,
            None => {
                self.link_codes
                    .remove(code.as_bytes())
                    .map_err(|err| self.err(err))?;
                self.identities
                    .insert(Self::identity_key(platform, user_id), &into.to_be_bytes())
                    .map_err(|err| self.err(err))?;
                return Ok(LinkOutcome::AlreadyLinked);
            }
        };
        // Held from the plan to the commit, so no ticket changes in between.
        let _tickets = self.lock_tickets();
        let plan = self.plan_join(from, into)?;
        let _one = self.one_transaction();
        let joined = (
            &self.link_codes,
            &self.identities,
            &self.conversations,
            &self.customer_conversations,
            &self.active,
            &self.tickets,
            &self.active_tickets,
            &self.customer_tickets,
            &self.customers,
            &self.events,
        )
            .transaction(
                |(
                    codes,
                    identities,
                    conversations,
                    customer_conversations,
                    active,
                    tickets,
                    active_tickets,
                    customer_tickets,
                    customers,
                    events,
                )| {
                    // Used by someone else since it was read.
                    if codes.remove(code.as_bytes())?.is_none() {
                        return Err(sled::transaction::ConflictableTransactionError::Abort(()));
                    }
                    let into_bytes = into.to_be_bytes();
                    for key in &plan.identities {
                        identities.insert(key.as_slice(), &into_bytes)?;
                    }
                    for moved in &plan.conversations {
                        conversations.insert(&moved.id.to_be_bytes(), moved.record.as_slice())?;
                        customer_conversations.insert(moved.new_index.as_slice(), &[])?;
                        customer_conversations.remove(moved.old_index.as_slice())?;
                    }
                    for [old_key, new_key, value] in &plan.active {
                        // A chat both customers used keeps the code owner's conversation.
                        if active.get(new_key.as_slice())?.is_none() {
                            active.insert(new_key.as_slice(), value.as_slice())?;
                        }
                        active.remove(old_key.as_slice())?;
                    }
                    for moved in &plan.tickets {
                        let id = moved.id.to_be_bytes();
                        tickets.insert(&id, moved.record.as_slice())?;
                        if active_tickets.get(moved.old_active.as_slice())?.as_deref()
                            == Some(id.as_slice())
                        {
                            active_tickets.remove(moved.old_active.as_slice())?;
                        }
                        if let Some(new_active) = &moved.new_active {
                            active_tickets.insert(new_active.as_slice(), &id)?;
                        }
                        customer_tickets.insert(moved.new_index.as_slice(), &[])?;
                        customer_tickets.remove(moved.old_index.as_slice())?;
                    }
                    for key in &plan.old_events {
                        events.remove(key.as_slice())?;
                    }
                    for (key, record) in &plan.new_events {
                        events.insert(key.as_slice(), record.as_slice())?;
                    }
                    customers.remove(&from.to_be_bytes())?;
                    customers.insert(&into_bytes, plan.into_record.as_slice())?;
                    Ok(())
                },
            );
        match joined {
            Ok(()) => Ok(LinkOutcome::Linked {
                from,
                into,
                code: link,
            }),
            Err(sled::transaction::TransactionError::Abort(())) => Ok(LinkOutcome::Unknown),
            Err(err) => Err(self.transaction_error(err)),
        }
    }

    /// Every write that joining customer `from` into `into` makes, read
    /// before the transaction (sled's transactions cannot scan).
    fn plan_join(&self, from: u64, into: u64) -> Result<JoinPlan, StoreError> {
        let mut plan = JoinPlan::default();
        let (Some(from_customer), Some(mut into_customer)) =
            (self.customer(from)?, self.customer(into)?)
        else {
            return Err(StoreError::NotFound(format!("customer {from} or {into}")));
        };
        // `from`'s messages stay sealed under its keys, which `into` now holds.
        for key in from_customer.data_keys() {
            if let KeyId::Customer(id) = key {
                if !into_customer.inherited_keys.contains(&id) {
                    into_customer.inherited_keys.push(id);
                }
            }
        }
        plan.into_record = self.seal(into_customer.sealing_key(), &into_customer)?;
        // Every identity of `from` moves, so no identity points at a removed customer.
        for entry in self.identities.iter() {
            let (key, value) = entry.map_err(|err| self.err(err))?;
            if decode_u64(&value) == Some(from) {
                plan.identities.push(key.to_vec());
            }
        }
        for (key, mut conversation) in self.indexed_conversations(from)? {
            let id = conversation.id;
            conversation.customer_id = into;
            let mut moved = into.to_be_bytes().to_vec();
            moved.extend_from_slice(&id.to_be_bytes());
            plan.conversations.push(MovedConversation {
                id,
                record: Self::encode(&conversation),
                old_index: key,
                new_index: moved,
            });
        }
        for entry in self.active.scan_prefix(from.to_be_bytes()) {
            let (key, value) = entry.map_err(|err| self.err(err))?;
            let mut moved = into.to_be_bytes().to_vec();
            moved.extend_from_slice(&key[8..]);
            plan.active.push([key.to_vec(), moved, value.to_vec()]);
        }
        // Their tickets follow them, so repeat contact still counts.
        for entry in self.customer_tickets.scan_prefix(from.to_be_bytes()) {
            let (key, _) = entry.map_err(|err| self.err(err))?;
            let Some(id) = key.get(8..16).and_then(decode_u64) else {
                continue;
            };
            let Some(mut ticket) = self.ticket(id)? else {
                continue;
            };
            let old_active = Self::active_ticket_key(&ticket.platform, &ticket.chat_id, from);
            ticket.customer_id = into;
            let new_active = ticket
                .state
                .with_agents()
                .then(|| Self::active_ticket_key(&ticket.platform, &ticket.chat_id, into));
            plan.tickets.push(MovedTicket {
                id,
                record: self.encode_ticket(&ticket)?,
                old_active,
                new_active,
                old_index: key.to_vec(),
                new_index: Self::customer_ticket_key(into, id),
            });
        }
        let (from_user, into_user) = (Self::event_user(from), Self::event_user(into));
        let mut prefix = from_user.as_bytes().to_vec();
        prefix.push(0);
        for entry in self.events.scan_prefix(&prefix) {
            let (key, bytes) = entry.map_err(|err| self.err(err))?;
            let mut event: Event = self.decode(TREE_EVENTS, &bytes)?;
            event.user = into_user.clone();
            plan.old_events.push(key.to_vec());
            plan.new_events
                .push((self.event_key(&into_user)?, Self::encode(&event)));
        }
        Ok(plan)
    }
}
