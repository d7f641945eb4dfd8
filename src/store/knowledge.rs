//! Knowledge-base documents, the source the search index is built from, and the generation that tells derived indexes they are stale.

use super::*;

/// What kind of source a knowledge-base document came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KbKind {
    /// A Markdown document.
    Markdown,
    /// A plain-text document.
    Text,
    /// One question/answer row of an FAQ file.
    Faq,
}

/// One passage of a knowledge-base document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KbPassage {
    /// Heading path, e.g. "Returns > Refund times"; the question for FAQ rows.
    pub title: String,
    /// The passage text; the answer for FAQ rows.
    pub text: String,
}

/// A knowledge-base document: the source of truth the search index is built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KbDoc {
    /// Record schema version.
    pub v: u32,
    /// Id: the path relative to the imported root (`faq.csv#3` for FAQ rows).
    pub id: String,
    /// The imported root this document came from, for removal on re-import.
    pub root: String,
    /// Document title.
    pub title: String,
    /// Language of the document.
    pub locale: Option<Locale>,
    /// Source kind.
    pub kind: KbKind,
    /// Hash of the source text, to skip unchanged documents.
    pub content_hash: u64,
    /// The passages, in document order.
    pub passages: Vec<KbPassage>,
}

impl Store {
    /// Every knowledge-base document, ordered by id.
    pub fn kb_docs(&self) -> Result<Vec<KbDoc>, StoreError> {
        self.records(&self.kb_docs, TREE_KB_DOCS)
    }

    /// One knowledge-base document.
    pub fn kb_doc(&self, id: &str) -> Result<Option<KbDoc>, StoreError> {
        self.record(&self.kb_docs, TREE_KB_DOCS, id.as_bytes())
    }

    /// Adds or replaces documents and removes others, in one transaction that
    /// also advances the knowledge-base generation.
    pub fn kb_apply(&self, put: &[KbDoc], remove: &[String]) -> Result<u64, StoreError> {
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = put
            .iter()
            .map(|doc| (doc.id.as_bytes().to_vec(), Self::encode(doc)))
            .collect();
        let _one = self.one_transaction();
        let generation = (&self.kb_docs, &self.meta)
            .transaction(|(docs, meta)| {
                for (key, value) in &encoded {
                    docs.insert(key.as_slice(), value.as_slice())?;
                }
                for id in remove {
                    docs.remove(id.as_bytes())?;
                }
                let next = meta
                    .get(KEY_KB_GENERATION)?
                    .and_then(|bytes| decode_u64(&bytes))
                    .unwrap_or(0)
                    + 1;
                meta.insert(KEY_KB_GENERATION, &next.to_be_bytes())?;
                Ok(next)
            })
            .map_err(|err| self.transaction_error(err))?;
        Ok(generation)
    }

    /// Advances on every knowledge-base change; derived indexes compare it.
    pub fn kb_generation(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(KEY_KB_GENERATION)
            .map_err(|err| self.err(err))?
            .and_then(|bytes| decode_u64(&bytes))
            .unwrap_or(0))
    }
}
