//! The embedded store: the only importer of `sled`. Typed trees for
//! customers, their platform identities, conversations and messages; every
//! record carries a schema version; the store's own version is checked and
//! migrated on open.
//!
//! Architecture invariant: a write that the caller acknowledges to a customer
//! is followed by `flush()` before the acknowledgement, so `kill -9` loses none.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::escalation::ticket::{Priority, TicketState};
use crate::prompts::Locale;

/// Version of the store layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 2;
/// Version written into every record.
pub const RECORD_VERSION: u32 = 1;

const TREE_META: &str = "meta";
const TREE_CUSTOMERS: &str = "customers";
const TREE_IDENTITIES: &str = "identities";
const TREE_CONVERSATIONS: &str = "conversations";
const TREE_ACTIVE: &str = "active_conversations";
const TREE_CUSTOMER_CONVERSATIONS: &str = "customer_conversations";
const TREE_MESSAGES: &str = "messages";
const TREE_KB_DOCS: &str = "kb_docs";
const TREE_CATALOG: &str = "catalog";
const TREE_EVENTS: &str = "events";
/// Ids of stored events that came with one, so a retried batch stores nothing twice.
const TREE_EVENT_IDS: &str = "event_ids";
const TREE_LINK_CODES: &str = "link_codes";
const TREE_TICKETS: &str = "tickets";
const TREE_ACTIVE_TICKETS: &str = "active_tickets";
/// Agents' threads, topics and posted messages -> the ticket they are about.
const TREE_AGENT_POSTS: &str = "agent_posts";
/// `customer id ++ ticket id` -> (): each customer's tickets (schema 2).
const TREE_CUSTOMER_TICKETS: &str = "customer_tickets";
const KEY_TICKET_COUNTER: &[u8] = b"ticket_counter";
const KEY_KB_GENERATION: &[u8] = b"kb_generation";
const KEY_SCHEMA: &[u8] = b"schema_version";
/// A file beside the database that records that it was initialised. sled
/// recovers a damaged log by discarding what follows the damage, so a store
/// whose start is damaged opens empty; this marker turns that silent loss
/// into an error.
const MARKER_FILE: &str = "store.initialised";

/// Errors of the store. Each says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (usually a running `concierge serve`) holds the store.
    #[error("the store at {path} is in use by another Concierge process (is `concierge serve` running?); stop it first, or point --data-dir elsewhere")]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// sled found damaged data.
    #[error("the store at {path} is corrupt ({detail}); restore it from a backup or move it aside to start empty")]
    Corrupt {
        /// The data directory.
        path: PathBuf,
        /// What sled or the decoder reported.
        detail: String,
    },
    /// The store was written by a newer Concierge.
    #[error("the store at {path} has schema version {found}, newer than this build's {supported}; upgrade Concierge")]
    TooNew {
        /// The data directory.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version this build supports.
        supported: u32,
    },
    /// Any other I/O failure.
    #[error("store i/o error at {path}: {detail}")]
    Io {
        /// The data directory.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A referenced record does not exist.
    #[error("{0} not found")]
    NotFound(String),
}

/// A customer, one person across platforms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    /// Record schema version.
    pub v: u32,
    /// Store-wide id.
    pub id: u64,
    /// When the profile was created (Unix milliseconds).
    pub created_ms: u64,
    /// Set by `/start`: the customer saw the privacy note.
    pub registered: bool,
    /// Language of the customer's latest message.
    pub locale: Option<Locale>,
    /// A display name from the platform, if any.
    pub display_name: Option<String>,
}

/// One line of a ticket's transcript.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TranscriptLine {
    /// When (Unix milliseconds).
    pub ts_ms: u64,
    /// `customer`, `bot`, `agent` or `note` (internal, never sent to the customer).
    pub role: String,
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
    /// `complaint` or `human_request`.
    pub category: String,
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

/// One conversation of a customer in one chat; `/reset` starts a new one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Record schema version.
    pub v: u32,
    /// Store-wide id.
    pub id: u64,
    /// The customer.
    pub customer_id: u64,
    /// Platform of the chat.
    pub platform: String,
    /// The platform's chat id.
    pub chat_id: String,
    /// When it started (Unix milliseconds).
    pub started_ms: u64,
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The customer.
    User,
    /// The bot.
    Assistant,
}

