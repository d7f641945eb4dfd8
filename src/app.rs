//! Wiring and lifecycle: builds the store, engine, prompts and channels from
//! the configuration, runs `chat` (console until EOF) and `serve` (the daemon
//! until a shutdown signal), and shuts down in order against a deadline.
//!
//! Shutdown order: stop the channels' intake, let the router finish queued
//! messages until the deadline, then cancel replies still running (naming
//! them in the log), flush the store, stop the operator API.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use concierge_adapter::{Adapter, Outbox};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, EngineBackend};
use crate::engine::cpu::CpuEngine;
use crate::engine::mistral::MistralEngine;
use crate::engine::scripted::ScriptedEngine;
use crate::engine::{Llm, Sampling};
use crate::health::{ComponentState, Health};
use crate::inbox::{self, Inbox};
use crate::knowledge::{self, KnowledgeBase};
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::prompts::Prompts;
use crate::recommend::ranker::SharedRanker;
use crate::router::{self, InFlight};
use crate::store::Store;
use crate::{channels, models, operator};

/// Inbound messages buffered between channels and the router.
const INBOUND_BUFFER: usize = 1024;
/// Time given to cancelled replies to wind down after the deadline.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// First wait before a failed channel is restarted; doubles up to a minute.
const CHANNEL_RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// A channel run this long was healthy: its next failure backs off from the start.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Builds the engine the configuration names, preparing the model file.
pub async fn build_engine(config: &Config) -> anyhow::Result<Arc<dyn Llm>> {
    match config.engine.backend {
        EngineBackend::Scripted => {
            let path = config
                .engine
                .script_file
                .as_deref()
                .context("engine.script_file is required for the scripted engine")?;
            Ok(Arc::new(ScriptedEngine::from_file(path)?))
        }
        // Nothing is fetched or converted: the servers hold the model.
        EngineBackend::Openai => {
            let settings = crate::engine::remote::RemoteSettings {
                base_urls: config.engine.base_urls.clone(),
                api_key: config.engine.api_key.clone(),
                model: config.engine.model.clone(),
                request_timeout: Duration::from_secs(config.engine.request_timeout_secs),
                tokenizer: config.engine.tokenizer.clone(),
            };
            eprintln!(
                "concierge: using {} on {} inference endpoint(s)",
                settings.model,
                settings.base_urls.len()
            );
            Ok(Arc::new(crate::engine::remote::RemoteEngine::new(
                settings,
            )?))
        }
        EngineBackend::Auto | EngineBackend::Cpu | EngineBackend::Mistralrs => {
            let engine_config = config.engine.clone();
            let path = tokio::task::spawn_blocking(move || models::prepare(&engine_config))
                .await
                .context("model preparation task failed")??;
            load_engine(&path, config.engine.backend, &config.engine).await
        }
    }
}

/// Which in-process engine runs a model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    /// Concierge's CPU engine.
    Cpu,
    /// mistral.rs.
    Mistralrs,
}

/// Whether this build has a GPU feature, which leaves the work to mistral.rs.
pub const GPU_BUILD: bool = cfg!(any(feature = "cuda", feature = "metal"));

/// Resolves `backend` for the file at `path`: `auto` takes the CPU engine
/// when no GPU feature is compiled in and the file is supported there.
pub fn choose_engine(backend: EngineBackend, path: &Path) -> EngineChoice {
    match backend {
        EngineBackend::Cpu => EngineChoice::Cpu,
        EngineBackend::Mistralrs | EngineBackend::Scripted | EngineBackend::Openai => {
            EngineChoice::Mistralrs
        }
        EngineBackend::Auto if GPU_BUILD => EngineChoice::Mistralrs,
        EngineBackend::Auto => match crate::engine::cpu::check_file(path) {
            Ok(()) => EngineChoice::Cpu,
            Err(reason) => {
                tracing::info!(%reason, "engine.backend = auto: running this model on mistral.rs");
                EngineChoice::Mistralrs
            }
        },
    }
}

/// Loads the prepared model file at `path` on the engine `backend` resolves to.
pub async fn load_engine(
    path: &Path,
    backend: EngineBackend,
    engine: &crate::config::EngineConfig,
) -> anyhow::Result<Arc<dyn Llm>> {
    let choice = choose_engine(backend, path);
    eprintln!(
        "concierge: loading {} ({}) ...",
        path.display(),
        match choice {
            EngineChoice::Cpu => "Concierge CPU engine",
            EngineChoice::Mistralrs => "mistral.rs",
        }
    );
    match choice {
        EngineChoice::Cpu => {
            let (path, engine) = (path.to_path_buf(), engine.clone());
            let loaded = tokio::task::spawn_blocking(move || CpuEngine::load(&path, &engine))
                .await
                .context("model loading task failed")??;
            Ok(Arc::new(loaded))
        }
        EngineChoice::Mistralrs => Ok(Arc::new(MistralEngine::load(path, engine).await?)),
    }
}

