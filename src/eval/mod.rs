//! Offline evaluation: retrieval quality of the knowledge base on a labelled
//! question file (`question,expected_doc`), as hit@1, hit@3, MRR and the
//! rates of the "not found" decision; whole answers in `answers`.

pub mod answers;

use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::knowledge::KnowledgeBase;
use crate::prompts::Locale;

/// Hits searched per question (the MRR cut-off).
const RANKED: usize = 10;

/// One labelled question.
#[derive(Clone, Debug)]
pub struct LabelledQuestion {
    /// The question.
    pub question: String,
    /// The document that answers it; `None` when no document does.
    pub expected_doc: Option<String>,
}

/// Figures for a set of questions.
#[derive(Debug, Default, Serialize)]
pub struct RetrievalFigures {
    /// Questions with an expected document.
    pub answerable: usize,
    /// Expected document ranked first.
    #[serde(rename = "hit@1")]
    pub hit_at_1: f64,
    /// Expected document in the top 3.
    #[serde(rename = "hit@3")]
    pub hit_at_3: f64,
    /// Mean reciprocal rank of the expected document (top 10).
    pub mrr: f64,
    /// Answerable questions the bot would wrongly call "not found".
    pub false_not_found_rate: f64,
    /// Questions no document answers.
    pub unanswerable: usize,
    /// Of those, the share the bot correctly calls "not found".
    pub not_found_accuracy: f64,
}

/// The evaluation report.
#[derive(Debug, Serialize)]
pub struct RetrievalReport {
    /// Every question.
    #[serde(flatten)]
    pub all: RetrievalFigures,
    /// English questions.
    pub en: RetrievalFigures,
    /// Chinese questions.
    pub zh: RetrievalFigures,
}

/// A labelled CSV file with its header row (trimmed fields).
pub(crate) fn open_labelled(
    path: &Path,
) -> anyhow::Result<(csv::Reader<std::fs::File>, csv::StringRecord)> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let headers = reader.headers()?.clone();
    Ok((reader, headers))
}

/// Where the column `name` is, in any case.
pub(crate) fn column_of(headers: &csv::StringRecord, name: &str) -> Option<usize> {
    headers
        .iter()
        .position(|header| header.eq_ignore_ascii_case(name))
}

/// Reads `question,expected_doc` rows (header required, any column order).
pub fn read_questions(path: &Path) -> anyhow::Result<Vec<LabelledQuestion>> {
    let (mut reader, headers) = open_labelled(path)?;
    let column = |name: &str| column_of(&headers, name);
    let (Some(question_at), Some(expected_at)) = (column("question"), column("expected_doc"))
    else {
        bail!("{} needs the columns question,expected_doc", path.display());
    };
    let mut questions = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{} line {}", path.display(), row + 2))?;
        let question = record.get(question_at).unwrap_or_default().to_string();
        if question.is_empty() {
            bail!("{} line {}: empty question", path.display(), row + 2);
        }
        let expected = record.get(expected_at).unwrap_or_default();
        questions.push(LabelledQuestion {
            question,
            expected_doc: (!expected.is_empty()).then(|| expected.to_string()),
        });
    }
    Ok(questions)
}

#[derive(Default)]
struct Tally {
    answerable: usize,
    hit1: usize,
    hit3: usize,
    reciprocal: f64,
    false_not_found: usize,
    unanswerable: usize,
    correct_not_found: usize,
}

impl Tally {
    fn figures(&self) -> RetrievalFigures {
        let share = |count: usize, total: usize| {
            if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            }
        };
        RetrievalFigures {
            answerable: self.answerable,
            hit_at_1: share(self.hit1, self.answerable),
            hit_at_3: share(self.hit3, self.answerable),
            mrr: if self.answerable == 0 {
                0.0
            } else {
                self.reciprocal / self.answerable as f64
            },
            false_not_found_rate: share(self.false_not_found, self.answerable),
            unanswerable: self.unanswerable,
            not_found_accuracy: share(self.correct_not_found, self.unanswerable),
        }
    }
}

