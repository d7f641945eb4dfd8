//! Choosing the next token from logits: repetition penalty over the tokens
//! already in the sequence, then greedy at temperature 0, or temperature,
//! top-k and top-p (nucleus) sampling from a seeded generator.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Settings of one sequence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerSettings {
    /// 0 is greedy.
    pub temperature: f32,
    /// Smallest set of tokens whose probability reaches this; 1.0 keeps all.
    pub top_p: f32,
    /// Most likely tokens kept; 0 keeps all.
    pub top_k: usize,
    /// Divides positive logits (multiplies negative ones) of tokens already
    /// seen; 1.0 is none.
    pub repetition_penalty: f32,
    /// Seed of the generator; `None` draws one.
    pub seed: Option<u64>,
}

/// The sampler of one sequence.
pub struct Sampler {
    settings: SamplerSettings,
    rng: StdRng,
    seen: Vec<bool>,
    seen_list: Vec<u32>,
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab` tokens.
    pub fn new(settings: SamplerSettings, vocab: usize) -> Self {
        let rng = match settings.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            settings,
            rng,
            seen: vec![false; vocab],
            seen_list: Vec::new(),
            candidates: Vec::new(),
        }
    }

    /// Records tokens of the sequence (prompt or generated) for the penalty.
    pub fn observe(&mut self, tokens: &[u32]) {
        for &token in tokens {
            if let Some(seen) = self.seen.get_mut(token as usize) {
                if !*seen {
                    *seen = true;
                    self.seen_list.push(token);
                }
            }
        }
    }

    /// Picks the next token; `logits` is modified.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let penalty = self.settings.repetition_penalty;
        if penalty != 1.0 {
            for &token in &self.seen_list {
                let logit = &mut logits[token as usize];
                *logit = if *logit > 0.0 {
                    *logit / penalty
                } else {
                    *logit * penalty
                };
            }
        }
        if self.settings.temperature <= 0.0 {
            return argmax(logits);
        }
        let temperature = self.settings.temperature;
        let keep = match self.settings.top_k {
            0 => logits.len(),
            k => k.min(logits.len()),
        };
        // Most mass sits in few tokens: look at the top 64 first, widen only
        // when top-p needs more, so sorting the whole vocabulary is rare.
        let mut window = keep.min(64);
        loop {
            self.top_candidates(logits, window, temperature);
            let covered = self.nucleus_len();
            if covered.is_some() || window == keep {
                let take = covered.unwrap_or(window);
                return self.draw(take);
            }
            window = (window * 16).min(keep);
        }
    }

    /// The `count` largest logits, sorted, as unnormalised probabilities
    /// relative to the whole vocabulary.
    fn top_candidates(&mut self, logits: &[f32], count: usize, temperature: f32) {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = logits
            .iter()
            .map(|&logit| ((logit - max) / temperature).exp())
            .sum();
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(id, &logit)| (logit, id as u32)),
        );
        if count < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(count - 1, |a, b| b.0.total_cmp(&a.0));
            self.candidates.truncate(count);
        }
        self.candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        for candidate in &mut self.candidates {
            candidate.0 = ((candidate.0 - max) / temperature).exp() / total;
        }
    }

    /// How many of the sorted candidates reach `top_p`, if they do.
    fn nucleus_len(&self) -> Option<usize> {
        let mut mass = 0.0;
        for (index, &(probability, _)) in self.candidates.iter().enumerate() {
            mass += probability;
            if mass >= self.settings.top_p {
                return Some(index + 1);
            }
        }
        None
    }

    fn draw(&mut self, take: usize) -> u32 {
        let take = take.max(1).min(self.candidates.len());
        let mass: f32 = self.candidates[..take].iter().map(|c| c.0).sum();
        let mut target = self.rng.random::<f32>() * mass;
        for &(probability, id) in &self.candidates[..take] {
            target -= probability;
            if target <= 0.0 {
                return id;
            }
        }
        self.candidates[take - 1].1
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (index, &value) in values.iter().enumerate() {
        if value > values[best] {
            best = index;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(temperature: f32, top_p: f32, top_k: usize, penalty: f32) -> SamplerSettings {
        SamplerSettings {
            temperature,
            top_p,
            top_k,
            repetition_penalty: penalty,
            seed: Some(1),
        }
    }

    #[test]
    fn greedy_takes_the_largest_and_the_penalty_can_change_it() {
        let mut sampler = Sampler::new(settings(0.0, 1.0, 0, 1.0), 4);
        assert_eq!(sampler.sample(&mut [0.1, 2.0, 1.9, -1.0]), 1);
        let mut sampler = Sampler::new(settings(0.0, 1.0, 0, 1.5), 4);
        sampler.observe(&[1]);
        assert_eq!(sampler.sample(&mut [0.1, 2.0, 1.9, -1.0]), 2);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for (top_p, top_k) in [(1.0, 1), (0.01, 0)] {
            let mut sampler = Sampler::new(settings(1.0, top_p, top_k, 1.0), 5);
            for _ in 0..50 {
                assert_eq!(sampler.sample(&mut [0.0, 3.0, 1.0, 2.5, -2.0]), 1);
            }
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let mut sampler = Sampler::new(settings(1.0, 1.0, 0, 1.0), 3);
        let mut counts = [0; 3];
        for _ in 0..4000 {
            counts[sampler.sample(&mut logits.clone()) as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        let share = counts[1] as f64 / 4000.0;
        assert!((share - 0.75).abs() < 0.04, "{counts:?}");
        let draw = |seed| {
            let mut sampler = Sampler::new(
                SamplerSettings {
                    seed: Some(seed),
                    ..settings(1.0, 1.0, 0, 1.0)
                },
                3,
            );
            (0..20)
                .map(|_| sampler.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }

    #[test]
    fn a_wide_vocabulary_still_reaches_top_p() {
        // Flat logits: the nucleus needs most of the vocabulary.
        let mut logits = vec![0.0f32; 5000];
        let mut sampler = Sampler::new(settings(1.0, 0.9, 0, 1.0), 5000);
        let token = sampler.sample(&mut logits);
        assert!((token as usize) < 5000);
    }
}
