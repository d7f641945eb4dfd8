//! The id of the last handled Telegram update, kept in a small file that is
//! replaced atomically, so a restart resumes after it: nothing is handled
//! twice and nothing unconfirmed is dropped.

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

#[cfg(test)]
mod tests {
    use super::*;

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