/// Marks the engine ready, and lets `/healthz` read its inference
/// endpoints when it calls servers.
fn engine_ready(health: &Health, llm: &Arc<dyn Llm>) {
    health.set_engine(ComponentState::Ready, Some(llm.model_name().to_string()));
    if llm.remote_endpoints().is_some() {
        let llm = Arc::clone(llm);
        health.watch_endpoints(Arc::new(move || llm.remote_endpoints().unwrap_or_default()));
    }
}

/// Opens the store in a blocking task.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    // A run that just stopped (a restart) may hold the store a moment
    // longer, while its last blocking tasks end.
    let data_dir = config.store.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || {
        Store::open_when_released(&data_dir, STORE_RELEASE_WAIT)
    })
    .await
    .context("store task failed")??;
    Ok(store)
}

/// How long a start waits for a store another run still holds.
const STORE_RELEASE_WAIT: Duration = Duration::from_secs(3);

fn pipeline_settings(config: &Config) -> PipelineSettings {
    PipelineSettings {
        sampling: Sampling {
            temperature: config.engine.temperature,
            top_p: config.engine.top_p,
            max_tokens: config.engine.max_tokens,
            repetition_penalty: config.engine.repetition_penalty as f32,
            top_k: config.engine.top_k,
            seed: config.engine.seed,
        },
        context_tokens: config.engine.context_tokens,
        max_message_chars: config.chat.max_message_chars,
        reply_timeout: Duration::from_secs(config.chat.reply_timeout_secs),
        default_locale: config.chat.default_locale,
        top_k: config.knowledge.top_k,
        auto_handoff_confidence: config.escalation.auto_min_confidence as f32,
        tiebreak: config
            .escalation
            .model_tiebreak
            .then_some(tiebreak_band(config)),
        privacy: config.privacy.clone(),
    }
}

/// The classifier's uncertain band, from `escalation.tiebreak_from` up to
/// `auto_min_confidence`: what the model or the meaning judge settles.
pub fn tiebreak_band(config: &Config) -> crate::escalation::tiebreak::Band {
    crate::escalation::tiebreak::Band {
        from: config.escalation.tiebreak_from as f32,
        to: config.escalation.auto_min_confidence as f32,
    }
}

/// The pipeline's settings from `config` (sampling, limits, thresholds).
pub fn settings(config: &Config) -> PipelineSettings {
    pipeline_settings(config)
}

/// Directory of the derived search index.
pub fn kb_index_dir(config: &Config) -> std::path::PathBuf {
    config.store.data_dir.join("kb-index")
}

/// Imports the configured knowledge (or the demo shop into an empty store)
/// and opens the search index, with search by meaning when it is on (every
/// passage embedded before it returns). Import problems are logged, not
/// fatal: the documents that could be read are served.
pub fn load_knowledge(config: &Config, store: &Store) -> anyhow::Result<KnowledgeBase> {
    let knowledge = load_knowledge_by_words(config, store)?;
    if let Some((embedder, cache)) = semantic_parts(config, &knowledge) {
        knowledge.embed_passages(embedder, &cache)?;
    }
    Ok(knowledge)
}

/// The embedding model and the vector cache when search by meaning is on
/// and there are passages; `None` (logged) when the model cannot be had.
fn semantic_parts(
    config: &Config,
    knowledge: &KnowledgeBase,
) -> Option<(Arc<knowledge::embed::Embedder>, std::path::PathBuf)> {
    if !config.knowledge.semantic || knowledge.passages() == 0 {
        return None;
    }
    match shared_embedder(&config.knowledge.embedder_path, 0) {
        Ok(embedder) => Some((embedder, embedding_cache(&config.knowledge.embedder_path))),
        Err(err) => {
            // Searching by words alone still answers; say why meaning is off.
            tracing::warn!("semantic search is off: {err:#}");
            None
        }
    }
}

