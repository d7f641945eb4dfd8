//! A second opinion on escalation from a message's meaning: a logistic
//! regression over the multilingual embedding (`knowledge::embed`) of the
//! message, trained on the same labelled files as the word classifier. It
//! reads praise and anger in phrasing the word features never saw ("送餐
//! 小伙子可贴心了", "frankly I expected much better"), at the cost of one
//! embedding (tens of milliseconds), so it is asked only about the uncertain
//! band (`escalation.meaning_tiebreak`).

use std::path::Path;

use sha2::{Digest, Sha256};

use super::evaluate::Judged;
use super::{Classification, Example, Intent};
use crate::escalation::tiebreak::{Band, Measured};
use crate::knowledge::embed::Embedder;
use crate::knowledge::semantic::{embed_cached, Embedding};

/// At most this many training messages per language and label, chosen by
/// a hash of the text: the reviews would otherwise outnumber the rest and
/// make the first training (which embeds every message once) slow.
const MAX_PER_LANGUAGE_AND_LABEL: usize = 600;
/// Ridge penalty on the standardised features.
const RIDGE: f64 = 1.0;
/// Band messages whose judgement is timed without the cache.
const TIMED_MESSAGES: usize = 50;
/// Newton steps; the fit has converged well before.
const NEWTON_STEPS: usize = 8;

/// The fitted model.
#[derive(Clone, Debug)]
pub struct MeaningModel {
    mean: Vec<f32>,
    scale: Vec<f32>,
    weights: Vec<f32>,
    bias: f32,
}

impl MeaningModel {
    /// Fits escalation (`escalates[i]`) on `vectors`, both classes weighed
    /// equally. `None` without examples of both.
    pub fn fit(vectors: &[Vec<f32>], escalates: &[bool]) -> Option<Self> {
        let dimensions = vectors.first()?.len();
        let positives = escalates.iter().filter(|&&yes| yes).count();
        let negatives = escalates.len() - positives;
        if positives == 0 || negatives == 0 {
            return None;
        }
        let count = vectors.len() as f32;
        let mut mean = vec![0f32; dimensions];
        for vector in vectors {
            for (sum, value) in mean.iter_mut().zip(vector) {
                *sum += value / count;
            }
        }
        let mut scale = vec![0f32; dimensions];
        for vector in vectors {
            for ((spread, value), centre) in scale.iter_mut().zip(vector).zip(&mean) {
                *spread += (value - centre).powi(2) / count;
            }
        }
        for spread in &mut scale {
            *spread = spread.sqrt().max(1e-6);
        }
        let standardised: Vec<Vec<f64>> = vectors
            .iter()
            .map(|vector| {
                let mut row: Vec<f64> = vector
                    .iter()
                    .zip(&mean)
                    .zip(&scale)
                    .map(|((value, centre), spread)| f64::from((value - centre) / spread))
                    .collect();
                row.push(1.0);
                row
            })
            .collect();
        let class_weight = |yes: bool| {
            0.5 * escalates.len() as f64 / if yes { positives } else { negatives } as f64
        };
        let size = dimensions + 1;
        let mut theta = vec![0f64; size];
        for _ in 0..NEWTON_STEPS {
            let mut gradient: Vec<f64> = theta.iter().map(|value| RIDGE * value).collect();
            let mut hessian = vec![0f64; size * size];
            for at in 0..size {
                hessian[at * size + at] = RIDGE;
            }
            for (row, &yes) in standardised.iter().zip(escalates) {
                let score: f64 = row.iter().zip(&theta).map(|(x, w)| x * w).sum();
                let probability = 1.0 / (1.0 + (-score).exp());
                let weight = class_weight(yes);
                let residual = weight * (probability - if yes { 1.0 } else { 0.0 });
                let curvature = weight * probability * (1.0 - probability);
                for i in 0..size {
                    gradient[i] += residual * row[i];
                    let scaled = curvature * row[i];
                    for j in 0..=i {
                        hessian[i * size + j] += scaled * row[j];
                    }
                }
            }
            let step = solve_symmetric(&mut hessian, &gradient, size)?;
            for (value, change) in theta.iter_mut().zip(step) {
                *value -= change;
            }
        }
        Some(Self {
            mean,
            scale,
            bias: theta[dimensions] as f32,
            weights: theta[..dimensions].iter().map(|&w| w as f32).collect(),
        })
    }

