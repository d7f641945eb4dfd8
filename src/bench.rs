//! `concierge bench engine`: measures the engine's prompt and decode speed
//! on a fixed prompt and prints the figures as JSON (medians of several runs).

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::EngineConfig;
use crate::engine::mistral::MistralEngine;
use crate::engine::{ChatMessage, ChatRequest, ChatRole, Llm, Sampling, StreamEvent};

/// The benchmark prompt: a short system prompt and question, as in chat.
const SYSTEM: &str = "You are a helpful shop assistant. Answer briefly.";
const QUESTION: &str = "What is the best way to keep running shoes clean after a muddy trail run?";

/// Figures of one benchmark.
#[derive(Debug, Serialize)]
pub struct EngineFigures {
    /// The file measured.
    pub model: String,
    /// Runs measured (after one warm-up).
    pub runs: usize,
    /// Prompt tokens per run.
    pub prompt_tokens: usize,
    /// Median generated tokens per run.
    pub completion_tokens: usize,
    /// Median prompt-processing speed, tokens per second.
    pub prompt_tok_per_sec: f64,
    /// Median decode speed, tokens per second.
    pub decode_tok_per_sec: f64,
    /// Median time to the first token, milliseconds.
    pub first_token_ms: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Loads `path` and measures `runs` greedy generations of `max_tokens`.
pub async fn engine(
    path: &Path,
    config: &EngineConfig,
    runs: usize,
    max_tokens: usize,
) -> anyhow::Result<EngineFigures> {
    // Each run must process its whole prompt, as llama.cpp's does in the
    // comparison script: no prefix cache.
    let config = EngineConfig {
        prefix_cache: 0,
        ..config.clone()
    };
    let engine = MistralEngine::load(path, &config).await?;
    let request = ChatRequest {
        messages: vec![
            ChatMessage::new(ChatRole::System, SYSTEM),
            ChatMessage::new(ChatRole::User, QUESTION),
        ],
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens,
            repetition_penalty: 1.0,
        },
    };
    let (mut prompt_speed, mut decode_speed, mut first_token, mut completion) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut prompt_tokens = 0;
    // One warm-up run, then the measured ones.
    for run in 0..=runs {
        let started = Instant::now();
        let mut stream = engine
            .stream_chat(request.clone(), CancellationToken::new())
            .await?;
        let mut first = None;
        let mut usage = None;
        while let Some(event) = stream.recv().await {
            match event? {
                StreamEvent::Delta(_) => {
                    first.get_or_insert_with(|| started.elapsed());
                }
                StreamEvent::Done(done) => usage = Some(done),
            }
        }
        let usage = usage.ok_or_else(|| anyhow::anyhow!("the engine reported no usage"))?;
        if run == 0 {
            continue;
        }
        prompt_tokens = usage.prompt_tokens;
        prompt_speed.push(usage.prompt_tokens_per_sec);
        decode_speed.push(usage.decode_tokens_per_sec);
        completion.push(usage.completion_tokens as f64);
        first_token.push(first.unwrap_or_default().as_secs_f64() * 1000.0);
    }
    Ok(EngineFigures {
        model: path.display().to_string(),
        runs,
        prompt_tokens,
        completion_tokens: median(&mut completion) as usize,
        prompt_tok_per_sec: median(&mut prompt_speed),
        decode_tok_per_sec: median(&mut decode_speed),
        first_token_ms: median(&mut first_token),
    })
}

/// Figures of the knowledge-base search benchmark.
#[derive(Debug, Serialize)]
pub struct SearchFigures {
    /// Passages indexed.
    pub passages: usize,
    /// Queries timed.
    pub queries: usize,
    /// Time to build the index, milliseconds.
    pub build_ms: f64,
    /// Median query latency (search plus the "found" decision), microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Slowest query, microseconds.
    pub max_us: f64,
}

/// A deterministic pseudo-random sequence (64-bit LCG), so every run indexes
/// the same corpus.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % below.max(1)
    }
}