/// `load_knowledge` without search by meaning.
fn load_knowledge_by_words(config: &Config, store: &Store) -> anyhow::Result<KnowledgeBase> {
    let sources = if !config.knowledge.paths.is_empty() {
        config.knowledge.paths.clone()
    } else if config.knowledge.demo && store.kb_docs()?.is_empty() {
        vec![config.knowledge.demo_dir.clone()]
    } else {
        Vec::new()
    };
    if !config.knowledge.paths.is_empty() {
        let removed = knowledge::remove_other_roots(store, &config.knowledge.paths)?;
        if removed > 0 {
            tracing::info!(removed, "removed documents of sources no longer configured");
        }
    }
    if !sources.is_empty() {
        let report = knowledge::import(store, &sources)?;
        for error in &report.errors {
            tracing::warn!(path = %error.path, line = ?error.line, "knowledge import: {}", error.error);
        }
        tracing::info!(
            added = report.added,
            updated = report.updated,
            unchanged = report.unchanged,
            removed = report.removed,
            "knowledge base imported"
        );
    }
    let index_dir = kb_index_dir(config);
    Ok(KnowledgeBase::open(store, &index_dir)?)
}

/// The cache of vectors made with the embedding model at `path`, beside it.
pub fn embedding_cache(path: &std::path::Path) -> std::path::PathBuf {
    path.parent()
        .unwrap_or(std::path::Path::new("."))
        .join(".cache")
        .join(format!(
            "{}.vectors",
            path.file_name().unwrap_or_default().to_string_lossy()
        ))
}

/// The embedding model and the escalation model trained on its vectors of
/// `examples` (`escalation.meaning_tiebreak`).
pub fn load_meaning_model(
    config: &Config,
    examples: &[crate::intent::Example],
) -> anyhow::Result<(
    Arc<knowledge::embed::Embedder>,
    crate::intent::meaning::MeaningModel,
)> {
    let embedder = shared_embedder(&config.knowledge.embedder_path, 0)?;
    let cache = embedding_cache(&config.knowledge.embedder_path);
    let model = crate::intent::meaning::MeaningModel::train(&embedder, examples, &cache)
        .context("the training files need messages that escalate and messages that do not")?;
    Ok((embedder, model))
}

/// The embedding model at `path` with `threads` compute threads, loaded
/// once while anything holds it: search by meaning and the meaning judge
/// share one copy (72 MB and a thread pool).
pub fn shared_embedder(
    path: &std::path::Path,
    threads: usize,
) -> anyhow::Result<Arc<knowledge::embed::Embedder>> {
    type Loaded = HashMap<(std::path::PathBuf, usize), std::sync::Weak<knowledge::embed::Embedder>>;
    static LOADED: std::sync::OnceLock<std::sync::Mutex<Loaded>> = std::sync::OnceLock::new();
    // "./models/x" and "/srv/concierge/models/x" are one file (once it
    // exists: the first load may fetch it).
    let key_of = |path: &std::path::Path| {
        (
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            threads,
        )
    };
    let key = key_of(path);
    // Held while loading, so two callers at once load one copy.
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(embedder) = loaded.get(&key).and_then(std::sync::Weak::upgrade) {
        return Ok(embedder);
    }
    let embedder = Arc::new(load_embedder(path, threads)?);
    loaded.retain(|_, held| held.strong_count() > 0);
    loaded.insert(key_of(path), Arc::downgrade(&embedder));
    Ok(embedder)
}

/// The embedding model of `knowledge.embedder_path`, fetched by
/// models/fetch-embedder into its directory when missing; `threads` compute
/// threads (0: all cores).
pub fn load_embedder(
    path: &std::path::Path,
    threads: usize,
) -> anyhow::Result<knowledge::embed::Embedder> {
    if !path.exists() {
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        crate::models::fetch_embedder(dir)?;
        let fetched = dir.join(knowledge::embed::MODEL_FILE);
        if fetched != path {
            std::fs::rename(&fetched, path).with_context(|| {
                format!("cannot move {} to {}", fetched.display(), path.display())
            })?;
        }
    }
    Ok(knowledge::embed::Embedder::load(path, threads)?)
}

/// Fits the recommender on the stored catalog and events, importing the demo
/// catalog into an empty store when `recommend.demo` is on.
pub fn load_ranker(
    config: &Config,
    store: &Store,
) -> anyhow::Result<crate::recommend::ranker::Ranker> {
    let mut items = store.catalog_items()?;
    if items.is_empty() && config.recommend.demo {
        let report = crate::recommend::import::catalog(store, &config.recommend.demo_catalog)?;
        tracing::info!(added = report.added, "demo catalog imported");
        items = store.catalog_items()?;
    }
    let events = store.all_events()?;
    crate::recommend::ranker::Ranker::build(items, &events)
}

async fn load_ranker_async(config: &Config, store: &Store) -> anyhow::Result<Arc<SharedRanker>> {
    let (config, store) = (config.clone(), store.clone());
    let ranker = tokio::task::spawn_blocking(move || load_ranker(&config, &store))
        .await
        .context("recommender task failed")??;
    Ok(Arc::new(SharedRanker::new(ranker)))
}

