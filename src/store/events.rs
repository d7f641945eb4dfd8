//! Interaction events (views, purchases, ratings) per user, with the ids that make a retried batch count once.

use super::*;

/// What a customer did with an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Looked at it.
    View,
    /// Clicked it.
    Click,
    /// Liked it (👍).
    Like,
    /// Disliked it (👎): never recommend it again.
    Dislike,
    /// Put it in the cart.
    Cart,
    /// Bought it.
    Purchase,
    /// Rated it (`value`).
    Rating,
}

impl EventKind {
    /// Parses a kind name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.trim().to_ascii_lowercase().as_str() {
            "view" => Self::View,
            "click" => Self::Click,
            "like" => Self::Like,
            "dislike" => Self::Dislike,
            "cart" => Self::Cart,
            "purchase" => Self::Purchase,
            "rating" => Self::Rating,
            _ => return None,
        })
    }
}

/// An interaction event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Record schema version.
    pub v: u32,
    /// The customer (the shop's user id or a platform identity).
    pub user: String,
    /// The item id.
    pub item: String,
    /// What happened.
    pub kind: EventKind,
    /// When (Unix milliseconds).
    pub ts_ms: u64,
    /// Rating value, for `rating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The sender's id of the event, when it gave one: an event whose id is
    /// stored already is not stored again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Store {
    pub(super) fn event_key(&self, user: &str) -> Result<Vec<u8>, StoreError> {
        let mut key = user.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&self.next_id()?.to_be_bytes());
        Ok(key)
    }

    /// Appends events in one transaction, skipping those whose `id` is stored
    /// already (or repeated in the batch); returns how many were stored.
    /// Call `flush` before acknowledging them.
    pub fn events_append(&self, events: &[Event]) -> Result<usize, StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;
        let keyed = events
            .iter()
            .map(|event| Ok((self.event_key(&event.user)?, Self::encode(event), event)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let _one = self.one_transaction();
        let stored = (&self.events, &self.event_ids)
            .transaction(|(tree, ids)| {
                let mut stored = 0;
                let mut in_batch = std::collections::HashSet::new();
                for (key, bytes, event) in &keyed {
                    if let Some(id) = &event.id {
                        if !in_batch.insert(id.as_str()) || ids.get(id.as_bytes())?.is_some() {
                            continue;
                        }
                        ids.insert(id.as_bytes(), &[][..])?;
                    }
                    tree.insert(key.as_slice(), bytes.as_slice())?;
                    stored += 1;
                }
                Ok::<usize, ConflictableTransactionError<()>>(stored)
            })
            .map_err(|err| match err {
                TransactionError::Storage(err) => self.err(err),
                TransactionError::Abort(()) => StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: "event transaction aborted".into(),
                },
            })?;
        Ok(stored)
    }

    /// A user's events, oldest first.
    pub fn user_events(&self, user: &str) -> Result<Vec<Event>, StoreError> {
        let mut prefix = user.as_bytes().to_vec();
        prefix.push(0);
        self.events
            .scan_prefix(prefix)
            .map(|entry| {
                let (_, bytes) = entry.map_err(|err| self.err(err))?;
                self.decode(TREE_EVENTS, &bytes)
            })
            .collect()
    }

    /// Every event, grouped by user.
    pub fn all_events(&self) -> Result<Vec<Event>, StoreError> {
        self.records(&self.events, TREE_EVENTS)
    }

    /// The user key of a chat customer in interaction events.
    pub fn event_user(customer_id: u64) -> String {
        format!("customer:{customer_id}")
    }
}