/// One stored message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Record schema version.
    pub v: u32,
    /// When it was stored (Unix milliseconds).
    pub ts_ms: u64,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub text: String,
    /// Knowledge-base passages the answer was grounded in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceRef>,
}

/// A passage an answer used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// Document id.
    pub doc: String,
    /// Title of the passage.
    pub title: String,
    /// Index of the passage in the document.
    pub passage: usize,
}

/// One item of the shop's catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogItem {
    /// Record schema version.
    pub v: u32,
    /// The shop's item id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Category.
    pub category: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Price, if the item has one.
    pub price: Option<f64>,
    /// Currency of the price, e.g. EUR.
    pub currency: String,
    /// Link to the item.
    pub url: String,
    /// Whether it can be bought now.
    pub in_stock: bool,
}

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

/// What kind of source a knowledge-base document came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KbKind {
    /// A Markdown document.
    Markdown,
    /// A plain-text document.
    Text,
    /// One question/answer row of an FAQ file.
    Faq,
}

/// One passage of a knowledge-base document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KbPassage {
    /// Heading path, e.g. "Returns > Refund times"; the question for FAQ rows.
    pub title: String,
    /// The passage text; the answer for FAQ rows.
    pub text: String,
}

/// A knowledge-base document: the source of truth the search index is built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KbDoc {
    /// Record schema version.
    pub v: u32,
    /// Id: the path relative to the imported root (`faq.csv#3` for FAQ rows).
    pub id: String,
    /// The imported root this document came from, for removal on re-import.
    pub root: String,
    /// Document title.
    pub title: String,
    /// Language of the document.
    pub locale: Option<Locale>,
    /// Source kind.
    pub kind: KbKind,
    /// Hash of the source text, to skip unchanged documents.
    pub content_hash: u64,
    /// The passages, in document order.
    pub passages: Vec<KbPassage>,
}

