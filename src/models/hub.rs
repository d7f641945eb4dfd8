//! Downloads from the Hugging Face hub (or any server speaking its HTTP
//! interface, `HF_ENDPOINT`): the file's size and sha256 come from the hub's
//! tree listing, the bytes from its `resolve` URL with `Range` requests, so
//! an interrupted download resumes where it stopped. The file appears under
//! its final name only after its sha256 matched.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Attempts per download before giving up (each resumes the last).
const ATTEMPTS: usize = 3;

/// What the hub says about a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// Bytes.
    pub size: u64,
    /// Lower-case hex sha256 of the content.
    pub sha256: String,
}

/// A hub client.
pub struct Hub {
    endpoint: String,
    token: Option<String>,
    client: reqwest::blocking::Client,
}

#[derive(serde::Deserialize)]
struct TreeEntry {
    path: String,
    #[serde(default)]
    size: u64,
    lfs: Option<LfsInfo>,
}

#[derive(serde::Deserialize)]
struct LfsInfo {
    oid: String,
    size: u64,
}

impl Hub {
    /// A client of `HF_ENDPOINT` (default: the public hub), authenticated
    /// with `HF_TOKEN` when set.
    pub fn from_env() -> anyhow::Result<Self> {
        let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.into());
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|token| !token.is_empty());
        Self::new(&endpoint, token)
    }

    /// A client of `endpoint`.
    pub fn new(endpoint: &str, token: Option<String>) -> anyhow::Result<Self> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(None)
            .user_agent(concat!("concierge/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            client,
        })
    }

    fn get(&self, url: &str) -> reqwest::blocking::RequestBuilder {
        let request = self.client.get(url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Size and sha256 of `file` in `repo`, from the hub's listing.
    pub fn describe(&self, repo: &str, file: &str) -> anyhow::Result<RemoteFile> {
        let url = format!("{}/api/models/{repo}/tree/main", self.endpoint);
        let response = self.get(&url).send().with_context(|| {
            format!(
                "cannot reach {}: check the network or HF_ENDPOINT",
                self.endpoint
            )
        })?;
        if !response.status().is_success() {
            bail!("{url} answered {}", response.status());
        }
        let entries: Vec<TreeEntry> = response
            .json()
            .with_context(|| format!("{url} did not answer with a file listing"))?;
        let entry = entries
            .into_iter()
            .find(|entry| entry.path == file)
            .with_context(|| format!("{repo} has no file {file}"))?;
        let lfs = entry
            .lfs
            .with_context(|| format!("{repo}/{file}: the hub reports no sha256 for it"))?;
        let sha256 = lfs.oid.trim_start_matches("sha256:").to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{repo}/{file}: the hub reports an invalid sha256 {sha256:?}");
        }
        Ok(RemoteFile {
            size: if lfs.size > 0 { lfs.size } else { entry.size },
            sha256,
        })
    }

    /// Downloads `file` of `repo` to `dest`, resuming a partial download,
    /// calling `progress(done, total)` as bytes arrive. Returns `dest`.
    pub fn download(
        &self,
        repo: &str,
        file: &str,
        dest: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> anyhow::Result<PathBuf> {
        let remote = self.describe(repo, file)?;
        if dest.exists() && sha256_of(dest)? == remote.sha256 {
            progress(remote.size, remote.size);
            return Ok(dest.to_path_buf());
        }
        if let Some(dir) = dest.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let partial = partial_path(dest);
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            match self.fetch_into(repo, file, &partial, &remote, &mut progress) {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(err) => last_error = Some(err),
            }
        }
        if let Some(err) = last_error {
            return Err(err.context(format!(
                "download of {repo}/{file} interrupted; run the same command again to resume ({} kept)",
                partial.display()
            )));
        }
        let actual = sha256_of(&partial)?;
        if actual != remote.sha256 {
            let _ = std::fs::remove_file(&partial);
            bail!(
                "{repo}/{file}: sha256 mismatch (the hub says {}, the download is {actual}); the download was deleted, try again",
                remote.sha256
            );
        }
        std::fs::rename(&partial, dest)
            .with_context(|| format!("cannot move the download to {}", dest.display()))?;
        Ok(dest.to_path_buf())
    }

    fn fetch_into(
        &self,
        repo: &str,
        file: &str,
        partial: &Path,
        remote: &RemoteFile,
        progress: &mut impl FnMut(u64, u64),
    ) -> anyhow::Result<()> {
        let mut have = std::fs::metadata(partial).map_or(0, |meta| meta.len());
        if have > remote.size {
            have = 0;
        }
        if have == remote.size && remote.size > 0 {
            return Ok(());
        }
        let url = format!("{}/{repo}/resolve/main/{file}", self.endpoint);
        let mut response = self
            .get(&url)
            .header(reqwest::header::RANGE, format!("bytes={have}-"))
            .send()
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let mut output = if status == reqwest::StatusCode::PARTIAL_CONTENT && have > 0 {
            OpenOptions::new().append(true).open(partial)
        } else if status.is_success() {
            have = 0;
            File::create(partial)
        } else {
            bail!("{url} answered {status}");
        }
        .with_context(|| format!("cannot write {}", partial.display()))?;
        let mut buffer = vec![0u8; 1 << 20];
        progress(have, remote.size);
        loop {
            let read = response
                .read(&mut buffer)
                .with_context(|| format!("reading {url}"))?;
            if read == 0 {
                break;
            }
            output
                .write_all(&buffer[..read])
                .with_context(|| format!("cannot write {}", partial.display()))?;
            have += read as u64;
            progress(have, remote.size);
        }
        output.sync_all().ok();
        if have != remote.size {
            bail!("the server sent {have} of {} bytes", remote.size);
        }
        Ok(())
    }
}

/// Where a download in progress is kept.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

/// Lower-case hex sha256 of a file.
pub fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}
