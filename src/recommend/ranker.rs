//! The live hybrid ranker: a collaborative model fitted on every customer's
//! events (EASE for catalogs up to `Ease::MAX_ITEMS`, item-kNN above), content
//! similarity over the catalog text (TF-IDF, English and Chinese), popularity
//! as the fallback, and the shop's rules: in stock, not bought, not disliked,
//! the requested price and subject, and no more than two items per category
//! while others remain.
//!
//! Architecture invariant: the customer's own history is read at request
//! time, so a new event changes their next recommendation at once; only the
//! item-item model is fitted ahead (in the background in the daemon).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::dataset::{Interaction, UserItems};
use super::models::{Ease, ItemKnn, Popularity, Scorer};
use crate::knowledge::text::{analyze, word_analyzer};
use crate::store::{CatalogItem, Event, EventKind};

/// EASE regularisation for live use (the value chosen on MovieLens).
const LIVE_LAMBDA: f64 = 400.0;
/// Recency weighting of a customer's history (chosen on MovieLens loo-100).
const RECENCY_BOOST: f32 = 8.0;
const RECENCY_HALF_LIFE: f32 = 5.0;
/// Neighbours kept per item when the catalog is too large for EASE.
const KNN_NEIGHBOURS: usize = 100;
/// Shortest title that counts as naming an item in a message.
const MIN_MENTION_CHARS: usize = 8;
/// Items of one category shown before other categories get a turn.
const PER_CATEGORY: usize = 2;

/// How strongly an event says "the customer wants this kind of item".
fn interest(event: &Event) -> Option<f32> {
    Some(match event.kind {
        EventKind::View => 0.5,
        EventKind::Click => 1.0,
        EventKind::Like | EventKind::Cart => 2.0,
        EventKind::Purchase => 3.0,
        EventKind::Rating => match event.value {
            Some(value) if value >= 3.5 => 2.0,
            Some(value) if value >= 2.5 => 0.5,
            _ => return None,
        },
        EventKind::Dislike => return None,
    })
}

/// What the customer asked for, parsed from free text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Wish {
    /// Words to match against the catalog.
    pub text: String,
    /// Highest acceptable price.
    pub max_price: Option<f64>,
}

impl Wish {
    /// Parses "running shoes under 100", "100元以下的跑鞋", "below €50";
    /// words that only ask for a recommendation are dropped.
    pub fn parse(query: &str) -> Self {
        let lowered = subject(query);
        let mut max_price = None;
        let mut text = lowered.clone();
        const BEFORE: &[&str] = &[
            "under",
            "below",
            "less than",
            "cheaper than",
            "up to",
            "max",
            "at most",
            "<",
            "低于",
            "少于",
            "不超过",
            "不到",
            "小于",
        ];
        const AFTER: &[&str] = &["以下", "以内", "之内", "or less", "max"];
        for marker in BEFORE {
            if let Some(at) = lowered.find(marker) {
                let rest = &lowered[at + marker.len()..];
                if let Some((price, used)) = leading_number(rest) {
                    max_price = Some(price);
                    text = format!("{}{}", &lowered[..at], &rest[used..]);
                    break;
                }
            }
        }
        if max_price.is_none() {
            for marker in AFTER {
                if let Some(at) = lowered.find(marker) {
                    if let Some((price, start)) = trailing_number(&lowered[..at]) {
                        max_price = Some(price);
                        text = format!("{}{}", &lowered[..start], &lowered[at + marker.len()..]);
                        break;
                    }
                }
            }
        }
        Self { text, max_price }
    }
}

