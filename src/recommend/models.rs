//! Collaborative rankers over a user's item history: popularity (the
//! baseline), EASE (a linear item-item model with a closed-form solution,
//! for catalogs up to a few thousand items) and item-based
//! nearest neighbours (cosine over co-occurrence; sparse, for any size).

use std::collections::HashMap;

use anyhow::Context;
use nalgebra::DMatrix;

use super::dataset::UserItems;

/// A model that scores every item for a user's history.
pub trait Scorer: Send + Sync {
    /// Short name for reports.
    fn name(&self) -> &'static str;
    /// Adds each item's score for a user who interacted with `history`
    /// (items with weights; recent ones may weigh more).
    fn score(&self, history: &[(u32, f32)], scores: &mut [f32]);
    /// What one history item adds to another item's score (unweighted).
    fn contribution(&self, _history_item: u32, _item: u32) -> f32 {
        0.0
    }
    /// The items this model can score above zero for `history`, when that is
    /// a small set (sparse models); `None` means every item.
    fn reachable(&self, _history: &[(u32, f32)]) -> Option<Vec<u32>> {
        None
    }
}

/// Items by how many users interacted with them.
pub struct Popularity {
    counts: Vec<f32>,
}

impl Popularity {
    /// Counts users per item.
    pub fn fit(data: &UserItems) -> Self {
        let mut counts = vec![0.0f32; data.item_count];
        for row in &data.rows {
            for &item in row {
                counts[item as usize] += 1.0;
            }
        }
        Self { counts }
    }

    /// Interactions per item.
    pub fn counts(&self) -> &[f32] {
        &self.counts
    }
}

impl Scorer for Popularity {
    fn name(&self) -> &'static str {
        "popularity"
    }
    fn score(&self, _history: &[(u32, f32)], scores: &mut [f32]) {
        for (score, count) in scores.iter_mut().zip(&self.counts) {
            *score += count;
        }
    }
}

/// EASE (Steck, 2019): B = I - P·diagMat(1/diag(P)), P = (XᵀX + λI)⁻¹.
pub struct Ease {
    items: usize,
    /// Row-major item-item weights; row h holds what history item h adds.
    weights: Vec<f32>,
}

impl Ease {
    /// Largest catalog EASE is fitted for: a dense items² matrix and an
    /// items³ Cholesky inverse (seconds at a few thousand items).
    pub const MAX_ITEMS: usize = 3_000;

    /// Fits with L2 strength `lambda`.
    pub fn fit(data: &UserItems, lambda: f64) -> anyhow::Result<Self> {
        let items = data.item_count;
        anyhow::ensure!(
            items <= Self::MAX_ITEMS,
            "EASE needs a dense {items}x{items} matrix; use item-kNN"
        );
        let mut gram = DMatrix::<f64>::zeros(items, items);
        for row in &data.rows {
            for &i in row {
                for &j in row {
                    gram[(i as usize, j as usize)] += 1.0;
                }
            }
        }
        for i in 0..items {
            gram[(i, i)] += lambda;
        }
        let inverse = gram
            .cholesky()
            .context("the Gram matrix is not positive definite")?
            .inverse();
        let mut weights = vec![0.0f32; items * items];
        for h in 0..items {
            for j in 0..items {
                if h != j {
                    // B[h][j] = -P[h][j] / P[j][j]
                    weights[h * items + j] = (-inverse[(h, j)] / inverse[(j, j)]) as f32;
                }
            }
        }
        Ok(Self { items, weights })
    }
}

impl Scorer for Ease {
    fn name(&self) -> &'static str {
        "ease"
    }
    fn contribution(&self, history_item: u32, item: u32) -> f32 {
        self.weights
            .get(history_item as usize * self.items + item as usize)
            .copied()
            .unwrap_or(0.0)
    }
    fn score(&self, history: &[(u32, f32)], scores: &mut [f32]) {
        for &(h, strength) in history {
            let row = &self.weights[h as usize * self.items..(h as usize + 1) * self.items];
            for (score, weight) in scores.iter_mut().zip(row) {
                *score += strength * weight;
            }
        }
    }
}

/// Item-based k nearest neighbours with cosine similarity of co-occurrence.
pub struct ItemKnn {
    neighbours: Vec<Vec<(u32, f32)>>,
}

impl ItemKnn {
    /// Keeps the `k` most similar items per item.
    pub fn fit(data: &UserItems, k: usize) -> Self {
        let items = data.item_count;
        let mut counts = vec![0.0f32; items];
        let mut co: Vec<HashMap<u32, f32>> = vec![HashMap::new(); items];
        for row in &data.rows {
            for &i in row {
                counts[i as usize] += 1.0;
                for &j in row {
                    if i != j {
                        *co[i as usize].entry(j).or_default() += 1.0;
                    }
                }
            }
        }
        let neighbours = co
            .into_iter()
            .enumerate()
            .map(|(i, row)| {
                let mut similar: Vec<(u32, f32)> = row
                    .into_iter()
                    .map(|(j, together)| {
                        let norm = (counts[i] * counts[j as usize]).sqrt().max(1.0);
                        (j, together / norm)
                    })
                    .collect();
                similar.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                similar.truncate(k);
                similar
            })
            .collect();
        Self { neighbours }
    }

