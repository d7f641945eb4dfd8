//! `concierge bench engine|recommend|classify|search`: figures as JSON.

use std::path::{Path, PathBuf};

use concierge::config::{self, Config};
use concierge::{bench, models};

use super::block_on;

fn print(figures: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(figures)?);
    Ok(())
}

/// `concierge bench engine`.
pub(super) fn engine(
    config: &Config,
    model: Option<PathBuf>,
    runs: usize,
    max_tokens: usize,
    backend: Option<String>,
    concurrency: &[usize],
) -> anyhow::Result<()> {
    let mut engine = config.engine.clone();
    engine.backend = match backend.as_deref() {
        Some("cpu") => config::EngineBackend::Cpu,
        Some("mistralrs") => config::EngineBackend::Mistralrs,
        Some(_) => config::EngineBackend::Auto,
        None => engine.backend,
    };
    let path = match model {
        Some(path) => path,
        None => models::prepare(&engine)?,
    };
    let figures = block_on(bench::engine(
        &path,
        &engine,
        runs.max(1),
        max_tokens,
        concurrency,
    ))?;
    print(&figures)
}

/// `concierge bench recommend`.
pub(super) fn recommend(
    items: usize,
    users: usize,
    events: usize,
    queries: usize,
) -> anyhow::Result<()> {
    print(&bench::recommend(
        items.max(1),
        users.max(1),
        events,
        queries.max(1),
    )?)
}

/// `concierge bench classify`.
pub(super) fn classify(config: &Config, messages: usize, runs: usize) -> anyhow::Result<()> {
    print(&bench::classify(
        &config.escalation.intents_dir,
        messages.max(1),
        runs,
    )?)
}

/// `concierge bench search`.
pub(super) fn search(passages: usize, queries: usize) -> anyhow::Result<()> {
    print(&bench::search(passages.max(1), queries.max(1))?)
}

/// `concierge bench embed`.
pub(super) fn embed(config: &Config, threads: usize, questions: &Path) -> anyhow::Result<()> {
    let embedder = concierge::app::load_embedder(&config.knowledge.embedder_path, threads)?;
    print(&bench::embed(
        &embedder,
        &config.knowledge.demo_dir,
        questions,
    )?)
}

/// `concierge bench remote`.
pub(super) fn remote(
    config: &Config,
    first_token_ms: u64,
    tokens_per_sec: u64,
    tokens: usize,
    concurrency: &[usize],
    messages: usize,
) -> anyhow::Result<()> {
    let pace = bench::remote::ServerPace {
        first_token_ms,
        tokens_per_sec: tokens_per_sec.max(1),
        tokens: tokens.max(1),
    };
    print(&block_on(bench::remote::run(
        config,
        pace,
        concurrency,
        messages,
    ))?)
}
