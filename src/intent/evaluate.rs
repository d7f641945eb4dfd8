//! `concierge eval intents`: the escalation decision's precision, recall and
//! F1, a confusion table per label, the reliability of its confidence (a
//! calibration table in 10 bins with its expected calibration error) and what
//! the automatic hand-off threshold does, for all messages and per language,
//! measured by stratified k-fold cross-validation so no message is judged by
//! a model that trained on it (or, with no folds, on the model as it is).

use std::collections::{BTreeMap, HashSet};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::calibration::{self, Reliability};
use super::{escalation_threshold, Classification, Classifier, Example, Intent, TrainOptions};
use crate::language;
use crate::prompts::Locale;

/// Escalation recall the project promises.
pub const TARGET_RECALL: f64 = 0.95;
/// Escalation precision the project promises.
pub const TARGET_PRECISION: f64 = 0.93;
/// Bins of the calibration table.
pub const CALIBRATION_BINS: usize = 10;

/// The escalation decision's quality.
#[derive(Debug, Serialize)]
pub struct EscalationReport {
    /// Of the messages flagged, the share that should be.
    pub precision: f64,
    /// Of the messages that should be flagged, the share that were.
    pub recall: f64,
    /// Harmonic mean of the two.
    pub f1: f64,
    /// Of the messages that should not be flagged, the share that were.
    pub false_escalation_rate: f64,
    /// Flagged and should be.
    pub true_positives: usize,
    /// Flagged and should not be.
    pub false_positives: usize,
    /// Missed.
    pub false_negatives: usize,
    /// Correctly left to the bot.
    pub true_negatives: usize,
}

/// What the automatic hand-off (`escalation.auto_min_confidence`) does: only
/// an escalation at least this confident, whose text shows displeasure or
/// asks for a person, hands the chat to a person at once.
#[derive(Debug, Serialize)]
pub struct AutoHandoff {
    /// The threshold.
    pub min_confidence: f64,
    /// Messages handed off.
    pub handed_off: usize,
    /// Of those, the share that should have been.
    pub precision: f64,
    /// Of the messages that should escalate, the share handed off at once.
    pub recall: f64,
    /// Of the messages that should not escalate, the share handed off.
    pub false_handoff_rate: f64,
}

/// The figures of one group of messages (all, or one language).
#[derive(Debug, Serialize)]
pub struct Breakdown {
    /// Messages evaluated.
    pub rows: usize,
    /// The escalation decision.
    pub escalation: EscalationReport,
    /// Share of messages whose predicted intent equals the label's intent.
    pub intent_accuracy: f64,
    /// Per label of the file: how often each intent was predicted.
    pub confusion: BTreeMap<String, BTreeMap<&'static str, usize>>,
    /// Predicted probability of escalation against what the labels say.
    pub calibration: Reliability,
    /// The automatic hand-off threshold at work.
    pub auto_handoff: AutoHandoff,
    /// The promised targets and whether they are met.
    pub targets: Targets,
}

/// The whole report: every message, then each language found in the file.
#[derive(Debug, Serialize)]
pub struct IntentReport {
    /// Folds of the cross-validation (0: the model as it is).
    pub folds: usize,
    /// Probability of escalation at or above which a message escalates, per language.
    pub thresholds: BTreeMap<String, f32>,
    /// Every message.
    #[serde(flatten)]
    pub all: Breakdown,
    /// Per language (`en`, `zh`), for those present.
    pub languages: BTreeMap<String, Breakdown>,
}

/// The promised targets.
#[derive(Debug, Serialize)]
pub struct Targets {
    /// Minimum escalation recall.
    pub recall: f64,
    /// Minimum escalation precision.
    pub precision: f64,
    /// Both met.
    pub met: bool,
}

/// How one message was judged.
#[derive(Clone, Debug, Serialize)]
pub struct Judged {
    /// The message.
    pub text: String,
    /// Its label in the file.
    pub label: String,
    /// Its language.
    pub lang: Locale,
    /// The predicted intent.
    pub intent: Intent,
    /// Whether it was escalated.
    pub escalate: bool,
    /// The predicted probability of escalation.
    pub probability: f32,
    /// Whether the escalation decision matches the label.
    pub right: bool,
    /// Whether the text shows the evidence an automatic hand-off needs.
    pub evident: bool,
}

