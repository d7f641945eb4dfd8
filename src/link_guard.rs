//! Limits on failed `/link` code redemptions, per sender and per code, so a
//! code cannot be guessed: past the limit a redemption is refused before the
//! store is read, and failures never write or flush anything.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Failed redemptions allowed per sender, and per code, within [`WINDOW`].
pub const FAILURES_ALLOWED: usize = 5;
/// How long a failure counts.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Past this many keys, those without a recent failure are forgotten.
const PRUNE_AT: usize = 10_000;

/// Recent failure times by key, oldest first.
#[derive(Default)]
struct Failures(HashMap<String, VecDeque<Instant>>);

impl Failures {
    fn recent(&mut self, key: &str, now: Instant) -> usize {
        let Some(times) = self.0.get_mut(key) else {
            return 0;
        };
        while times
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= WINDOW)
        {
            times.pop_front();
        }
        times.len()
    }

    fn record(&mut self, key: &str, now: Instant) {
        if self.0.len() >= PRUNE_AT {
            self.0.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|&at| now.saturating_duration_since(at) < WINDOW)
            });
        }
        let times = self.0.entry(key.to_string()).or_default();
        times.push_back(now);
        if times.len() > FAILURES_ALLOWED {
            times.pop_front();
        }
    }
}

/// Failed redemptions of the last [`WINDOW`].
#[derive(Default)]
pub struct LinkGuard {
    state: Mutex<(Failures, Failures)>,
}

impl LinkGuard {
    /// Whether `sender` may try `code` now.
    pub fn may_try(&self, sender: &str, code: &str, now: Instant) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let (senders, codes) = &mut *state;
        senders.recent(sender, now) < FAILURES_ALLOWED && codes.recent(code, now) < FAILURES_ALLOWED
    }

    /// Records a failed redemption of `code` by `sender`.
    pub fn failed(&self, sender: &str, code: &str, now: Instant) {
        if let Ok(mut state) = self.state.lock() {
            let (senders, codes) = &mut *state;
            senders.record(sender, now);
            codes.record(code, now);
        }
    }

    /// Keys tracked now (senders plus codes).
    pub fn tracked(&self) -> usize {
        self.state
            .lock()
            .map(|state| state.0 .0.len() + state.1 .0.len())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_or_a_code_is_stopped_after_the_allowed_failures_until_the_window_passes() {
        let guard = LinkGuard::default();
        let now = Instant::now();
        for attempt in 0..FAILURES_ALLOWED {
            assert!(guard.may_try("mallory", &format!("LINK-{attempt}"), now));
            guard.failed("mallory", &format!("LINK-{attempt}"), now);
        }
        assert!(!guard.may_try("mallory", "LINK-NEW", now));
        assert!(guard.may_try("alice", "LINK-NEW", now));
        // One code guessed by many senders is stopped too.
        for sender in 0..FAILURES_ALLOWED {
            guard.failed(&format!("sender {sender}"), "LINK-SHARED", now);
        }
        assert!(!guard.may_try("bob", "LINK-SHARED", now));
        let later = now + WINDOW;
        assert!(guard.may_try("mallory", "LINK-NEW", later));
        assert!(guard.may_try("bob", "LINK-SHARED", later));
    }

    #[test]
    fn memory_stays_bounded() {
        let guard = LinkGuard::default();
        let now = Instant::now();
        for i in 0..PRUNE_AT {
            guard.failed(&format!("s{i}"), "LINK-X", now);
        }
        let later = now + WINDOW;
        guard.failed("late", "LINK-Y", later);
        assert!(guard.tracked() <= 4, "{}", guard.tracked());
    }
}
