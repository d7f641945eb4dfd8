//! `/link` codes: one-time codes, and joining two identities' customers when a code is redeemed.

use super::*;

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

    /// Uses a link code from the identity `platform`/`user_id`: that identity,
    /// and every other identity of its customer, join the code's customer,
    /// with their conversations. The code works once. Events are moved by
    /// `move_events`, whose user key the caller knows.
    pub fn redeem_link_code(
        &self,
        code: &str,
        platform: &str,
        user_id: &str,
        now_ms: u64,
    ) -> Result<LinkOutcome, StoreError> {
        let Some(bytes) = self
            .link_codes
            .remove(code.as_bytes())
            .map_err(|err| self.err(err))?
        else {
            return Ok(LinkOutcome::Unknown);
        };
        let link: LinkCode = self.decode(TREE_LINK_CODES, &bytes)?;
        if link.expires_ms < now_ms {
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
                self.identities
                    .insert(Self::identity_key(platform, user_id), &into.to_be_bytes())
                    .map_err(|err| self.err(err))?;
                return Ok(LinkOutcome::AlreadyLinked);
            }
        };
        // Every identity of `from` moves, so no identity points at a removed customer.
        for entry in self.identities.iter() {
            let (key, value) = entry.map_err(|err| self.err(err))?;
            if decode_u64(&value) == Some(from) {
                self.identities
                    .insert(key, &into.to_be_bytes())
                    .map_err(|err| self.err(err))?;
            }
        }
        for entry in self.customer_conversations.scan_prefix(from.to_be_bytes()) {
            let (key, _) = entry.map_err(|err| self.err(err))?;
            let Some(id) = key.get(8..16).and_then(decode_u64) else {
                continue;
            };
            if let Some(bytes) = self
                .conversations
                .get(id.to_be_bytes())
                .map_err(|err| self.err(err))?
            {
                let mut conversation: Conversation = self.decode(TREE_CONVERSATIONS, &bytes)?;
                conversation.customer_id = into;
                self.conversations
                    .insert(id.to_be_bytes(), Self::encode(&conversation))
                    .map_err(|err| self.err(err))?;
            }
            let mut moved = into.to_be_bytes().to_vec();
            moved.extend_from_slice(&id.to_be_bytes());
            self.customer_conversations
                .insert(moved, &[])
                .map_err(|err| self.err(err))?;
            self.customer_conversations
                .remove(key)
                .map_err(|err| self.err(err))?;
        }
        for entry in self.active.scan_prefix(from.to_be_bytes()) {
            let (key, value) = entry.map_err(|err| self.err(err))?;
            let mut moved = into.to_be_bytes().to_vec();
            moved.extend_from_slice(&key[8..]);
            // A chat both customers used keeps the code owner's conversation.
            self.active
                .compare_and_swap(moved, None as Option<&[u8]>, Some(value))
                .map_err(|err| self.err(err))?
                .ok();
            self.active.remove(key).map_err(|err| self.err(err))?;
        }
        // Their tickets follow them, so repeat contact still counts.
        let _tickets = self.lock_tickets();
        for entry in self.customer_tickets.scan_prefix(from.to_be_bytes()) {
            let (key, _) = entry.map_err(|err| self.err(err))?;
            let Some(id) = key.get(8..16).and_then(decode_u64) else {
                continue;
            };
            if let Some(mut ticket) = self.ticket(id)? {
                ticket.customer_id = into;
                self.put_ticket(&ticket)?;
            }
            self.customer_tickets
                .remove(key)
                .map_err(|err| self.err(err))?;
        }
        self.customers
            .remove(from.to_be_bytes())
            .map_err(|err| self.err(err))?;
        Ok(LinkOutcome::Linked {
            from,
            into,
            code: link,
        })
    }
}
