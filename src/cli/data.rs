//! The commands that read or fill the store directly: `history`, `import
//! kb|catalog|events`, `kb search` and `recommend --user`.

use std::io::Write;
use std::path::{Path, PathBuf};

use concierge::config::Config;
use concierge::knowledge::{self, KnowledgeBase};
use concierge::store::{Store, StoreError};
use concierge::{app, history, recommend};

/// Opens the store for a command-line tool, explaining a lock held by a daemon.
pub(super) fn open_store(config: &Config) -> anyhow::Result<Store> {
    match Store::open(&config.store.data_dir) {
        Ok(store) => Ok(store),
        Err(StoreError::Locked { path }) => anyhow::bail!(
            "the store at {} is held by a running Concierge daemon; stop it first (or use its operator API at http://{})",
            path.display(),
            config.operator.listen
        ),
        Err(err) => Err(err.into()),
    }
}

/// `concierge history --user ID --platform P`: the stored conversation as
/// JSON lines.
pub(super) fn history(config: &Config, user: &str, platform: &str) -> anyhow::Result<()> {
    let store = match Store::open(&config.store.data_dir) {
        Ok(store) => store,
        Err(StoreError::Locked { path }) => anyhow::bail!(
            "the store at {} is held by a running Concierge daemon; read the history through its operator API instead:\n  curl -H \"Authorization: Bearer $CONCIERGE_OPERATOR_TOKEN\" 'http://{}/v1/history?user={user}&platform={platform}'",
            path.display(),
            config.operator.listen
        ),
        Err(err) => return Err(err.into()),
    };
    let lines = history::history(&store, platform, user)?;
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    }
    Ok(())
}

/// `concierge import kb PATH…`: documents and FAQ tables into the knowledge base.
pub(super) fn import_kb(config: &Config, paths: &[PathBuf]) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let report = knowledge::import(&store, paths)?;
    store.flush_blocking()?;
    // Rebuild the index now, so the first search or chat does not wait.
    KnowledgeBase::open(&store, &app::kb_index_dir(config))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} file(s) or row(s) could not be imported; see \"errors\" above",
            report.errors.len()
        )
    }
}

/// `concierge import catalog FILE`.
pub(super) fn import_catalog(config: &Config, file: &Path) -> anyhow::Result<()> {
    let store = open_store(config)?;
    print_import_report(&recommend::import::catalog(&store, file)?)
}

/// `concierge import events FILE`.
pub(super) fn import_events(config: &Config, file: &Path) -> anyhow::Result<()> {
    let store = open_store(config)?;
    print_import_report(&recommend::import::events(&store, file)?)
}

/// Prints an import report; bad rows make the command fail after the good
/// rows are imported.
fn print_import_report(report: &recommend::import::ImportReport) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    if report.errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} row(s) could not be imported; see \"errors\" above (the other rows were imported)",
            report.errors.len()
        )
    }
}

/// `concierge kb search QUERY`: the passages found, as JSON lines.
pub(super) fn kb_search(config: &Config, query: &str, k: usize) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let kb = app::load_knowledge(config, &store)?;
    let mut out = std::io::stdout().lock();
    for hit in kb.search(query, k.max(1))? {
        writeln!(out, "{}", serde_json::to_string(&hit)?)?;
    }
    Ok(())
}

/// `concierge recommend --user ID`: picks for a user of the events, as JSON lines.
pub(super) fn recommend_for(
    config: &Config,
    user: Option<String>,
    k: usize,
    query: Option<String>,
) -> anyhow::Result<()> {
    let user =
        user.ok_or_else(|| anyhow::anyhow!("recommend needs --user ID (or the eval subcommand)"))?;
    let store = open_store(config)?;
    let ranker = app::load_ranker(config, &store)?;
    let history = store.user_events(&user)?;
    let mut out = std::io::stdout().lock();
    for pick in ranker.recommend(&history, k.max(1), query.as_deref()) {
        let line = serde_json::json!({
            "item": pick.item.id,
            "title": pick.item.title,
            "price": pick.item.price,
            "currency": pick.item.currency,
            "url": pick.item.url,
            "score": pick.score,
            "signals": pick.signals,
            "because_of": pick.because_of,
        });
        writeln!(out, "{line}")?;
    }
    Ok(())
}
