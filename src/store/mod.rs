//! The embedded store: the only importer of `sled`. Typed trees for
//! customers, their platform identities, conversations and messages; every
//! record carries a schema version; the store's own version is checked and
//! migrated on open.
//!
//! Architecture invariant: a write that the caller acknowledges to a customer
//! is followed by `flush()` before the acknowledgement, so `kill -9` loses none.

mod catalog;
mod conversations;
mod customers;
mod events;
mod inbox;
mod keyring;
mod knowledge;
mod links;
mod privacy;
#[cfg(test)]
pub(crate) mod tests;
mod tickets;

pub use catalog::CatalogItem;
pub use conversations::{Conversation, CustomerTurn, Replayed, Role, SourceRef, StoredMessage};
pub use customers::Customer;
pub use events::{Event, EventKind};
pub use inbox::IntakeId;
pub use keyring::{KeyId, Keyring};
pub use knowledge::{KbDoc, KbKind, KbPassage};
pub use links::{LinkCode, LinkOutcome};
pub use privacy::{
    export_file_prefix, AuditAction, AuditEntry, CustomerExport, CustomerSummary, Erasure,
    ExportIdentity, Rotation, Sweep,
};
pub use tickets::{
    AgentPost, Priority, Ticket, TicketState, TranscriptLine, TranscriptRole, Transition,
};

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::Transactional;

use crate::prompts::Locale;

/// Version of the store layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 4;
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
const TREE_INBOX: &str = "inbox";
/// `platform \0 delivery id` -> when it was taken: repeats are taken once.
const TREE_INTAKE_SEEN: &str = "intake_seen";
/// Intake id -> key of the customer message stored for it, until its handling ends.
const TREE_INTAKE_MESSAGES: &str = "intake_messages";
/// Erasures and exports: who, when, which customer; never content.
const TREE_AUDIT: &str = "audit";
/// Customer id -> the data keys of an erasure under way, until it is done.
const TREE_PENDING_ERASURES: &str = "pending_erasures";
const KEY_TICKET_COUNTER: &[u8] = b"ticket_counter";
/// The generation of the key the inbox is sealed with.
const KEY_INBOX_KEY: &[u8] = b"inbox_key_generation";
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
    inbox: sled::Tree,
    intake_seen: sled::Tree,
    intake_messages: sled::Tree,
    audit: sled::Tree,
    pending_erasures: sled::Tree,
    /// The data keys customers' records are sealed with.
    keys: Keyring,
    /// Held across every sled transaction: with several at once, sled 0.34
    /// deadlocked (a transaction waiting for readers while a reader waited
    /// on the log flush, seen with 64 new conversations at once).
    transactions: std::sync::Arc<std::sync::Mutex<()>>,
    /// Flushes asked for, and the last request a finished flush covered.
    flush_requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    flushed_through: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Held from choosing the inbox key to writing with it, and while it
    /// rotates: nothing is sealed under a key that is being destroyed.
    inbox_sealing: std::sync::Arc<std::sync::Mutex<()>>,
    /// Held while a ticket is read, changed and written back, by every
    /// clone: two changes at once never overwrite each other.
    ticket_writes: std::sync::Arc<std::sync::Mutex<()>>,
    /// Durable flushes made through this store (all clones), for tests and
    /// diagnostics.
    flushes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The async callers' flushes, made one after another by one task.
    flush_queue: std::sync::Arc<FlushQueue>,
}

/// Async flush requests, numbered, and how far the flushes have got. One
/// blocking task at a time flushes for every request made before it began,
/// so a busy daemon makes one flush per disk round trip, and a request costs
/// no thread of its own.
#[derive(Default)]
struct FlushQueue {
    requested: std::sync::atomic::AtomicU64,
    /// Whether a task is flushing (or about to).
    running: std::sync::atomic::AtomicBool,
    /// Database flushes made, for them and for the blocking callers.
    made: std::sync::atomic::AtomicU64,
    progress: tokio::sync::watch::Sender<FlushProgress>,
    /// When the last database flush began; only the flusher touches it.
    last_started: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Least time between the starts of two database flushes. Under load the
/// requests of this window share one flush (group commit) instead of each
/// few paying a write and a disk sync; an idle store flushes at once.
const FLUSH_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);

/// The requests settled so far: made durable, or failed.
#[derive(Clone, Debug, Default)]
struct FlushProgress {
    durable_through: u64,
    failed_through: u64,
    error: Option<std::sync::Arc<str>>,
}

impl FlushProgress {
    fn settled_through(&self) -> u64 {
        self.durable_through.max(self.failed_through)
    }
}

