//! Making the escalation probability mean what it says: Platt scaling of the
//! model's raw probability, fitted per language on examples the weights never
//! trained on, and the reliability table (predicted against observed, in
//! bins) with its expected calibration error that shows how well it holds.

use serde::Serialize;

/// `calibrated = σ(slope · logit(raw) + offset)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Platt {
    /// Scales the raw log-odds (below 1: the model was over-confident).
    pub slope: f32,
    /// Shifts them (the class balance of real traffic against training).
    pub offset: f32,
}

/// Raw probabilities are clamped here so their log-odds stay finite.
const EDGE: f32 = 1e-6;
/// Fewer calibration examples of either class than this leave the model as it is.
pub const MIN_PER_CLASS: usize = 15;

fn logit(probability: f32) -> f64 {
    let p = f64::from(probability.clamp(EDGE, 1.0 - EDGE));
    (p / (1.0 - p)).ln()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Platt {
    /// Leaves probabilities as they are.
    pub const IDENTITY: Platt = Platt {
        slope: 1.0,
        offset: 0.0,
    };

    /// The calibrated probability for a raw one.
    pub fn apply(&self, raw: f32) -> f32 {
        sigmoid(f64::from(self.slope) * logit(raw) + f64::from(self.offset)) as f32
    }

    /// Fits slope and offset to `(raw probability, should escalate)` pairs by
    /// Newton's method on the log-loss, with Platt's smoothed targets so a
    /// perfectly separated sample does not push the slope to infinity. Too
    /// few examples of either class give the identity.
    pub fn fit(pairs: &[(f32, bool)]) -> Platt {
        let positives = pairs.iter().filter(|(_, yes)| *yes).count();
        let negatives = pairs.len() - positives;
        if positives < MIN_PER_CLASS || negatives < MIN_PER_CLASS {
            return Platt::IDENTITY;
        }
        let high = (positives as f64 + 1.0) / (positives as f64 + 2.0);
        let low = 1.0 / (negatives as f64 + 2.0);
        let samples: Vec<(f64, f64)> = pairs
            .iter()
            .map(|&(raw, yes)| (logit(raw), if yes { high } else { low }))
            .collect();
        let loss = |slope: f64, offset: f64| -> f64 {
            samples
                .iter()
                .map(|&(z, target)| {
                    let x = slope * z + offset;
                    // log(1 + e^x) - target·x, written to stay finite.
                    x.max(0.0) + (-x.abs()).exp().ln_1p() - target * x
                })
                .sum()
        };
        let (mut slope, mut offset) = (1.0f64, 0.0f64);
        let mut current = loss(slope, offset);
        for _ in 0..100 {
            let (mut g_slope, mut g_offset) = (0.0, 0.0);
            let (mut h_ss, mut h_so, mut h_oo) = (1e-9, 0.0, 1e-9);
            for &(z, target) in &samples {
                let p = sigmoid(slope * z + offset);
                let error = p - target;
                let curvature = (p * (1.0 - p)).max(1e-12);
                g_slope += error * z;
                g_offset += error;
                h_ss += curvature * z * z;
                h_so += curvature * z;
                h_oo += curvature;
            }
            let determinant = h_ss * h_oo - h_so * h_so;
            if determinant.abs() < 1e-12 {
                break;
            }
            let step_slope = (h_oo * g_slope - h_so * g_offset) / determinant;
            let step_offset = (h_ss * g_offset - h_so * g_slope) / determinant;
            // Newton's step, halved until the loss goes down.
            let mut scale = 1.0;
            let mut improved = false;
            for _ in 0..30 {
                let candidate = loss(slope - scale * step_slope, offset - scale * step_offset);
                if candidate <= current {
                    slope -= scale * step_slope;
                    offset -= scale * step_offset;
                    current = candidate;
                    improved = true;
                    break;
                }
                scale /= 2.0;
            }
            if !improved || (scale * step_slope).abs() + (scale * step_offset).abs() < 1e-9 {
                break;
            }
        }
        if !(slope.is_finite() && offset.is_finite()) || slope <= 0.0 {
            return Platt::IDENTITY;
        }
        Platt {
            slope: slope as f32,
            offset: offset as f32,
        }
    }
}

/// One bin of the reliability table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bin {
    /// Lower edge of the predicted probability.
    pub from: f64,
    /// Upper edge.
    pub to: f64,
    /// Messages predicted in this range.
    pub count: usize,
    /// Their mean predicted probability of escalation.
    pub predicted: f64,
    /// The share of them that should escalate.
    pub observed: f64,
}

