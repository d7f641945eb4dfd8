//! `concierge eval answers`: each labelled question goes through the whole
//! pipeline (understanding, retrieval, engine, checks) in a fresh
//! conversation, and the reply is judged by the facts it must contain.
//! Figures: correct, not found, wrong, honest "none" and invented answers,
//! and the time to the first visible text and to the complete reply.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use async_trait::async_trait;
use concierge_adapter::{
    AdapterError, Capabilities, ChatKind, ConversationRef, DeltaStream, Inbound, InboundContent,
    Outbound, Outbox, SenderRef, SentMessage,
};
use futures::StreamExt;
use serde::Serialize;

use crate::pipeline::Pipeline;
use crate::prompts::{Locale, Template};

/// The platform name the evaluation's conversations carry.
pub const PLATFORM: &str = "eval";

/// One question with what a right reply must say.
#[derive(Clone, Debug)]
pub struct FactQuestion {
    /// The question.
    pub question: String,
    /// Acceptable facts (any one will do); `None` when no document answers.
    pub facts: Option<Vec<String>>,
    /// The document that answers, when the file names it.
    pub expected_doc: Option<String>,
}

/// Which rows of the file to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// Every row.
    All,
    /// Rows 1, 3, 5, … (the half tuned on).
    Odd,
    /// Rows 2, 4, 6, … (the half held out).
    Even,
}

/// Reads `question,fact[,expected_doc]` rows (header required, any column
/// order); `fact` is `|`-separated, or `NONE`.
pub fn read_questions(path: &Path, rows: Rows) -> anyhow::Result<Vec<FactQuestion>> {
    let (mut reader, headers) = super::open_labelled(path)?;
    let column = |name: &str| super::column_of(&headers, name);
    let (Some(question_at), Some(fact_at)) = (column("question"), column("fact")) else {
        bail!(
            "{} needs the columns question,fact[,expected_doc]",
            path.display()
        );
    };
    let expected_at = column("expected_doc");
    let mut questions = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let line = row + 2;
        let record = record.with_context(|| format!("{} line {line}", path.display()))?;
        let question = record.get(question_at).unwrap_or_default().to_string();
        let fact = record.get(fact_at).unwrap_or_default();
        if question.is_empty() {
            bail!("{} line {line}: empty question", path.display());
        }
        if fact.is_empty() {
            bail!(
                "{} line {line}: empty fact (write NONE for a question no document answers)",
                path.display()
            );
        }
        let keep = match rows {
            Rows::All => true,
            Rows::Odd => row % 2 == 0,
            Rows::Even => row % 2 == 1,
        };
        if !keep {
            continue;
        }
        let facts = (fact != "NONE").then(|| {
            fact.split('|')
                .map(str::trim)
                .filter(|fact| !fact.is_empty())
                .map(str::to_string)
                .collect()
        });
        let expected_doc = expected_at
            .and_then(|at| record.get(at))
            .filter(|doc| !doc.is_empty())
            .map(str::to_string);
        questions.push(FactQuestion {
            question,
            facts,
            expected_doc,
        });
    }
    Ok(questions)
}

/// How a reply was judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// An answerable question, and the reply holds a fact.
    Correct,
    /// An answerable question the bot declined.
    NotFound,
    /// An answer without the fact.
    Wrong,
    /// A question no document answers, declined.
    HonestNone,
    /// A question no document answers, answered anyway.
    Invented,
}

/// Whether `reply` holds `fact`: case-insensitive, and blind to spacing
/// ("30 天" and "30天" are the same fact).
pub fn holds_fact(reply: &str, fact: &str) -> bool {
    let squeeze = |text: &str| -> String {
        text.chars()
            .filter(|ch| !ch.is_whitespace())
            .flat_map(char::to_lowercase)
            .collect()
    };
    let fact = squeeze(fact);
    !fact.is_empty() && squeeze(reply).contains(&fact)
}

