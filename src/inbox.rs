//! The intake stage: what the channels hand over is stored in the durable
//! inbox (one flush per batch) before the channels may acknowledge it to
//! their platforms, then passed on as `Delivery`s. Messages left in the inbox
//! by a crash or a stop past its deadline are delivered again first at the
//! next start.
//!
//! Stage invariant: a message a channel acknowledged is in the store until
//! its handling is over (`Inbox::done`).

use std::time::Duration;

use concierge_adapter::{Inbound, InboundSource, Receipt};
use tokio::sync::mpsc;

use crate::store::{IntakeId, Store};

/// At most this many messages are stored with one flush.
const BATCH: usize = 256;
/// How long a platform's delivery id is remembered. Telegram delivers an
/// unacknowledged update again for 24 hours, and restarts its update ids
/// only after a week without updates.
const DELIVERY_MEMORY: Duration = Duration::from_secs(48 * 3600);
/// How often delivery ids older than `DELIVERY_MEMORY` are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(3600);

/// A message on its way to a handler.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Its inbox entry; `None` where messages are not kept (the console).
    pub intake: Option<IntakeId>,
    /// The message.
    pub message: Inbound,
    /// Delivered again after a crash or an interrupted stop.
    pub replayed: bool,
    /// A card number or IBAN was masked out of it at intake.
    pub payment_data_masked: bool,
}

impl Delivery {
    /// A message that no inbox holds (tests, the console).
    pub fn transient(message: Inbound) -> Self {
        Self {
            intake: None,
            message,
            replayed: false,
            payment_data_masked: false,
        }
    }
}

/// Where handled messages are checked out of the inbox.
#[derive(Clone)]
pub struct Inbox {
    store: Option<Store>,
    /// What `[privacy] redact` masks before a message is stored.
    masking: Vec<crate::privacy::redact::Kind>,
}

impl Inbox {
    /// An inbox in the store: messages survive a crash.
    pub fn durable(store: Store) -> Self {
        Self {
            store: Some(store),
            masking: Vec::new(),
        }
    }

    /// Masks what `kinds` name in every message before it is stored.
    pub fn with_masking(mut self, kinds: Vec<crate::privacy::redact::Kind>) -> Self {
        self.masking = kinds;
        self
    }

    /// No inbox: messages are passed on at once and lost with the process.
    /// For one person at a console, who sees what was answered.
    pub fn transient() -> Self {
        Self {
            store: None,
            masking: Vec::new(),
        }
    }

    /// The message's handling is over (answered, refused or dropped).
    /// Made durable by the store's next flush; a replay in between finds the
    /// reply stored and answers nothing twice.
    pub async fn done(&self, delivery: &Delivery) {
        let (Some(store), Some(id)) = (&self.store, delivery.intake) else {
            return;
        };
        let store = store.clone();
        let result = tokio::task::spawn_blocking(move || store.inbox_done(id)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(
                intake = id.0,
                "cannot check a message out of the inbox: {err}"
            ),
            Err(err) => tracing::warn!(intake = id.0, "inbox task failed: {err}"),
        }
    }

    /// Messages a previous run took but did not finish, oldest first.
    pub fn pending(&self) -> anyhow::Result<Vec<Delivery>> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        Ok(store
            .inbox_pending()?
            .into_iter()
            .map(|(id, message)| Delivery {
                intake: Some(id),
                message,
                replayed: true,
                payment_data_masked: false,
            })
            .collect())
    }

    /// Forgets the delivery ids taken longer than `DELIVERY_MEMORY` ago.
    async fn forget_old_deliveries(&self) {
        let Some(store) = &self.store else {
            return;
        };
        let store = store.clone();
        let before = crate::store::now_ms().saturating_sub(DELIVERY_MEMORY.as_millis() as u64);
        match tokio::task::spawn_blocking(move || store.forget_deliveries_taken_before(before))
            .await
        {
            Ok(Ok(forgotten)) => {
                tracing::debug!(forgotten, "old delivery ids forgotten")
            }
            Ok(Err(err)) => tracing::warn!("cannot forget old delivery ids: {err}"),
            Err(err) => tracing::warn!("inbox task failed: {err}"),
        }
    }

    /// Stores `messages`, flushes, and returns their deliveries; a message
    /// its platform delivered before is acknowledged but not delivered.
    async fn take(&self, mut messages: Vec<Inbound>) -> anyhow::Result<Vec<Delivery>> {
        let masked: Vec<bool> = messages
            .iter_mut()
            .map(|message| crate::privacy::mask_inbound(message, &self.masking))
            .collect();
        let Some(store) = &self.store else {
            return Ok(messages
                .into_iter()
                .zip(masked)
                .map(|(message, masked)| Delivery {
                    payment_data_masked: masked,
                    ..Delivery::transient(message)
                })
                .collect());
        };
        let (ids, messages) = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                store.inbox_put(&messages).map(|ids| (ids, messages))
            })
            .await??
        };
        store.flush().await?;
        Ok(ids
            .into_iter()
            .zip(messages.into_iter().zip(masked))
            .filter_map(|(id, (message, masked))| match id {
                Some(id) => Some(Delivery {
                    intake: Some(id),
                    message,
                    replayed: false,
                    payment_data_masked: masked,
                }),
                None => {
                    tracing::info!(
                        platform = %message.conversation.platform,
                        "a message its platform delivered again was taken once"
                    );
                    None
                }
            })
            .collect())
    }
}

/// Delivers `replay` first, then takes what the channels hand over into the
/// inbox and delivers it, until every sink is dropped or `deliveries` closes.
pub async fn run(
    mut source: InboundSource,
    inbox: Inbox,
    replay: Vec<Delivery>,
    deliveries: mpsc::Sender<Delivery>,
) {
    if !replay.is_empty() {
        tracing::info!(
            messages = replay.len(),
            "handling the messages that the last run took but did not finish"
        );
    }
    for delivery in replay {
        if deliveries.send(delivery).await.is_err() {
            return;
        }
    }
    inbox.forget_old_deliveries().await;
    let mut forgot_at = tokio::time::Instant::now();
    while let Some(first) = source.recv().await {
        if forgot_at.elapsed() >= FORGET_EVERY {
            inbox.forget_old_deliveries().await;
            forgot_at = tokio::time::Instant::now();
        }
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match source.try_recv() {
                Some(next) => batch.push(next),
                None => break,
            }
        }
        let (messages, receipts): (Vec<Inbound>, Vec<Receipt>) =
            batch.into_iter().map(|intake| intake.into_parts()).unzip();
        match inbox.take(messages).await {
            Ok(taken) => {
                for receipt in receipts {
                    receipt.taken();
                }
                for delivery in taken {
                    if deliveries.send(delivery).await.is_err() {
                        return;
                    }
                }
            }
            // The channels leave these unacknowledged; their platforms
            // deliver them again.
            Err(err) => tracing::error!(
                messages = receipts.len(),
                "cannot store incoming messages; they are not acknowledged: {err:#}"
            ),
        }
    }
}
