//! Per-conversation ordering: one bounded queue and one worker task per
//! conversation, so messages of a conversation are handled in arrival order
//! while different conversations run concurrently. Every message passes the
//! flood limits (`moderation`) first. A panic while handling one message is
//! caught and logged; it never stops the worker, the router or the daemon.
//!
//! Architecture invariant: the router knows nothing of sled, mistral.rs or
//! platform types; it moves `Delivery`s from the inbox to
//! `Pipeline::handle_delivery` and checks finished ones out of the inbox.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concierge_adapter::ConversationRef;
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::config::ModerationConfig;
use crate::inbox::{Delivery, Inbox};
use crate::moderation::{Moderation, Verdict};
use crate::pipeline::Pipeline;

/// One item of a conversation's queue.
enum Work {
    /// Handle the message.
    Handle(Delivery),
    /// Tell the sender they are over the flood limit.
    Notice(Delivery),
}

/// Past this many known conversations, queues of exited workers are dropped.
const PRUNE_AT: usize = 1024;
/// A worker with nothing to do for this long exits; the next message starts a new one.
const WORKER_IDLE: Duration = Duration::from_secs(300);

/// Conversations with a message being handled now, for shutdown reports.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<BTreeSet<String>>>);

impl InFlight {
    fn enter(&self, key: &str) {
        if let Ok(mut set) = self.0.lock() {
            set.insert(key.to_string());
        }
    }
    fn leave(&self, key: &str) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(key);
        }
    }
    /// The conversations being handled now, as `platform:chat`.
    pub fn snapshot(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn key_of(conversation: &ConversationRef) -> String {
    format!("{}:{}", conversation.platform, conversation.chat_id)
}

/// Routes every delivery to its conversation's worker until `deliveries`
/// closes, then waits until every queued message is handled. A message is
/// checked out of `inbox` once it was handled, refused or dropped.
pub async fn run(
    mut deliveries: mpsc::Receiver<Delivery>,
    inbox: Inbox,
    pipeline: Arc<Pipeline>,
    in_flight: InFlight,
    limits: ModerationConfig,
) {
    let tracker = TaskTracker::new();
    let queue_size = limits.queue_per_conversation.max(1);
    let mut moderation = Moderation::new(limits);
    let mut workers: HashMap<ConversationRef, (mpsc::Sender<Work>, JoinHandle<()>)> =
        HashMap::new();
    while let Some(delivery) = deliveries.recv().await {
        let message = &delivery.message;
        // A replay was admitted before the restart.
        let verdict = if delivery.replayed || pipeline.is_agents_space(message) {
            Verdict::Admit
        } else {
            moderation.check(message, tokio::time::Instant::now())
        };
        let work = match verdict {
            Verdict::Admit => Work::Handle(delivery),
            Verdict::Notice => {
                crate::telemetry::message_limited(&message.conversation.platform);
                tracing::info!(
                    platform = %message.sender.platform,
                    sender = %message.sender.user_id,
                    "sender over the flood limit; told once, further messages dropped"
                );
                Work::Notice(delivery)
            }
            Verdict::Drop => {
                crate::telemetry::message_limited(&message.conversation.platform);
                inbox.done(&delivery).await;
                continue;
            }
        };
        let key = work.conversation().clone();
        let (work, previous) = match workers.remove(&key) {
            Some((queue, handle)) => match queue.try_send(work) {
                Ok(()) => {
                    workers.insert(key, (queue, handle));
                    continue;
                }
                Err(mpsc::error::TrySendError::Full(dropped)) => {
                    crate::telemetry::message_limited(&key.platform);
                    tracing::warn!(
                        conversation = %key_of(&key),
                        "conversation queue full ({queue_size} waiting); message dropped"
                    );
                    workers.insert(key, (queue, handle));
                    inbox.done(dropped.delivery()).await;
                    continue;
                }
                // The worker went idle: the next one starts after it is done.
                Err(mpsc::error::TrySendError::Closed(returned)) => (returned, Some(handle)),
            },
            None => (work, None),
        };
        if workers.len() >= PRUNE_AT {
            workers.retain(|_, (queue, _)| !queue.is_closed());
        }
        let (queue, receiver) = mpsc::channel(queue_size);
        let handle = tracker.spawn(worker(
            receiver,
            inbox.clone(),
            Arc::clone(&pipeline),
            in_flight.clone(),
            previous,
        ));
        // The worker holds the receiver and the queue is empty, so this succeeds.
        let _ = queue.try_send(work);
        workers.insert(key, (queue, handle));
    }
    drop(workers);
    tracker.close();
    tracker.wait().await;
}

impl Work {
    fn delivery(&self) -> &Delivery {
        match self {
            Self::Handle(delivery) | Self::Notice(delivery) => delivery,
        }
    }

    fn conversation(&self) -> &ConversationRef {
        &self.delivery().message.conversation
    }
}

async fn worker(
    mut queue: mpsc::Receiver<Work>,
    inbox: Inbox,
    pipeline: Arc<Pipeline>,
    in_flight: InFlight,
    previous: Option<JoinHandle<()>>,
) {
    // Messages that raced into the previous worker's queue go first.
    if let Some(previous) = previous {
        let _ = previous.await;
    }
    loop {
        let message = tokio::select! {
            message = queue.recv() => message,
            _ = tokio::time::sleep(WORKER_IDLE) => {
                // Refuse new messages, then finish any that raced in.
                queue.close();
                queue.recv().await
            }
        };
        let Some(work) = message else {
            return;
        };
        let key = key_of(work.conversation());
        in_flight.enter(&key);
        let result = match &work {
            Work::Handle(delivery) => {
                AssertUnwindSafe(pipeline.handle_delivery(delivery))
                    .catch_unwind()
                    .await
            }
            Work::Notice(delivery) => {
                AssertUnwindSafe(async {
                    pipeline.tell_rate_limited(&delivery.message).await;
                    true
                })
                .catch_unwind()
                .await
            }
        };
        // A message cut short by a stop stays for the next start; one whose
        // handler panicked does not, as a replay would only panic again.
        if !matches!(result, Ok(false)) {
            inbox.done(work.delivery()).await;
        }
        in_flight.leave(&key);
        if result.is_err() {
            tracing::error!(conversation = %key, "a message handler panicked; the conversation goes on");
        }
    }
}