/// Judges a reply; `declines` are the texts by which the bot says it does
/// not know (or could not answer).
pub fn judge(question: &FactQuestion, reply: &str, declines: &[String]) -> Verdict {
    let declined = reply.trim().is_empty()
        || declines
            .iter()
            .any(|decline| !decline.is_empty() && reply.contains(decline.as_str()));
    match &question.facts {
        Some(facts) if facts.iter().any(|fact| holds_fact(reply, fact)) => Verdict::Correct,
        Some(_) if declined => Verdict::NotFound,
        Some(_) => Verdict::Wrong,
        None if declined => Verdict::HonestNone,
        None => Verdict::Invented,
    }
}

/// Median and 90th percentile, in milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    /// The median.
    pub median: Option<f64>,
    /// The 90th percentile (nearest rank).
    pub p90: Option<f64>,
}

impl Latency {
    fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let rank = |share: f64| {
            let at = ((share * values.len() as f64).ceil() as usize).clamp(1, values.len());
            values[at - 1]
        };
        let middle = values.len() / 2;
        let median = if values.len().is_multiple_of(2) {
            (values[middle - 1] + values[middle]) / 2.0
        } else {
            values[middle]
        };
        Self {
            median: Some(round(median)),
            p90: Some(round(rank(0.9))),
        }
    }
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// Figures for a set of questions.
#[derive(Debug, Default, Serialize)]
pub struct AnswerFigures {
    /// Questions run.
    pub questions: usize,
    /// Those a document answers.
    pub answerable: usize,
    /// Those none does.
    pub unanswerable: usize,
    /// Share of the answerable whose reply holds the fact.
    pub correct: f64,
    /// Share of the answerable the bot declined.
    pub not_found: f64,
    /// Share of the answerable answered without the fact.
    pub wrong: f64,
    /// Share of the unanswerable the bot declined.
    pub honest_none: f64,
    /// Share of the unanswerable answered anyway.
    pub invented: f64,
    /// From the message to the first text the customer sees.
    pub first_text_ms: Latency,
    /// From the message to the end of the reply.
    pub complete_ms: Latency,
}

/// The evaluation report: every question, then per language.
#[derive(Debug, Serialize)]
pub struct AnswerReport {
    /// Every question.
    #[serde(flatten)]
    pub all: AnswerFigures,
    /// English questions.
    pub en: AnswerFigures,
    /// Chinese questions.
    pub zh: AnswerFigures,
}

/// One question's outcome, for `--details`.
#[derive(Debug, Serialize)]
pub struct AnswerOutcome<'a> {
    /// The question.
    pub question: &'a str,
    /// Its language.
    pub lang: &'static str,
    /// The judgement.
    pub verdict: Verdict,
    /// The facts looked for (empty for NONE).
    pub facts: &'a [String],
    /// The expected document, when named.
    pub expected_doc: Option<&'a str>,
    /// What the customer was sent.
    pub reply: &'a str,
    /// Milliseconds to the first visible text.
    pub first_text_ms: Option<f64>,
    /// Milliseconds to the end of the reply.
    pub complete_ms: f64,
}

#[derive(Default)]
struct Tally {
    verdicts: Vec<Verdict>,
    first_text: Vec<f64>,
    complete: Vec<f64>,
}

impl Tally {
    fn add(&mut self, verdict: Verdict, first_text: Option<f64>, complete: f64) {
        self.verdicts.push(verdict);
        self.first_text.extend(first_text);
        self.complete.push(complete);
    }

    fn figures(self) -> AnswerFigures {
        let count = |wanted: &[Verdict]| {
            self.verdicts
                .iter()
                .filter(|verdict| wanted.contains(verdict))
                .count()
        };
        let answerable = count(&[Verdict::Correct, Verdict::NotFound, Verdict::Wrong]);
        let unanswerable = count(&[Verdict::HonestNone, Verdict::Invented]);
        let share = |verdict: Verdict, total: usize| {
            if total == 0 {
                0.0
            } else {
                (count(&[verdict]) as f64 / total as f64 * 1000.0).round() / 1000.0
            }
        };
        AnswerFigures {
            questions: self.verdicts.len(),
            answerable,
            unanswerable,
            correct: share(Verdict::Correct, answerable),
            not_found: share(Verdict::NotFound, answerable),
            wrong: share(Verdict::Wrong, answerable),
            honest_none: share(Verdict::HonestNone, unanswerable),
            invented: share(Verdict::Invented, unanswerable),
            first_text_ms: Latency::of(self.first_text),
            complete_ms: Latency::of(self.complete),
        }
    }
}

