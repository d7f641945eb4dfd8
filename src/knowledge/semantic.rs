//! Semantic search beside the words: every indexed passage's embedding
//! (`embed`), kept in a cache file beside the embedding model keyed by the
//! passage's text (so a re-import, a rebuilt index or another data
//! directory never embeds the same text twice), and the passages closest in
//! meaning to a question.
//!
//! The cache is derived data like the index: deleting it only costs the
//! time to embed the passages again.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

use super::embed::Embedder;

const CACHE_MAGIC: &[u8; 8] = b"CNCVEC01";

/// The passages' vectors, in the order of `KnowledgeBase`'s passage list.
pub struct Semantic {
    embedder: Arc<Embedder>,
    /// `passages × dimensions` values.
    vectors: Vec<f32>,
    /// Sentences' vectors, embedded when first compared and kept for the
    /// process (a few per question; the passages' file cache would be
    /// rewritten on each).
    sentences: Mutex<HashMap<[u8; 16], Vec<f32>>>,
}

/// The key of a text's vector in the cache: a query's vector differs from
/// the same text's as a passage.
fn cache_key(text: &str, kind: Embedding) -> [u8; 16] {
    match kind {
        Embedding::Passage => key_of(text),
        Embedding::Query => key_of(&format!("query: {text}")),
    }
}

fn key_of(text: &str) -> [u8; 16] {
    let digest = Sha256::digest(text.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// Which side of the embedding model a text is embedded as.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Embedding {
    /// A passage searched for.
    Passage,
    /// A question, or a message judged by its meaning.
    Query,
}

/// The vectors of `texts`, reusing those cached in `cache_path` for texts
/// seen before and adding the new ones to it.
pub fn embed_cached(
    embedder: &Embedder,
    texts: &[String],
    cache_path: &Path,
    kind: Embedding,
) -> Vec<Vec<f32>> {
    let dimensions = embedder.dimensions();
    let mut cached = read_cache(cache_path, dimensions);
    let keys: Vec<[u8; 16]> = texts.iter().map(|text| cache_key(text, kind)).collect();
    let missing = keys.iter().filter(|key| !cached.contains_key(*key)).count();
    if missing > 0 {
        tracing::info!(
            texts = missing,
            cache = %cache_path.display(),
            "embedding texts (once; their vectors are cached)"
        );
    }
    let started = std::time::Instant::now();
    let vectors = texts
        .iter()
        .zip(keys)
        .map(|(text, key)| {
            cached
                .entry(key)
                .or_insert_with(|| match kind {
                    Embedding::Passage => embedder.passage(text),
                    Embedding::Query => embedder.query(text),
                })
                .clone()
        })
        .collect();
    if missing > 0 {
        tracing::info!(
            texts = missing,
            seconds = started.elapsed().as_secs_f32(),
            "texts embedded"
        );
        // Re-read: another process may have added vectors meanwhile.
        let mut merged = read_cache(cache_path, dimensions);
        merged.extend(cached);
        if let Err(err) = write_cache(cache_path, dimensions, &merged) {
            tracing::warn!(path = %cache_path.display(), "cannot save the vectors: {err}");
        }
    }
    vectors
}

impl Semantic {
    /// Embeds `texts` (one per passage), reusing the vectors cached in
    /// `cache_path` for texts seen before, and adds the new ones to it.
    pub fn build(embedder: Arc<Embedder>, texts: &[String], cache_path: &Path) -> Self {
        let vectors = embed_cached(&embedder, texts, cache_path, Embedding::Passage)
            .into_iter()
            .flatten()
            .collect();
        Self {
            embedder,
            vectors,
            sentences: Mutex::default(),
        }
    }

    /// The question's similarity to each of `sentences`, each embedded as
    /// a passage.
    pub fn sentence_similarities(&self, question: &str, sentences: &[&str]) -> Vec<f32> {
        let query = self.embedder.query(question);
        sentences
            .iter()
            .map(|sentence| {
                let key = key_of(sentence);
                let known = self
                    .sentences
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&key)
                    .cloned();
                // Embedded outside the lock: it takes milliseconds.
                let vector = known.unwrap_or_else(|| {
                    let vector = self.embedder.passage(sentence);
                    self.sentences
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(key, vector.clone());
                    vector
                });
                dot(&vector, &query)
            })
            .collect()
    }

    /// The question's similarity to every passage, in passage order.
    pub fn similarities(&self, question: &str) -> Vec<f32> {
        let query = self.embedder.query(question);
        self.vectors
            .chunks_exact(query.len())
            .map(|vector| dot(vector, &query))
            .collect()
    }
}

/// The similarity of two unit vectors.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// How many of `texts` (passages) have no vector in `cache_path` yet.
pub fn missing(texts: &[String], dimensions: usize, cache_path: &Path) -> usize {
    let cached = read_cache(cache_path, dimensions);
    texts
        .iter()
        .filter(|text| !cached.contains_key(&cache_key(text, Embedding::Passage)))
        .count()
}

fn read_cache(path: &Path, dimensions: usize) -> HashMap<[u8; 16], Vec<f32>> {
    let mut cache = HashMap::new();
    let Ok(bytes) = std::fs::read(path) else {
        return cache;
    };
    let header = CACHE_MAGIC.len() + 4;
    if bytes.len() < header
        || &bytes[..CACHE_MAGIC.len()] != CACHE_MAGIC
        || u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default()) as usize != dimensions
    {
        return cache;
    }
    let entry = 16 + dimensions * 4;
    for chunk in bytes[header..].chunks_exact(entry) {
        let mut key = [0u8; 16];
        key.copy_from_slice(&chunk[..16]);
        let vector = chunk[16..]
            .chunks_exact(4)
            .map(|value| f32::from_le_bytes([value[0], value[1], value[2], value[3]]))
            .collect();
        cache.insert(key, vector);
    }
    cache
}

/// Writes the cache to a temporary file renamed into place, so a crash
/// never leaves half a cache.
fn write_cache(
    path: &Path,
    dimensions: usize,
    cache: &HashMap<[u8; 16], Vec<f32>>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A name of this process's own: several may write at once.
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&partial)?);
    out.write_all(CACHE_MAGIC)?;
    out.write_all(&(dimensions as u32).to_le_bytes())?;
    for (key, vector) in cache {
        out.write_all(key)?;
        for value in vector {
            out.write_all(&value.to_le_bytes())?;
        }
    }
    out.into_inner()
        .map_err(|err| err.into_error())?
        .sync_all()?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_round_trips_and_a_damaged_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache").join("vectors");
        let mut cache = HashMap::new();
        cache.insert(key_of("a passage"), vec![0.5, -0.25, 1.0]);
        write_cache(&path, 3, &cache).unwrap();
        assert_eq!(read_cache(&path, 3), cache);
        assert!(read_cache(&path, 4).is_empty(), "other dimensions");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(read_cache(&path, 3).is_empty());
    }
}