    /// The most similar items to `item`.
    pub fn neighbours(&self, item: u32) -> &[(u32, f32)] {
        self.neighbours
            .get(item as usize)
            .map_or(&[], Vec::as_slice)
    }
}

impl Scorer for ItemKnn {
    fn name(&self) -> &'static str {
        "itemknn"
    }
    fn contribution(&self, history_item: u32, item: u32) -> f32 {
        self.neighbours(history_item)
            .iter()
            .find(|(other, _)| *other == item)
            .map_or(0.0, |(_, similarity)| *similarity)
    }
    fn reachable(&self, history: &[(u32, f32)]) -> Option<Vec<u32>> {
        let mut items: Vec<u32> = history
            .iter()
            .flat_map(|&(h, _)| self.neighbours(h).iter().map(|&(j, _)| j))
            .collect();
        items.sort_unstable();
        items.dedup();
        Some(items)
    }
    fn score(&self, history: &[(u32, f32)], scores: &mut [f32]) {
        for &(h, strength) in history {
            for &(j, similarity) in self.neighbours(h) {
                scores[j as usize] += strength * similarity;
            }
        }
    }
}

impl ItemKnn {
    /// Neighbours by cosine similarity of the items' texts (TF-IDF, English
    /// and Chinese analysed as in the knowledge base): the content part.
    pub fn from_texts(texts: &[String], k: usize) -> Self {
        use crate::knowledge::text::{analyze, word_analyzer};
        let mut analyzer = word_analyzer();
        let documents: Vec<Vec<String>> = texts
            .iter()
            .map(|text| analyze(&mut analyzer, text))
            .collect();
        let mut frequency: HashMap<&str, f32> = HashMap::new();
        for terms in &documents {
            let mut unique: Vec<&str> = terms.iter().map(String::as_str).collect();
            unique.sort_unstable();
            unique.dedup();
            for term in unique {
                *frequency.entry(term).or_default() += 1.0;
            }
        }
        let count = texts.len().max(1) as f32;
        let vectors: Vec<HashMap<&str, f32>> = documents
            .iter()
            .map(|terms| {
                let mut vector: HashMap<&str, f32> = HashMap::new();
                for term in terms {
                    let idf =
                        (1.0 + count / frequency.get(term.as_str()).copied().unwrap_or(1.0)).ln();
                    *vector.entry(term.as_str()).or_default() += idf;
                }
                let norm = vector
                    .values()
                    .map(|w| w * w)
                    .sum::<f32>()
                    .sqrt()
                    .max(f32::MIN_POSITIVE);
                vector.values_mut().for_each(|w| *w /= norm);
                vector
            })
            .collect();
        let mut postings: HashMap<&str, Vec<u32>> = HashMap::new();
        for (item, vector) in vectors.iter().enumerate() {
            for term in vector.keys() {
                postings.entry(term).or_default().push(item as u32);
            }
        }
        let neighbours = vectors
            .iter()
            .enumerate()
            .map(|(item, vector)| {
                let mut similar: HashMap<u32, f32> = HashMap::new();
                for (term, weight) in vector {
                    for &other in postings.get(term).map_or(&[][..], Vec::as_slice) {
                        if other as usize != item {
                            *similar.entry(other).or_default() +=
                                weight * vectors[other as usize][term];
                        }
                    }
                }
                let mut similar: Vec<(u32, f32)> = similar.into_iter().collect();
                similar.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                similar.truncate(k);
                similar
            })
            .collect();
        Self { neighbours }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two taste groups: items 0-2 go together, items 3-5 go together.
    fn groups() -> UserItems {
        let mut rows = Vec::new();
        for _ in 0..10 {
            rows.push(vec![0, 1, 2]);
            rows.push(vec![3, 4, 5]);
        }
        rows.push(vec![0, 1]);
        UserItems {
            recent_first: rows.clone(),
            rows,
            item_count: 6,
        }
    }

    fn best(scorer: &dyn Scorer, history: &[u32]) -> u32 {
        let mut scores = vec![0.0; 6];
        let weighted: Vec<(u32, f32)> = history.iter().map(|&item| (item, 1.0)).collect();
        scorer.score(&weighted, &mut scores);
        for &h in history {
            scores[h as usize] = f32::NEG_INFINITY;
        }
        (0..6)
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap() as u32
    }

    #[test]
    fn collaborative_models_follow_co_occurrence() {
        let data = groups();
        let ease = Ease::fit(&data, 1.0).unwrap();
        assert_eq!(best(&ease, &[3, 4]), 5);
        assert!(matches!(best(&ease, &[0]), 1 | 2));
        let knn = ItemKnn::fit(&data, 10);
        assert_eq!(best(&knn, &[3, 4]), 5);
        assert!(knn.neighbours(0).iter().all(|&(j, _)| j <= 2));
        let popularity = Popularity::fit(&data);
        assert_eq!(popularity.counts()[0], 11.0);
        let texts: Vec<String> = [
            "red wool sock",
            "blue wool sock",
            "rain jacket",
            "down jacket",
            "tent",
            "stove",
        ]
        .iter()
        .map(|text| text.to_string())
        .collect();
        let content = ItemKnn::from_texts(&texts, 3);
        assert_eq!(content.neighbours(0)[0].0, 1);
        assert_eq!(content.neighbours(2)[0].0, 3);
    }
}