/// The outcome for one question, for `--details`.
#[derive(Debug, Serialize)]
pub struct QuestionOutcome<'a> {
    /// The question.
    pub question: &'a str,
    /// The expected document.
    pub expected_doc: Option<&'a str>,
    /// Rank of the expected document among distinct documents (1-based).
    pub rank: Option<usize>,
    /// The top documents.
    pub top_docs: Vec<String>,
    /// Whether the bot would answer (not "not found").
    pub found: bool,
    /// Coverage of the question by the best passage.
    pub coverage: f32,
    /// Closeness in meaning (cosine) to the closest passage, with search by
    /// meaning on.
    pub similarity: Option<f32>,
    /// The question's topic units: passages holding each, and which top
    /// passages do.
    pub units: Vec<UnitDetail<'a>>,
}

/// One topic unit of a question, for `--details`.
#[derive(Debug, Serialize)]
pub struct UnitDetail<'a> {
    /// The unit's word or phrase.
    pub term: &'a str,
    /// Passages holding it or one of its synonyms.
    pub passages: u64,
    /// Whether each of the top passages holds it.
    pub in_top: &'a [bool],
}

/// Runs every question through retrieval and the "not found" decision;
/// `details` receives each question's outcome.
pub fn retrieval(
    kb: &KnowledgeBase,
    questions: &[LabelledQuestion],
    mut details: impl FnMut(&QuestionOutcome),
) -> anyhow::Result<RetrievalReport> {
    let mut all = Tally::default();
    let mut en = Tally::default();
    let mut zh = Tally::default();
    for labelled in questions {
        let retrieval = kb.retrieve(&labelled.question, RANKED)?;
        let found = retrieval.found() && retrieval.query_terms > 0;
        // Documents in rank order, each once: labels name documents, and
        // several passages of one document must not push others out.
        let mut docs: Vec<String> = Vec::new();
        for hit in &retrieval.hits {
            if !docs.contains(&hit.doc) {
                docs.push(hit.doc.clone());
            }
        }
        let rank = labelled
            .expected_doc
            .as_ref()
            .and_then(|expected| docs.iter().position(|doc| doc == expected));
        details(&QuestionOutcome {
            question: &labelled.question,
            expected_doc: labelled.expected_doc.as_deref(),
            rank: rank.map(|rank| rank + 1),
            top_docs: docs.iter().take(3).cloned().collect(),
            found,
            coverage: retrieval.coverage,
            similarity: retrieval.similarity,
            units: retrieval
                .units
                .iter()
                .zip(kb.topic_unit_passages(&retrieval.searched))
                .map(|(unit, passages)| UnitDetail {
                    term: &unit.term,
                    passages,
                    in_top: &unit.in_top,
                })
                .collect(),
        });
        let locale = crate::language::detect(&labelled.question).unwrap_or(Locale::En);
        let by_language = if locale == Locale::Zh {
            &mut zh
        } else {
            &mut en
        };
        for tally in [&mut all, by_language] {
            match &labelled.expected_doc {
                Some(_) => {
                    tally.answerable += 1;
                    if rank == Some(0) {
                        tally.hit1 += 1;
                    }
                    if rank.is_some_and(|rank| rank < 3) {
                        tally.hit3 += 1;
                    }
                    if let Some(rank) = rank {
                        tally.reciprocal += 1.0 / (rank + 1) as f64;
                    }
                    if !found {
                        tally.false_not_found += 1;
                    }
                }
                None => {
                    tally.unanswerable += 1;
                    if !found {
                        tally.correct_not_found += 1;
                    }
                }
            }
        }
    }
    Ok(RetrievalReport {
        all: all.figures(),
        en: en.figures(),
        zh: zh.figures(),
    })
}
