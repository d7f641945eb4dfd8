//! The intent model: multinomial logistic regression over hashed features,
//! trained by stochastic gradient descent with class weights per language
//! (escalations are rare in real traffic and must not be drowned out, and
//! thousands of Chinese reviews must not drown the English complaints), its
//! escalation probability calibrated per language on a tenth of the data it
//! did not train on, saved in a small binary file.

use std::io::{Read, Write};
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::calibration::Platt;
use super::features::{self, DIMENSIONS};
use super::sentiment;
use super::{Example, Intent, IntentError};
use crate::language;
use crate::prompts::Locale;

const LABELS: usize = Intent::ALL.len();
/// Files of this format: the features' fingerprint follows the magic.
const MAGIC: &[u8; 8] = b"CNCINT03";
/// Files of earlier formats: weights without calibration (01), or with
/// calibration but no record of the features they were trained on (02).
const MAGICS_OUTDATED: [&[u8; 8]; 2] = [b"CNCINT01", b"CNCINT02"];
/// How far class weights go towards balancing (0: none, 1: fully).
const CLASS_WEIGHT_POWER: f32 = 0.65;
/// One example in this many (by a hash of its text) fits the calibration
/// instead of the weights.
const CALIBRATION_SHARE: u64 = 10;

/// How the model is trained.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// Initial step size.
    pub learning_rate: f32,
    /// L2 penalty per step.
    pub l2: f32,
    /// Shuffling seed (training is deterministic for a seed).
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 12,
            learning_rate: 0.4,
            l2: 1e-6,
            seed: 7,
        }
    }
}

/// Trained weights.
#[derive(Clone, Debug, PartialEq)]
pub struct IntentModel {
    /// `DIMENSIONS × LABELS`, row-major by feature.
    weights: Vec<f32>,
    bias: [f32; LABELS],
    /// Of the escalation probability, in `Locale::ALL` order.
    calibration: [Platt; 2],
}

/// The probability mass of the intents that escalate.
pub(super) fn escalation_share(probabilities: &[f32; LABELS]) -> f32 {
    Intent::ALL
        .iter()
        .filter(|intent| intent.escalates())
        .map(|intent| probabilities[intent.index()])
        .sum()
}

fn locale_index(lang: Locale) -> usize {
    Locale::ALL
        .iter()
        .position(|locale| *locale == lang)
        .unwrap_or(0)
}

/// Whether `text` fits the calibration rather than the weights.
fn for_calibration(text: &str) -> bool {
    crate::fingerprint::fnv(
        crate::fingerprint::FNV_OFFSET,
        text.trim().to_lowercase().as_bytes(),
    )
    .is_multiple_of(CALIBRATION_SHARE)
}

fn language_of(example: &Example) -> Locale {
    language::detect(&example.text).unwrap_or(Locale::En)
}

/// A training example: its features, its label and its (language, label) stratum.
type Prepared = (Vec<(usize, f32)>, usize, usize);

/// Hashed features with their weights (counts, L2-normalised).
fn vectorise(mut features: Vec<usize>) -> Vec<(usize, f32)> {
    features.sort_unstable();
    let mut counted: Vec<(usize, f32)> = Vec::with_capacity(features.len());
    for feature in features {
        match counted.last_mut() {
            Some((last, count)) if *last == feature => *count += 1.0,
            _ => counted.push((feature, 1.0)),
        }
    }
    let norm = counted
        .iter()
        .map(|(_, count)| count * count)
        .sum::<f32>()
        .sqrt()
        .max(1e-6);
    for (_, count) in &mut counted {
        *count /= norm;
    }
    counted
}

fn softmax(scores: &mut [f32; LABELS]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for score in scores.iter_mut() {
        *score = (*score - max).exp();
        sum += *score;
    }
    for score in scores.iter_mut() {
        *score /= sum;
    }
}

impl IntentModel {
    fn scores(&self, vector: &[(usize, f32)]) -> [f32; LABELS] {
        let mut scores = self.bias;
        for &(feature, value) in vector {
            let row = &self.weights[feature * LABELS..(feature + 1) * LABELS];
            for (score, weight) in scores.iter_mut().zip(row) {
                *score += weight * value;
            }
        }
        scores
    }

    /// The probability of each intent, in `Intent::ALL` order.
    pub fn probabilities(&self, text: &str) -> [f32; LABELS] {
        self.probabilities_with(text, sentiment::cues(text))
    }

