//! The durable inbox: messages the channels handed over, kept from the moment
//! they are taken until their handling is over, so that a crash or a stop past
//! its deadline replays them at the next start. Keys are intake ids in arrival
//! order.

use super::*;

/// The inbox's id of one message, in arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntakeId(pub u64);

#[derive(Serialize, Deserialize)]
struct InboxRecord {
    v: u32,
    message: concierge_adapter::Inbound,
}

impl Store {
    /// Adds messages to the inbox; returns their ids, in order. Call `flush`
    /// before the channels acknowledge them.
    pub fn inbox_put(
        &self,
        messages: &[concierge_adapter::Inbound],
    ) -> Result<Vec<IntakeId>, StoreError> {
        let mut batch = sled::Batch::default();
        let mut ids = Vec::with_capacity(messages.len());
        for message in messages {
            let id = self.next_id()?;
            let record = InboxRecord {
                v: RECORD_VERSION,
                message: message.clone(),
            };
            batch.insert(&id.to_be_bytes(), Self::encode(&record));
            ids.push(IntakeId(id));
        }
        self.inbox.apply_batch(batch).map_err(|err| self.err(err))?;
        Ok(ids)
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
            match serde_json::from_slice::<InboxRecord>(&bytes) {
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
        (&self.inbox, &self.intake_messages)
            .transaction(|(inbox, stored)| {
                inbox.remove(&key)?;
                stored.remove(&key)?;
                Ok(())
            })
            .map_err(|err| self.transaction_error(err))
    }

    /// Messages in the inbox now.
    pub fn inbox_len(&self) -> usize {
        self.inbox.len()
    }
}