/// Indexes `passages` synthetic passages (English-like words with a share of
/// Chinese text) and times `queries` searches.
pub fn search(passages: usize, queries: usize) -> anyhow::Result<SearchFigures> {
    use crate::knowledge::KnowledgeBase;
    use crate::store::{KbDoc, KbKind, KbPassage, RECORD_VERSION};

    const SYLLABLES: &[&str] = &[
        "ka", "lo", "re", "tu", "mi", "san", "pe", "dor", "vi", "nu", "shi", "pa", "ren", "go",
        "li", "ma", "to", "ber", "qu", "el",
    ];
    const HAN: &[&str] = &[
        "退货", "运费", "订单", "付款", "账户", "保修", "发票", "优惠", "尺码", "客服",
    ];
    let mut random = Lcg(42);
    let vocabulary: Vec<String> = (0..5000)
        .map(|_| {
            let length = 2 + random.next(3);
            (0..length)
                .map(|_| SYLLABLES[random.next(SYLLABLES.len())])
                .collect()
        })
        .collect();
    let sentence = |random: &mut Lcg, words: usize| -> String {
        (0..words)
            .map(|_| {
                if random.next(10) == 0 {
                    HAN[random.next(HAN.len())].to_string()
                } else {
                    vocabulary[random.next(vocabulary.len())].clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let docs: Vec<KbDoc> = (0..passages.div_ceil(5))
        .map(|doc| KbDoc {
            v: RECORD_VERSION,
            id: format!("doc-{doc}.md"),
            root: "bench".into(),
            title: sentence(&mut random, 4),
            locale: None,
            kind: KbKind::Markdown,
            content_hash: doc as u64,
            passages: (0..5)
                .map(|_| KbPassage {
                    title: sentence(&mut random, 3),
                    text: sentence(&mut random, 80),
                })
                .collect(),
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("concierge-bench-kb-{}", std::process::id()));
    let started = Instant::now();
    let kb = KnowledgeBase::build(&dir, &docs)?;
    let build_ms = started.elapsed().as_secs_f64() * 1000.0;
    let questions: Vec<String> = (0..queries)
        .map(|_| {
            let words = 3 + random.next(4);
            sentence(&mut random, words)
        })
        .collect();
    for question in questions.iter().take(50) {
        kb.retrieve(question, 3)?;
    }
    let mut latencies: Vec<f64> = Vec::with_capacity(queries);
    for question in &questions {
        let started = Instant::now();
        kb.retrieve(question, 3)?;
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let _ = std::fs::remove_dir_all(&dir);
    latencies.sort_by(f64::total_cmp);
    let percentile = |share: f64| {
        let at = ((latencies.len() as f64 - 1.0) * share).round() as usize;
        latencies.get(at).copied().unwrap_or_default()
    };
    Ok(SearchFigures {
        passages: kb.passages(),
        queries,
        build_ms,
        p50_us: percentile(0.5),
        p99_us: percentile(0.99),
        max_us: latencies.last().copied().unwrap_or_default(),
    })
}

/// Figures of the recommendation benchmark.
#[derive(Debug, Serialize)]
pub struct RecommendFigures {
    /// Catalog size.
    pub items: usize,
    /// Customers with events.
    pub users: usize,
    /// Events.
    pub events: usize,
    /// Fitting the ranker (item-kNN at this size), seconds.
    pub build_s: f64,
    /// Resident memory before and after fitting, MiB.
    pub rss_before_mib: f64,
    /// Resident memory after fitting, MiB.
    pub rss_after_mib: f64,
    /// Top-10 for a customer from their history, median microseconds.
    pub top10_p50_us: f64,
    /// 99th percentile, microseconds.
    pub top10_p99_us: f64,
    /// Top-10 with a request text ("… under N"), median microseconds.
    pub query_p50_us: f64,
    /// 99th percentile, microseconds.
    pub query_p99_us: f64,
    /// Storing an event durably (sled flush) and answering the next query
    /// with it, median milliseconds.
    pub event_to_next_query_p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub event_to_next_query_p99_ms: f64,
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn percentiles(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |share: f64| {
        let index = ((values.len() as f64 - 1.0) * share).round() as usize;
        values.get(index).copied().unwrap_or_default()
    };
    (at(0.5), at(0.99))
}

/// A synthetic shop: `items` items in 1,000 taste groups, `users` customers
/// with `events` events mostly inside their group, then timed queries.
pub fn recommend(
    items: usize,
    users: usize,
    events: usize,
    queries: usize,
) -> anyhow::Result<RecommendFigures> {
    use crate::recommend::ranker::Ranker;
    use crate::store::{CatalogItem, Event, EventKind, Store, RECORD_VERSION};

    const WORDS: &[&str] = &[
        "trail",
        "road",
        "running",
        "shoe",
        "jacket",
        "rain",
        "down",
        "light",
        "warm",
        "tent",
        "bag",
        "bottle",
        "lamp",
        "watch",
        "sock",
        "pack",
        "merino",
        "waterproof",
        "women",
        "men",
        "kids",
        "ultra",
        "winter",
        "summer",
        "camp",
        "hike",
        "climb",
        "bike",
        "swim",
        "yoga",
    ];
    let groups = 1_000.min(items.max(1));
    let mut random = Lcg(7);
    let catalog: Vec<CatalogItem> = (0..items)
        .map(|index| {
            let title: Vec<&str> = (0..3).map(|_| WORDS[random.next(WORDS.len())]).collect();
            CatalogItem {
                v: RECORD_VERSION,
                id: format!("I{index}"),
                title: format!("{} {index}", title.join(" ")),
                description: (0..8)
                    .map(|_| WORDS[random.next(WORDS.len())])
                    .collect::<Vec<_>>()
                    .join(" "),
                category: format!("category-{}", index % 50),
                tags: vec![WORDS[random.next(WORDS.len())].to_string()],
                price: Some(5.0 + random.next(500) as f64),
                currency: "EUR".into(),
                url: String::new(),
                in_stock: random.next(10) != 0,
            }
        })
        .collect();
    let per_group = items.div_ceil(groups);
    let mut history: Vec<Vec<Event>> = vec![Vec::new(); users.max(1)];
    let kinds = [
        EventKind::View,
        EventKind::Click,
        EventKind::Cart,
        EventKind::Purchase,
        EventKind::Like,
    ];
    let mut all_events = Vec::with_capacity(events);
    for index in 0..events {
        let user = random.next(users.max(1));
        let group = user % groups;
        let item = if random.next(5) == 0 {
            random.next(items)
        } else {
            (group + groups * random.next(per_group)).min(items - 1)
        };
        let event = Event {
            v: RECORD_VERSION,
            user: format!("U{user}"),
            item: format!("I{item}"),
            kind: kinds[random.next(kinds.len())],
            ts_ms: index as u64,
            value: None,
        };
        history[user].push(event.clone());
        all_events.push(event);
    }
    let rss_before_mib = rss_mib();
    let started = Instant::now();
    let ranker = Ranker::build(catalog, &all_events)?;
    let build_s = started.elapsed().as_secs_f64();
    let rss_after_mib = rss_mib();
    drop(all_events);

    let mut plain = Vec::with_capacity(queries);
    let mut asked = Vec::with_capacity(queries);
    for _ in 0..queries {
        let user = random.next(users.max(1));
        let started = Instant::now();
        ranker.recommend(&history[user], 10, None);
        plain.push(started.elapsed().as_secs_f64() * 1e6);
        let request = format!(
            "{} {} under 200",
            WORDS[random.next(WORDS.len())],
            WORDS[random.next(WORDS.len())]
        );
        let started = Instant::now();
        ranker.recommend(&history[user], 10, Some(&request));
        asked.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let (top10_p50_us, top10_p99_us) = percentiles(plain);
    let (query_p50_us, query_p99_us) = percentiles(asked);

    // An event stored durably, then the next query for that customer.
    let dir =
        std::env::temp_dir().join(format!("concierge-bench-recommend-{}", std::process::id()));
    let store = Store::open(&dir)?;
    let user = 0;
    store.events_append(&history[user])?;
    let mut fresh = Vec::new();
    for trial in 0..100 {
        let event = Event {
            v: RECORD_VERSION,
            user: "U0".into(),
            item: format!("I{}", random.next(items)),
            kind: EventKind::Dislike,
            ts_ms: 10_000_000 + trial,
            value: None,
        };
        let started = Instant::now();
        store.events_append(std::slice::from_ref(&event))?;
        store.flush_blocking()?;
        let current = store.user_events("U0")?;
        let picks = ranker.recommend(&current, 10, None);
        fresh.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            picks.iter().all(|pick| pick.item.id != event.item),
            "a disliked item was still recommended"
        );
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let (event_to_next_query_p50_ms, event_to_next_query_p99_ms) = percentiles(fresh);
    Ok(RecommendFigures {
        items,
        users,
        events,
        build_s,
        rss_before_mib,
        rss_after_mib,
        top10_p50_us,
        top10_p99_us,
        query_p50_us,
        query_p99_us,
        event_to_next_query_p50_ms,
        event_to_next_query_p99_ms,
    })
}

/// `concierge bench classify`: trains the intent classifier on the files in `dir`, then
/// times batches of `messages` real messages (English and Chinese, from the
/// shipped data) classified one after another on this thread.
pub fn classify(
    dir: &std::path::Path,
    messages: usize,
    runs: usize,
) -> anyhow::Result<serde_json::Value> {
    use crate::intent;
    let examples = intent::read_all_examples(&intent::default_training_files(dir)?, None, None)?;
    anyhow::ensure!(
        !examples.is_empty(),
        "no labelled messages in {}",
        dir.display()
    );
    let started = Instant::now();
    let classifier = intent::Classifier::train(&examples, &intent::TrainOptions::default());
    let train_secs = started.elapsed().as_secs_f64();
    // Every 7th message, so both languages and all intents are in a batch.
    let batch: Vec<&str> = (0..messages)
        .map(|n| examples[(n * 7) % examples.len()].text.as_str())
        .collect();
    let mut escalated = 0;
    for text in &batch {
        escalated += usize::from(classifier.classify(text).escalate);
    }
    let mut batch_ms = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        for text in &batch {
            std::hint::black_box(classifier.classify(text));
        }
        batch_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    batch_ms.sort_by(f64::total_cmp);
    let median = batch_ms[batch_ms.len() / 2];
    Ok(serde_json::json!({
        "training_examples": examples.len(),
        "train_secs": train_secs,
        "messages_per_batch": messages,
        "runs": batch_ms.len(),
        "threads": 1,
        "batch_ms_median": median,
        "batch_ms_min": batch_ms[0],
        "batch_ms_max": batch_ms[batch_ms.len() - 1],
        "per_message_us_median": median * 1000.0 / messages.max(1) as f64,
        "escalated_in_batch": escalated,
    }))
}
