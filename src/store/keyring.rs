//! Data keys outside sled, for crypto-shredding: every customer's text is
//! sealed (XChaCha20-Poly1305) under a key of their own, and the inbox under
//! a transient key. Destroying a key makes every copy of what it sealed
//! unreadable, including the copies sled's log keeps in old segments until it
//! rewrites them. Keys are files in `<data_dir>/keys/`, one per key, written
//! durably before anything is sealed with them.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::StoreError;

/// First byte of a sealed record; plain JSON records start with `{`.
const SEALED_MARK: u8 = 0xC5;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + 1 + 8 + NONCE_LEN;
const KEY_LEN: usize = 32;

/// Which key sealed a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyId {
    /// A customer's key; its number is the customer id it was made for.
    Customer(u64),
    /// The inbox's key of one generation.
    Inbox(u64),
}

impl KeyId {
    fn tag(self) -> (u8, u64) {
        match self {
            Self::Customer(id) => (1, id),
            Self::Inbox(generation) => (2, generation),
        }
    }

    fn from_tag(tag: u8, number: u64) -> Option<Self> {
        match tag {
            1 => Some(Self::Customer(number)),
            2 => Some(Self::Inbox(number)),
            _ => None,
        }
    }

    fn file_name(self) -> String {
        match self {
            Self::Customer(id) => format!("customer-{id}.key"),
            Self::Inbox(generation) => format!("inbox-{generation}.key"),
        }
    }

    fn parse_file_name(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".key")?;
        if let Some(id) = stem.strip_prefix("customer-") {
            return id.parse().ok().map(Self::Customer);
        }
        stem.strip_prefix("inbox-")?.parse().ok().map(Self::Inbox)
    }
}

/// The key of a sealed record, read from its header; `None` for a plain one.
pub fn sealed_by(record: &[u8]) -> Option<KeyId> {
    if record.len() < HEADER_LEN || record[0] != SEALED_MARK {
        return None;
    }
    let number = u64::from_be_bytes(record[2..10].try_into().ok()?);
    KeyId::from_tag(record[1], number)
}

/// The data keys, cached once read. Cheap to clone.
#[derive(Clone)]
pub struct Keyring {
    dir: PathBuf,
    keys: Arc<RwLock<HashMap<KeyId, XChaCha20Poly1305>>>,
}