impl Judged {
    /// The classification this verdict stands for.
    pub fn classification(&self) -> Classification {
        Classification {
            text: self.text.clone(),
            lang: self.lang,
            intent: self.intent,
            escalate: self.escalate,
            confidence: if self.escalate {
                self.probability
            } else {
                1.0 - self.probability
            },
            evident: self.evident,
            praise: false,
        }
    }

    /// Takes `result` as the verdict (a tie-break's); returns whether the
    /// verdict was right before and whether it is now.
    pub fn take(&mut self, result: &Classification) -> (bool, bool) {
        let was_right = self.right;
        let should = Intent::from_label(&self.label).is_some_and(Intent::escalates);
        self.right = result.escalate == should;
        self.intent = result.intent;
        self.escalate = result.escalate;
        self.probability = result.escalation_probability();
        self.evident = result.evident;
        (was_right, self.right)
    }
}

fn normalised(text: &str) -> String {
    text.trim().to_lowercase()
}

fn judge(classifier: &Classifier, example: &Example) -> Judged {
    let result = classifier.classify(&example.text);
    let probability = result.escalation_probability();
    Judged {
        text: example.text.clone(),
        label: example.label.clone(),
        lang: language::detect(&example.text).unwrap_or(Locale::En),
        intent: result.intent,
        escalate: result.escalate,
        probability,
        right: result.escalate == example.intent.escalates(),
        evident: result.evident,
    }
}

/// Cross-validates on `examples` with `folds` stratified folds; every fold
/// trains on the other folds plus those `base` examples whose text is not in
/// `examples`. With `folds == 0`, `model` is judged on every example.
/// `auto_min_confidence` is the automatic hand-off threshold; `each` sees
/// every judged message.
pub fn evaluate(
    examples: &[Example],
    base: &[Example],
    folds: usize,
    model: Option<&Classifier>,
    auto_min_confidence: f64,
    seed: u64,
    mut each: impl FnMut(&Judged),
) -> IntentReport {
    let mut judged: Vec<Option<Judged>> = vec![None; examples.len()];
    if folds == 0 {
        if let Some(model) = model {
            for (slot, example) in judged.iter_mut().zip(examples) {
                *slot = Some(judge(model, example));
            }
        }
    } else {
        let evaluated: HashSet<String> = examples.iter().map(|e| normalised(&e.text)).collect();
        let base: Vec<Example> = base
            .iter()
            .filter(|example| !evaluated.contains(&normalised(&example.text)))
            .cloned()
            .collect();
        let fold_of = stratified_folds(examples, folds, seed);
        for fold in 0..folds {
            let mut training = base.clone();
            training.extend(
                examples
                    .iter()
                    .zip(&fold_of)
                    .filter(|(_, of)| **of != fold)
                    .map(|(example, _)| example.clone()),
            );
            let classifier = Classifier::train(&training, &TrainOptions::default());
            for (index, example) in examples.iter().enumerate() {
                if fold_of[index] == fold {
                    judged[index] = Some(judge(&classifier, example));
                }
            }
        }
    }
    let judged: Vec<Judged> = judged.into_iter().flatten().collect();
    for one in &judged {
        each(one);
    }
    summarise(&judged, folds, auto_min_confidence)
}

/// The report of messages judged (by `evaluate`, or changed afterwards).
pub fn summarise(judged: &[Judged], folds: usize, auto_min_confidence: f64) -> IntentReport {
    let mut languages = BTreeMap::new();
    for lang in Locale::ALL {
        let group: Vec<&Judged> = judged.iter().filter(|one| one.lang == lang).collect();
        if !group.is_empty() {
            languages.insert(lang.to_string(), breakdown(&group, auto_min_confidence));
        }
    }
    IntentReport {
        folds,
        thresholds: Locale::ALL
            .iter()
            .map(|lang| (lang.to_string(), escalation_threshold(*lang)))
            .collect(),
        all: breakdown(&judged.iter().collect::<Vec<_>>(), auto_min_confidence),
        languages,
    }
}

/// Fold numbers, balanced within each label.
fn stratified_folds(examples: &[Example], folds: usize, seed: u64) -> Vec<usize> {
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, example) in examples.iter().enumerate() {
        by_label.entry(&example.label).or_default().push(index);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut fold_of = vec![0; examples.len()];
    for indices in by_label.values_mut() {
        indices.shuffle(&mut rng);
        for (position, index) in indices.iter().enumerate() {
            fold_of[*index] = position % folds;
        }
    }
    fold_of
}

fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

fn breakdown(judged: &[&Judged], auto_min_confidence: f64) -> Breakdown {
    let (mut tp, mut fp, mut false_negatives, mut tn, mut correct) = (0, 0, 0, 0, 0);
    let (mut handed_off, mut handed_off_rightly) = (0, 0);
    let mut confusion: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
    let mut pairs = Vec::with_capacity(judged.len());
    for one in judged {
        let labelled = Intent::from_label(&one.label).unwrap_or(Intent::Other);
        let should = labelled.escalates();
        match (should, one.escalate) {
            (true, true) => tp += 1,
            (false, true) => fp += 1,
            (true, false) => false_negatives += 1,
            (false, false) => tn += 1,
        }
        if one.escalate && one.evident && f64::from(one.probability) >= auto_min_confidence {
            handed_off += 1;
            handed_off_rightly += usize::from(should);
        }
        if one.intent == labelled {
            correct += 1;
        }
        *confusion
            .entry(one.label.clone())
            .or_default()
            .entry(one.intent.label())
            .or_default() += 1;
        pairs.push((one.probability, should));
    }
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + false_negatives);
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    Breakdown {
        rows: judged.len(),
        escalation: EscalationReport {
            precision,
            recall,
            f1,
            false_escalation_rate: ratio(fp, fp + tn),
            true_positives: tp,
            false_positives: fp,
            false_negatives,
            true_negatives: tn,
        },
        intent_accuracy: ratio(correct, judged.len()),
        confusion,
        calibration: calibration::reliability(&pairs, CALIBRATION_BINS),
        auto_handoff: AutoHandoff {
            min_confidence: auto_min_confidence,
            handed_off,
            precision: ratio(handed_off_rightly, handed_off),
            recall: ratio(handed_off_rightly, tp + false_negatives),
            false_handoff_rate: ratio(handed_off - handed_off_rightly, fp + tn),
        },
        targets: Targets {
            recall: TARGET_RECALL,
            precision: TARGET_PRECISION,
            met: recall >= TARGET_RECALL && precision >= TARGET_PRECISION,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(text: &str, label: &str) -> Example {
        Example {
            text: text.into(),
            intent: Intent::from_label(label).unwrap(),
            label: label.into(),
        }
    }

    #[test]
    fn folds_are_balanced_per_label() {
        let examples: Vec<Example> = (0..10)
            .map(|n| {
                example(
                    &format!("m{n}"),
                    if n < 5 { "complaint" } else { "track_order" },
                )
            })
            .collect();
        let folds = stratified_folds(&examples, 5, 1);
        for fold in 0..5 {
            let members: Vec<&Example> = examples
                .iter()
                .zip(&folds)
                .filter(|(_, f)| **f == fold)
                .map(|(e, _)| e)
                .collect();
            assert_eq!(members.len(), 2);
            assert_ne!(members[0].label, members[1].label);
        }
    }

    #[test]
    fn the_report_counts_the_escalation_decision() {
        let examples = [
            example("a", "complaint"),
            example("b", "track_order"),
            example("c", "contact_human_agent"),
        ];
        let predictions = [
            (Intent::Complaint, true, 0.95),
            (Intent::Complaint, true, 0.7),
            (Intent::Question, false, 0.2),
        ];
        let judged: Vec<Judged> = examples
            .iter()
            .zip(predictions)
            .map(|(example, (intent, escalate, probability))| Judged {
                text: example.text.clone(),
                label: example.label.clone(),
                lang: Locale::En,
                intent,
                escalate,
                probability,
                right: escalate == example.intent.escalates(),
                evident: true,
            })
            .collect();
        let report = breakdown(&judged.iter().collect::<Vec<_>>(), 0.9);
        assert_eq!(report.auto_handoff.handed_off, 1);
        assert_eq!(report.auto_handoff.precision, 1.0);
        assert_eq!(report.auto_handoff.recall, 0.5);
        assert_eq!(report.escalation.false_escalation_rate, 1.0);
        assert_eq!(report.calibration.bins[9].count, 1);
        assert_eq!(report.escalation.true_positives, 1);
        assert_eq!(report.escalation.false_positives, 1);
        assert_eq!(report.escalation.false_negatives, 1);
        assert!((report.escalation.precision - 0.5).abs() < 1e-9);
        assert!(!report.targets.met);
        assert_eq!(report.confusion["track_order"]["complaint"], 1);
    }
}
