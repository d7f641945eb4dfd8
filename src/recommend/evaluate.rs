//! Offline evaluation of the rankers on interaction data, with the two
//! protocols of the published reference figures:
//! - `full`: each user's interactions split 80/10/10 at random; every item the
//!   user has no training interaction with is ranked; the test items are the
//!   targets.
//! - `loo-100`: each user's latest interaction is the target, ranked against
//!   100 sampled items the user never touched.
//!
//! EASE's regularisation is chosen on the validation part (the 10%, or each
//! user's second-latest interaction) with a model of the training part; the
//! reported model then learns from training and validation together, and
//! never sees the test part.

use serde::Serialize;

use super::dataset::{Interaction, Interactions, UserItems};
use super::models::{Ease, ItemKnn, Popularity, Scorer};

/// EASE regularisation strengths tried on validation.
const LAMBDAS: &[f64] = &[50.0, 100.0, 200.0, 400.0, 800.0];
/// Extra weight of a user's most recent items, tried on validation.
const RECENCY_BOOSTS: &[f32] = &[0.0, 1.0, 2.0, 4.0, 8.0];
/// Items back from the latest at which the recency boost halves, tried on validation.
const RECENCY_HALF_LIVES: &[f32] = &[5.0, 10.0, 20.0];
/// Neighbours per item for item-kNN.
const KNN_NEIGHBOURS: usize = 100;

/// Evaluation protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Random 80/10/10 split, rank all unseen items.
    Full,
    /// Latest interaction against 100 sampled negatives.
    Loo100,
}

/// Ranking metrics at k.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Metrics {
    /// Normalised discounted cumulative gain.
    #[serde(rename = "ndcg@10")]
    pub ndcg: f64,
    /// Share of a user's targets in the top k.
    #[serde(rename = "recall@10")]
    pub recall: f64,
    /// Share of users with a target in the top k.
    #[serde(rename = "hr@10")]
    pub hit_rate: f64,
    /// Mean reciprocal rank of the first target in the top k.
    #[serde(rename = "mrr@10")]
    pub mrr: f64,
}

/// SplitMix64: a small, fixed generator, so a seed means the same split in
/// every build.
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value below `bound`.
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound.max(1) as u64) as usize
    }
    /// Shuffles in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// Per-user targets of one evaluation split.
struct Split {
    train: UserItems,
    /// Targets for choosing hyper-parameters.
    valid: Vec<Vec<u32>>,
    /// Targets of the reported figures.
    test: Vec<Vec<u32>>,
    /// The training set of the final model (train + valid).
    train_with_valid: UserItems,
}

fn user_events(data: &Interactions) -> Vec<Vec<Interaction>> {
    let mut per_user = vec![Vec::new(); data.users.len()];
    for event in &data.events {
        per_user[event.user as usize].push(*event);
    }
    per_user
}

fn split(data: &Interactions, protocol: Protocol, seed: u64) -> Split {
    let mut random = SplitMix::new(seed);
    let (users, items) = (data.users.len(), data.items.len());
    let mut train = Vec::new();
    let mut valid = vec![Vec::new(); users];
    let mut test = vec![Vec::new(); users];
    for (user, mut events) in user_events(data).into_iter().enumerate() {
        // One interaction per item: repeats would leak targets into training.
        events.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
        let mut seen = std::collections::HashSet::new();
        events.retain(|event| seen.insert(event.item));
        match protocol {
            Protocol::Full => {
                random.shuffle(&mut events);
                let n = events.len();
                let n_test = (n as f64 * 0.1).round() as usize;
                let n_valid = (n as f64 * 0.1).round() as usize;
                let n_train = n.saturating_sub(n_test + n_valid);
                for (position, event) in events.into_iter().enumerate() {
                    if position < n_train {
                        train.push(event);
                    } else if position < n_train + n_valid {
                        valid[user].push(event.item);
                    } else {
                        test[user].push(event.item);
                    }
                }
            }
            Protocol::Loo100 => {
                if events.len() < 3 {
                    train.extend(events);
                    continue;
                }
                if let Some(last) = events.pop() {
                    test[user].push(last.item);
                }
                if let Some(second) = events.pop() {
                    valid[user].push(second.item);
                }
                train.extend(events);
            }
        }
    }
    let train_rows = UserItems::from_events(users, items, train.iter().copied());
    let mut with_valid = train_rows.clone();
    for (user, targets) in valid.iter().enumerate() {
        // Validation items are later than the training ones in loo-100.
        with_valid.add_recent(user, targets);
    }
    Split {
        train: train_rows,
        valid,
        test,
        train_with_valid: with_valid,
    }
}