/// What the evaluation's channel saw of one conversation.
#[derive(Default)]
struct Seen {
    started: Option<Instant>,
    first_text: Option<Duration>,
    text: String,
}

/// A channel that records what each conversation was sent, and when its
/// first text appeared. It shows text as it streams, like a terminal.
#[derive(Default)]
pub struct RecordingChannel {
    seen: Mutex<HashMap<String, Seen>>,
}

impl RecordingChannel {
    fn start(&self, chat_id: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(
                chat_id.to_string(),
                Seen {
                    started: Some(Instant::now()),
                    ..Seen::default()
                },
            );
        }
    }

    fn record(&self, chat_id: &str, text: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            let entry = seen.entry(chat_id.to_string()).or_default();
            if entry.first_text.is_none() && !text.trim().is_empty() {
                entry.first_text = entry.started.map(|started| started.elapsed());
            }
            if !entry.text.is_empty() && !text.is_empty() {
                entry.text.push('\n');
            }
            entry.text.push_str(text);
        }
    }

    fn append(&self, chat_id: &str, delta: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            let entry = seen.entry(chat_id.to_string()).or_default();
            if entry.first_text.is_none() && !delta.trim().is_empty() {
                entry.first_text = entry.started.map(|started| started.elapsed());
            }
            entry.text.push_str(delta);
        }
    }

    fn take(&self, chat_id: &str) -> Seen {
        self.seen
            .lock()
            .ok()
            .and_then(|mut seen| seen.remove(chat_id))
            .unwrap_or_default()
    }
}

#[async_trait]
impl Outbox for RecordingChannel {
    fn platform(&self) -> &str {
        PLATFORM
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_message_chars: 4096,
            appends_stream: true,
            can_edit: false,
            buttons: false,
            threads: false,
            typing: false,
        }
    }

    async fn send(&self, message: Outbound) -> Result<SentMessage, AdapterError> {
        self.record(&message.conversation.chat_id, &message.text);
        Ok(SentMessage {
            conversation: message.conversation,
            message_id: String::new(),
        })
    }

    async fn deliver_stream(
        &self,
        conversation: &ConversationRef,
        mut deltas: DeltaStream,
    ) -> Result<String, AdapterError> {
        // A streamed reply is a message of its own.
        self.record(&conversation.chat_id, "");
        let mut full = String::new();
        while let Some(delta) = deltas.next().await {
            self.append(&conversation.chat_id, &delta);
            full.push_str(&delta);
        }
        Ok(full)
    }
}

fn question_message(number: usize, text: &str) -> Inbound {
    let user = format!("eval-{number}");
    Inbound {
        conversation: ConversationRef {
            platform: PLATFORM.to_string(),
            chat_id: user.clone(),
        },
        chat: ChatKind::Private,
        sender: SenderRef {
            platform: PLATFORM.to_string(),
            user_id: user,
            display_name: None,
            language_hint: None,
        },
        content: InboundContent::Text(text.to_string()),
        message_id: None,
        delivery_id: None,
        in_reply_to: None,
        thread_parent: None,
        received_at: SystemTime::now(),
    }
}