impl Keyring {
    /// Opens (creating if needed) the key directory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|err| io_error(dir, err))?;
        restrict(dir, 0o700);
        Ok(Self {
            dir: dir.to_path_buf(),
            keys: Default::default(),
        })
    }

    /// Where the keys live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every key on disk.
    pub fn list(&self) -> Result<Vec<KeyId>, StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|err| io_error(&self.dir, err))?;
        let mut ids: Vec<KeyId> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| KeyId::parse_file_name(&entry.file_name().to_string_lossy()))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Whether a key exists.
    pub fn has(&self, id: KeyId) -> bool {
        self.cached(id) || self.dir.join(id.file_name()).exists()
    }

    fn cached(&self, id: KeyId) -> bool {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&id)
    }

    /// Makes key `id` if it does not exist; durable on return.
    pub fn ensure(&self, id: KeyId) -> Result<(), StoreError> {
        if self.has(id) {
            return Ok(());
        }
        let mut key = [0u8; KEY_LEN];
        getrandom_fill(&mut key)?;
        let path = self.dir.join(id.file_name());
        let partial = self.dir.join(format!("{}.partial", id.file_name()));
        let written = (|| {
            let mut file = std::fs::File::create(&partial)?;
            restrict(&partial, 0o600);
            file.write_all(&key)?;
            file.sync_all()?;
            std::fs::rename(&partial, &path)?;
            sync_dir(&self.dir)
        })();
        written.map_err(|err| io_error(&path, err))?;
        let cipher = XChaCha20Poly1305::new((&key).into());
        key.fill(0);
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, cipher);
        Ok(())
    }

    fn cipher(&self, id: KeyId) -> Result<Option<XChaCha20Poly1305>, StoreError> {
        if let Some(cipher) = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
        {
            return Ok(Some(cipher.clone()));
        }
        let path = self.dir.join(id.file_name());
        let mut key = match std::fs::read(&path) {
            Ok(key) => key,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_error(&path, err)),
        };
        if key.len() != KEY_LEN {
            return Err(StoreError::Corrupt {
                path,
                detail: format!("a data key has {} bytes instead of {KEY_LEN}", key.len()),
            });
        }
        let cipher = XChaCha20Poly1305::new(key.as_slice().into());
        key.fill(0);
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, cipher.clone());
        Ok(Some(cipher))
    }

    /// Seals `plain` under key `id` (made if needed).
    pub fn seal(&self, id: KeyId, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.ensure(id)?;
        let cipher = self
            .cipher(id)?
            .ok_or_else(|| StoreError::NotFound(format!("data key {}", id.file_name())))?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom_fill(&mut nonce)?;
        let (tag, number) = id.tag();
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), plain)
            .map_err(|_| StoreError::Io {
                path: self.dir.clone(),
                detail: "sealing a record failed".into(),
            })?;
        let mut record = Vec::with_capacity(HEADER_LEN + sealed.len());
        record.push(SEALED_MARK);
        record.push(tag);
        record.extend_from_slice(&number.to_be_bytes());
        record.extend_from_slice(&nonce);
        record.extend_from_slice(&sealed);
        Ok(record)
    }

    /// The plain bytes of a record: itself when it is not sealed, `None`
    /// when its key was destroyed.
    pub fn open_record<'a>(
        &self,
        record: &'a [u8],
    ) -> Result<Option<std::borrow::Cow<'a, [u8]>>, StoreError> {
        let Some(id) = sealed_by(record) else {
            return Ok(Some(std::borrow::Cow::Borrowed(record)));
        };
        let Some(cipher) = self.cipher(id)? else {
            return Ok(None);
        };
        let nonce = XNonce::from_slice(&record[10..HEADER_LEN]);
        cipher
            .decrypt(nonce, &record[HEADER_LEN..])
            .map(|plain| Some(std::borrow::Cow::Owned(plain)))
            .map_err(|_| StoreError::Corrupt {
                path: self.dir.join(id.file_name()),
                detail: "a sealed record does not open with its data key (damaged, or the key was replaced)".into(),
            })
    }

    /// Destroys key `id`: its file is overwritten, synced and removed, and
    /// the cached copy dropped. Whatever it sealed is unreadable from now on.
    pub fn destroy(&self, id: KeyId) -> Result<bool, StoreError> {
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        let path = self.dir.join(id.file_name());
        if !path.exists() {
            return Ok(false);
        }
        let destroyed = (|| {
            let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
            file.write_all(&[0u8; KEY_LEN])?;
            file.sync_all()?;
            drop(file);
            std::fs::remove_file(&path)?;
            sync_dir(&self.dir)
        })();
        destroyed.map_err(|err| io_error(&path, err))?;
        Ok(true)
    }
}

fn getrandom_fill(buffer: &mut [u8]) -> Result<(), StoreError> {
    use rand::TryRngCore;
    rand::rngs::OsRng
        .try_fill_bytes(buffer)
        .map_err(|err| StoreError::Io {
            path: PathBuf::from("/dev/urandom"),
            detail: format!("no randomness for a data key: {err}"),
        })
}

fn io_error(path: &Path, err: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        detail: err.to_string(),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn restrict(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_record_opens_until_its_key_is_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::open(dir.path()).unwrap();
        let plain = br#"{"text":"marker-1234"}"#;
        let sealed = keyring.seal(KeyId::Customer(7), plain).unwrap();
        assert_eq!(sealed_by(&sealed), Some(KeyId::Customer(7)));
        assert!(!sealed.windows(6).any(|window| window == b"marker"));
        // A fresh keyring reads the key from its file.
        let reopened = Keyring::open(dir.path()).unwrap();
        assert_eq!(
            reopened.open_record(&sealed).unwrap().unwrap().as_ref(),
            plain
        );
        assert!(reopened.destroy(KeyId::Customer(7)).unwrap());
        assert!(Keyring::open(dir.path())
            .unwrap()
            .open_record(&sealed)
            .unwrap()
            .is_none());
        assert!(reopened.list().unwrap().is_empty());
    }

    #[test]
    fn plain_records_pass_through_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::open(dir.path()).unwrap();
        assert_eq!(keyring.open_record(b"{}").unwrap().unwrap().as_ref(), b"{}");
        let mut sealed = keyring.seal(KeyId::Inbox(1), b"hello").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(
            keyring.open_record(&sealed),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(keyring.list().unwrap(), vec![KeyId::Inbox(1)]);
    }
}
