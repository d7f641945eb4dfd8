//! Per-conversation ordering: one queue and one worker task per conversation,
//! so messages of a conversation are handled in arrival order while different
//! conversations run concurrently. A panic while handling one message is
//! caught and logged; it never stops the worker, the router or the daemon.
//!
//! Architecture invariant: the router knows nothing of sled, mistral.rs or
//! platform types; it moves `Inbound`s to `Pipeline::handle`.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concierge_adapter::{ConversationRef, Inbound};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::pipeline::Pipeline;

/// Past this many known conversations, queues of exited workers are dropped.
/// Per-conversation queues are unbounded so one busy conversation never
/// blocks the router; flood limits belong to moderation.
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

/// Routes every inbound message to its conversation's worker until `inbound`
/// closes, then waits until every queued message is handled.
pub async fn run(
    mut inbound: mpsc::Receiver<Inbound>,
    pipeline: Arc<Pipeline>,
    in_flight: InFlight,
) {
    let tracker = TaskTracker::new();
    let mut workers: HashMap<ConversationRef, (mpsc::UnboundedSender<Inbound>, JoinHandle<()>)> =
        HashMap::new();
    while let Some(message) = inbound.recv().await {
        let key = message.conversation.clone();
        let (message, previous) = match workers.remove(&key) {
            Some((queue, handle)) => match queue.send(message) {
                Ok(()) => {
                    workers.insert(key, (queue, handle));
                    continue;
                }
                // The worker went idle: the next one starts after it is done.
                Err(mpsc::error::SendError(returned)) => (returned, Some(handle)),
            },
            None => (message, None),
        };
        if workers.len() >= PRUNE_AT {
            workers.retain(|_, (queue, _)| !queue.is_closed());
        }
        let (queue, receiver) = mpsc::unbounded_channel();
        let handle = tracker.spawn(worker(
            receiver,
            Arc::clone(&pipeline),
            in_flight.clone(),
            previous,
        ));
        // The worker holds the receiver, so this send succeeds.
        let _ = queue.send(message);
        workers.insert(key, (queue, handle));
    }
    drop(workers);
    tracker.close();
    tracker.wait().await;
}

async fn worker(
    mut queue: mpsc::UnboundedReceiver<Inbound>,
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
        let Some(message) = message else {
            return;
        };
        let key = key_of(&message.conversation);
        in_flight.enter(&key);
        let result = AssertUnwindSafe(pipeline.handle(message))
            .catch_unwind()
            .await;
        in_flight.leave(&key);
        if result.is_err() {
            tracing::error!(conversation = %key, "a message handler panicked; the conversation goes on");
        }
    }
}