/// The store. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    customers: sled::Tree,
    identities: sled::Tree,
    conversations: sled::Tree,
    active: sled::Tree,
    customer_conversations: sled::Tree,
    messages: sled::Tree,
    kb_docs: sled::Tree,
    meta: sled::Tree,
    catalog: sled::Tree,
    events: sled::Tree,
    event_ids: sled::Tree,
    link_codes: sled::Tree,
    tickets: sled::Tree,
    active_tickets: sled::Tree,
    agent_posts: sled::Tree,
    customer_tickets: sled::Tree,
    /// Held while a ticket is read, changed and written back, by every
    /// clone: two changes at once never overwrite each other.
    ticket_writes: std::sync::Arc<std::sync::Mutex<()>>,
    /// Durable flushes made through this store (all clones), for tests and
    /// diagnostics.
    flushes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("store");
        // Inside the database directory, so moving it aside moves the marker too.
        let marker = path.join(MARKER_FILE);
        std::fs::create_dir_all(&path).map_err(|err| StoreError::Io {
            path: path.clone(),
            detail: err.to_string(),
        })?;
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|err| classify_open_error(&path, err))?;
        let map = |err: sled::Error| store_error(&path, err);
        let store = Self {
            customers: db.open_tree(TREE_CUSTOMERS).map_err(map)?,
            identities: db.open_tree(TREE_IDENTITIES).map_err(map)?,
            conversations: db.open_tree(TREE_CONVERSATIONS).map_err(map)?,
            active: db.open_tree(TREE_ACTIVE).map_err(map)?,
            customer_conversations: db.open_tree(TREE_CUSTOMER_CONVERSATIONS).map_err(map)?,
            messages: db.open_tree(TREE_MESSAGES).map_err(map)?,
            kb_docs: db.open_tree(TREE_KB_DOCS).map_err(map)?,
            catalog: db.open_tree(TREE_CATALOG).map_err(map)?,
            events: db.open_tree(TREE_EVENTS).map_err(map)?,
            event_ids: db.open_tree(TREE_EVENT_IDS).map_err(map)?,
            link_codes: db.open_tree(TREE_LINK_CODES).map_err(map)?,
            tickets: db.open_tree(TREE_TICKETS).map_err(map)?,
            active_tickets: db.open_tree(TREE_ACTIVE_TICKETS).map_err(map)?,
            agent_posts: db.open_tree(TREE_AGENT_POSTS).map_err(map)?,
            customer_tickets: db.open_tree(TREE_CUSTOMER_TICKETS).map_err(map)?,
            ticket_writes: Default::default(),
            flushes: Default::default(),
            meta: db.open_tree(TREE_META).map_err(map)?,
            path,
            db,
        };
        store.migrate(&marker)?;
        Ok(store)
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, err: sled::Error) -> StoreError {
        store_error(&self.path, err)
    }

    fn migrate(&self, marker: &Path) -> Result<(), StoreError> {
        let meta = &self.meta;
        let found = match meta.get(KEY_SCHEMA).map_err(|err| self.err(err))? {
            Some(bytes) => {
                let raw: [u8; 4] = bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: "schema version record has the wrong size".into(),
                })?;
                u32::from_be_bytes(raw)
            }
            None if marker.exists() => {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!(
                        "the database lost its records ({} says it was initialised, but it opened empty)",
                        marker.display()
                    ),
                });
            }
            None => 0,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            // Version 0 is an empty store; each later version adds a step.
            if found == 1 {
                self.index_customer_tickets()?;
            }
            meta.insert(KEY_SCHEMA, &SCHEMA_VERSION.to_be_bytes())
                .map_err(|err| self.err(err))?;
            self.db.flush().map_err(|err| self.err(err))?;
        }
        if !marker.exists() {
            std::fs::write(marker, format!("schema_version = {SCHEMA_VERSION}\n")).map_err(
                |err| StoreError::Io {
                    path: marker.to_path_buf(),
                    detail: err.to_string(),
                },
            )?;
        }
        Ok(())
    }

    /// Schema 2: the index of each customer's tickets, from the tickets.
    fn index_customer_tickets(&self) -> Result<(), StoreError> {
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

    fn customer_ticket_key(customer_id: u64, ticket_id: u64) -> Vec<u8> {
        let mut key = customer_id.to_be_bytes().to_vec();
        key.extend_from_slice(&ticket_id.to_be_bytes());
        key
    }

    fn decode<T: DeserializeOwned>(&self, tree: &str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("undecodable record in {tree}: {err}"),
        })
    }

    /// Every record of a tree, in key order.
    fn records<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        name: &str,
    ) -> Result<Vec<T>, StoreError> {
        tree.iter()
            .map(|entry| {
                let (_, bytes) = entry.map_err(|err| self.err(err))?;
                self.decode(name, &bytes)
            })
            .collect()
    }

    /// One record of a tree.
    fn record<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        name: &str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match tree.get(key).map_err(|err| self.err(err))? {
            Some(bytes) => self.decode(name, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_vec(value).unwrap_or_default()
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        // sled ids start at 0; keep 0 free as "none".
        self.db
            .generate_id()
            .map(|id| id + 1)
            .map_err(|err| self.err(err))
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.db.flush_async().await.map_err(|err| self.err(err))?;
        Ok(())
    }

    /// Durable flushes made so far through this store and its clones.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Blocking flush, for shutdown paths outside async code.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.db.flush().map_err(|err| self.err(err))?;
        Ok(())
    }

    fn identity_key(platform: &str, user_id: &str) -> Vec<u8> {
        let mut key = platform.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(user_id.as_bytes());
        key
    }

    /// The customer behind a platform identity, if known.
    pub fn find_customer(
        &self,
        platform: &str,
        user_id: &str,
    ) -> Result<Option<Customer>, StoreError> {
        let key = Self::identity_key(platform, user_id);
        let Some(id) = self.identities.get(key).map_err(|err| self.err(err))? else {
            return Ok(None);
        };
        let id = decode_u64(&id).ok_or_else(|| StoreError::Corrupt {
            path: self.path.clone(),
            detail: "identity record has the wrong size".into(),
        })?;
        self.customer(id)
    }

    /// A customer by id.
    pub fn customer(&self, id: u64) -> Result<Option<Customer>, StoreError> {
        self.record(&self.customers, TREE_CUSTOMERS, &id.to_be_bytes())
    }

    /// The customer behind a platform identity, created on first contact.
    pub fn customer_for_identity(
        &self,
        platform: &str,
        user_id: &str,
        display_name: Option<&str>,
    ) -> Result<Customer, StoreError> {
        if let Some(customer) = self.find_customer(platform, user_id)? {
            return Ok(customer);
        }
        let customer = Customer {
            v: RECORD_VERSION,
            id: self.next_id()?,
            created_ms: now_ms(),
            registered: false,
            locale: None,
            display_name: display_name.map(str::to_string),
        };
        let key = Self::identity_key(platform, user_id);
        let customer_bytes = Self::encode(&customer);
        let result = (&self.customers, &self.identities).transaction(|(customers, identities)| {
            if let Some(existing) = identities.get(&key)? {
                return Ok(Some(existing));
            }
            customers.insert(&customer.id.to_be_bytes(), customer_bytes.as_slice())?;
            identities.insert(key.as_slice(), &customer.id.to_be_bytes())?;
            Ok(None)
        });
        match result {
            Ok(None) => Ok(customer),
            Ok(Some(_)) => self
                .find_customer(platform, user_id)?
                .ok_or_else(|| StoreError::NotFound(format!("customer for {platform}:{user_id}"))),
            Err(err) => Err(self.transaction_error(err)),
        }
    }

    fn transaction_error(&self, err: sled::transaction::TransactionError<()>) -> StoreError {
        match err {
            sled::transaction::TransactionError::Storage(err) => self.err(err),
            sled::transaction::TransactionError::Abort(()) => StoreError::Io {
                path: self.path.clone(),
                detail: "transaction aborted".into(),
            },
        }
    }

    /// Saves a changed customer profile.
    pub fn update_customer(&self, customer: &Customer) -> Result<(), StoreError> {
        self.customers
            .insert(customer.id.to_be_bytes(), Self::encode(customer))
            .map_err(|err| self.err(err))?;
        Ok(())
    }

    fn active_key(customer_id: u64, platform: &str, chat_id: &str) -> Vec<u8> {
        let mut key = customer_id.to_be_bytes().to_vec();
        key.extend_from_slice(platform.as_bytes());
        key.push(0);
        key.extend_from_slice(chat_id.as_bytes());
        key
    }

    /// The customer's current conversation in a chat, started if none.
    pub fn current_conversation(
        &self,
        customer_id: u64,
        platform: &str,
        chat_id: &str,
    ) -> Result<Conversation, StoreError> {
        let key = Self::active_key(customer_id, platform, chat_id);
        if let Some(id) = self.active.get(&key).map_err(|err| self.err(err))? {
            if let Some(id) = decode_u64(&id) {
                if let Some(bytes) = self
                    .conversations
                    .get(id.to_be_bytes())
                    .map_err(|err| self.err(err))?
                {
                    return self.decode(TREE_CONVERSATIONS, &bytes);
                }
            }
        }
        self.start_conversation(customer_id, platform, chat_id)
    }

    /// Starts a new conversation in a chat; earlier ones stay in history.
    pub fn start_conversation(
        &self,
        customer_id: u64,
        platform: &str,
        chat_id: &str,
    ) -> Result<Conversation, StoreError> {
        let conversation = Conversation {
            v: RECORD_VERSION,
            id: self.next_id()?,
            customer_id,
            platform: platform.to_string(),
            chat_id: chat_id.to_string(),
            started_ms: now_ms(),
        };
        let id_bytes = conversation.id.to_be_bytes();
        let active_key = Self::active_key(customer_id, platform, chat_id);
        let mut index_key = customer_id.to_be_bytes().to_vec();
        index_key.extend_from_slice(&id_bytes);
        let record = Self::encode(&conversation);
        (
            &self.conversations,
            &self.active,
            &self.customer_conversations,
        )
            .transaction(|(conversations, active, index)| {
                conversations.insert(&id_bytes, record.as_slice())?;
                active.insert(active_key.as_slice(), &id_bytes)?;
                index.insert(index_key.as_slice(), &[])?;
                Ok(())
            })
            .map_err(|err| self.transaction_error(err))?;
        Ok(conversation)
    }

    /// Appends a message to a conversation. Call `flush` before telling
    /// anyone it is stored.
    pub fn append_message(
        &self,
        conversation_id: u64,
        role: Role,
        text: &str,
    ) -> Result<StoredMessage, StoreError> {
        self.append_message_with_sources(conversation_id, role, text, Vec::new())
    }

    /// Appends a message with the knowledge-base passages it used.
    pub fn append_message_with_sources(
        &self,
        conversation_id: u64,
        role: Role,
        text: &str,
        sources: Vec<SourceRef>,
    ) -> Result<StoredMessage, StoreError> {
        let message = StoredMessage {
            v: RECORD_VERSION,
            ts_ms: now_ms(),
            role,
            text: text.to_string(),
            sources,
        };
        let mut key = conversation_id.to_be_bytes().to_vec();
        key.extend_from_slice(&self.next_id()?.to_be_bytes());
        self.messages
            .insert(key, Self::encode(&message))
            .map_err(|err| self.err(err))?;
        Ok(message)
    }

    /// Messages of one conversation, oldest first.
    pub fn conversation_messages(
        &self,
        conversation_id: u64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.messages
            .scan_prefix(conversation_id.to_be_bytes())
            .map(|entry| {
                let (_, bytes) = entry.map_err(|err| self.err(err))?;
                self.decode(TREE_MESSAGES, &bytes)
            })
            .collect()
    }

    /// The newest `limit` messages of a conversation, oldest first.
    pub fn recent_messages(
        &self,
        conversation_id: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut newest_first = Vec::with_capacity(limit.min(256));
        for entry in self
            .messages
            .scan_prefix(conversation_id.to_be_bytes())
            .rev()
            .take(limit)
        {
            let (_, bytes) = entry.map_err(|err| self.err(err))?;
            newest_first.push(self.decode(TREE_MESSAGES, &bytes)?);
        }
        newest_first.reverse();
        Ok(newest_first)
    }

    /// Every conversation of a customer, oldest first, optionally on one platform.
    pub fn customer_conversations(
        &self,
        customer_id: u64,
        platform: Option<&str>,
    ) -> Result<Vec<Conversation>, StoreError> {
        let mut conversations = Vec::new();
        for entry in self
            .customer_conversations
            .scan_prefix(customer_id.to_be_bytes())
        {
            let (key, _) = entry.map_err(|err| self.err(err))?;
            let Some(id) = key.get(8..16).and_then(decode_u64) else {
                continue;
            };
            let Some(bytes) = self
                .conversations
                .get(id.to_be_bytes())
                .map_err(|err| self.err(err))?
            else {
                continue;
            };
            let conversation: Conversation = self.decode(TREE_CONVERSATIONS, &bytes)?;
            if platform.is_none_or(|platform| platform == conversation.platform) {
                conversations.push(conversation);
            }
        }
        Ok(conversations)
    }

    /// Every knowledge-base document, ordered by id.
    pub fn kb_docs(&self) -> Result<Vec<KbDoc>, StoreError> {
        self.records(&self.kb_docs, TREE_KB_DOCS)
    }

    /// One knowledge-base document.
    pub fn kb_doc(&self, id: &str) -> Result<Option<KbDoc>, StoreError> {
        self.record(&self.kb_docs, TREE_KB_DOCS, id.as_bytes())
    }

    /// Adds or replaces documents and removes others, in one transaction that
    /// also advances the knowledge-base generation.
    pub fn kb_apply(&self, put: &[KbDoc], remove: &[String]) -> Result<u64, StoreError> {
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = put
            .iter()
            .map(|doc| (doc.id.as_bytes().to_vec(), Self::encode(doc)))
            .collect();
        let generation = (&self.kb_docs, &self.meta)
            .transaction(|(docs, meta)| {
                for (key, value) in &encoded {
                    docs.insert(key.as_slice(), value.as_slice())?;
                }
                for id in remove {
                    docs.remove(id.as_bytes())?;
                }
                let next = meta
                    .get(KEY_KB_GENERATION)?
                    .and_then(|bytes| decode_u64(&bytes))
                    .unwrap_or(0)
                    + 1;
                meta.insert(KEY_KB_GENERATION, &next.to_be_bytes())?;
                Ok(next)
            })
            .map_err(|err| self.transaction_error(err))?;
        Ok(generation)
    }

    /// Adds or replaces catalog items by id; returns (added, updated).
    pub fn catalog_put(&self, items: &[CatalogItem]) -> Result<(usize, usize), StoreError> {
        let (mut added, mut updated) = (0, 0);
        for item in items {
            let previous = self
                .catalog
                .insert(item.id.as_bytes(), Self::encode(item))
                .map_err(|err| self.err(err))?;
            if previous.is_some() {
                updated += 1;
            } else {
                added += 1;
            }
        }
        Ok((added, updated))
    }

    /// Every catalog item, ordered by id.
    pub fn catalog_items(&self) -> Result<Vec<CatalogItem>, StoreError> {
        self.records(&self.catalog, TREE_CATALOG)
    }

    /// One catalog item.
    pub fn catalog_item(&self, id: &str) -> Result<Option<CatalogItem>, StoreError> {
        self.record(&self.catalog, TREE_CATALOG, id.as_bytes())
    }

    fn event_key(&self, user: &str) -> Result<Vec<u8>, StoreError> {
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
        let chat_key = Self::identity_key(&ticket.platform, &ticket.chat_id);
        let id = ticket.id.to_be_bytes();
        let record = Self::encode(ticket);
        let active = ticket.state.with_agents();
        let customer_key = Self::customer_ticket_key(ticket.customer_id, ticket.id);
        (&self.tickets, &self.active_tickets, &self.customer_tickets)
            .transaction(|(tickets, index, by_customer)| {
                tickets.insert(&id, record.as_slice())?;
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

    /// A ticket by number.
    pub fn ticket(&self, id: u64) -> Result<Option<Ticket>, StoreError> {
        self.record(&self.tickets, TREE_TICKETS, &id.to_be_bytes())
    }

    /// Every ticket, oldest first.
    pub fn tickets(&self) -> Result<Vec<Ticket>, StoreError> {
        self.records(&self.tickets, TREE_TICKETS)
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

    /// The ticket of a customer's chat that people handle now, if any.
    pub fn active_ticket_for(
        &self,
        platform: &str,
        chat_id: &str,
    ) -> Result<Option<Ticket>, StoreError> {
        let key = Self::identity_key(platform, chat_id);
        let Some(id) = self.active_tickets.get(key).map_err(|err| self.err(err))? else {
            return Ok(None);
        };
        let Some(id) = decode_u64(&id) else {
            return Ok(None);
        };
        Ok(self.ticket(id)?.filter(|ticket| ticket.state.with_agents()))
    }

    fn agent_post_key(platform: &str, chat_id: &str, message_id: Option<&str>) -> Vec<u8> {
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

    /// Moves every event of `from` to `into` (after a link).
    pub fn move_events(&self, from: &str, into: &str) -> Result<usize, StoreError> {
        let events = self.user_events(from)?;
        let mut prefix = from.as_bytes().to_vec();
        prefix.push(0);
        let mut batch = sled::Batch::default();
        for entry in self.events.scan_prefix(&prefix) {
            let (key, _) = entry.map_err(|err| self.err(err))?;
            batch.remove(key);
        }
        for event in &events {
            let moved = Event {
                user: into.to_string(),
                ..event.clone()
            };
            batch.insert(self.event_key(into)?, Self::encode(&moved));
        }
        self.events
            .apply_batch(batch)
            .map_err(|err| self.err(err))?;
        Ok(events.len())
    }

    /// Advances on every knowledge-base change; derived indexes compare it.
    pub fn kb_generation(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(KEY_KB_GENERATION)
            .map_err(|err| self.err(err))?
            .and_then(|bytes| decode_u64(&bytes))
            .unwrap_or(0))
    }
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn classify_open_error(path: &Path, err: sled::Error) -> StoreError {
    if let sled::Error::Io(io) = &err {
        let text = io.to_string();
        if io.kind() == std::io::ErrorKind::WouldBlock || text.contains("lock") {
            return StoreError::Locked {
                path: path.to_path_buf(),
            };
        }
    }
    store_error(path, err)
}

fn store_error(path: &Path, err: sled::Error) -> StoreError {
    match err {
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: err.to_string(),
        },
        other => StoreError::Io {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

use sled::Transactional;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Opens the store again in the same process: sled's flusher thread can
    /// hold the file lock for a moment after the last handle is dropped.
    pub(crate) fn reopen(dir: &Path) -> Result<Store, StoreError> {
        for _ in 0..50 {
            match Store::open(dir) {
                Err(StoreError::Locked { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                other => return other,
            }
        }
        Store::open(dir)
    }

    #[test]
    fn customers_conversations_and_messages_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alice = store
            .customer_for_identity("console", "alice", None)
            .unwrap();
        let again = store
            .customer_for_identity("console", "alice", None)
            .unwrap();
        assert_eq!(alice.id, again.id);
        let bob = store
            .customer_for_identity("telegram", "alice", None)
            .unwrap();
        assert_ne!(alice.id, bob.id, "identities are per platform");

        let first = store
            .current_conversation(alice.id, "console", "alice")
            .unwrap();
        store.append_message(first.id, Role::User, "hello").unwrap();
        store
            .append_message(first.id, Role::Assistant, "hi")
            .unwrap();
        assert_eq!(
            store
                .current_conversation(alice.id, "console", "alice")
                .unwrap(),
            first
        );
        let second = store
            .start_conversation(alice.id, "console", "alice")
            .unwrap();
        assert_ne!(first.id, second.id);
        store
            .append_message(second.id, Role::User, "again")
            .unwrap();

        let texts: Vec<String> = store
            .conversation_messages(first.id)
            .unwrap()
            .into_iter()
            .map(|message| message.text)
            .collect();
        assert_eq!(texts, ["hello", "hi"]);
        assert_eq!(store.recent_messages(first.id, 1).unwrap()[0].text, "hi");
        assert_eq!(
            store.customer_conversations(alice.id, None).unwrap().len(),
            2
        );
        assert!(store
            .customer_conversations(alice.id, Some("telegram"))
            .unwrap()
            .is_empty());
    }

    /// Stores one message of customer "u" in a store in `dir`, flushed and closed.
    fn store_one_message(dir: &Path, text: &str) {
        let store = Store::open(dir).unwrap();
        let customer = store.customer_for_identity("console", "u", None).unwrap();
        let conversation = store
            .current_conversation(customer.id, "console", "u")
            .unwrap();
        store
            .append_message(conversation.id, Role::User, text)
            .unwrap();
        store.flush_blocking().unwrap();
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        store_one_message(dir.path(), "kept");
        let store = reopen(dir.path()).unwrap();
        let customer = store.find_customer("console", "u").unwrap().unwrap();
        let conversation = store
            .current_conversation(customer.id, "console", "u")
            .unwrap();
        assert_eq!(
            store.conversation_messages(conversation.id).unwrap()[0].text,
            "kept"
        );
    }

    #[test]
    fn a_damaged_store_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        store_one_message(dir.path(), "precious");
        // Overwrite the start of the database file with garbage.
        let db_file = dir.path().join("store").join("db");
        let mut bytes = std::fs::read(&db_file).unwrap();
        for (index, byte) in bytes.iter_mut().take(4096).enumerate() {
            *byte = (index * 7 + 13) as u8;
        }
        std::fs::write(&db_file, bytes).unwrap();
        match reopen(dir.path()) {
            Err(StoreError::Corrupt { .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
            Ok(store) => {
                let customer = store.find_customer("console", "u").unwrap();
                panic!("a damaged store opened silently (customer: {customer:?})");
            }
        }
    }

    #[test]
    fn a_store_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let meta = store.db.open_tree(TREE_META).unwrap();
        meta.insert(KEY_SCHEMA, &99u32.to_be_bytes()).unwrap();
        store.flush_blocking().unwrap();
        drop(store);
        drop(meta);
        match reopen(dir.path()) {
            Err(StoreError::TooNew { found: 99, .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("opened a newer store"),
        }
    }

    fn plain_ticket(id: u64, customer_id: u64) -> Ticket {
        Ticket {
            v: RECORD_VERSION,
            id,
            customer_id,
            platform: "telegram".into(),
            chat_id: format!("chat{id}"),
            locale: Locale::En,
            category: "complaint".into(),
            priority: crate::escalation::ticket::Priority::High,
            summary: String::new(),
            transcript: Vec::new(),
            state: crate::escalation::ticket::TicketState::Closed,
            transitions: Vec::new(),
            assignee: None,
            created_ms: 1,
            due_ms: 2,
            reminded: false,
            breached: false,
            agent_posts: Vec::new(),
            rating: None,
        }
    }

    #[test]
    fn a_schema_1_store_gets_its_customer_ticket_index_and_tickets_follow_a_link() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let first = store.customer_for_identity("telegram", "1", None).unwrap();
            store.put_ticket(&plain_ticket(1, first.id)).unwrap();
            store.put_ticket(&plain_ticket(2, first.id)).unwrap();
            // As a schema 1 build left it: no index, version 1.
            store.customer_tickets.clear().unwrap();
            store.meta.insert(KEY_SCHEMA, &1u32.to_be_bytes()).unwrap();
            store.flush_blocking().unwrap();
        }
        let store = reopen(dir.path()).unwrap();
        let first = store.find_customer("telegram", "1").unwrap().unwrap();
        assert_eq!(store.customer_ticket_count(first.id).unwrap(), 2);

        let owner = store.customer_for_identity("discord", "9", None).unwrap();
        store
            .create_link_code("LINK-ABCDEF", owner.id, u64::MAX, ("discord", "9"))
            .unwrap();
        store
            .redeem_link_code("LINK-ABCDEF", "telegram", "1", 0)
            .unwrap();
        assert_eq!(store.customer_ticket_count(first.id).unwrap(), 0);
        assert_eq!(store.customer_ticket_count(owner.id).unwrap(), 2);
        assert_eq!(store.ticket(1).unwrap().unwrap().customer_id, owner.id);
    }

    #[test]
    fn events_with_a_known_id_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let event = |id: Option<&str>, item: &str| Event {
            v: RECORD_VERSION,
            user: "u".into(),
            item: item.into(),
            kind: EventKind::View,
            ts_ms: 1,
            value: None,
            id: id.map(str::to_string),
        };
        let batch = [
            event(Some("a"), "I1"),
            event(Some("a"), "I1"),
            event(None, "I2"),
        ];
        assert_eq!(
            store.events_append(&batch).unwrap(),
            2,
            "a repeat inside the batch"
        );
        assert_eq!(
            store.events_append(&batch).unwrap(),
            1,
            "only the event without id again"
        );
        assert_eq!(store.user_events("u").unwrap().len(), 3);
        drop(store);
        // sled releases its lock from a background thread: wait for it.
        let store = reopen(dir.path()).unwrap();
        assert_eq!(
            store.events_append(&[event(Some("a"), "I1")]).unwrap(),
            0,
            "after a reopen"
        );
    }

    #[test]
    fn a_link_code_joins_identities_once_and_moves_conversations_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = store.customer_for_identity("telegram", "1", None).unwrap();
        let other = store.customer_for_identity("discord", "2", None).unwrap();
        let conversation = store
            .current_conversation(other.id, "discord", "dm")
            .unwrap();
        store
            .append_message(conversation.id, Role::User, "hello")
            .unwrap();
        store
            .events_append(&[Event {
                v: RECORD_VERSION,
                user: format!("customer:{}", other.id),
                item: "NW-1".into(),
                kind: EventKind::Like,
                ts_ms: 1,
                value: None,
                id: None,
            }])
            .unwrap();
        store
            .create_link_code(
                "LINK-ABCDEF",
                owner.id,
                now_ms() + 60_000,
                ("telegram", "1"),
            )
            .unwrap();
        store
            .create_link_code("LINK-OLDOLD", owner.id, 1, ("telegram", "1"))
            .unwrap();
        assert_eq!(
            store
                .redeem_link_code("LINK-OLDOLD", "discord", "2", now_ms())
                .unwrap(),
            LinkOutcome::Unknown,
            "expired codes are swept"
        );
        let outcome = store
            .redeem_link_code("LINK-ABCDEF", "discord", "2", now_ms())
            .unwrap();
        let LinkOutcome::Linked { from, into, code } = outcome else {
            panic!("not linked: {outcome:?}");
        };
        assert_eq!((from, into), (other.id, owner.id));
        assert_eq!(
            (code.platform.as_str(), code.chat_id.as_str()),
            ("telegram", "1"),
            "the code remembers where it was asked for"
        );
        let moved = store
            .move_events(
                &format!("customer:{}", other.id),
                &format!("customer:{}", owner.id),
            )
            .unwrap();
        assert_eq!(moved, 1);
        assert_eq!(
            store.find_customer("discord", "2").unwrap().unwrap().id,
            owner.id
        );
        assert!(store.customer(other.id).unwrap().is_none());
        let conversations = store
            .customer_conversations(owner.id, Some("discord"))
            .unwrap();
        assert_eq!(conversations.len(), 1);
        assert_eq!(
            store.conversation_messages(conversations[0].id).unwrap()[0].text,
            "hello"
        );
        assert_eq!(
            store
                .user_events(&format!("customer:{}", owner.id))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .redeem_link_code("LINK-ABCDEF", "discord", "2", now_ms())
                .unwrap(),
            LinkOutcome::Unknown,
            "a code works once"
        );
    }
}