    /// Probability that the message of `vector` needs a person.
    pub fn probability(&self, vector: &[f32]) -> f32 {
        let score: f32 = vector
            .iter()
            .zip(&self.mean)
            .zip(&self.scale)
            .zip(&self.weights)
            .map(|(((value, centre), spread), weight)| (value - centre) / spread * weight)
            .sum::<f32>()
            + self.bias;
        1.0 / (1.0 + (-score).exp())
    }

    /// Trains on `examples` (a sample of them, see
    /// `MAX_PER_LANGUAGE_AND_LABEL`), embedding each message once: their
    /// vectors are kept in `cache`.
    pub fn train(embedder: &Embedder, examples: &[Example], cache: &Path) -> Option<Self> {
        let sample = training_sample(examples);
        let texts: Vec<String> = sample.iter().map(|example| example.text.clone()).collect();
        let vectors = embed_cached(embedder, &texts, cache, Embedding::Query);
        let escalates: Vec<bool> = sample
            .iter()
            .map(|example| example.intent.escalates())
            .collect();
        Self::fit(&vectors, &escalates)
    }
}

/// The meaning model with the embedding model it reads, for the uncertain
/// band of the word classifier.
pub struct MeaningJudge {
    embedder: std::sync::Arc<Embedder>,
    model: MeaningModel,
    band: Band,
}

impl std::fmt::Debug for MeaningJudge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeaningJudge")
            .field("band", &self.band)
            .finish_non_exhaustive()
    }
}

impl MeaningJudge {
    /// A judge of `band` with `model` over `embedder`'s vectors.
    pub fn new(embedder: std::sync::Arc<Embedder>, model: MeaningModel, band: Band) -> Self {
        Self {
            embedder,
            model,
            band,
        }
    }

    /// The band it judges.
    pub fn band(&self) -> Band {
        self.band
    }

    /// The embedding model it reads messages with.
    pub fn embedder(&self) -> &std::sync::Arc<Embedder> {
        &self.embedder
    }

    /// Probability that `text` needs a person, by its meaning (one
    /// embedding: tens of milliseconds, so off the async workers).
    pub fn probability(&self, text: &str) -> f32 {
        self.model.probability(&self.embedder.query(text))
    }

    /// Settles `result` by meaning too when it lies in the band.
    pub fn decide(&self, result: &mut Classification) {
        if self.band.holds(result) {
            let probability = self.probability(&result.text);
            settle(result, probability);
        }
    }
}

/// `result` with the word classifier's escalation probability averaged with
/// the meaning model's `probability`, decided at one half.
pub fn settle(result: &mut Classification, probability: f32) {
    let combined = (result.escalation_probability() + probability) / 2.0;
    result.escalate = combined >= 0.5;
    result.confidence = if result.escalate {
        combined
    } else {
        1.0 - combined
    };
    if result.escalate && !result.intent.escalates() {
        result.intent = Intent::Complaint;
    } else if !result.escalate && result.intent.escalates() {
        result.intent = Intent::Other;
    }
}

