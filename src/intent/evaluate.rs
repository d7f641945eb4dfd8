//! `concierge eval intents`: the escalation decision's precision, recall and
//! F1 and a confusion table per label, measured by stratified k-fold
//! cross-validation so no message is judged by a model that trained on it.

use std::collections::{BTreeMap, HashSet};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::{Classifier, Example, Intent, TrainOptions};

/// Escalation recall the project promises.
pub const TARGET_RECALL: f64 = 0.95;
/// Escalation precision the project promises.
pub const TARGET_PRECISION: f64 = 0.90;

/// The escalation decision's quality.
#[derive(Debug, Serialize)]
pub struct EscalationReport {
    /// Of the messages flagged, the share that should be.
    pub precision: f64,
    /// Of the messages that should be flagged, the share that were.
    pub recall: f64,
    /// Harmonic mean of the two.
    pub f1: f64,
    /// Flagged and should be.
    pub true_positives: usize,
    /// Flagged and should not be.
    pub false_positives: usize,
    /// Missed.
    pub false_negatives: usize,
    /// Correctly left to the bot.
    pub true_negatives: usize,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct IntentReport {
    /// Messages evaluated.
    pub rows: usize,
    /// Folds of the cross-validation (0: the model as it is).
    pub folds: usize,
    /// The escalation decision.
    pub escalation: EscalationReport,
    /// Share of messages whose predicted intent equals the label's intent.
    pub intent_accuracy: f64,
    /// Per label of the file: how often each intent was predicted.
    pub confusion: BTreeMap<String, BTreeMap<&'static str, usize>>,
    /// The promised targets and whether they are met.
    pub targets: Targets,
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

fn normalised(text: &str) -> String {
    text.trim().to_lowercase()
}

/// Cross-validates on `examples` with `folds` stratified folds; every fold
/// trains on the other folds plus those `base` examples whose text is not in
/// `examples`. With `folds == 0`, `model` is judged on every example.
pub fn evaluate(
    examples: &[Example],
    base: &[Example],
    folds: usize,
    model: Option<&Classifier>,
    seed: u64,
) -> IntentReport {
    let mut predictions: Vec<Option<(Intent, bool)>> = vec![None; examples.len()];
    if folds == 0 {
        if let Some(model) = model {
            for (slot, example) in predictions.iter_mut().zip(examples) {
                let result = model.classify(&example.text);
                *slot = Some((result.intent, result.escalate));
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
                    let result = classifier.classify(&example.text);
                    predictions[index] = Some((result.intent, result.escalate));
                }
            }
        }
    }
    report(examples, &predictions, folds)
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

fn report(
    examples: &[Example],
    predictions: &[Option<(Intent, bool)>],
    folds: usize,
) -> IntentReport {
    let (mut tp, mut fp, mut false_negatives, mut tn, mut correct) = (0, 0, 0, 0, 0);
    let mut confusion: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
    for (example, prediction) in examples.iter().zip(predictions) {
        let Some((intent, escalate)) = prediction else {
            continue;
        };
        match (example.intent.escalates(), *escalate) {
            (true, true) => tp += 1,
            (false, true) => fp += 1,
            (true, false) => false_negatives += 1,
            (false, false) => tn += 1,
        }
        if *intent == example.intent {
            correct += 1;
        }
        *confusion
            .entry(example.label.clone())
            .or_default()
            .entry(intent.label())
            .or_default() += 1;
    }
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + false_negatives);
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    IntentReport {
        rows: examples.len(),
        folds,
        escalation: EscalationReport {
            precision,
            recall,
            f1,
            true_positives: tp,
            false_positives: fp,
            false_negatives,
            true_negatives: tn,
        },
        intent_accuracy: ratio(correct, examples.len()),
        confusion,
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
        let examples = vec![
            example("a", "complaint"),
            example("b", "track_order"),
            example("c", "contact_human_agent"),
        ];
        let predictions = vec![
            Some((Intent::Complaint, true)),
            Some((Intent::Complaint, true)),
            Some((Intent::Question, false)),
        ];
        let report = report(&examples, &predictions, 0);
        assert_eq!(report.escalation.true_positives, 1);
        assert_eq!(report.escalation.false_positives, 1);
        assert_eq!(report.escalation.false_negatives, 1);
        assert!((report.escalation.precision - 0.5).abs() < 1e-9);
        assert!(!report.targets.met);
        assert_eq!(report.confusion["track_order"]["complaint"], 1);
    }
}
