//! Interaction data for training and evaluation: users and items mapped to
//! dense indexes, read from MovieLens `.inter` files (tab-separated, typed
//! header) or plain `user,item,timestamp[,rating]` CSV.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};

/// One interaction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interaction {
    /// Dense user index.
    pub user: u32,
    /// Dense item index.
    pub item: u32,
    /// When it happened (seconds or any monotonic unit).
    pub timestamp: f64,
}

/// Interactions with their id maps.
#[derive(Clone, Debug, Default)]
pub struct Interactions {
    /// User ids, by index.
    pub users: Vec<String>,
    /// Item ids, by index.
    pub items: Vec<String>,
    /// Every interaction, in file order.
    pub events: Vec<Interaction>,
}

impl Interactions {
    /// Adds an interaction, assigning indexes to new ids.
    pub fn push(
        &mut self,
        user_index: &mut HashMap<String, u32>,
        item_index: &mut HashMap<String, u32>,
        user: &str,
        item: &str,
        timestamp: f64,
    ) {
        let index_of = |map: &mut HashMap<String, u32>, ids: &mut Vec<String>, id: &str| {
            *map.entry(id.to_string()).or_insert_with(|| {
                ids.push(id.to_string());
                (ids.len() - 1) as u32
            })
        };
        let user = index_of(user_index, &mut self.users, user);
        let item = index_of(item_index, &mut self.items, item);
        self.events.push(Interaction {
            user,
            item,
            timestamp,
        });
    }

    /// Reads a MovieLens `.inter` file or a CSV file, chosen by the header.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let first = text.lines().next().unwrap_or_default();
        if first.contains('\t') {
            Self::parse_inter(&text).with_context(|| format!("in {}", path.display()))
        } else {
            Self::parse_csv(&text).with_context(|| format!("in {}", path.display()))
        }
    }

    fn column(headers: &[String], names: &[&str]) -> Option<usize> {
        headers.iter().position(|header| {
            let name = header
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_lowercase();
            names.contains(&name.as_str())
        })
    }

    fn parse_rows<'a>(
        headers: Vec<String>,
        rows: impl Iterator<Item = (usize, Vec<&'a str>)>,
    ) -> anyhow::Result<Self> {
        let user_at = Self::column(&headers, &["user", "user_id"]).context("no user column")?;
        let item_at = Self::column(&headers, &["item", "item_id"]).context("no item column")?;
        let time_at = Self::column(&headers, &["timestamp", "time", "ts"]);
        let mut data = Self::default();
        let (mut users, mut items) = (HashMap::new(), HashMap::new());
        for (line, fields) in rows {
            let (Some(user), Some(item)) = (fields.get(user_at), fields.get(item_at)) else {
                bail!("line {line}: missing user or item");
            };
            let timestamp = match time_at.and_then(|at| fields.get(at)) {
                Some(raw) => raw
                    .trim()
                    .parse::<f64>()
                    .with_context(|| format!("line {line}: timestamp {raw:?} is not a number"))?,
                None => line as f64,
            };
            data.push(&mut users, &mut items, user.trim(), item.trim(), timestamp);
        }
        if data.events.is_empty() {
            bail!("no interactions");
        }
        Ok(data)
    }

    /// MovieLens atomic file: `user_id:token\titem_id:token\trating:float\ttimestamp:float`.
    pub fn parse_inter(text: &str) -> anyhow::Result<Self> {
        let mut lines = text.lines();
        let headers: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .split('\t')
            .map(str::to_string)
            .collect();
        let rows = lines
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| (index + 2, line.split('\t').collect::<Vec<_>>()));
        Self::parse_rows(headers, rows)
    }

    /// CSV with a header naming `user`, `item` and optionally `timestamp`.
    pub fn parse_csv(text: &str) -> anyhow::Result<Self> {
        let mut lines = text.lines();
        let headers: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|header| header.trim().to_string())
            .collect();
        let rows = lines
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| (index + 2, line.split(',').collect::<Vec<_>>()));
        Self::parse_rows(headers, rows)
    }
}