impl FlushQueue {
    /// Takes the flusher's role; false when a flusher has it.
    fn claim(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Sleeps until `FLUSH_WINDOW` has passed since the last flush began,
    /// then marks the next one as begun.
    fn wait_for_window(&self) {
        let mut last = self
            .last_started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(remaining) =
            last.and_then(|started| FLUSH_WINDOW.checked_sub(started.elapsed()))
        {
            std::thread::sleep(remaining);
        }
        *last = Some(std::time::Instant::now());
    }

    /// Gives the role up once every request through `handled` is dealt
    /// with; true when the caller must go on: a request made since found
    /// the role taken and left itself to the caller, and no new flusher
    /// has claimed it.
    fn release(&self, handled: u64) -> bool {
        use std::sync::atomic::Ordering;
        self.running.store(false, Ordering::SeqCst);
        self.requested.load(Ordering::SeqCst) > handled && self.claim()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Store {
    /// `open`, waiting up to `within` while the store is locked: a handle
    /// dropped a moment ago in this process (a restart) may still hold the
    /// lock, as sled's and our blocking threads end after it.
    pub fn open_when_released(
        data_dir: &Path,
        within: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + within;
        loop {
            match Self::open(data_dir) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                opened => return opened,
            }
        }
    }

    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("store");
        // Inside the database directory, so moving it aside moves the marker too.
        let marker = path.join(MARKER_FILE);
        std::fs::create_dir_all(&path).map_err(|err| StoreError::Io {
            path: path.clone(),
            detail: err.to_string(),
        })?;
        // Every acknowledged write is flushed by us; sled's own background
        // flush could meet a transaction the way ours did (see `transactions`).
        let db = sled::Config::new()
            .path(&path)
            .flush_every_ms(None)
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
            inbox: db.open_tree(TREE_INBOX).map_err(map)?,
            intake_seen: db.open_tree(TREE_INTAKE_SEEN).map_err(map)?,
            intake_messages: db.open_tree(TREE_INTAKE_MESSAGES).map_err(map)?,
            audit: db.open_tree(TREE_AUDIT).map_err(map)?,
            pending_erasures: db.open_tree(TREE_PENDING_ERASURES).map_err(map)?,
            keys: Keyring::open(&data_dir.join("keys"))?,
            ticket_writes: Default::default(),
            inbox_sealing: Default::default(),
            transactions: Default::default(),
            flush_requests: Default::default(),
            flushed_through: Default::default(),
            flushes: Default::default(),
            flush_queue: Default::default(),
            meta: db.open_tree(TREE_META).map_err(map)?,
            path,
            db,
        };
        store.migrate(&marker)?;
        store.finish_interrupted_erasures()?;
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
            if (1..3).contains(&found) {
                self.index_active_tickets_per_customer()?;
            }
            if (1..4).contains(&found) {
                self.seal_plain_records()?;
            }
            meta.insert(KEY_SCHEMA, &SCHEMA_VERSION.to_be_bytes())
                .map_err(|err| self.err(err))?;
            self.flush_coalesced()?;
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

    /// Where the data directory is (the parent of the database).
    pub fn data_dir(&self) -> &Path {
        self.path.parent().unwrap_or(&self.path)
    }

    /// A record's JSON, opened with its data key when it is sealed.
    fn decode<T: DeserializeOwned>(&self, tree: &str, bytes: &[u8]) -> Result<T, StoreError> {
        let Some(plain) = self.keys.open_record(bytes)? else {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "a record in {tree} is sealed with a data key that is missing from {} (restore keys/ together with store/ from the same backup)",
                    self.keys.dir().display()
                ),
            });
        };
        serde_json::from_slice(&plain).map_err(|err| StoreError::Corrupt {
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

    /// A record sealed under `key`.
    fn seal<T: Serialize>(&self, key: KeyId, value: &T) -> Result<Vec<u8>, StoreError> {
        self.keys.seal(key, &Self::encode(value))
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
        self.flush_soon().wait().await
    }

    /// Starts a flush that the caller waits for later (before the reply it
    /// must precede), so the disk works while other work goes on.
    pub fn flush_soon(&self) -> PendingFlush {
        use std::sync::atomic::Ordering;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let queue = &self.flush_queue;
        let ticket = queue.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let progress = queue.progress.subscribe();
        if queue.claim() {
            let flusher = Flusher {
                store: self.clone(),
                finished: false,
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || flusher.run())),
                Err(_) => flusher.run(),
            }
        }
        PendingFlush {
            path: self.path.clone(),
            ticket: Some(ticket),
            progress,
        }
    }

    /// Waits until every flush requested so far is settled, requesting
    /// none: for flushes that were requested and not waited for.
    pub async fn requested_flushes_settled(&self) -> Result<(), StoreError> {
        let ticket = self
            .flush_queue
            .requested
            .load(std::sync::atomic::Ordering::SeqCst);
        PendingFlush {
            path: self.path.clone(),
            ticket: Some(ticket),
            progress: self.flush_queue.progress.subscribe(),
        }
        .wait()
        .await
    }

    /// Durable flushes made so far through this store and its clones.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Database flushes made so far (disk writes and syncs): fewer than
    /// the requests under load, where requests share flushes.
    pub fn database_flushes(&self) -> u64 {
        self.flush_queue
            .made
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Blocking flush, for shutdown paths outside async code.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.flush_coalesced()
    }

    /// One flush for every caller that asked before it began: a caller
    /// whose writes a flush started after its request already made durable
    /// returns at once. Never beside a transaction (see `transactions`).
    pub(super) fn flush_coalesced(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let ticket = self.flush_requests.fetch_add(1, Ordering::SeqCst) + 1;
        let _one = self.one_transaction();
        if self.flushed_through.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        let covers = self.flush_requests.load(Ordering::SeqCst);
        self.flush_queue.made.fetch_add(1, Ordering::Relaxed);
        self.db.flush().map_err(|err| self.err(err))?;
        self.flushed_through.store(covers, Ordering::SeqCst);
        Ok(())
    }

    /// Taken before a sled transaction: one runs at a time.
    fn one_transaction(&self) -> std::sync::MutexGuard<'_, ()> {
        self.transactions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
}

