//! Helpers every platform channel needs: pacing edits per chat, and keys for
//! choice ids longer than a platform allows in a button.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Past this many chats, slots in the past are forgotten.
const PACER_PRUNE_AT: usize = 10_000;
/// Past this many long choice ids, the oldest keys are forgotten.
const CHOICE_KEYS_MAX: usize = 10_000;

/// Spaces out edits per chat: at most one per `interval`, across replies.
/// Chats never wait for each other.
#[derive(Debug)]
pub struct ChatPacer {
    interval: Duration,
    next_slot: Mutex<HashMap<String, Instant>>,
}

impl ChatPacer {
    /// A pacer allowing one edit per `interval` in each chat.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            next_slot: Mutex::new(HashMap::new()),
        }
    }

    /// The interval between two edits of one chat.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Waits until `chat` may be edited, and reserves that moment.
    pub async fn wait(&self, chat: &str) {
        let slot = {
            let Ok(mut next_slot) = self.next_slot.lock() else {
                return;
            };
            let now = Instant::now();
            if next_slot.len() >= PACER_PRUNE_AT {
                next_slot.retain(|_, slot| *slot > now);
            }
            let slot = next_slot.get(chat).map_or(now, |next| (*next).max(now));
            next_slot.insert(chat.to_string(), slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Short stand-ins for choice ids longer than a platform's button data
/// (Telegram: 64 bytes, Discord: 100 characters). Ids that fit pass through.
#[derive(Debug)]
pub struct ChoiceKeys {
    max_len: usize,
    keys: Mutex<LongIds>,
}

#[derive(Debug, Default)]
struct LongIds {
    next: u64,
    id_by_key: HashMap<String, String>,
    key_by_id: HashMap<String, String>,
}

impl ChoiceKeys {
    /// Keys for ids longer than `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            keys: Mutex::new(LongIds::default()),
        }
    }

    /// What to put in the button for `id`.
    pub fn key(&self, id: &str) -> String {
        if id.len() <= self.max_len && !id.starts_with('~') {
            return id.to_string();
        }
        let Ok(mut keys) = self.keys.lock() else {
            return String::new();
        };
        if let Some(key) = keys.key_by_id.get(id) {
            return key.clone();
        }
        if keys.id_by_key.len() >= CHOICE_KEYS_MAX {
            // Forget old keys but never reuse a number: an old button must
            // not come back as another choice.
            keys.id_by_key.clear();
            keys.key_by_id.clear();
        }
        keys.next += 1;
        let key = format!("~{}", keys.next);
        keys.id_by_key.insert(key.clone(), id.to_string());
        keys.key_by_id.insert(id.to_string(), key.clone());
        key
    }

    /// The choice id behind what a button sent back.
    pub fn id(&self, key: &str) -> String {
        if key.starts_with('~') {
            if let Some(id) = self
                .keys
                .lock()
                .ok()
                .and_then(|keys| keys.id_by_key.get(key).cloned())
            {
                return id;
            }
        }
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_chat_waits_for_its_slot_while_others_do_not() {
        let pacer = ChatPacer::new(Duration::from_millis(200));
        let start = Instant::now();
        pacer.wait("a").await;
        pacer.wait("b").await;
        assert!(start.elapsed() < Duration::from_millis(200));
        pacer.wait("a").await;
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn long_ids_get_short_keys_that_map_back() {
        let keys = ChoiceKeys::new(10);
        assert_eq!(keys.key("rec:like:1"), "rec:like:1");
        let long = "rec:details:a-very-long-item-identifier";
        let key = keys.key(long);
        assert!(key.len() <= 10);
        assert_eq!(keys.key(long), key, "the same id keeps its key");
        assert_eq!(keys.id(&key), long);
        assert_eq!(keys.id("rec:like:1"), "rec:like:1");
    }
}