/// Runs every question through `pipeline`, whose `eval` channel is
/// `channel`, one after another (as one customer after another would see
/// it); `details` receives each outcome.
pub async fn run(
    pipeline: &Pipeline,
    channel: &RecordingChannel,
    questions: &[FactQuestion],
    mut details: impl FnMut(&AnswerOutcome),
) -> AnswerReport {
    let declines: Vec<String> = [Locale::En, Locale::Zh]
        .into_iter()
        .flat_map(|locale| {
            [Template::NotFound, Template::EngineError]
                .map(|template| pipeline.prompts.text(locale, template).trim().to_string())
        })
        .collect();
    let (mut all, mut en, mut zh) = (Tally::default(), Tally::default(), Tally::default());
    for (number, question) in questions.iter().enumerate() {
        let message = question_message(number, &question.question);
        let chat_id = message.conversation.chat_id.clone();
        channel.start(&chat_id);
        let started = Instant::now();
        pipeline.handle(message).await;
        let complete = started.elapsed().as_secs_f64() * 1000.0;
        let seen = channel.take(&chat_id);
        let first_text = seen.first_text.map(|first| first.as_secs_f64() * 1000.0);
        let verdict = judge(question, &seen.text, &declines);
        let chinese = crate::language::detect(&question.question) == Some(Locale::Zh);
        details(&AnswerOutcome {
            question: &question.question,
            lang: if chinese { "zh" } else { "en" },
            verdict,
            facts: question.facts.as_deref().unwrap_or_default(),
            expected_doc: question.expected_doc.as_deref(),
            reply: &seen.text,
            first_text_ms: first_text.map(round),
            complete_ms: round(complete),
        });
        all.add(verdict, first_text, complete);
        let by_language = if chinese { &mut zh } else { &mut en };
        by_language.add(verdict, first_text, complete);
    }
    AnswerReport {
        all: all.figures(),
        en: en.figures(),
        zh: zh.figures(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(facts: Option<&[&str]>) -> FactQuestion {
        FactQuestion {
            question: "How long do I have?".into(),
            facts: facts.map(|facts| facts.iter().map(|fact| fact.to_string()).collect()),
            expected_doc: None,
        }
    }

    #[test]
    fn replies_are_judged_by_their_facts_and_declines() {
        let declines = vec!["I don't know".to_string()];
        let days = asked(Some(&["45 days", "45 天"]));
        assert_eq!(
            judge(&days, "You have 45 DAYS.", &declines),
            Verdict::Correct
        );
        assert_eq!(judge(&days, "收货后45天内", &declines), Verdict::Correct);
        assert_eq!(
            judge(&days, "Sorry, I don't know.", &declines),
            Verdict::NotFound
        );
        assert_eq!(judge(&days, "You have 30 days.", &declines), Verdict::Wrong);
        assert_eq!(judge(&days, "", &declines), Verdict::NotFound);
        let none = asked(None);
        assert_eq!(
            judge(&none, "Sorry, I don't know.", &declines),
            Verdict::HonestNone
        );
        assert_eq!(judge(&none, "Yes, 3 years.", &declines), Verdict::Invented);
    }

    #[test]
    fn latency_has_a_median_and_a_nearest_rank_p90() {
        let latency = Latency::of((1..=10).map(f64::from).collect());
        assert_eq!(latency.median, Some(5.5));
        assert_eq!(latency.p90, Some(9.0));
        assert!(Latency::of(Vec::new()).median.is_none());
    }

    #[test]
    fn the_file_needs_its_columns_and_a_fact_per_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("answers.csv");
        std::fs::write(
            &path,
            "question,fact,expected_doc\nA?,45 days|45 天,en/returns.md\nB?,NONE,\nC?,3.90,\n",
        )
        .unwrap();
        let all = read_questions(&path, Rows::All).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].facts.as_ref().unwrap(), &["45 days", "45 天"]);
        assert!(all[1].facts.is_none());
        let odd = read_questions(&path, Rows::Odd).unwrap();
        assert_eq!(
            odd.iter().map(|q| q.question.as_str()).collect::<Vec<_>>(),
            ["A?", "C?"]
        );
        assert_eq!(read_questions(&path, Rows::Even).unwrap().len(), 1);
        std::fs::write(&path, "question,answer\nA?,x\n").unwrap();
        assert!(read_questions(&path, Rows::All).is_err());
        std::fs::write(&path, "question,fact\nA?,\n").unwrap();
        let err = read_questions(&path, Rows::All).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
