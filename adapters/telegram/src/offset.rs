//! The id of the last handled Telegram update, kept in a small file that is
//! replaced atomically, so a restart resumes after it: nothing is handled
//! twice and nothing unconfirmed is dropped. Telegram may restart its update
//! ids at a lower random value after a week without updates, so a lower id
//! is a new update unless it was handled recently ([`SeenUpdates`]).

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

/// The file holding the last handled update id.
#[derive(Clone, Debug)]
pub struct OffsetFile {
    path: PathBuf,
}

impl OffsetFile {
    /// The offset kept at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The last handled update id, `None` before the first update.
    pub fn load(&self) -> std::io::Result<Option<u32>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse::<u32>().map(Some).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} does not hold an update id; delete it to start from the updates Telegram still has",
                        self.path.display()
                    ),
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Records `update_id` as handled, durably.
    pub fn save(&self, update_id: u32) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let temporary = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary)?;
        writeln!(file, "{update_id}")?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.path)
    }
}

/// How many recently handled ids are remembered to recognise a redelivery.
const REMEMBERED: usize = 1024;

/// The ids handled lately, newest last: an update is a repeat only if its id
/// is among them, so a sequence that restarts lower is still read.
#[derive(Debug, Default)]
pub struct SeenUpdates {
    recent: VecDeque<u32>,
}

impl SeenUpdates {
    /// Starts from the last handled id of a previous run, if any.
    pub fn new(last: Option<u32>) -> Self {
        Self {
            recent: last.into_iter().collect(),
        }
    }

    /// The newest handled id.
    pub fn last(&self) -> Option<u32> {
        self.recent.back().copied()
    }

    /// Whether `id` was handled lately.
    pub fn is_repeat(&self, id: u32) -> bool {
        self.recent.contains(&id)
    }

    /// Records `id` as handled; true when it is lower than the previous one
    /// (Telegram restarted its ids).
    pub fn record(&mut self, id: u32) -> bool {
        let restarted = self.last().is_some_and(|last| id < last);
        if self.recent.len() == REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
        restarted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_sequence_is_new_and_a_redelivery_is_not() {
        let mut seen = SeenUpdates::new(Some(5_000));
        assert!(seen.is_repeat(5_000));
        assert!(!seen.record(5_001));
        assert!(
            !seen.is_repeat(17) && seen.record(17),
            "a restart at a lower id"
        );
        assert!(!seen.record(18));
        assert!(seen.is_repeat(5_001) && seen.is_repeat(18));
        for id in 100..100 + REMEMBERED as u32 {
            seen.record(id);
        }
        assert!(!seen.is_repeat(18), "the window is bounded");
        assert_eq!(seen.last(), Some(99 + REMEMBERED as u32));
    }

    #[test]
    fn saves_and_loads_the_last_update() {
        let dir = std::env::temp_dir().join(format!("concierge-offset-{}", std::process::id()));
        let file = OffsetFile::new(dir.join("telegram").join("offset"));
        assert_eq!(file.load().unwrap(), None);
        file.save(41).unwrap();
        file.save(42).unwrap();
        assert_eq!(file.load().unwrap(), Some(42));
        std::fs::write(dir.join("telegram").join("offset"), "garbage").unwrap();
        assert!(file.load().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
