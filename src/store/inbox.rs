//! The durable inbox: messages the channels handed over, kept from the moment
//! they are taken until their handling is over, so that a crash or a stop past
//! its deadline replays them at the next start. Keys are intake ids in arrival
//! order. The platforms' delivery ids taken lately are remembered, so that a
//! message its platform delivers again (the process died after storing it
//! but before acknowledging it) is taken once.

use super::*;

/// The inbox's id of one message, in arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntakeId(pub u64);

#[derive(Deserialize)]
struct InboxRecord {
    message: concierge_adapter::Inbound,
}

/// `InboxRecord` as written, borrowing the message.
#[derive(Serialize)]
struct InboxRecordRef<'a> {
    v: u32,
    message: &'a concierge_adapter::Inbound,
}

fn seen_key(message: &concierge_adapter::Inbound) -> Option<Vec<u8>> {
    let delivery = message.delivery_id.as_deref()?;
    let mut key = message.conversation.platform.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(delivery.as_bytes());
    Some(key)
}

impl Store {
    /// Adds messages to the inbox; returns their ids, in order, and `None`
    /// for a delivery taken before (in this batch too). Call `flush` before
    /// the channels acknowledge them.
    pub fn inbox_put(
        &self,
        messages: &[concierge_adapter::Inbound],
    ) -> Result<Vec<Option<IntakeId>>, StoreError> {
        let mut records = Vec::with_capacity(messages.len());
        let _sealing = self.lock_inbox_sealing();
        let key = self.inbox_key()?;
        for message in messages {
            let record = InboxRecordRef {
                v: RECORD_VERSION,
                message,
            };
            records.push((self.next_id()?, seen_key(message), self.seal(key, &record)?));
        }
        let taken_at = now_ms().to_be_bytes();
        let _one = self.one_transaction();
        (&self.inbox, &self.intake_seen)
            .transaction(|(inbox, seen)| {
                let mut ids = Vec::with_capacity(records.len());
                for (id, seen_key, record) in &records {
                    if let Some(key) = seen_key {
                        if seen.insert(key.as_slice(), &taken_at)?.is_some() {
                            ids.push(None);
                            continue;
                        }
                    }
                    inbox.insert(&id.to_be_bytes(), record.as_slice())?;
                    ids.push(Some(IntakeId(*id)));
                }
                Ok(ids)
            })
            .map_err(|err| self.transaction_error(err))
    }

    /// Forgets the delivery ids taken before `before_ms`: a platform
    /// delivers a message again only within a day or so.
    pub fn forget_deliveries_taken_before(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut forgotten = 0;
        for entry in self.intake_seen.iter() {
            let (key, taken_at) = entry.map_err(|err| self.err(err))?;
            if decode_u64(&taken_at).is_none_or(|taken_at| taken_at < before_ms) {
                batch.remove(key);
                forgotten += 1;
            }
        }
        self.intake_seen
            .apply_batch(batch)
            .map_err(|err| self.err(err))?;
        Ok(forgotten)
    }

    /// Every message still in the inbox, oldest first. A record this build
    /// cannot read is logged and left in place.
    pub fn inbox_pending(&self) -> Result<Vec<(IntakeId, concierge_adapter::Inbound)>, StoreError> {
        let mut pending = Vec::new();
        for entry in self.inbox.iter() {
            let (key, bytes) = entry.map_err(|err| self.err(err))?;
            let Some(id) = decode_u64(&key) else {
                continue;
            };
            match self.decode::<InboxRecord>(TREE_INBOX, &bytes) {
                Ok(record) => pending.push((IntakeId(id), record.message)),
                Err(err) => tracing::warn!(
                    intake = id,
                    "an inbox record cannot be read and is skipped: {err}"
                ),
            }
        }
        Ok(pending)
    }

    /// The message's handling is over: it leaves the inbox.
    pub fn inbox_done(&self, id: IntakeId) -> Result<(), StoreError> {
        let key = id.0.to_be_bytes();
        let _one = self.one_transaction();
        (&self.inbox, &self.intake_messages)
            .transaction(|(inbox, stored)| {
                inbox.remove(&key)?;
                stored.remove(&key)?;
                Ok(())
            })
            .map_err(|err| self.transaction_error(err))
    }

    fn lock_inbox_sealing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inbox_sealing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key new inbox records are sealed with.
    pub(super) fn inbox_key(&self) -> Result<KeyId, StoreError> {
        let generation = self
            .meta
            .get(KEY_INBOX_KEY)
            .map_err(|err| self.err(err))?
            .and_then(|bytes| decode_u64(&bytes))
            .unwrap_or(1);
        Ok(KeyId::Inbox(generation))
    }

    /// Seals the inbox under a new key and destroys the old ones, so that no
    /// copy of a message that passed through it (sled keeps old segments for
    /// a while) can be read any more. Records are resealed in place first.
    pub fn rotate_inbox_key(&self) -> Result<(), StoreError> {
        let _sealing = self.lock_inbox_sealing();
        let KeyId::Inbox(old) = self.inbox_key()? else {
            return Ok(());
        };
        let next = KeyId::Inbox(old + 1);
        self.keys.ensure(next)?;
        let mut batch = sled::Batch::default();
        for entry in self.inbox.iter() {
            let (key, bytes) = entry.map_err(|err| self.err(err))?;
            let record: serde_json::Value = self.decode(TREE_INBOX, &bytes)?;
            batch.insert(key, self.seal(next, &record)?);
        }
        self.inbox.apply_batch(batch).map_err(|err| self.err(err))?;
        self.meta
            .insert(KEY_INBOX_KEY, &(old + 1).to_be_bytes())
            .map_err(|err| self.err(err))?;
        self.flush_coalesced()?;
        for id in self.keys.list()? {
            if matches!(id, KeyId::Inbox(generation) if generation <= old) {
                self.keys.destroy(id)?;
            }
        }
        Ok(())
    }

    /// Messages in the inbox now.
    pub fn inbox_len(&self) -> usize {
        self.inbox.len()
    }
}
