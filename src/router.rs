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

use concierge_adapter::{ConversationRef, Inbound};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::config::ModerationConfig;
use crate::inbox::{Delivery, Inbox};
use crate::moderation::{Moderation, Verdict};

/// One item of a conversation's queue.
enum Work {
    /// Handle the message.
    Handle(Delivery),
    /// Tell the sender they are over the flood limit.
    Notice(Delivery),
}

/// What the router hands messages to: the pipeline, or a test's fake.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Whether `message` comes from where flood limits do not apply (the
    /// agents' spaces).
    fn is_exempt(&self, message: &Inbound) -> bool;

    /// Handles one message; false when a stop cut it short, so it stays in
    /// the inbox for the next start.
    async fn handle(&self, delivery: &Delivery) -> bool;

    /// Tells a sender over the flood limit to slow down.
    async fn tell_rate_limited(&self, message: &Inbound);

    /// Called once every message was handled, before the router returns:
    /// what the handling left to finish in the background is finished.
    async fn drained(&self) {}
}

#[async_trait::async_trait]
impl Handler for crate::pipeline::Pipeline {
    fn is_exempt(&self, message: &Inbound) -> bool {
        self.is_agents_space(message)
    }

    async fn handle(&self, delivery: &Delivery) -> bool {
        self.handle_delivery(delivery).await
    }

    async fn tell_rate_limited(&self, message: &Inbound) {
        crate::pipeline::Pipeline::tell_rate_limited(self, message).await
    }