/// Refits the item-item model every `recommend.retrain_minutes`, off the
/// request path; customers' own events count at once without it.
async fn refit_periodically(
    config: Config,
    store: Store,
    shared: Arc<SharedRanker>,
    stop: CancellationToken,
) {
    let period = Duration::from_secs(config.recommend.retrain_minutes * 60);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let (config, store) = (config.clone(), store.clone());
        match tokio::task::spawn_blocking(move || load_ranker(&config, &store)).await {
            Ok(Ok(ranker)) => {
                shared.replace(ranker);
                tracing::info!("recommender refitted");
            }
            Ok(Err(err)) => tracing::warn!("recommender refit failed: {err:#}"),
            Err(err) => tracing::warn!("recommender refit task failed: {err}"),
        }
    }
}

/// Passages a start embeds before it answers; with more to embed, the
/// daemon answers by words at once and turns meaning on when they are done.
const EMBED_BEFORE_START: usize = 100;

/// `load_knowledge` off the async workers. Unless `wait`, a large first
/// embedding (more than `EMBED_BEFORE_START` passages not yet cached) runs
/// in the background while the base answers by words.
async fn load_knowledge_async(
    config: &Config,
    store: &Store,
    wait: bool,
) -> anyhow::Result<Arc<KnowledgeBase>> {
    let (config, store) = (config.clone(), store.clone());
    let knowledge = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let knowledge = Arc::new(load_knowledge_by_words(&config, &store)?);
        let Some((embedder, cache)) = semantic_parts(&config, &knowledge) else {
            return Ok(knowledge);
        };
        let to_embed = knowledge.passages_to_embed(embedder.dimensions(), &cache)?;
        if wait || to_embed <= EMBED_BEFORE_START {
            knowledge.embed_passages(embedder, &cache)?;
            return Ok(knowledge);
        }
        tracing::info!(
            passages = to_embed,
            "search by meaning starts once these passages are embedded; until then, by words"
        );
        let background = Arc::clone(&knowledge);
        std::thread::Builder::new()
            .name("embed-passages".into())
            .spawn(move || match background.embed_passages(embedder, &cache) {
                Ok(()) => tracing::info!("search by meaning is on"),
                Err(err) => tracing::warn!("search by meaning stays off: {err}"),
            })
            .context("cannot start the embedding thread")?;
        Ok(knowledge)
    })
    .await
    .context("knowledge task failed")??;
    Ok(knowledge)
}

/// The parts a conversation pipeline is built from.
pub struct Parts {
    /// The open store.
    pub store: Store,
    /// The engine.
    pub llm: Arc<dyn Llm>,
    /// Templates.
    pub prompts: Prompts,
    /// The knowledge base.
    pub knowledge: Option<Arc<KnowledgeBase>>,
    /// The recommender.
    pub recommender: Option<Arc<SharedRanker>>,
    /// The intent classifier.
    pub classifier: Option<Arc<crate::intent::Classifier>>,
    /// Hand-off to people (tickets), in `serve` only: agents reach the
    /// daemon, not an interactive `chat`.
    pub escalation: Option<crate::escalation::Escalation>,
}

/// The intent classifier: saved in the data directory, else trained from
/// `escalation.intents_dir`.
pub async fn load_classifier(config: &Config) -> anyhow::Result<Arc<crate::intent::Classifier>> {
    let data_dir = config.store.data_dir.clone();
    let shipped = config.escalation.intents_dir.clone();
    let classifier =
        tokio::task::spawn_blocking(move || crate::intent::load_or_train(&data_dir, &shipped))
            .await
            .context("classifier task failed")?
            .context("loading the intent classifier")?;
    if !config.escalation.meaning_tiebreak {
        return Ok(Arc::new(classifier));
    }
    let config = config.clone();
    let judged = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let files = crate::intent::default_training_files(&config.escalation.intents_dir)?;
        let examples = crate::intent::read_all_examples(&files, None, None)?;
        let (embedder, model) = load_meaning_model(&config, &examples)?;
        let band = tiebreak_band(&config);
        Ok(crate::intent::meaning::MeaningJudge::new(
            embedder, model, band,
        ))
    })
    .await
    .context("meaning model task failed")?;
    match judged {
        Ok(judge) => Ok(Arc::new(classifier.with_meaning(judge))),
        Err(err) => {
            // The words alone still decide; say why meaning is off.
            tracing::warn!("escalation.meaning_tiebreak is off: {err:#}");
            Ok(Arc::new(classifier))
        }
    }
}