    /// `probabilities`, with the sentiment cues of `text` already found.
    pub fn probabilities_with(&self, text: &str, cues: sentiment::Cues) -> [f32; LABELS] {
        let mut scores = self.scores(&vectorise(features::extract_with(text, cues)));
        softmax(&mut scores);
        scores
    }

    /// The calibrated probability that a message in `lang` goes to a person,
    /// from the model's raw one.
    pub fn calibrate(&self, lang: Locale, raw: f32) -> f32 {
        self.calibration[locale_index(lang)].apply(raw)
    }

    /// Trains on `examples`: the weights on nine in ten of them, the
    /// calibration of each language on the rest. A set too small to spare
    /// a tenth trains on everything and stays uncalibrated.
    pub fn train(examples: &[Example], options: &TrainOptions) -> Self {
        let (held, fitted): (Vec<&Example>, Vec<&Example>) = examples
            .iter()
            .partition(|example| for_calibration(&example.text));
        let mut held_by_language: [Vec<&Example>; 2] = [Vec::new(), Vec::new()];
        for example in held {
            held_by_language[locale_index(language_of(example))].push(example);
        }
        let sparing = held_by_language.iter().all(|group| {
            let positives = group.iter().filter(|e| e.intent.escalates()).count();
            // A language absent from the data needs no calibration.
            group.is_empty()
                || (positives >= super::calibration::MIN_PER_CLASS
                    && group.len() - positives >= super::calibration::MIN_PER_CLASS)
        });
        if !sparing {
            let everything: Vec<&Example> = examples.iter().collect();
            return Self::fit_weights(&everything, options);
        }
        let mut model = Self::fit_weights(&fitted, options);
        for (at, group) in held_by_language.iter().enumerate() {
            let pairs: Vec<(f32, bool)> = group
                .iter()
                .map(|example| {
                    (
                        model.raw_escalation(&example.text),
                        example.intent.escalates(),
                    )
                })
                .collect();
            model.calibration[at] = Platt::fit(&pairs);
        }
        model
    }

    /// The model's uncalibrated probability of escalation.
    pub fn raw_escalation(&self, text: &str) -> f32 {
        escalation_share(&self.probabilities(text))
    }

    fn fit_weights(examples: &[&Example], options: &TrainOptions) -> Self {
        let mut model = Self {
            weights: vec![0.0; DIMENSIONS * LABELS],
            bias: [0.0; LABELS],
            calibration: [Platt::IDENTITY; 2],
        };
        // Classes are balanced within each language, then the languages
        // against each other, softened so tiny classes do not dominate.
        let stratum = |lang: Locale, label: usize| locale_index(lang) * LABELS + label;
        let mut per_stratum = [0usize; 2 * LABELS];
        let data: Vec<Prepared> = examples
            .iter()
            .map(|example| {
                let label = example.intent.index();
                let lang = language_of(example);
                per_stratum[stratum(lang, label)] += 1;
                (
                    vectorise(features::extract(&example.text)),
                    label,
                    stratum(lang, label),
                )
            })
            .collect();
        let present = per_stratum
            .iter()
            .filter(|count| **count > 0)
            .count()
            .max(1);
        let class_weight: Vec<f32> = per_stratum
            .iter()
            .map(|&count| {
                if count == 0 {
                    0.0
                } else {
                    (data.len() as f32 / (present as f32 * count as f32)).powf(CLASS_WEIGHT_POWER)
                }
            })
            .collect();
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
        for epoch in 0..options.epochs {
            order.shuffle(&mut rng);
            let rate = options.learning_rate / (1.0 + epoch as f32 * 0.3);
            for &index in &order {
                let (vector, label, stratum) = &data[index];
                let mut probabilities = model.scores(vector);
                softmax(&mut probabilities);
                let weight = class_weight[*stratum];
                let mut gradient = probabilities;
                gradient[*label] -= 1.0;
                for (bias, grad) in model.bias.iter_mut().zip(gradient) {
                    *bias -= rate * weight * grad;
                }
                for &(feature, value) in vector {
                    let row = &mut model.weights[feature * LABELS..(feature + 1) * LABELS];
                    for (w, grad) in row.iter_mut().zip(gradient) {
                        *w -= rate * (weight * grad * value + options.l2 * *w);
                    }
                }
            }
        }
        model
    }