/// Ranks and scores `targets` for every user.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    scorer: &dyn Scorer,
    history: &UserItems,
    recency: (f32, f32),
    all_items_of_user: &[Vec<u32>],
    targets: &[Vec<u32>],
    protocol: Protocol,
    k: usize,
    seed: u64,
) -> Metrics {
    let items = history.item_count;
    let mut random = SplitMix::new(seed ^ 0xA5A5_5A5A);
    let mut totals = Metrics::default();
    let mut evaluated = 0usize;
    let mut scores = vec![0.0f32; items];
    for (user, user_targets) in targets.iter().enumerate() {
        if user_targets.is_empty() {
            continue;
        }
        scores.iter_mut().for_each(|score| *score = 0.0);
        let seen = &history.rows[user];
        let weighted = history.weighted_history(user, recency.0, recency.1);
        scorer.score(&weighted, &mut scores);
        let ranked: Vec<u32> = match protocol {
            Protocol::Full => {
                let mut candidates: Vec<u32> = (0..items as u32)
                    .filter(|item| seen.binary_search(item).is_err())
                    .collect();
                top_k(&mut candidates, &scores, k)
            }
            Protocol::Loo100 => {
                let touched = &all_items_of_user[user];
                let mut candidates = user_targets.clone();
                let mut guard = 0;
                while candidates.len() < user_targets.len() + 100 && guard < items * 20 {
                    guard += 1;
                    let item = random.below(items) as u32;
                    if touched.binary_search(&item).is_err() && !candidates.contains(&item) {
                        candidates.push(item);
                    }
                }
                top_k(&mut candidates, &scores, k)
            }
        };
        let mut dcg = 0.0;
        let mut first_hit = None;
        let mut hits = 0usize;
        for (rank, item) in ranked.iter().enumerate() {
            if user_targets.contains(item) {
                hits += 1;
                dcg += 1.0 / ((rank + 2) as f64).log2();
                first_hit.get_or_insert(rank);
            }
        }
        let ideal: f64 = (0..user_targets.len().min(k))
            .map(|rank| 1.0 / ((rank + 2) as f64).log2())
            .sum();
        totals.ndcg += dcg / ideal;
        totals.recall += hits as f64 / user_targets.len() as f64;
        totals.hit_rate += f64::from(u8::from(hits > 0));
        totals.mrr += first_hit.map_or(0.0, |rank| 1.0 / (rank + 1) as f64);
        evaluated += 1;
    }
    let n = evaluated.max(1) as f64;
    Metrics {
        ndcg: totals.ndcg / n,
        recall: totals.recall / n,
        hit_rate: totals.hit_rate / n,
        mrr: totals.mrr / n,
    }
}

/// The `k` best candidates by score (ties by item index).
fn top_k(candidates: &mut [u32], scores: &[f32], k: usize) -> Vec<u32> {
    let order = |a: &u32, b: &u32| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then(a.cmp(b))
    };
    if candidates.len() > k {
        candidates.select_nth_unstable_by(k, order);
    }
    let mut best: Vec<u32> = candidates.iter().take(k).copied().collect();
    best.sort_by(order);
    best
}

/// Figures of one seed.
#[derive(Debug, Serialize)]
pub struct SeedFigures {
    /// The seed.
    pub seed: u64,
    /// EASE's chosen regularisation.
    pub ease_lambda: f64,
    /// The chosen extra weight of recent items.
    pub recency_boost: f32,
    /// The chosen half-life of that weight, in items.
    pub recency_half_life: f32,
    /// Our ranker (EASE).
    pub ours: Metrics,
    /// Item-kNN (the ranker for catalogs too large for EASE).
    pub itemknn: Metrics,
    /// Content similarity alone, when item texts are available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Metrics>,
    /// Popularity baseline.
    pub popularity: Metrics,
}

/// The report: the mean over seeds, then each seed.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Protocol name.
    pub protocol: &'static str,
    /// Users, items, interactions.
    pub users: usize,
    /// Items.
    pub items: usize,
    /// Interactions.
    pub interactions: usize,
    /// Mean of the seeds: our ranker.
    pub ours: Metrics,
    /// Mean of the seeds: item-kNN.
    pub itemknn: Metrics,
    /// Mean of the seeds: content similarity alone (MovieLens `.item` texts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Metrics>,
    /// Mean of the seeds: popularity.
    pub popularity: Metrics,
    /// Every seed.
    pub seeds: Vec<SeedFigures>,
}

fn mean(values: impl Iterator<Item = Metrics>) -> Metrics {
    let all: Vec<Metrics> = values.collect();
    let n = all.len().max(1) as f64;
    Metrics {
        ndcg: all.iter().map(|m| m.ndcg).sum::<f64>() / n,
        recall: all.iter().map(|m| m.recall).sum::<f64>() / n,
        hit_rate: all.iter().map(|m| m.hit_rate).sum::<f64>() / n,
        mrr: all.iter().map(|m| m.mrr).sum::<f64>() / n,
    }
}