/// The SLA policy from `[escalation]`.
pub fn sla_policy(config: &Config) -> crate::escalation::SlaPolicy {
    let minutes = |value: u64| Duration::from_secs(value * 60);
    crate::escalation::SlaPolicy {
        urgent: minutes(config.escalation.sla_urgent_minutes),
        high: minutes(config.escalation.sla_high_minutes),
        normal: minutes(config.escalation.sla_normal_minutes),
        remind_at: config.escalation.sla_remind_at,
    }
}

/// Builds the pipeline for `adapters`.
pub fn pipeline(
    config: &Config,
    parts: Parts,
    adapters: &[Arc<dyn Adapter>],
    cancel: CancellationToken,
) -> Arc<Pipeline> {
    let outboxes = adapters
        .iter()
        .map(|adapter| Arc::clone(adapter) as Arc<dyn Outbox>)
        .collect();
    pipeline_for(config, parts, outboxes, cancel)
}

/// Builds the pipeline that answers through `outboxes`.
pub fn pipeline_for(
    config: &Config,
    parts: Parts,
    outboxes: Vec<Arc<dyn Outbox>>,
    cancel: CancellationToken,
) -> Arc<Pipeline> {
    crate::knowledge::text::warm_up();
    let adapters: HashMap<String, Arc<dyn Outbox>> = outboxes
        .into_iter()
        .map(|outbox| (outbox.platform().to_string(), outbox))
        .collect();
    Arc::new(Pipeline {
        store: parts.store,
        llm: parts.llm,
        prompts: parts.prompts,
        adapters,
        settings: pipeline_settings(config),
        cancel,
        knowledge: parts.knowledge,
        recommender: parts.recommender,
        classifier: parts.classifier,
        escalation: parts.escalation,
        desk: crate::agents::AgentDesk::from_config(config),
        link_guard: Default::default(),
        fluency: Default::default(),
    })
}

/// `concierge eval answers`: every question through the whole pipeline,
/// in a store of its own (the configured knowledge, or the demo shop, is
/// imported into it), so the operator's store is neither needed nor touched.
pub async fn eval_answers(
    config: &Config,
    questions: &[crate::eval::answers::FactQuestion],
    details: impl FnMut(&crate::eval::answers::AnswerOutcome),
) -> anyhow::Result<crate::eval::answers::AnswerReport> {
    let scratch = tempfile::tempdir().context("cannot create a scratch data directory")?;
    // The operator's retrained classifier, if any, is what their daemon uses.
    let saved_classifier = config.store.data_dir.join(crate::intent::MODEL_FILE);
    if saved_classifier.exists() {
        std::fs::copy(
            &saved_classifier,
            scratch.path().join(crate::intent::MODEL_FILE),
        )
        .with_context(|| format!("cannot read {}", saved_classifier.display()))?;
    }
    let mut config = config.clone();
    config.store.data_dir = scratch.path().to_path_buf();
    let classifier = load_classifier(&config).await?;
    let store = open_store(&config).await?;
    let prompts = Prompts::load(&config.chat.prompts_dir)?;
    // Measured with every passage embedded.
    let knowledge = load_knowledge_async(&config, &store, true).await?;
    let recommender = load_ranker_async(&config, &store).await?;
    let llm = build_engine(&config).await?;
    let channel = Arc::new(crate::eval::answers::RecordingChannel::default());
    let pipeline = pipeline_for(
        &config,
        Parts {
            store: store.clone(),
            llm,
            prompts,
            knowledge: Some(knowledge),
            recommender: Some(recommender),
            classifier: Some(classifier),
            escalation: None,
        },
        vec![Arc::clone(&channel) as Arc<dyn Outbox>],
        CancellationToken::new(),
    );
    let report = crate::eval::answers::run(&pipeline, &channel, questions, details).await;
    drop(pipeline);
    store.flush().await?;
    Ok(report)
}

