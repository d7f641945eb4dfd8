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

    /// Drops the resident pages of `start..start + len` (a tensor copied out
    /// at load), so they stop counting towards this process's memory. A
    /// later read faults them back in from the file. Advisory: errors and
    /// non-Unix systems leave the pages as they are.
    pub fn release(&self, start: usize, len: usize) {
        if start
            .checked_add(len)
            .is_none_or(|end| end > self.map.len())
        {
            return;
        }
        #[cfg(unix)]
        {
            // SAFETY: the mapping is read-only and never written, so dropping
            // its pages loses nothing: every later read, through any
            // reference, sees the same bytes faulted back in from the file.
            // madvise rounds the start down to a page boundary, which only
            // widens the dropped range within the mapping.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
    }
}