/// Evaluates on every seed and averages.
pub fn run(
    data: &Interactions,
    item_texts: Option<&[String]>,
    protocol: Protocol,
    seeds: &[u64],
    k: usize,
) -> anyhow::Result<Report> {
    let content_model = item_texts.map(|texts| ItemKnn::from_texts(texts, KNN_NEIGHBOURS));
    let all_items = UserItems::from_events(
        data.users.len(),
        data.items.len(),
        data.events.iter().copied(),
    )
    .rows;
    let mut per_seed = Vec::new();
    for &seed in seeds {
        let split = split(data, protocol, seed);
        // Choose λ and the recency boost on validation with a model of the
        // training part.
        let mut best = (f64::NEG_INFINITY, LAMBDAS[0], (0.0f32, 1.0f32));
        let recency_grid = RECENCY_BOOSTS.iter().flat_map(|&boost| {
            RECENCY_HALF_LIVES
                .iter()
                .map(move |&half_life| (boost, half_life))
        });
        let recency_grid: Vec<(f32, f32)> = recency_grid.collect();
        for &lambda in LAMBDAS {
            let ease = Ease::fit(&split.train, lambda)?;
            for &recency in &recency_grid {
                let figures = evaluate(
                    &ease,
                    &split.train,
                    recency,
                    &all_items,
                    &split.valid,
                    protocol,
                    k,
                    seed,
                );
                // Each protocol's headline metric: NDCG for full, HR for loo-100.
                let target = match protocol {
                    Protocol::Full => figures.ndcg,
                    Protocol::Loo100 => figures.hit_rate,
                };
                if target > best.0 {
                    best = (target, lambda, recency);
                }
            }
        }
        let (_, lambda, recency) = best;
        // The final model learns from everything but the test part (as the
        // reference figures were made); those items are not ranked.
        let history = &split.train_with_valid;
        let ease = Ease::fit(history, lambda)?;
        let knn = ItemKnn::fit(history, KNN_NEIGHBOURS);
        let popularity = Popularity::fit(history);
        let measure = |scorer: &dyn Scorer, recency: (f32, f32)| {
            evaluate(
                scorer,
                history,
                recency,
                &all_items,
                &split.test,
                protocol,
                k,
                seed,
            )
        };
        let no_recency = (0.0, 1.0);
        per_seed.push(SeedFigures {
            seed,
            ease_lambda: lambda,
            recency_boost: recency.0,
            recency_half_life: recency.1,
            ours: measure(&ease, recency),
            itemknn: measure(&knn, no_recency),
            content: content_model
                .as_ref()
                .map(|model| measure(model, no_recency)),
            popularity: measure(&popularity, no_recency),
        });
    }
    Ok(Report {
        protocol: match protocol {
            Protocol::Full => "full",
            Protocol::Loo100 => "loo-100",
        },
        users: data.users.len(),
        items: data.items.len(),
        interactions: data.events.len(),
        ours: mean(per_seed.iter().map(|s| s.ours)),
        itemknn: mean(per_seed.iter().map(|s| s.itemknn)),
        content: content_model
            .as_ref()
            .map(|_| mean(per_seed.iter().filter_map(|s| s.content))),
        popularity: mean(per_seed.iter().map(|s| s.popularity)),
        seeds: per_seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_score_then_item() {
        let scores = [0.1, 0.9, 0.5, 0.9];
        let mut candidates = vec![0, 1, 2, 3];
        assert_eq!(top_k(&mut candidates, &scores, 3), vec![1, 3, 2]);
    }

    #[test]
    fn co_occurrence_predicts_the_held_out_item() {
        let mut data = Interactions::default();
        let (mut users, mut items) = (Default::default(), Default::default());
        let mut add = |user: String, history: &[String]| {
            for (time, item) in history.iter().enumerate() {
                data.push(&mut users, &mut items, &user, item, time as f64);
            }
        };
        for user in 0..30 {
            let pair = user % 3;
            // Teachers: the pair co-occurs in training.
            add(
                format!("t{user}"),
                &[
                    format!("a{pair}"),
                    format!("b{pair}"),
                    format!("x{user}"),
                    format!("y{user}"),
                ],
            );
            // Learners: hold out b after seeing a.
            add(
                format!("l{user}"),
                &[
                    format!("z{user}"),
                    format!("w{user}"),
                    format!("a{pair}"),
                    format!("b{pair}"),
                ],
            );
        }
        let split = split(&data, Protocol::Loo100, 7);
        assert_eq!(split.test.iter().filter(|t| !t.is_empty()).count(), 60);
        let report = run(&data, None, Protocol::Loo100, &[1], 10).unwrap();
        // The 30 learners are predictable; the teachers' last items are new.
        assert!(report.ours.hit_rate >= 0.45, "{:?}", report.ours);
    }

    #[test]
    fn seeds_give_reproducible_shuffles() {
        let mut a: Vec<u32> = (0..20).collect();
        let mut b = a.clone();
        SplitMix::new(3).shuffle(&mut a);
        SplitMix::new(3).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..20).collect::<Vec<_>>());
    }
}