/// The task that flushes for the queued requests until none is left.
struct Flusher {
    store: Store,
    finished: bool,
}

impl Flusher {
    fn run(mut self) {
        use std::sync::atomic::Ordering;
        let queue = std::sync::Arc::clone(&self.store.flush_queue);
        loop {
            let pending = queue.requested.load(Ordering::SeqCst);
            let settled = queue.progress.borrow().settled_through();
            if pending <= settled {
                if queue.release(settled) {
                    continue;
                }
                self.finished = true;
                return;
            }
            queue.wait_for_window();
            let (covers, flushed) = {
                let _one = self.store.one_transaction();
                // Read with the lock held: requests made while a
                // transaction held it are covered too.
                let covers = queue.requested.load(Ordering::SeqCst);
                queue.made.fetch_add(1, Ordering::Relaxed);
                (covers, self.store.db.flush())
            };
            queue.progress.send_modify(|progress| match flushed {
                Ok(_) => progress.durable_through = covers,
                Err(err) => {
                    progress.failed_through = covers;
                    progress.error = Some(err.to_string().into());
                }
            });
        }
    }
}

impl Drop for Flusher {
    /// Dropped before it settled every request (never run because the
    /// runtime is stopping, or a flush panicked): those requests fail, and
    /// a later request starts another flusher.
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if self.finished {
            return;
        }
        let queue = &self.store.flush_queue;
        loop {
            let requested = queue.requested.load(Ordering::SeqCst);
            queue.progress.send_modify(|progress| {
                progress.failed_through = progress.failed_through.max(requested);
                progress.error =
                    Some("the flush did not run (the daemon is stopping, or it failed)".into());
            });
            // A request made since the load is failed too, unless a new
            // flusher took it.
            if !queue.release(requested) {
                return;
            }
        }
    }
}

/// A flush under way (`Store::flush_soon`). Dropped unwaited, it still
/// completes.
#[must_use = "wait for the flush before what it must precede"]
pub struct PendingFlush {
    path: PathBuf,
    /// `None` once waited for.
    ticket: Option<u64>,
    progress: tokio::sync::watch::Receiver<FlushProgress>,
}

impl PendingFlush {
    /// Waits until the flush is done; at once when it was waited for before.
    pub async fn wait(&mut self) -> Result<(), StoreError> {
        let Some(ticket) = self.ticket.take() else {
            return Ok(());
        };
        let failed = |detail: String| StoreError::Io {
            path: self.path.clone(),
            detail,
        };
        let progress = self
            .progress
            .wait_for(|progress| progress.settled_through() >= ticket)
            .await
            .map_err(|_| failed("the store closed before the flush".into()))?
            .clone();
        if progress.durable_through >= ticket {
            Ok(())
        } else {
            Err(failed(format!(
                "flush failed: {}",
                progress.error.as_deref().unwrap_or("unknown error")
            )))
        }
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
