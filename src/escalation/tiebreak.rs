//! Asking the generative model about the messages the classifier is unsure
//! of: an escalation probability from `escalation.tiebreak_from` up to the
//! automatic hand-off threshold. An engine that can score given replies
//! (the CPU engine, a server that sends log-probabilities) is held to yes
//! or no; otherwise the model writes a reply that is read.
//! Off by default (`escalation.model_tiebreak`): `concierge eval intents
//! --tiebreak` measures whether the loaded model helps, and with the default
//! model it does not.

use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::engine::{Llm, Sampling};
use crate::handlers::Model;
use crate::intent::evaluate::Judged;
use crate::intent::{Classification, Intent};
use crate::prompts::{Locale, Prompts, Template};

/// Tokens the model may spend on its one-word verdict.
const VERDICT_TOKENS: usize = 4;

/// The uncertain band.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Band {
    /// Lowest escalation probability asked about.
    pub from: f32,
    /// Probability from which the classifier decides alone.
    pub to: f32,
}

impl Band {
    /// Whether `result` lies in the band.
    pub fn holds(&self, result: &Classification) -> bool {
        let probability = result.escalation_probability();
        probability >= self.from && probability < self.to
    }
}

/// The model's reply as a verdict: `Some(true)` when it says the message
/// needs a person, `None` when the reply is neither yes nor no.
pub fn verdict(reply: &str) -> Option<bool> {
    let reply = reply.trim().to_lowercase();
    let first: String = reply
        .chars()
        .skip_while(|ch| !ch.is_alphanumeric())
        .take_while(|ch| ch.is_alphanumeric())
        .collect();
    match first.as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ if first.starts_with('是') || first.starts_with("需要") => Some(true),
        _ if first.starts_with('否') || first.starts_with("不") => Some(false),
        _ => None,
    }
}

/// The two replies the prompt allows, "needs a person" first.
fn labels(locale: Locale) -> [&'static str; 2] {
    match locale {
        Locale::En => ["yes", "no"],
        Locale::Zh => ["是", "否"],
    }
}

/// Asks the model about `text`: held to yes or no where the engine can
/// score the two replies, else greedily written and read; `None` when it
/// fails or says neither.
pub(crate) async fn ask(model: Model<'_>, locale: Locale, text: &str) -> Option<bool> {
    let prompt = model
        .prompts
        .render(locale, Template::EscalationCheck, &[("message", text)]);
    if let Some(chosen) = model.choose(locale, &prompt, &labels(locale)).await {
        return Some(chosen == 0);
    }
    let greedy = Model {
        sampling: crate::engine::Sampling {
            temperature: 0.0,
            ..model.sampling
        },
        ..model
    };
    let reply = greedy.complete(locale, &prompt, VERDICT_TOKENS).await?;
    verdict(&reply)
}

/// `result` after the model's verdict: a yes escalates at `band.to` (so the
/// automatic hand-off takes it), a no keeps the bot answering.
pub fn settle(result: &mut Classification, needs_person: bool, band: Band) {
    if needs_person {
        result.escalate = true;
        result.evident = true;
        result.confidence = result.confidence.max(band.to);
        if !result.intent.escalates() {
            result.intent = Intent::Complaint;
        }
    } else {
        result.escalate = false;
        result.confidence = 1.0 - band.from / 2.0;
        if result.intent.escalates() {
            result.intent = Intent::Other;
        }
    }
}

/// What asking the model did to an evaluation.
#[derive(Debug, Default, Serialize)]
pub struct Measured {
    /// Messages in the band, asked about.
    pub asked: usize,
    /// Of those, replies that were a yes or a no.
    pub answered: usize,
    /// Decisions the model turned from wrong to right.
    pub fixed: usize,
    /// Decisions the model turned from right to wrong.
    pub broken: usize,
    /// Median time of one question, in milliseconds.
    pub median_ms: f64,
}

impl Measured {
    /// Counts one decision that was right or wrong before and after.
    pub fn count(&mut self, (was_right, now_right): (bool, bool)) {
        match (was_right, now_right) {
            (false, true) => self.fixed += 1,
            (true, false) => self.broken += 1,
            _ => {}
        }
    }
}

/// Asks `llm` about every judged message in `band` and settles it by the
/// verdict, as the pipeline would.
pub async fn measure(
    llm: &dyn Llm,
    prompts: &Prompts,
    sampling: Sampling,
    judged: &mut [Judged],
    band: Band,
) -> Measured {
    let cancel = CancellationToken::new();
    let model = Model {
        llm,
        prompts,
        sampling,
        cancel: &cancel,
    };
    let mut measured = Measured::default();
    let mut times = Vec::new();
    for one in judged.iter_mut() {
        let mut result = one.classification();
        if !band.holds(&result) {
            continue;
        }
        measured.asked += 1;
        let started = Instant::now();
        let verdict = ask(model, one.lang, &one.text).await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let Some(needs_person) = verdict else {
            continue;
        };
        measured.answered += 1;
        settle(&mut result, needs_person, band);
        measured.count(one.take(&result));
    }
    times.sort_by(f64::total_cmp);
    measured.median_ms = times.get(times.len() / 2).copied().unwrap_or(0.0);
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_in_both_languages() {
        assert_eq!(verdict("Yes."), Some(true));
        assert_eq!(verdict(" no, it is a question"), Some(false));
        assert_eq!(verdict("是"), Some(true));
        assert_eq!(verdict("否。"), Some(false));
        assert_eq!(verdict("不需要"), Some(false));
        assert_eq!(verdict("Maybe"), None);
        assert_eq!(verdict(""), None);
    }

    #[test]
    fn a_verdict_moves_the_decision_out_of_the_band() {
        let band = Band { from: 0.3, to: 0.9 };
        let unsure = Classification {
            text: "meh".into(),
            lang: Locale::En,
            intent: Intent::Other,
            escalate: false,
            confidence: 0.55,
            evident: false,
            praise: false,
        };
        assert!(band.holds(&unsure));
        let mut yes = unsure.clone();
        settle(&mut yes, true, band);
        assert!(yes.escalate && yes.confidence >= 0.9 && yes.intent == Intent::Complaint);
        assert!(!band.holds(&yes));
        let mut no = unsure.clone();
        settle(&mut no, false, band);
        assert!(!no.escalate && no.confidence >= 0.7);
        assert!(!band.holds(&no));
    }
}