/// Predicted against observed escalation, in equal-width bins.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reliability {
    /// Expected calibration error: the count-weighted mean gap between
    /// predicted and observed (0 is perfect).
    pub ece: f64,
    /// The bins, lowest first; empty bins are kept with a count of 0.
    pub bins: Vec<Bin>,
}

/// The reliability table of `(predicted probability, should escalate)` pairs.
pub fn reliability(pairs: &[(f32, bool)], bins: usize) -> Reliability {
    let bins = bins.max(1);
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for &(predicted, yes) in pairs {
        let at = ((f64::from(predicted) * bins as f64) as usize).min(bins - 1);
        sums[at].0 += 1;
        sums[at].1 += f64::from(predicted);
        sums[at].2 += usize::from(yes);
    }
    let total = pairs.len().max(1) as f64;
    let mut ece = 0.0;
    let table = sums
        .iter()
        .enumerate()
        .map(|(at, &(count, predicted_sum, positives))| {
            let (predicted, observed) = if count == 0 {
                (0.0, 0.0)
            } else {
                (
                    predicted_sum / count as f64,
                    positives as f64 / count as f64,
                )
            };
            ece += count as f64 / total * (predicted - observed).abs();
            Bin {
                from: at as f64 / bins as f64,
                to: (at + 1) as f64 / bins as f64,
                count,
                predicted,
                observed,
            }
        })
        .collect();
    Reliability { ece, bins: table }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Raw probabilities from an over-confident model: the truth is
    /// `σ(z / 3)` where the model says `σ(z)`.
    fn overconfident_sample(count: usize) -> Vec<(f32, bool)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        (0..count)
            .map(|_| {
                let z: f64 = rng.random_range(-9.0..9.0);
                let yes = rng.random_bool(sigmoid(z / 3.0));
                (sigmoid(z) as f32, yes)
            })
            .collect()
    }

    #[test]
    fn platt_scaling_undoes_over_confidence() {
        let sample = overconfident_sample(20_000);
        let before = reliability(&sample, 10).ece;
        let platt = Platt::fit(&sample);
        assert!((platt.slope - 1.0 / 3.0).abs() < 0.05, "{platt:?}");
        assert!(platt.offset.abs() < 0.1, "{platt:?}");
        let calibrated: Vec<(f32, bool)> = sample
            .iter()
            .map(|&(raw, yes)| (platt.apply(raw), yes))
            .collect();
        let after = reliability(&calibrated, 10).ece;
        assert!(after < 0.02 && after < before / 3.0, "{before} -> {after}");
    }

    #[test]
    fn too_few_examples_of_a_class_leave_the_model_alone() {
        let mut sample = vec![(0.9, true); 10];
        sample.extend(vec![(0.1, false); 500]);
        assert_eq!(Platt::fit(&sample), Platt::IDENTITY);
        assert!((Platt::IDENTITY.apply(0.73) - 0.73).abs() < 1e-5);
    }

    #[test]
    fn the_table_counts_every_pair_in_its_bin() {
        let pairs = [(0.05, false), (0.15, true), (0.95, true), (1.0, true)];
        let table = reliability(&pairs, 10);
        assert_eq!(table.bins.len(), 10);
        assert_eq!(table.bins[0].count, 1);
        assert_eq!(table.bins[1].observed, 1.0);
        assert_eq!(table.bins[9].count, 2);
        let expected = (0.05 + (1.0 - 0.15) + 0.05 + 0.0) / 4.0;
        assert!((table.ece - expected).abs() < 1e-6, "{}", table.ece);
    }
}