/// Item texts for content similarity, aligned with `items`: read from the
/// MovieLens `.item` file beside a `.inter` file (every column but the id),
/// when there is one.
pub fn item_texts(interactions: &Path, items: &[String]) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(interactions.with_extension("item")).ok()?;
    let mut lines = text.lines();
    let headers: Vec<&str> = lines.next()?.split('\t').collect();
    let id_at = headers
        .iter()
        .position(|header| header.split(':').next() == Some("item_id"))?;
    let mut by_id: HashMap<&str, String> = HashMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split('\t').collect();
        let Some(id) = fields.get(id_at) else {
            continue;
        };
        let words: Vec<&str> = fields
            .iter()
            .enumerate()
            .filter(|(at, _)| *at != id_at)
            .map(|(_, field)| *field)
            .collect();
        by_id.insert(id, words.join(" "));
    }
    Some(
        items
            .iter()
            .map(|id| by_id.get(id.as_str()).cloned().unwrap_or_default())
            .collect(),
    )
}

/// Each user's distinct items, sorted: the training matrix in compressed rows.
#[derive(Clone, Debug, Default)]
pub struct UserItems {
    /// Items per user, sorted by item.
    pub rows: Vec<Vec<u32>>,
    /// Items per user, most recent first.
    pub recent_first: Vec<Vec<u32>>,
    /// Number of items.
    pub item_count: usize,
}

impl UserItems {
    /// Builds rows from interactions.
    pub fn from_events(
        users: usize,
        items: usize,
        events: impl IntoIterator<Item = Interaction>,
    ) -> Self {
        let mut timed: Vec<Vec<(f64, u32)>> = vec![Vec::new(); users];
        for event in events {
            timed[event.user as usize].push((event.timestamp, event.item));
        }
        let mut rows = Vec::with_capacity(users);
        let mut recent_first = Vec::with_capacity(users);
        for mut user in timed {
            // Latest first; an item counts at its latest interaction.
            user.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut seen = std::collections::HashSet::new();
            let order: Vec<u32> = user
                .into_iter()
                .filter_map(|(_, item)| seen.insert(item).then_some(item))
                .collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            rows.push(sorted);
            recent_first.push(order);
        }
        Self {
            rows,
            recent_first,
            item_count: items,
        }
    }

    /// Adds items to a user's history as their most recent.
    pub fn add_recent(&mut self, user: usize, items: &[u32]) {
        for &item in items {
            if let Err(at) = self.rows[user].binary_search(&item) {
                self.rows[user].insert(at, item);
            }
            self.recent_first[user].retain(|&other| other != item);
            self.recent_first[user].insert(0, item);
        }
    }

    /// A user's history with weights: 1 for every item, plus `boost` halved
    /// every `half_life` items back from the most recent.
    pub fn weighted_history(&self, user: usize, boost: f32, half_life: f32) -> Vec<(u32, f32)> {
        self.recent_first[user]
            .iter()
            .enumerate()
            .map(|(rank, &item)| (item, 1.0 + boost * 0.5f32.powf(rank as f32 / half_life)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_formats() {
        let inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t4\t881250950\n";
        let data = Interactions::parse_inter(inter).unwrap();
        assert_eq!(data.users, ["196", "186"]);
        assert_eq!(data.items, ["242", "302"]);
        assert_eq!(data.events[2].user, 0);
        assert_eq!(data.events[2].timestamp, 881250950.0);
        let csv = "user,item,timestamp,rating\na,x,1,5\nb,y,2,3\n";
        let data = Interactions::parse_csv(csv).unwrap();
        assert_eq!(data.events.len(), 2);
        assert!(Interactions::parse_csv("user,item,timestamp\na,x,soon\n").is_err());
        assert!(Interactions::parse_csv("who,what\n").is_err());
        let rows = UserItems::from_events(2, 2, data.events.iter().copied());
        assert_eq!(rows.rows, vec![vec![0], vec![1]]);
        let events =
            [(0, 5, 1.0), (0, 2, 3.0), (0, 5, 2.0), (0, 7, 0.5)].map(|(user, item, timestamp)| {
                Interaction {
                    user,
                    item,
                    timestamp,
                }
            });
        let mut history = UserItems::from_events(1, 8, events);
        assert_eq!(history.rows[0], vec![2, 5, 7]);
        assert_eq!(history.recent_first[0], vec![2, 5, 7]);
        history.add_recent(0, &[7]);
        assert_eq!(history.recent_first[0], vec![7, 2, 5]);
        let weighted = history.weighted_history(0, 1.0, 1.0);
        assert_eq!(weighted[0], (7, 2.0));
        assert_eq!(weighted[1], (2, 1.5));
    }
}
