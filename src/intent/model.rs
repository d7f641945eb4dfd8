//! The intent model: multinomial logistic regression over hashed features,
//! trained by stochastic gradient descent with class weights (escalations are
//! rare in real traffic and must not be drowned out), saved in a small
//! binary file.

use std::io::{Read, Write};
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::features::{self, DIMENSIONS};
use super::{Example, Intent, IntentError};

const LABELS: usize = Intent::ALL.len();
const MAGIC: &[u8; 8] = b"CNCINT01";
/// How far class weights go towards balancing (0: none, 1: fully).
const CLASS_WEIGHT_POWER: f32 = 0.65;

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
}

/// Features of a text with their weights (counts, L2-normalised).
fn vectorise(text: &str) -> Vec<(usize, f32)> {
    let mut features = features::extract(text);
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
        let mut scores = self.scores(&vectorise(text));
        softmax(&mut scores);
        scores
    }

    /// Trains on `examples`.
    pub fn train(examples: &[Example], options: &TrainOptions) -> Self {
        let mut model = Self {
            weights: vec![0.0; DIMENSIONS * LABELS],
            bias: [0.0; LABELS],
        };
        let mut per_class = [0usize; LABELS];
        let data: Vec<(Vec<(usize, f32)>, usize)> = examples
            .iter()
            .map(|example| {
                let label = example.intent.index();
                per_class[label] += 1;
                (vectorise(&example.text), label)
            })
            .collect();
        let present = per_class.iter().filter(|count| **count > 0).count().max(1);
        // Balanced class weights, softened so tiny classes do not dominate.
        let class_weight: Vec<f32> = per_class
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
                let (vector, label) = &data[index];
                let mut probabilities = model.scores(vector);
                softmax(&mut probabilities);
                let weight = class_weight[*label];
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
        bytes.extend_from_slice(&(DIMENSIONS as u32).to_le_bytes());
        bytes.extend_from_slice(&(LABELS as u32).to_le_bytes());
        for bias in self.bias {
            bytes.extend_from_slice(&bias.to_le_bytes());
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
        if reader.take(8) != Some(MAGIC.as_slice()) {
            return Err(invalid("not an intent model"));
        }
        if reader.u32() != Some(DIMENSIONS as u32) || reader.u32() != Some(LABELS as u32) {
            return Err(invalid("an intent model of another shape"));
        }
        let mut model = Self {
            weights: vec![0.0; DIMENSIONS * LABELS],
            bias: [0.0; LABELS],
        };
        for bias in &mut model.bias {
            *bias = reader.f32().ok_or_else(|| invalid("truncated"))?;
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
    fn f32(&mut self) -> Option<f32> {
        self.take(4)
            .and_then(|bytes| bytes.try_into().ok())
            .map(f32::from_le_bytes)
    }
}
