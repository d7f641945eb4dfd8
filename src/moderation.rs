//! Flood limits, the stage between intake and the conversation queues: each
//! sender has a token bucket for messages and one for button presses
//! (`[moderation]`: a rate per minute and a burst). Past the limit a message
//! is dropped; the first one dropped in a window is answered with one notice
//! in the customer's language instead. Agents in their spaces are not
//! limited (the router asks the pipeline).
//!
//! Architecture invariant: memory is bounded by the senders active within
//! one window; everyone else's state is forgotten.

use std::collections::HashMap;
use std::time::Duration;

use concierge_adapter::{Inbound, InboundContent};
use tokio::time::Instant;

use crate::config::ModerationConfig;

/// Past this many tracked senders, idle ones are forgotten.
const PRUNE_AT: usize = 4096;

/// What happens to one inbound message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits: handle it.
    Admit,
    /// Over the limit, and the sender has not been told in this window:
    /// send the notice instead of handling it.
    Notice,
    /// Over the limit: drop it.
    Drop,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            updated: now,
        }
    }

    /// Refills at `per_minute`, up to `burst`, then takes one token if there is one.
    fn take(&mut self, per_minute: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(per_minute) / 60.0).min(f64::from(burst));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, per_minute: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * f64::from(per_minute) / 60.0 >= f64::from(burst)
    }
}

#[derive(Debug)]
struct SenderState {
    messages: Bucket,
    presses: Bucket,
    noticed_at: Option<Instant>,
}

/// The limits and every recently active sender's state.
pub struct Moderation {
    limits: ModerationConfig,
    senders: HashMap<(String, String), SenderState>,
}

impl Moderation {
    /// Applies `limits` (all admitted when `limits.enabled` is false).
    pub fn new(limits: ModerationConfig) -> Self {
        Self {
            limits,
            senders: HashMap::new(),
        }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.limits.notice_window_secs)
    }

    /// Decides on `inbound`, which arrived at `now`.
    pub fn check(&mut self, inbound: &Inbound, now: Instant) -> Verdict {
        if !self.limits.enabled {
            return Verdict::Admit;
        }
        if self.senders.len() >= PRUNE_AT {
            self.prune(now);
        }
        let limits = &self.limits;
        let key = (
            inbound.sender.platform.clone(),
            inbound.sender.user_id.clone(),
        );
        let state = self.senders.entry(key).or_insert_with(|| SenderState {
            messages: Bucket::full(limits.message_burst, now),
            presses: Bucket::full(limits.press_burst, now),
            noticed_at: None,
        });
        let admitted = match inbound.content {
            InboundContent::Text(_) => {
                state
                    .messages
                    .take(limits.messages_per_minute, limits.message_burst, now)
            }
            InboundContent::Choice { .. } => {
                state
                    .presses
                    .take(limits.presses_per_minute, limits.press_burst, now)
            }
        };
        if admitted {
            return Verdict::Admit;
        }
        let window = Duration::from_secs(limits.notice_window_secs);
        let told_lately = state
            .noticed_at
            .is_some_and(|at| now.saturating_duration_since(at) < window);
        if told_lately {
            Verdict::Drop
        } else {
            state.noticed_at = Some(now);
            Verdict::Notice
        }
    }

    /// Forgets senders whose buckets are full again and who were not told
    /// within the window: their state equals a new sender's.
    fn prune(&mut self, now: Instant) {
        let window = self.window();
        let limits = &self.limits;
        self.senders.retain(|_, state| {
            let noticed_lately = state
                .noticed_at
                .is_some_and(|at| now.saturating_duration_since(at) < window);
            noticed_lately
                || !state
                    .messages
                    .is_full(limits.messages_per_minute, limits.message_burst, now)
                || !state
                    .presses
                    .is_full(limits.presses_per_minute, limits.press_burst, now)
        });
    }

    /// Senders tracked now.
    pub fn tracked(&self) -> usize {
        self.senders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concierge_adapter::{ConversationRef, SenderRef};
    use std::time::SystemTime;

    fn limits() -> ModerationConfig {
        ModerationConfig {
            enabled: true,
            messages_per_minute: 6,
            message_burst: 3,
            presses_per_minute: 60,
            press_burst: 2,
            notice_window_secs: 60,
            queue_per_conversation: 10,
        }
    }

    fn from(user: &str, content: InboundContent) -> Inbound {
        Inbound {
            chat: concierge_adapter::ChatKind::Group,
            conversation: ConversationRef {
                platform: "test".into(),
                chat_id: "group".into(),
            },
            sender: SenderRef {
                platform: "test".into(),
                user_id: user.into(),
                display_name: None,
                language_hint: None,
            },
            content,
            message_id: None,
            delivery_id: None,
            in_reply_to: None,
            thread_parent: None,
            received_at: SystemTime::now(),
        }
    }

    fn text(user: &str) -> Inbound {
        from(user, InboundContent::Text("hi".into()))
    }

    #[test]
    fn a_burst_passes_then_one_notice_then_silence_until_the_bucket_refills() {
        let mut moderation = Moderation::new(limits());
        let start = Instant::now();
        let verdicts: Vec<Verdict> = (0..10)
            .map(|_| moderation.check(&text("flood"), start))
            .collect();
        assert_eq!(verdicts[..3], [Verdict::Admit; 3]);
        assert_eq!(verdicts[3], Verdict::Notice);
        assert!(verdicts[4..].iter().all(|&v| v == Verdict::Drop));
        // Another sender in the same chat is not affected.
        assert_eq!(moderation.check(&text("calm"), start), Verdict::Admit);
        // 6 per minute: one token after 10 s.
        let later = start + Duration::from_secs(10);
        assert_eq!(moderation.check(&text("flood"), later), Verdict::Admit);
        assert_eq!(moderation.check(&text("flood"), later), Verdict::Drop);
        // A new window allows a new notice.
        let next_window = start + Duration::from_secs(61);
        let verdicts: Vec<Verdict> = (0..8)
            .map(|_| moderation.check(&text("flood"), next_window))
            .collect();
        assert_eq!(
            verdicts.iter().filter(|&&v| v == Verdict::Notice).count(),
            1
        );
    }

    #[test]
    fn presses_have_their_own_bucket() {
        let mut moderation = Moderation::new(limits());
        let now = Instant::now();
        let press = || from("p", InboundContent::Choice { id: "x".into() });
        assert_eq!(moderation.check(&press(), now), Verdict::Admit);
        assert_eq!(moderation.check(&press(), now), Verdict::Admit);
        assert_eq!(moderation.check(&press(), now), Verdict::Notice);
        assert_eq!(moderation.check(&text("p"), now), Verdict::Admit);
    }

    #[test]
    fn disabled_admits_everything_and_idle_senders_are_forgotten() {
        let mut off = Moderation::new(ModerationConfig {
            enabled: false,
            ..limits()
        });
        let now = Instant::now();
        assert!((0..100).all(|_| off.check(&text("x"), now) == Verdict::Admit));
        let mut moderation = Moderation::new(limits());
        for i in 0..PRUNE_AT {
            moderation.check(&text(&format!("user {i}")), now);
        }
        assert_eq!(moderation.tracked(), PRUNE_AT);
        // A minute later every bucket is full again: all are forgotten.
        let later = now + Duration::from_secs(61);
        moderation.check(&text("new"), later);
        assert_eq!(moderation.tracked(), 1);
    }
}
