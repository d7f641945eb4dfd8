//! The operator API's token on one machine: without `operator.token`, the
//! daemon (`serve` or `chat`) makes a random one at start and writes it to
//! `<data_dir>/operator.token`, readable by its user alone; the command-line
//! clients (`concierge tickets`, `concierge customers`) read it from there.
//! So agents can answer from a second shell at once, and nothing is open
//! without a token. (Owner-only on Unix; elsewhere the data directory's
//! own permissions apply.)

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::{Config, Secret};

/// The file's name in the data directory.
pub const FILE: &str = "operator.token";

/// Where a daemon with `data_dir` writes its token.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// A new random token (256 bits, hex), written to `path(data_dir)` with
/// owner-only permissions before it is used.
pub fn issue(data_dir: &Path) -> anyhow::Result<Secret> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .context("no randomness for the operator token")?;
    let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let target = path(data_dir);
    let partial = data_dir.join(format!("{FILE}.partial"));
    let written = (|| -> std::io::Result<()> {
        let _ = std::fs::remove_file(&partial);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&partial)?;
        file.write_all(format!("{token}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&partial, &target)
    })();
    written.with_context(|| format!("cannot write the operator token to {}", target.display()))?;
    Ok(Secret::new(token))
}

/// Removes the token a daemon wrote, if the file still holds it (a newer
/// run's token is left alone).
pub fn withdraw(data_dir: &Path, token: &Secret) {
    let target = path(data_dir);
    if std::fs::read_to_string(&target).is_ok_and(|written| written.trim() == token.expose()) {
        let _ = std::fs::remove_file(target);
    }
}

/// A token written by `issue`, withdrawn when this is dropped: on every
/// way the operator API's task ends, the runtime dropping it included.
pub struct Issued {
    data_dir: PathBuf,
    token: Secret,
}

impl Issued {
    /// Takes charge of withdrawing `token`, written to `data_dir`.
    pub fn new(data_dir: &Path, token: Secret) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            token,
        }
    }
}

impl Drop for Issued {
    fn drop(&mut self) {
        withdraw(&self.data_dir, &self.token);
    }
}

/// The token a client uses: `operator.token`, else the one the daemon on
/// this machine wrote to its data directory.
pub fn for_client(config: &Config) -> Option<Secret> {
    if let Some(token) = &config.operator.token {
        return Some(token.clone());
    }
    let written = std::fs::read_to_string(path(&config.store.data_dir)).ok()?;
    let token = written.trim();
    (!token.is_empty()).then(|| Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_is_owner_only_and_read_back_by_clients() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::parse("", &[]).unwrap();
        config.store.data_dir = dir.path().to_path_buf();
        assert!(for_client(&config).is_none());
        let issued = issue(dir.path()).unwrap();
        assert_eq!(issued.expose().len(), 64);
        assert_eq!(for_client(&config), Some(issued.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "only its owner may read it");
        }
        let again = issue(dir.path()).unwrap();
        assert_ne!(again, issued, "each start makes a new one");
        config.operator.token = Some(Secret::new("configured"));
        assert_eq!(for_client(&config), Some(Secret::new("configured")));
        withdraw(dir.path(), &issued);
        assert!(path(dir.path()).exists(), "a newer run's token stays");
        drop(Issued::new(dir.path(), again));
        config.operator.token = None;
        assert!(for_client(&config).is_none());
    }
}