/// The request without the words that only ask ("can you recommend me …").
pub fn subject(request: &str) -> String {
    const ASKING: &[&str] = &[
        "can you",
        "could you",
        "would you",
        "please",
        "recommend",
        "suggest",
        "i need",
        "i want",
        "looking for",
        "some",
        "any",
        "推荐",
        "给我",
        "一下",
        "一些",
        "请",
        "帮我",
        "我想要",
        "我要",
    ];
    let mut text = format!(
        " {} ",
        request.to_lowercase().replace(['?', '!', '？', '！'], " ")
    );
    for phrase in ASKING {
        text = text.replace(phrase, " ");
    }
    for word in [" me ", " a ", " an ", " for ", " to ", " i "] {
        while text.contains(word) {
            text = text.replace(word, " ");
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A number at the start of `text` (after spaces and a currency sign), and
/// the bytes it used.
fn leading_number(text: &str) -> Option<(f64, usize)> {
    let skip = text
        .char_indices()
        .find(|(_, ch)| !(ch.is_whitespace() || matches!(ch, '€' | '$' | '£' | '¥' | '￥')))
        .map_or(text.len(), |(at, _)| at);
    let digits: String = text[skip..]
        .chars()
        .take_while(|ch| ch.is_ascii_digit() || *ch == '.')
        .collect();
    let value = digits.trim_end_matches('.').parse::<f64>().ok()?;
    let mut used = skip + digits.len();
    // Swallow a unit right after the number.
    for unit in [
        "euros", "euro", "eur", "dollars", "usd", "元", "块", "欧元", "欧",
    ] {
        if text[used..].trim_start().starts_with(unit) {
            used = text.len() - text[used..].trim_start().len() + unit.len();
            break;
        }
    }
    Some((value, used))
}

/// A number at the end of `text` (before an optional unit), and where it starts.
fn trailing_number(text: &str) -> Option<(f64, usize)> {
    let mut end = text.trim_end().len();
    for unit in ["euros", "euro", "eur", "元", "块", "欧元", "欧"] {
        if text[..end].ends_with(unit) {
            end -= unit.len();
            break;
        }
    }
    let head = text[..end].trim_end();
    let start = head
        .char_indices()
        .rev()
        .take_while(|(_, ch)| ch.is_ascii_digit() || *ch == '.')
        .last()
        .map(|(at, _)| at)?;
    let value = head[start..].parse::<f64>().ok()?;
    Some((value, start))
}

/// Sparse L2-normalised TF-IDF vectors of the catalog text, with postings
/// to find the items that share a term.
struct ContentIndex {
    idf: HashMap<String, f32>,
    vectors: Vec<HashMap<String, f32>>,
    postings: HashMap<String, Vec<u32>>,
}

/// Terms of a query or profile used to find candidates in a large catalog.
const CANDIDATE_TERMS: usize = 8;
/// Items taken from one term's postings (the rarest terms matter most).
const CANDIDATES_PER_TERM: usize = 500;
/// The most popular items, always candidates.
const POPULAR_CANDIDATES: usize = 200;

impl ContentIndex {
    fn build(items: &[CatalogItem]) -> Self {
        let mut analyzer = word_analyzer();
        let documents: Vec<Vec<String>> = items
            .iter()
            .map(|item| {
                // The title and category say most about an item: count them twice.
                // Both languages, so a Chinese request finds an item by its
                // Chinese words and an English one by its English words.
                let text = format!(
                    "{t} {t} {c} {c} {tags} {d} {tz} {tz} {tagz} {dz}",
                    t = item.title,
                    c = item.category.replace('-', " "),
                    tags = item.tags.join(" ").replace('-', " "),
                    d = item.description,
                    tz = item.title_zh,
                    tagz = item.tags_zh.join(" "),
                    dz = item.description_zh,
                );
                analyze(&mut analyzer, &text)
            })
            .collect();
        let mut document_frequency: HashMap<String, f32> = HashMap::new();
        for terms in &documents {
            for term in terms.iter().collect::<HashSet<_>>() {
                *document_frequency.entry(term.clone()).or_default() += 1.0;
            }
        }
        let count = items.len().max(1) as f32;
        let idf: HashMap<String, f32> = document_frequency
            .into_iter()
            .map(|(term, frequency)| (term, (1.0 + count / frequency).ln()))
            .collect();
        let vectors: Vec<HashMap<String, f32>> = documents
            .iter()
            .map(|terms| Self::vector(&idf, terms))
            .collect();
        let mut postings: HashMap<String, Vec<u32>> = HashMap::new();
        for (item, vector) in vectors.iter().enumerate() {
            for term in vector.keys() {
                postings.entry(term.clone()).or_default().push(item as u32);
            }
        }
        Self {
            idf,
            vectors,
            postings,
        }
    }

    /// Items sharing one of the vector's strongest terms.
    fn matching(&self, vector: &HashMap<String, f32>) -> Vec<u32> {
        let mut terms: Vec<(&String, &f32)> = vector.iter().collect();
        terms.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
        terms
            .into_iter()
            .take(CANDIDATE_TERMS)
            .filter_map(|(term, _)| self.postings.get(term))
            .flat_map(|items| items.iter().take(CANDIDATES_PER_TERM).copied())
            .collect()
    }

    fn vector(idf: &HashMap<String, f32>, terms: &[String]) -> HashMap<String, f32> {
        let mut vector: HashMap<String, f32> = HashMap::new();
        for term in terms {
            if let Some(weight) = idf.get(term) {
                *vector.entry(term.clone()).or_default() += weight;
            }
        }
        normalise(&mut vector);
        vector
    }

    fn query(&self, text: &str) -> HashMap<String, f32> {
        Self::vector(&self.idf, &analyze(&mut word_analyzer(), text))
    }
}

fn normalise(vector: &mut HashMap<String, f32>) {
    let norm = vector.values().map(|w| w * w).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.values_mut().for_each(|w| *w /= norm);
    }
}

/// How well an item matches a request: the cosine, times the share of the
/// request's words the item holds. The cosine alone favours a short item
/// that holds one word many times ("Kids Rain Jacket" for "warm jacket for
/// hiking") over one that holds more of them.
fn coordinated(request: &HashMap<String, f32>, item: &HashMap<String, f32>) -> f32 {
    if request.is_empty() {
        return 0.0;
    }
    let held = request
        .keys()
        .filter(|term| item.contains_key(*term))
        .count();
    // `+ 0.0` turns the -0.0 of an empty sum into 0.
    dot(request, item).max(0.0) * held as f32 / request.len() as f32 + 0.0
}

fn dot(a: &HashMap<String, f32>, b: &HashMap<String, f32>) -> f32 {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small
        .iter()
        .filter_map(|(term, weight)| large.get(term).map(|other| weight * other))
        .sum()
}

/// Why an item was recommended: each part's normalised score.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Signals {
    /// Customers with similar histories (0-1).
    pub collaborative: f32,
    /// Similar to what this customer liked (0-1).
    pub content: f32,
    /// Matches the request text (0-1).
    pub query: f32,
    /// Popular in the shop (0-1).
    pub popularity: f32,
}

/// One recommended item.
#[derive(Clone, Debug, Serialize)]
pub struct Recommendation {
    /// The catalog item.
    pub item: CatalogItem,
    /// The combined score.
    pub score: f32,
    /// The parts of the score.
    pub signals: Signals,
    /// The history item that contributed most, by title.
    pub because_of: Option<String>,
    /// That item itself.
    #[serde(skip)]
    pub liked: Option<CatalogItem>,
}

/// The fitted ranker.
pub struct Ranker {
    items: Vec<CatalogItem>,
    index: HashMap<String, u32>,
    collaborative: Box<dyn Scorer>,
    popularity: Vec<f32>,
    popular: Vec<u32>,
    /// Per item, the lowercase title and id that name it in a message (only
    /// those long enough not to match by accident); built once, since every
    /// message is checked against them.
    mention_names: Vec<Vec<String>>,
    content: ContentIndex,
}

impl Ranker {
    /// Fits the models on the catalog and everyone's events.
    pub fn build(items: Vec<CatalogItem>, events: &[Event]) -> anyhow::Result<Self> {
        let index: HashMap<String, u32> = items
            .iter()
            .enumerate()
            .map(|(position, item)| (item.id.clone(), position as u32))
            .collect();
        let mut users: HashMap<&str, u32> = HashMap::new();
        let mut interactions = Vec::new();
        for event in events {
            let (Some(&item), Some(_)) = (index.get(&event.item), interest(event)) else {
                continue;
            };
            let next = users.len() as u32;
            let user = *users.entry(event.user.as_str()).or_insert(next);
            interactions.push(Interaction {
                user,
                item,
                timestamp: event.ts_ms as f64,
            });
        }
        let data = UserItems::from_events(users.len(), items.len(), interactions);
        let collaborative: Box<dyn Scorer> = if items.len() <= Ease::MAX_ITEMS && !items.is_empty()
        {
            Box::new(Ease::fit(&data, LIVE_LAMBDA)?)
        } else {
            Box::new(ItemKnn::fit(&data, KNN_NEIGHBOURS))
        };
        let counts = Popularity::fit(&data).counts().to_vec();
        let most = counts.iter().copied().fold(0.0f32, f32::max).max(1.0);
        let popularity: Vec<f32> = counts.iter().map(|count| count / most).collect();
        let mut popular: Vec<u32> = (0..items.len() as u32).collect();
        popular.sort_by(|a, b| {
            popularity[*b as usize]
                .total_cmp(&popularity[*a as usize])
                .then(a.cmp(b))
        });
        popular.truncate(POPULAR_CANDIDATES);
        let content = ContentIndex::build(&items);
        let mention_names = items
            .iter()
            .map(|item| {
                let title = item.title.to_lowercase();
                let id = item.id.to_lowercase();
                let mut names = Vec::new();
                if title.chars().count() >= MIN_MENTION_CHARS {
                    names.push(title);
                }
                if id.len() >= 4 {
                    names.push(id);
                }
                names
            })
            .collect();
        Ok(Self {
            items,
            index,
            collaborative,
            popularity,
            popular,
            mention_names,
            content,
        })
    }

    /// Items in the catalog.
    pub fn catalog_size(&self) -> usize {
        self.items.len()
    }

    /// Catalog items a message names by their title or id ("is the Tempo Road
    /// Runner Men waterproof?"), for live `view` events.
    pub fn mentioned(&self, message: &str) -> Vec<String> {
        let lowered = message.to_lowercase();
        self.items
            .iter()
            .zip(&self.mention_names)
            .filter(|(_, names)| names.iter().any(|name| lowered.contains(name.as_str())))
            .map(|(item, _)| item.id.clone())
            .collect()
    }

    /// The `k` best items for a customer with `history` (their events, any
    /// order), optionally for a request in free text.
    pub fn recommend(
        &self,
        history: &[Event],
        k: usize,
        request: Option<&str>,
    ) -> Vec<Recommendation> {
        let mut ordered: Vec<&Event> = history.iter().collect();
        ordered.sort_by_key(|event| std::cmp::Reverse(event.ts_ms));
        let mut excluded: HashSet<u32> = HashSet::new();
        let mut weights: HashMap<u32, f32> = HashMap::new();
        let mut recency_rank = 0usize;
        for event in ordered {
            let Some(&item) = self.index.get(&event.item) else {
                continue;
            };
            if matches!(event.kind, EventKind::Purchase | EventKind::Dislike)
                || (event.kind == EventKind::Rating && interest(event).is_none())
            {
                excluded.insert(item);
            }
            if let Some(strength) = interest(event) {
                let recency =
                    1.0 + RECENCY_BOOST * 0.5f32.powf(recency_rank as f32 / RECENCY_HALF_LIFE);
                recency_rank += 1;
                let weight = weights.entry(item).or_default();
                *weight = weight.max(strength * recency);
            }
        }
        let weighted: Vec<(u32, f32)> = weights
            .iter()
            .map(|(&item, &weight)| (item, weight))
            .collect();
        let mut collaborative = vec![0.0f32; self.items.len()];
        self.collaborative.score(&weighted, &mut collaborative);
        let mut profile: HashMap<String, f32> = HashMap::new();
        for &(item, weight) in &weighted {
            for (term, value) in &self.content.vectors[item as usize] {
                *profile.entry(term.clone()).or_default() += weight * value;
            }
        }
        normalise(&mut profile);
        let wish = request.map(Wish::parse).unwrap_or_default();
        let query = self.content.query(&wish.text);
        let has_history = !weighted.is_empty();

        let pool: Vec<u32> = match self.collaborative.reachable(&weighted) {
            // Large catalogs: only items some signal can reach.
            Some(mut pool) => {
                pool.extend(self.content.matching(&query));
                pool.extend(self.content.matching(&profile));
                pool.extend(self.popular.iter().copied());
                pool.sort_unstable();
                pool.dedup();
                pool
            }
            None => (0..self.items.len() as u32).collect(),
        };
        let candidates: Vec<u32> = pool
            .into_iter()
            .filter(|candidate| {
                let item = &self.items[*candidate as usize];
                item.in_stock
                    && !excluded.contains(candidate)
                    && !weights.contains_key(candidate)
                    && wish
                        .max_price
                        .is_none_or(|limit| item.price.is_some_and(|price| price <= limit))
            })
            .collect();
        let top_collaborative = candidates
            .iter()
            .map(|&candidate| collaborative[candidate as usize])
            .fold(0.0f32, f32::max);
        let mut scored: Vec<(u32, f32, Signals)> = candidates
            .into_iter()
            .filter_map(|candidate| {
                let signals = Signals {
                    collaborative: if top_collaborative > 0.0 {
                        (collaborative[candidate as usize] / top_collaborative).max(0.0)
                    } else {
                        0.0
                    },
                    // `+ 0.0` turns the -0.0 of an empty sum into 0.
                    content: dot(&profile, &self.content.vectors[candidate as usize]).max(0.0)
                        + 0.0,
                    query: coordinated(&query, &self.content.vectors[candidate as usize]),
                    popularity: self.popularity[candidate as usize],
                };
                if !query.is_empty() && signals.query <= 0.0 {
                    // Asked for something: only items that match it.
                    return None;
                }
                let score = match (query.is_empty(), has_history) {
                    (false, true) => {
                        0.6 * signals.query
                            + 0.2 * signals.collaborative
                            + 0.1 * signals.content
                            + 0.1 * signals.popularity
                    }
                    (false, false) => 0.85 * signals.query + 0.15 * signals.popularity,
                    (true, true) => {
                        0.6 * signals.collaborative
                            + 0.25 * signals.content
                            + 0.15 * signals.popularity
                    }
                    (true, false) => signals.popularity,
                };
                Some((candidate, score, signals))
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // A request names what the customer wants: mixing categories then
        // only dilutes it.
        let chosen = if query.is_empty() {
            diversify(&scored, k, |candidate| {
                self.items[candidate as usize].category.as_str()
            })
        } else {
            scored.into_iter().take(k).collect()
        };
        chosen
            .into_iter()
            .map(|(candidate, score, signals)| {
                let liked = self.because_of(&weighted, candidate);
                Recommendation {
                    item: self.items[candidate as usize].clone(),
                    score,
                    because_of: liked.map(|item| item.title.clone()),
                    liked: liked.cloned(),
                    signals,
                }
            })
            .collect()
    }

    /// Whether `request` holds a word some catalog item is described by.
    pub fn knows_words_of(&self, request: &str) -> bool {
        // A word most items hold (the shop's brand) names nothing to find.
        let telling = (1.0f32 + 2.0).ln();
        self.content
            .query(&Wish::parse(request).text)
            .keys()
            .any(|term| self.content.idf.get(term).is_some_and(|&idf| idf > telling))
    }

    fn because_of(&self, history: &[(u32, f32)], candidate: u32) -> Option<&CatalogItem> {
        history
            .iter()
            .map(|&(item, weight)| {
                (
                    item,
                    weight * self.collaborative.contribution(item, candidate),
                )
            })
            .filter(|(_, contribution)| *contribution > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(item, _)| &self.items[item as usize])
    }
}

/// Takes the best items, at most `PER_CATEGORY` per category while items of
/// other categories remain.
fn diversify<'a>(
    scored: &[(u32, f32, Signals)],
    k: usize,
    category: impl Fn(u32) -> &'a str,
) -> Vec<(u32, f32, Signals)> {
    let mut chosen = Vec::with_capacity(k);
    let mut per_category: HashMap<&str, usize> = HashMap::new();
    let mut held_back = Vec::new();
    for entry in scored {
        if chosen.len() == k {
            break;
        }
        let count = per_category.entry(category(entry.0)).or_default();
        if *count < PER_CATEGORY {
            *count += 1;
            chosen.push(entry.clone());
        } else {
            held_back.push(entry.clone());
        }
    }
    for entry in held_back {
        if chosen.len() == k {
            break;
        }
        chosen.push(entry);
    }
    chosen
}

/// The ranker in use, replaced whole when a background refit finishes.
pub struct SharedRanker(std::sync::RwLock<std::sync::Arc<Ranker>>);

impl SharedRanker {
    /// Starts with `ranker`.
    pub fn new(ranker: Ranker) -> Self {
        Self(std::sync::RwLock::new(std::sync::Arc::new(ranker)))
    }
    /// The current ranker.
    pub fn current(&self) -> std::sync::Arc<Ranker> {
        match self.0.read() {
            Ok(guard) => std::sync::Arc::clone(&guard),
            Err(poisoned) => std::sync::Arc::clone(&poisoned.into_inner()),
        }
    }
    /// Swaps in a freshly fitted ranker.
    pub fn replace(&self, ranker: Ranker) {
        match self.0.write() {
            Ok(mut guard) => *guard = std::sync::Arc::new(ranker),
            Err(poisoned) => *poisoned.into_inner() = std::sync::Arc::new(ranker),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RECORD_VERSION;

    fn item(id: &str, title: &str, category: &str, price: f64, in_stock: bool) -> CatalogItem {
        CatalogItem {
            v: RECORD_VERSION,
            id: id.into(),
            title: title.into(),
            description: String::new(),
            category: category.into(),
            tags: Vec::new(),
            price: Some(price),
            currency: "EUR".into(),
            url: format!("https://shop.example/{id}"),
            in_stock,
            ..Default::default()
        }
    }

    fn event(user: &str, item: &str, kind: EventKind, ts_ms: u64) -> Event {
        Event {
            v: RECORD_VERSION,
            user: user.into(),
            item: item.into(),
            kind,
            ts_ms,
            value: None,
            id: None,
        }
    }

    fn catalog() -> Vec<CatalogItem> {
        vec![
            item("S1", "Road running shoes", "running-shoes", 89.0, true),
            item("S2", "Trail running shoes", "running-shoes", 129.0, true),
            item("S3", "Racing running shoes", "running-shoes", 159.0, true),
            item("S4", "Kids running shoes", "running-shoes", 49.0, false),
            item("J1", "Rain jacket", "jackets", 99.0, true),
            item("J2", "Down jacket", "jackets", 199.0, true),
            item("B1", "Water bottle", "bottles", 12.0, true),
            item("H1", "Headlamp", "headlamps", 39.0, true),
        ]
    }

    #[test]
    fn wishes_parse_prices_in_both_languages() {
        assert_eq!(
            Wish::parse("running shoes under 100").max_price,
            Some(100.0)
        );
        assert_eq!(
            Wish::parse("running shoes under 100").text.trim(),
            "running shoes"
        );
        assert_eq!(Wish::parse("jacket below €59.90").max_price, Some(59.9));
        assert_eq!(Wish::parse("100元以下的跑鞋").max_price, Some(100.0));
        assert_eq!(Wish::parse("不超过 50 欧的水壶").max_price, Some(50.0));
        assert_eq!(Wish::parse("a warm jacket").max_price, None);
        assert_eq!(
            subject("Can you recommend me a waterproof jacket?"),
            "waterproof jacket"
        );
        assert_eq!(subject("请推荐一些跑鞋"), "跑鞋");
    }

    #[test]
    fn requests_filter_by_subject_price_and_stock() {
        let ranker = Ranker::build(catalog(), &[]).unwrap();
        let picks = ranker.recommend(&[], 5, Some("running shoes under 130"));
        let ids: Vec<&str> = picks.iter().map(|pick| pick.item.id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&"S1") && ids.contains(&"S2"), "{ids:?}");
    }

    #[test]
    fn an_item_holding_more_of_the_requested_words_comes_first() {
        let mut items = catalog();
        let mut shell = item("J3", "Stormline shell", "jackets", 249.0, true);
        shell.description =
            "Three-layer waterproof shell with pit zips and a helmet-compatible hood.".into();
        shell.tags = vec!["waterproof".into(), "hiking".into()];
        items.push(shell);
        let ranker = Ranker::build(items, &[]).unwrap();
        let picks = ranker.recommend(&[], 3, Some("a jacket for hiking"));
        assert_eq!(picks[0].item.id, "J3", "{picks:?}");
    }

    #[test]
    fn history_drives_recommendations_and_dislikes_and_purchases_are_excluded() {
        // Many customers buy the road shoes together with the bottle.
        let mut events = Vec::new();
        for user in 0..20 {
            let name = format!("u{user}");
            events.push(event(&name, "S1", EventKind::Purchase, 1));
            events.push(event(&name, "B1", EventKind::Purchase, 2));
        }
        let ranker = Ranker::build(catalog(), &events).unwrap();
        let mine = vec![event("me", "S1", EventKind::Purchase, 10)];
        let picks = ranker.recommend(&mine, 3, None);
        assert_eq!(picks[0].item.id, "B1", "{picks:?}");
        assert_eq!(picks[0].because_of.as_deref(), Some("Road running shoes"));
        assert!(
            picks.iter().all(|pick| pick.item.id != "S1"),
            "already bought"
        );

        let mut mine = mine;
        mine.push(event("me", "B1", EventKind::Dislike, 11));
        let picks = ranker.recommend(&mine, 8, None);
        assert!(picks.iter().all(|pick| pick.item.id != "B1"), "disliked");
        assert!(
            picks.iter().all(|pick| pick.item.id != "S4"),
            "out of stock"
        );
    }

    #[test]
    fn the_brand_that_most_items_carry_names_nothing_to_find() {
        let branded: Vec<CatalogItem> = catalog()
            .into_iter()
            .map(|mut item| {
                item.title = format!("Northwind {}", item.title);
                item
            })
            .collect();
        let ranker = Ranker::build(branded, &[]).unwrap();
        assert!(!ranker.knows_words_of("who founded Northwind and in what year"));
        assert!(ranker.knows_words_of("a Northwind headlamp"));
    }

    #[test]
    fn categories_are_mixed() {
        let ranker = Ranker::build(catalog(), &[]).unwrap();
        let picks = ranker.recommend(&[], 4, None);
        let shoes = picks
            .iter()
            .filter(|pick| pick.item.category == "running-shoes")
            .count();
        assert!(shoes <= 2, "{picks:?}");
    }

    #[test]
    fn messages_naming_an_item_are_found() {
        let ranker = Ranker::build(catalog(), &[]).unwrap();
        assert_eq!(
            ranker.mentioned("Is the trail running shoes model grippy?"),
            ["S2"]
        );
        assert_eq!(
            ranker.mentioned("what about j1?"),
            Vec::<String>::new(),
            "ids under 4 characters are too vague"
        );
        assert!(ranker.mentioned("hello there").is_empty());
    }
}