/// `concierge chat`: the console conversation until EOF (or Ctrl-C), with
/// the same pipeline as `serve`: complaints and `/human` open tickets, and
/// the chat serves the operator API (when `operator.enabled`) so agents can
/// answer with `concierge tickets` from another terminal.
pub async fn chat(
    config: &Config,
    user: &str,
    interrupt: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let health = Health::default();
    health.set_store(ComponentState::Ready);
    let prompts = Prompts::load(&config.chat.prompts_dir)?;
    let knowledge = load_knowledge_async(config, &store, false).await?;
    let recommender = load_ranker_async(config, &store).await?;
    let classifier = load_classifier(config).await?;
    let llm = build_engine(config).await?;
    engine_ready(&health, &llm);
    let desk: Arc<std::sync::OnceLock<Arc<Pipeline>>> = Arc::default();
    let api_stop = CancellationToken::new();
    // This process holds the store, so `concierge tickets` reaches the
    // desk through this chat, as it would through a daemon.
    let api_task = if config.operator.enabled {
        match bind_operator_api(config).await {
            Ok(listener) => Some(start_operator_api(
                config,
                listener,
                &health,
                &store,
                &desk,
                api_stop.clone(),
            )),
            Err(err) => {
                eprintln!("concierge: {err:#}; `concierge tickets` cannot reach this chat");
                None
            }
        }
    } else {
        None
    };
    let desk_note = if api_task.is_some() {
        format!(
            " Agents: `concierge tickets list` (operator API on {}).",
            config.operator.listen
        )
    } else {
        String::new()
    };
    eprintln!(
        "concierge: ready ({}). Type a message; /help for commands.{desk_note}",
        llm.model_name()
    );
    let console = channels::console(user)?;
    let cancel = CancellationToken::new();
    let pipeline = pipeline(
        config,
        Parts {
            store: store.clone(),
            llm,
            prompts,
            knowledge: Some(knowledge),
            recommender: Some(recommender),
            classifier: Some(classifier),
            escalation: config
                .escalation
                .enabled
                .then(|| crate::escalation::Escalation::new(store.clone(), sla_policy(config))),
        },
        std::slice::from_ref(&console),
        cancel.clone(),
    );
    let _ = desk.set(Arc::clone(&pipeline));
    let watch_stop = CancellationToken::new();
    let sla_watch = config.escalation.enabled.then(|| {
        tokio::spawn(watch_deadlines(
            Arc::clone(&pipeline),
            Duration::from_secs(config.escalation.sla_check_secs),
            watch_stop.clone(),
        ))
    });
    let (sink, source) = concierge_adapter::inbound_queue(INBOUND_BUFFER);
    // One person at their own console: no flood limits, and nothing kept to
    // replay at the next start (they see what was answered).
    let limits = crate::config::ModerationConfig {
        enabled: false,
        ..config.moderation.clone()
    };
    let (deliveries, delivered) = mpsc::channel(INBOUND_BUFFER);
    let intake_stage = tokio::spawn(inbox::run(
        source,
        Inbox::transient().with_masking(config.privacy.redact.clone()),
        Vec::new(),
        deliveries,
    ));
    let router = tokio::spawn(router::run(
        delivered,
        Inbox::transient(),
        pipeline,
        InFlight::default(),
        limits,
    ));
    let intake = console.run(sink, cancel.clone());
    tokio::pin!(interrupt);
    let (interrupted, intake_result) = tokio::select! {
        result = intake => (false, result),
        _ = &mut interrupt => (true, Ok(())),
    };
    if interrupted {
        cancel.cancel();
    }
    // EOF (or a read error): the sink is dropped with `intake`; the router
    // finishes the queued replies and the store is flushed either way.
    intake_stage.await.context("intake task failed")?;
    router.await.context("router task failed")?;
    watch_stop.cancel();
    if let Some(task) = sla_watch {
        task.abort();
    }
    api_stop.cancel();
    if let Some(task) = api_task {
        if tokio::time::timeout(CANCEL_GRACE, task).await.is_err() {
            tracing::warn!("operator API did not stop in time");
        }
    }
    store.flush().await?;
    intake_result.context("reading the console failed")?;
    Ok(())
}

/// The operator API's listening socket.
async fn bind_operator_api(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.operator.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (operator.listen): is another daemon running?",
                config.operator.listen
            )
        })
}

/// Serves the operator API on `listener` until `stop`.
fn start_operator_api(
    config: &Config,
    listener: tokio::net::TcpListener,
    health: &Health,
    store: &Store,
    desk: &Arc<std::sync::OnceLock<Arc<Pipeline>>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tracing::info!(listen = %config.operator.listen, "operator API listening");
    let token = config.operator.token.clone().or_else(|| {
        let data_dir = &config.store.data_dir;
        match crate::operator_token::issue(data_dir) {
            Ok(token) => {
                tracing::info!(
                    file = %crate::operator_token::path(data_dir).display(),
                    "no operator.token set: a token for this run was written for the command-line clients on this machine"
                );
                Some(token)
            }
            Err(err) => {
                tracing::warn!("the operator API's protected routes are off: {err:#}");
                None
            }
        }
    });
    let state = operator::OperatorState {
        health: health.clone(),
        store: store.clone(),
        token,
        desk: Arc::clone(desk),
        privacy: config.privacy.clone(),
    };
    // Dropped with the task, however it ends (the runtime dropping it on
    // an early return included).
    let issued = state
        .token
        .clone()
        .filter(|_| config.operator.token.is_none())
        .map(|token| crate::operator_token::Issued::new(&config.store.data_dir, token));
    tokio::spawn(async move {
        let _issued = issued;
        operator::serve(listener, state, async move { stop.cancelled().await }).await
    })
}

