//! The model file, memory-mapped read-only so weights are paged in from the
//! page cache on first use and shared with other processes reading it.

use std::fs::File;
use std::path::Path;

/// A read-only mapping of a whole file.
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        // SAFETY: the mapping is read-only and private to this process. A
        // model file truncated or rewritten by another process while mapped
        // would be undefined behaviour; model files are written to a temporary
        // name and renamed into place (models/fetch, conversion), so a file
        // in use is never modified in place.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Self { map })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}