    /// The replies' flushes were not waited for one by one.
    async fn drained(&self) {
        if let Err(err) = self.store.requested_flushes_settled().await {
            tracing::error!("the replies could not be made durable: {err}");
        }
    }
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
    handler: Arc<dyn Handler>,
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
        let verdict = if delivery.replayed || handler.is_exempt(message) {
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
            Arc::clone(&handler),
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
    handler.drained().await;
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
    handler: Arc<dyn Handler>,
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
                AssertUnwindSafe(handler.handle(delivery))
                    .catch_unwind()
                    .await
            }
            Work::Notice(delivery) => {
                AssertUnwindSafe(async {
                    handler.tell_rate_limited(&delivery.message).await;
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use concierge_adapter::{ChatKind, InboundContent, SenderRef};

    use super::*;

    /// Records which worker task handled which message, in order.
    #[derive(Default)]
    struct Recorder {
        handled: Mutex<Vec<(String, String, tokio::task::Id)>>,
        done: tokio::sync::Notify,
        panic_on: Option<&'static str>,
    }

    #[async_trait::async_trait]
    impl Handler for Recorder {
        fn is_exempt(&self, _: &Inbound) -> bool {
            false
        }
        async fn handle(&self, delivery: &Delivery) -> bool {
            let InboundContent::Text(text) = &delivery.message.content else {
                return true;
            };
            if self.panic_on == Some(text.as_str()) {
                panic!("handler failure on {text}");
            }
            self.handled.lock().unwrap().push((
                delivery.message.conversation.chat_id.clone(),
                text.clone(),
                tokio::task::id(),
            ));
            self.done.notify_waiters();
            true
        }
        async fn tell_rate_limited(&self, _: &Inbound) {}
    }

    impl Recorder {
        fn texts(&self, chat: &str) -> Vec<String> {
            let handled = self.handled.lock().unwrap();
            handled
                .iter()
                .filter(|(of, _, _)| of == chat)
                .map(|(_, text, _)| text.clone())
                .collect()
        }
        fn workers(&self, chat: &str) -> BTreeSet<tokio::task::Id> {
            let handled = self.handled.lock().unwrap();
            handled
                .iter()
                .filter(|(of, _, _)| of == chat)
                .map(|(_, _, worker)| *worker)
                .collect()
        }
        async fn wait_for(&self, count: usize) {
            loop {
                let notified = self.done.notified();
                if self.handled.lock().unwrap().len() >= count {
                    return;
                }
                notified.await;
            }
        }
    }

    fn delivery(chat: &str, text: &str) -> Delivery {
        Delivery::transient(Inbound {
            conversation: ConversationRef {
                platform: "test".into(),
                chat_id: chat.into(),
            },
            chat: ChatKind::Private,
            sender: SenderRef {
                platform: "test".into(),
                user_id: chat.into(),
                display_name: None,
                language_hint: None,
            },
            content: InboundContent::Text(text.into()),
            message_id: None,
            delivery_id: None,
            in_reply_to: None,
            thread_parent: None,
            received_at: std::time::SystemTime::now(),
        })
    }

    fn unlimited() -> ModerationConfig {
        ModerationConfig {
            enabled: false,
            queue_per_conversation: 10_000,
            ..crate::config::Config::defaults().moderation
        }
    }

    /// A router over `recorder` without flood limits. The tests run on
    /// paused time, so workers idle after the real `WORKER_IDLE`.
    fn start(
        recorder: &Arc<Recorder>,
        queue: usize,
    ) -> (mpsc::Sender<Delivery>, tokio::task::JoinHandle<()>) {
        let (sender, deliveries) = mpsc::channel(queue);
        let router = tokio::spawn(run(
            deliveries,
            Inbox::transient(),
            recorder.clone(),
            InFlight::default(),
            unlimited(),
        ));
        (sender, router)
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_stays_while_busy_and_exits_once_idle() {
        let recorder = Arc::new(Recorder::default());
        let (sender, router) = start(&recorder, 16);
        sender.send(delivery("a", "first")).await.unwrap();
        recorder.wait_for(1).await;
        tokio::time::sleep(WORKER_IDLE - Duration::from_secs(1)).await;
        sender.send(delivery("a", "second")).await.unwrap();
        recorder.wait_for(2).await;
        assert_eq!(recorder.workers("a").len(), 1, "not idle yet: same worker");
        tokio::time::sleep(WORKER_IDLE + Duration::from_secs(1)).await;
        sender.send(delivery("a", "third")).await.unwrap();
        recorder.wait_for(3).await;
        assert_eq!(recorder.texts("a"), ["first", "second", "third"]);
        assert_eq!(recorder.workers("a").len(), 2, "a new worker took over");
        drop(sender);
        router.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn messages_racing_a_worker_going_idle_keep_their_order() {
        let recorder = Arc::new(Recorder::default());
        let (sender, router) = start(&recorder, 1024);
        // Gaps around the idle time, many of them exactly it: some messages
        // reach a worker that is closing its queue and are handed over to
        // the next worker, which waits for the closing one.
        let mut expected = Vec::new();
        for n in 0..120u32 {
            let text = format!("message {n}");
            sender.send(delivery("a", &text)).await.unwrap();
            sender.send(delivery("b", &text)).await.unwrap();
            expected.push(text);
            let gap = match n % 3 {
                0 => WORKER_IDLE,
                1 => WORKER_IDLE - Duration::from_millis(1),
                _ => WORKER_IDLE + Duration::from_millis(1),
            };
            tokio::time::sleep(gap).await;
        }
        drop(sender);
        router.await.unwrap();
        assert_eq!(recorder.texts("a"), expected);
        assert_eq!(recorder.texts("b"), expected);
        assert!(
            recorder.workers("a").len() > 1,
            "workers went idle on the way"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_handler_stops_neither_the_conversation_nor_the_router() {
        let recorder = Arc::new(Recorder {
            panic_on: Some("boom"),
            ..Recorder::default()
        });
        let (sender, router) = start(&recorder, 16);
        for text in ["before", "boom", "after"] {
            sender.send(delivery("a", text)).await.unwrap();
        }
        drop(sender);
        router.await.unwrap();
        assert_eq!(recorder.texts("a"), ["before", "after"]);
    }
}