/// Judges every message of `judged` in `band` by its meaning too, as the
/// pipeline would, and counts what that changed.
pub fn measure(
    embedder: &Embedder,
    model: &MeaningModel,
    judged: &mut [Judged],
    band: Band,
    cache: &Path,
) -> Measured {
    let in_band: Vec<usize> = (0..judged.len())
        .filter(|&at| {
            let probability = judged[at].probability;
            probability >= band.from && probability < band.to
        })
        .collect();
    let texts: Vec<String> = in_band.iter().map(|&at| judged[at].text.clone()).collect();
    let vectors = embed_cached(embedder, &texts, cache, Embedding::Query);
    // Timed apart from the cache, on a few messages, as a live one costs.
    let mut times: Vec<f64> = texts
        .iter()
        .take(TIMED_MESSAGES)
        .map(|text| {
            let started = std::time::Instant::now();
            let vector = embedder.query(text);
            std::hint::black_box(model.probability(&vector));
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let mut measured = Measured {
        asked: in_band.len(),
        answered: in_band.len(),
        median_ms: times.get(times.len() / 2).copied().unwrap_or(0.0),
        ..Measured::default()
    };
    for (&at, vector) in in_band.iter().zip(&vectors) {
        let one = &mut judged[at];
        let mut result = one.classification();
        settle(&mut result, model.probability(vector));
        measured.count(one.take(&result));
    }
    measured
}

fn training_sample(examples: &[Example]) -> Vec<&Example> {
    let hash = |text: &str| {
        let digest = Sha256::digest(text.as_bytes());
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
    };
    let mut ordered: Vec<(bool, &str, u64, &Example)> = examples
        .iter()
        .map(|example| {
            let chinese = example.text.chars().any(crate::knowledge::text::is_han);
            (
                chinese,
                example.label.as_str(),
                hash(&example.text),
                example,
            )
        })
        .collect();
    ordered.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    let mut sample = Vec::new();
    let mut group: Option<(bool, &str)> = None;
    let mut taken = 0;
    for (chinese, label, _, example) in ordered {
        if group != Some((chinese, label)) {
            group = Some((chinese, label));
            taken = 0;
        }
        if taken < MAX_PER_LANGUAGE_AND_LABEL {
            sample.push(example);
            taken += 1;
        }
    }
    sample
}

/// Solves `matrix · x = rhs` for a symmetric positive definite matrix whose
/// lower triangle is filled (Cholesky, in place). `None` when it is not
/// positive definite.
fn solve_symmetric(matrix: &mut [f64], rhs: &[f64], size: usize) -> Option<Vec<f64>> {
    for j in 0..size {
        let mut diagonal = matrix[j * size + j];
        for k in 0..j {
            diagonal -= matrix[j * size + k].powi(2);
        }
        if diagonal <= 0.0 {
            return None;
        }
        let diagonal = diagonal.sqrt();
        matrix[j * size + j] = diagonal;
        for i in j + 1..size {
            let mut value = matrix[i * size + j];
            for k in 0..j {
                value -= matrix[i * size + k] * matrix[j * size + k];
            }
            matrix[i * size + j] = value / diagonal;
        }
    }
    let mut forward = vec![0f64; size];
    for i in 0..size {
        let mut value = rhs[i];
        for k in 0..i {
            value -= matrix[i * size + k] * forward[k];
        }
        forward[i] = value / matrix[i * size + i];
    }
    let mut solution = vec![0f64; size];
    for i in (0..size).rev() {
        let mut value = forward[i];
        for k in i + 1..size {
            value -= matrix[k * size + i] * solution[k];
        }
        solution[i] = value / matrix[i * size + i];
    }
    Some(solution)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_separates_two_clouds_and_the_solver_is_exact() {
        let mut matrix = vec![4.0, 0.0, 2.0, 3.0];
        let solution = solve_symmetric(&mut matrix, &[10.0, 8.0], 2).unwrap();
        // 4x + 2y = 10, 2x + 3y = 8.
        assert!((solution[0] - 1.75).abs() < 1e-9 && (solution[1] - 1.5).abs() < 1e-9);

        let mut vectors = Vec::new();
        let mut labels = Vec::new();
        for at in 0..40 {
            let jitter = (at % 7) as f32 * 0.01;
            let yes = at % 2 == 0;
            let sign = if yes { 1.0 } else { -1.0 };
            vectors.push(vec![0.3 * sign + jitter, 0.5 - jitter, jitter]);
            labels.push(yes);
        }
        let model = MeaningModel::fit(&vectors, &labels).unwrap();
        assert!(model.probability(&[0.3, 0.5, 0.0]) > 0.8);
        assert!(model.probability(&[-0.3, 0.5, 0.0]) < 0.2);
        assert!(MeaningModel::fit(&vectors, &[true; 40]).is_none());
    }

    #[test]
    fn settling_averages_and_keeps_the_intent_consistent() {
        let mut result = Classification {
            text: "送餐太慢了".into(),
            lang: crate::prompts::Locale::Zh,
            intent: Intent::Other,
            escalate: false,
            confidence: 0.6,
            evident: false,
            praise: false,
        };
        // The words said 0.4, the meaning 0.9: together 0.65.
        settle(&mut result, 0.9);
        assert!(result.escalate);
        assert!((result.confidence - 0.65).abs() < 1e-6);
        assert_eq!(result.intent, Intent::Complaint);
    }
}