/// `concierge serve`: the daemon, until `shutdown` completes.
pub async fn serve(config: &Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    crate::telemetry::install();
    let health = Health::default();
    let deadline = Duration::from_secs(config.daemon.shutdown_deadline_secs);
    let store = open_store(config).await;
    let store = match store {
        Ok(store) => store,
        Err(err) => {
            health.set_store(ComponentState::Failed(err.to_string()));
            return Err(err);
        }
    };
    health.set_store(ComponentState::Ready);
    let prompts = Prompts::load(&config.chat.prompts_dir)?;
    // Channels are built before anything slow, so a channel that cannot run
    // in this build fails at once.
    let adapters = channels::from_config(config, &prompts)?;
    if adapters.is_empty() {
        tracing::warn!("no channel is enabled; only the operator API runs");
    }
    let knowledge = load_knowledge_async(config, &store, false).await?;
    let recommender = load_ranker_async(config, &store).await?;
    let classifier = load_classifier(config).await?;

    let api_stop = CancellationToken::new();
    let desk: Arc<std::sync::OnceLock<Arc<Pipeline>>> = Arc::default();
    let api_task = if config.operator.enabled {
        let listener = bind_operator_api(config).await?;
        Some(start_operator_api(
            config,
            listener,
            &health,
            &store,
            &desk,
            api_stop.clone(),
        ))
    } else {
        None
    };

    tokio::pin!(shutdown);
    let llm = tokio::select! {
        llm = build_engine(config) => llm,
        _ = &mut shutdown => {
            tracing::info!("shutdown requested while the model was loading");
            api_stop.cancel();
            store.flush().await?;
            return Ok(());
        }
    };
    let llm = match llm {
        Ok(llm) => llm,
        Err(err) => {
            health.set_engine(ComponentState::Failed(format!("{err:#}")), None);
            api_stop.cancel();
            return Err(err);
        }
    };
    engine_ready(&health, &llm);
    tracing::info!(model = llm.model_name(), "engine ready");

    let intake_stop = CancellationToken::new();
    let reply_cancel = CancellationToken::new();
    let pipeline = pipeline(
        config,
        Parts {
            store: store.clone(),
            llm,
            prompts,
            knowledge: Some(knowledge),
            recommender: Some(Arc::clone(&recommender)),
            classifier: Some(classifier),
            escalation: config
                .escalation
                .enabled
                .then(|| crate::escalation::Escalation::new(store.clone(), sla_policy(config))),
        },
        &adapters,
        reply_cancel.clone(),
    );
    let _ = desk.set(Arc::clone(&pipeline));
    let sla_watch = config.escalation.enabled.then(|| {
        tokio::spawn(watch_deadlines(
            Arc::clone(&pipeline),
            Duration::from_secs(config.escalation.sla_check_secs),
            intake_stop.clone(),
        ))
    });
    let retention = tokio::spawn(crate::privacy::run_sweeps(
        store.clone(),
        config.privacy.clone(),
        intake_stop.clone(),
    ));
    let refit = tokio::spawn(refit_periodically(
        config.clone(),
        store.clone(),
        recommender,
        intake_stop.clone(),
    ));
    let (sink, source) = concierge_adapter::inbound_queue(INBOUND_BUFFER);
    let inbox = Inbox::durable(store.clone()).with_masking(config.privacy.redact.clone());
    let replay = inbox.pending()?;
    let (deliveries, delivered) = mpsc::channel(INBOUND_BUFFER);
    let intake_task = tokio::spawn(inbox::run(source, inbox.clone(), replay, deliveries));
    let in_flight = InFlight::default();
    let router_task = tokio::spawn(router::run(
        delivered,
        inbox,
        pipeline,
        in_flight.clone(),
        config.moderation.clone(),
    ));
    let channel_tasks = TaskTracker::new();
    for adapter in adapters {
        channel_tasks.spawn(supervise_channel(
            adapter,
            sink.clone(),
            intake_stop.clone(),
            health.clone(),
        ));
    }
    channel_tasks.close();
    drop(sink);

    shutdown.await;
    tracing::info!(deadline_secs = deadline.as_secs(), "shutting down");
    intake_stop.cancel();
    let mut router_task = router_task;
    let drained = tokio::time::timeout(deadline, async {
        channel_tasks.wait().await;
        (&mut router_task).await
    })
    .await;
    if drained.is_err() {
        let still = in_flight.snapshot();
        tracing::warn!(
            still_running = ?still,
            "shutdown deadline passed; cancelling replies still running"
        );
        reply_cancel.cancel();
        if tokio::time::timeout(CANCEL_GRACE, &mut router_task)
            .await
            .is_err()
        {
            tracing::error!(still_running = ?in_flight.snapshot(), "replies did not stop after cancellation");
            router_task.abort();
        }
    }
    // Whatever was taken but not handled stays in the inbox for the next start.
    intake_task.abort();
    refit.abort();
    retention.abort();
    if let Some(task) = sla_watch {
        task.abort();
    }
    store
        .flush()
        .await
        .context("flushing the store at shutdown")?;
    tracing::info!("store flushed");
    api_stop.cancel();
    if let Some(task) = api_task {
        match tokio::time::timeout(CANCEL_GRACE, task).await {
            Ok(Ok(Err(err))) => tracing::warn!("operator API error: {err}"),
            Err(_) => tracing::warn!("operator API did not stop in time"),
            _ => {}
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reminds agents of tickets nearing their first-answer deadline and
/// counts breaches, every `every`.
async fn watch_deadlines(pipeline: Arc<Pipeline>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let checked = match pipeline.tickets() {
            Ok(tickets) => tickets.check_deadlines(crate::store::now_ms()).await,
            Err(err) => Err(err),
        };
        if let Err(err) = checked {
            tracing::warn!("{err:#}");
        }
    }
}

/// Keeps a channel's health in step with its platform connection: `ready`
/// while connected, `starting` while connecting. A failure reported by the
/// supervisor stays until the connection comes back.
async fn watch_connection(adapter: Arc<dyn Adapter>, health: Health, stop: CancellationToken) {
    let name = adapter.platform().to_string();
    let mut last = adapter.is_connected();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = adapter.is_connected();
        if now != last {
            match now {
                Some(true) => health.set_channel(&name, ComponentState::Ready),
                Some(false) => health.set_channel_connecting(&name),
                None => {}
            }
            last = now;
        }
    }
}

/// Runs one channel, restarting it with back-off when it fails, until `stop`.
async fn supervise_channel(
    adapter: Arc<dyn Adapter>,
    sink: concierge_adapter::InboundSink,
    stop: CancellationToken,
    health: Health,
) {
    let name = adapter.platform().to_string();
    tokio::spawn(watch_connection(
        Arc::clone(&adapter),
        health.clone(),
        stop.clone(),
    ));
    let mut backoff = CHANNEL_RESTART_BACKOFF;
    let mut refused = false;
    loop {
        let state = match adapter.is_connected() {
            Some(true) | None => ComponentState::Ready,
            Some(false) => ComponentState::Starting,
        };
        // A refused channel stays failed until it connects again
        // (`watch_connection` reports that).
        if !refused {
            health.set_channel(&name, state);
        }
        let started = tokio::time::Instant::now();
        // A panic inside a channel restarts the channel, like an error.
        let result = match std::panic::AssertUnwindSafe(adapter.run(sink.clone(), stop.clone()))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(_) => Err(concierge_adapter::AdapterError::Platform(
                "the channel panicked".into(),
            )),
        };
        if stop.is_cancelled() {
            health.set_channel(&name, ComponentState::Stopped);
            return;
        }
        match result {
            Ok(()) => {
                tracing::info!(channel = %name, "channel input ended");
                health.set_channel(&name, ComponentState::Stopped);
                return;
            }
            Err(err) => {
                // A run that stayed up a while was healthy: start the
                // back-off again from its first step.
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = CHANNEL_RESTART_BACKOFF;
                }
                refused = matches!(err, concierge_adapter::AdapterError::Refused(_));
                tracing::error!(channel = %name, "channel failed: {err}; restarting in {backoff:?}");
                health.set_channel(&name, ComponentState::Failed(err.to_string()));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {
                health.set_channel(&name, ComponentState::Stopped);
                return;
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_start_waits_for_a_store_the_last_run_is_still_letting_go_of() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults();
        config.store.data_dir = dir.path().to_path_buf();
        let held = Store::open(dir.path()).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(crate::store::StoreError::Locked { .. })
        ));
        let letting_go = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        open_store(&config).await.expect("opened once released");
        letting_go.join().unwrap();
    }
}