    /// Writes the model to `path` (atomically: a temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), IntentError> {
        let io = |err: std::io::Error| IntentError::Io {
            path: path.to_path_buf(),
            detail: err.to_string(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&features::fingerprint().to_le_bytes());
        bytes.extend_from_slice(&(DIMENSIONS as u32).to_le_bytes());
        bytes.extend_from_slice(&(LABELS as u32).to_le_bytes());
        for bias in self.bias {
            bytes.extend_from_slice(&bias.to_le_bytes());
        }
        for platt in self.calibration {
            bytes.extend_from_slice(&platt.slope.to_le_bytes());
            bytes.extend_from_slice(&platt.offset.to_le_bytes());
        }
        let rows: Vec<usize> = (0..DIMENSIONS)
            .filter(|row| {
                self.weights[row * LABELS..(row + 1) * LABELS]
                    .iter()
                    .any(|w| *w != 0.0)
            })
            .collect();
        bytes.extend_from_slice(&(rows.len() as u32).to_le_bytes());
        for row in rows {
            bytes.extend_from_slice(&(row as u32).to_le_bytes());
            for weight in &self.weights[row * LABELS..(row + 1) * LABELS] {
                bytes.extend_from_slice(&weight.to_le_bytes());
            }
        }
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&temporary, path).map_err(io)
    }

    /// Reads a model written by `save`.
    pub fn load(path: &Path) -> Result<Self, IntentError> {
        let invalid = |detail: &str| IntentError::Data {
            path: path.to_path_buf(),
            detail: format!("{detail}; retrain it with `concierge train intents`"),
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut file| file.read_to_end(&mut bytes))
            .map_err(|err| IntentError::Io {
                path: path.to_path_buf(),
                detail: err.to_string(),
            })?;
        let mut reader = ByteReader {
            bytes: &bytes,
            at: 0,
        };
        match reader.take(8) {
            Some(magic) if magic == MAGIC.as_slice() => {}
            Some(magic) if MAGICS_OUTDATED.iter().any(|old| magic == old.as_slice()) => {
                return Err(IntentError::Outdated {
                    path: path.to_path_buf(),
                })
            }
            _ => return Err(invalid("not an intent model")),
        }
        // Weights trained on other features (another lexicon, another
        // version's feature code) would score the wrong buckets.
        if reader.u64() != Some(features::fingerprint()) {
            return Err(IntentError::Outdated {
                path: path.to_path_buf(),
            });
        }
        if reader.u32() != Some(DIMENSIONS as u32) || reader.u32() != Some(LABELS as u32) {
            return Err(invalid("an intent model of another shape"));
        }
        let mut model = Self {
            weights: vec![0.0; DIMENSIONS * LABELS],
            bias: [0.0; LABELS],
            calibration: [Platt::IDENTITY; 2],
        };
        for bias in &mut model.bias {
            *bias = reader.f32().ok_or_else(|| invalid("truncated"))?;
        }
        for platt in &mut model.calibration {
            let slope = reader.f32().ok_or_else(|| invalid("truncated"))?;
            let offset = reader.f32().ok_or_else(|| invalid("truncated"))?;
            if !(slope.is_finite() && offset.is_finite() && slope > 0.0) {
                return Err(invalid("a calibration out of range"));
            }
            *platt = Platt { slope, offset };
        }
        let rows = reader.u32().ok_or_else(|| invalid("truncated"))?;
        for _ in 0..rows {
            let row = reader.u32().ok_or_else(|| invalid("truncated"))? as usize;
            if row >= DIMENSIONS {
                return Err(invalid("a feature out of range"));
            }
            for weight in &mut model.weights[row * LABELS..(row + 1) * LABELS] {
                *weight = reader.f32().ok_or_else(|| invalid("truncated"))?;
            }
        }
        if reader.at != bytes.len() {
            return Err(invalid("trailing bytes"));
        }
        Ok(model)
    }
}

struct ByteReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> ByteReader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let slice = self.bytes.get(self.at..self.at + count)?;
        self.at += count;
        Some(slice)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_le_bytes)
    }
    fn f32(&mut self) -> Option<f32> {
        self.take(4)
            .and_then(|bytes| bytes.try_into().ok())
            .map(f32::from_le_bytes)
    }
}
