//! The `concierge` command: argument parsing (clap), logging setup, and exit
//! codes (0 success, 1 failure, 2 invalid configuration or usage).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use concierge::config::{self, Config, ConfigSource, LogFormat};
use concierge::knowledge::{self, KnowledgeBase};
use concierge::store::{Store, StoreError};
use concierge::{app, bench, eval, history, intent, models, recommend};

#[derive(Parser)]
#[command(
    name = "concierge",
    version,
    about = "Self-hosted customer-service and recommendation bot"
)]
struct Cli {
    /// Configuration file [default: config/concierge.toml, if present]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Data directory; overrides store.data_dir
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Chat at the console through the full pipeline (stdin → replies on stdout)
    Chat {
        /// Customer id of the console user [default: console.user, "local"]
        #[arg(long)]
        user: Option<String>,
    },
    /// Run the daemon until SIGINT/SIGTERM
    Serve,
    /// Print a customer's stored conversation as JSON lines
    History {
        /// The customer's id on the platform
        #[arg(long)]
        user: String,
        /// The platform the id belongs to
        #[arg(long, default_value = "console")]
        platform: String,
    },
    /// Configuration tools
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Model files: fetch the default model, convert to Q8_0
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Benchmarks that print figures
    Bench {
        #[command(subcommand)]
        action: BenchAction,
    },
    /// Import data into the store
    Import {
        #[command(subcommand)]
        what: ImportAction,
    },
    /// The knowledge base
    Kb {
        #[command(subcommand)]
        action: KbAction,
    },
    /// Recommend items to a customer (JSON lines), or evaluate the ranker
    Recommend(RecommendArgs),
    /// Offline evaluations that print JSON
    Eval {
        #[command(subcommand)]
        what: EvalAction,
    },
    /// Label messages (one per line on stdin): language, intent, escalation
    Classify {
        /// Output format: one JSON object per line
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl"])]
        format: String,
    },
    /// Agents' desk: list, show, answer, assign, resolve, note and reopen tickets through
    /// the running daemon's operator API (operator.listen, operator.token)
    Tickets {
        #[command(subcommand)]
        action: TicketsAction,
    },
    /// Train models from labelled data
    Train {
        #[command(subcommand)]
        what: TrainAction,
    },
}

#[derive(Subcommand)]
enum TicketsAction {
    /// Tickets, newest first, as JSON lines
    List {
        /// Only tickets in this state (open, assigned, waiting_on_customer, resolved, closed)
        #[arg(long)]
        state: Option<String>,
    },
    /// One ticket with its transcript and transitions, as JSON
    Show {
        /// T-000123 or 123
        id: String,
    },
    /// Answer the customer (they get it on their platform)
    Reply {
        /// T-000123 or 123
        id: String,
        /// Who answers
        #[arg(long)]
        agent: String,
        /// The answer
        text: String,
    },
    /// Take the ticket
    Assign {
        /// T-000123 or 123
        id: String,
        /// Who takes it
        #[arg(long)]
        agent: String,
    },
    /// Mark it solved: the bot takes over and asks the customer for a rating
    Resolve {
        /// T-000123 or 123
        id: String,
        /// Who solved it
        #[arg(long)]
        agent: String,
    },
    /// Add an internal note (never sent to the customer)
    Note {
        /// T-000123 or 123
        id: String,
        /// Who writes it
        #[arg(long)]
        agent: String,
        /// The note
        text: String,
    },
    /// Open a resolved or closed ticket again: the chat goes back to people
    Reopen {
        /// T-000123 or 123
        id: String,
        /// Who reopens it
        #[arg(long)]
        agent: String,
    },
}

#[derive(Subcommand)]
enum TrainAction {
    /// Retrain the intent classifier from CSV files and save it in the data directory
    Intents {
        /// Labelled CSV files [default: config/intents/*.csv]
        #[arg(long)]
        data: Vec<PathBuf>,
        /// Column holding the message [default: text or instruction]
        #[arg(long)]
        text_column: Option<String>,
        /// Column holding the label [default: intent or label]
        #[arg(long)]
        label_column: Option<String>,
    },
}

#[derive(Subcommand)]
enum ImportAction {
    /// Markdown, .txt and FAQ .csv (question,answer) files or directories;
    /// re-import replaces changed documents and removes deleted ones
    Kb {
        /// Files or directories
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Catalog items from CSV or JSON Lines (id,title,description,category,
    /// tags,price,currency,url,in_stock); re-import updates items by id
    Catalog {
        /// The file
        file: PathBuf,
    },
    /// Interaction events from CSV or JSON Lines (user,item,kind,timestamp[,value])
    Events {
        /// The file
        file: PathBuf,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct RecommendArgs {
    #[command(subcommand)]
    action: Option<RecommendAction>,
    /// The customer (their id in the events)
    #[arg(long)]
    user: Option<String>,
    /// Number of items
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// What they ask for, e.g. "running shoes under 100"
    #[arg(long)]
    query: Option<String>,
}

#[derive(Subcommand)]
enum RecommendAction {
    /// Our ranker and a popularity baseline on interaction data (MovieLens
    /// .inter or CSV user,item,timestamp[,rating]); prints JSON
    Eval {
        /// The interactions file
        #[arg(long)]
        interactions: PathBuf,
        /// full (80/10/10 split, all items ranked) or loo-100 (latest item vs 100 sampled)
        #[arg(long, value_parser = ["full", "loo-100"])]
        protocol: String,
        /// Seed of the split [default: the mean of seeds 1, 2 and 3]
        #[arg(long)]
        seed: Option<u64>,
        /// Cut-off of the metrics
        #[arg(long, default_value_t = 10)]
        k: usize,
    },
}

#[derive(Subcommand)]
enum KbAction {
    /// Search the knowledge base; prints JSON lines {"doc","title","passage","score"}
    Search {
        /// The query
        query: String,
        /// Number of hits
        #[arg(long, default_value_t = 5)]
        k: usize,
    },
}

#[derive(Subcommand)]
enum EvalAction {
    /// Retrieval quality on a CSV with question,expected_doc (empty: no document answers)
    Retrieval {
        /// The labelled questions
        #[arg(long)]
        data: PathBuf,
        /// Also print each question's outcome as a JSON line on stderr
        #[arg(long)]
        details: bool,
    },
    /// Escalation precision/recall/F1 and a confusion table per label, by
    /// stratified cross-validation on a labelled CSV (ours or Bitext's intents)
    Intents {
        /// The labelled messages
        #[arg(long)]
        data: PathBuf,
        /// Column holding the message [default: text or instruction]
        #[arg(long)]
        text_column: Option<String>,
        /// Column holding the label [default: intent or label]
        #[arg(long)]
        label_column: Option<String>,
        /// Folds; 0 judges the saved model on every row instead
        #[arg(long, default_value_t = 5)]
        folds: usize,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration; print every error and warning; exit 2 if invalid
    Check {
        /// File to check [default: --config, or config/concierge.toml]
        path: Option<PathBuf>,
        /// Treat warnings (a CONCIERGE_ variable that matches no key) as errors
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Download the default model (models/fetch), or a known model NAME from the
    /// Hugging Face hub (HF_ENDPOINT, HF_TOKEN); downloads resume and are checked
    /// against the hub's sha256
    Fetch {
        /// A name from `concierge models list` [default: the default model]
        name: Option<String>,
        /// Directory to put it in [default: the directory of engine.model_path]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The models `fetch` knows, with licence and size (JSON lines)
    List,
    /// Re-quantise a GGUF model to Q8_0 or Q4_0 (fast CPU kernels)
    Convert {
        /// Source file [default: engine.model_path]
        #[arg(long)]
        input: Option<PathBuf>,
        /// Output file [default: beside the source, named .Q8_0.gguf or .Q4_0.gguf]
        #[arg(long)]
        output: Option<PathBuf>,
        /// Quantisation to write
        #[arg(long, default_value = "q8_0", value_parser = ["q8_0", "q4_0"])]
        to: String,
    },
}

#[derive(Subcommand)]
enum BenchAction {
    /// Prompt and decode speed of the engine on a fixed prompt (JSON)
    Engine {
        /// GGUF file to measure [default: the prepared engine.model_path]
        #[arg(long)]
        model: Option<PathBuf>,
        /// Measured runs (after one warm-up)
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Tokens generated per run
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// Engine to measure [default: engine.backend]
        #[arg(long, value_parser = ["auto", "cpu", "mistralrs"])]
        backend: Option<String>,
        /// Concurrent request counts for the aggregate decode figures
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        concurrency: Vec<usize>,
    },
    /// Recommendation latency, freshness and memory on a synthetic shop (JSON)
    Recommend {
        /// Catalog size
        #[arg(long, default_value_t = 100_000)]
        items: usize,
        /// Customers
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        /// Events
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Timed queries
        #[arg(long, default_value_t = 2_000)]
        queries: usize,
    },
    /// Intent classification speed: batches of messages on one thread (JSON)
    Classify {
        /// Messages per batch
        #[arg(long, default_value_t = 1_000)]
        messages: usize,
        /// Timed batches
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Knowledge-base search latency on a synthetic corpus (JSON)
    Search {
        /// Passages to index
        #[arg(long, default_value_t = 10_000)]
        passages: usize,
        /// Queries to time
        #[arg(long, default_value_t = 2_000)]
        queries: usize,
    },
}

fn load_config(cli: &Cli, path_override: Option<&PathBuf>) -> Result<Config, config::ConfigError> {
    let source =
        ConfigSource::from_flag(path_override.or(cli.config.as_ref()).map(PathBuf::as_path));
    let mut config = config::load_from_process(&source)?;
    if let Some(dir) = &cli.data_dir {
        config.store.data_dir = dir.clone();
    }
    Ok(config)
}

fn init_logging(config: &Config) {
    let mut filter = config.log.level.clone();
    if !filter.contains("mistralrs") {
        // mistral.rs logs every load step at info; keep the console readable.
        filter.push_str(",mistralrs_core=error,mistralrs=error,mistralrs_quant=error");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs `future` on a new runtime. The runtime is then shut down without
/// waiting for blocking reads of stdin, which never end on their own.
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(future);
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!("cannot watch SIGTERM: {err}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Config {
        action: ConfigAction::Check { path, strict },
    } = &cli.command
    {
        return match load_config(&cli, path.as_ref()) {
            Ok(config) => {
                for warning in &config.warnings {
                    eprintln!("warning: {}: {}", warning.key, warning.message);
                }
                if *strict && !config.warnings.is_empty() {
                    eprintln!(
                        "invalid configuration (--strict): {} warning(s)",
                        config.warnings.len()
                    );
                    return ExitCode::from(2);
                }
                println!("configuration is valid");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprint!("{err}");
                ExitCode::from(2)
            }
        };
    }
    let config = match load_config(&cli, None) {
        Ok(config) => config,
        Err(err) => {
            eprint!("{err}");
            return ExitCode::from(2);
        }
    };
    if config.engine.threads > 0 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Set before any thread pool starts.
        std::env::set_var("RAYON_NUM_THREADS", config.engine.threads.to_string());
    }
    init_logging(&config);
    for warning in &config.warnings {
        tracing::warn!(key = %warning.key, "{}", warning.message);
    }
    match run(cli.command, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("concierge: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, config: &Config) -> anyhow::Result<()> {
    match command {
        Command::Chat { user } => {
            let user = user.unwrap_or_else(|| config.console.user.clone());
            block_on(app::chat(config, &user, async {
                let _ = tokio::signal::ctrl_c().await;
            }))
        }
        Command::Serve => block_on(app::serve(config, shutdown_signal())),
        Command::History { user, platform } => print_history(config, &user, &platform),
        Command::Models { action } => match action {
            ModelsAction::Fetch { name, dir } => {
                let default_dir = config
                    .engine
                    .model_path
                    .parent()
                    .filter(|dir| !dir.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."))
                    .to_path_buf();
                let dir = dir.unwrap_or(default_dir);
                match name {
                    Some(name) => models::fetch_known(&name, &dir).map(|_| ()),
                    None => models::fetch(&dir),
                }
            }
            ModelsAction::List => {
                for model in models::catalog::KNOWN_MODELS {
                    println!("{}", serde_json::to_string(model)?);
                }
                Ok(())
            }
            ModelsAction::Convert { input, output, to } => {
                use concierge::engine::convert::{quant_path, Target};
                let target = if to == "q4_0" {
                    Target::Q4_0
                } else {
                    Target::Q8_0
                };
                let input = input.unwrap_or_else(|| config.engine.model_path.clone());
                let output = output.unwrap_or_else(|| quant_path(&input, target));
                models::convert_to(&input, &output, target)
            }
        },
        Command::Bench {
            action:
                BenchAction::Engine {
                    model,
                    runs,
                    max_tokens,
                    backend,
                    concurrency,
                },
        } => {
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
                &concurrency,
            ))?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Bench {
            action:
                BenchAction::Recommend {
                    items,
                    users,
                    events,
                    queries,
                },
        } => {
            let figures = bench::recommend(items.max(1), users.max(1), events, queries.max(1))?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Bench {
            action: BenchAction::Classify { messages, runs },
        } => {
            let figures = bench::classify(&config.escalation.intents_dir, messages.max(1), runs)?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Bench {
            action: BenchAction::Search { passages, queries },
        } => {
            let figures = bench::search(passages.max(1), queries.max(1))?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Import {
            what: ImportAction::Kb { paths },
        } => {
            let store = open_store(config)?;
            let report = knowledge::import(&store, &paths)?;
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
        Command::Import {
            what: ImportAction::Catalog { file },
        } => {
            let store = open_store(config)?;
            let report = recommend::import::catalog(&store, &file)?;
            print_import_report(&report)
        }
        Command::Import {
            what: ImportAction::Events { file },
        } => {
            let store = open_store(config)?;
            let report = recommend::import::events(&store, &file)?;
            print_import_report(&report)
        }
        Command::Kb {
            action: KbAction::Search { query, k },
        } => {
            let store = open_store(config)?;
            let kb = app::load_knowledge(config, &store)?;
            let mut out = std::io::stdout().lock();
            for hit in kb.search(&query, k.max(1))? {
                use std::io::Write;
                writeln!(out, "{}", serde_json::to_string(&hit)?)?;
            }
            Ok(())
        }
        Command::Eval {
            what: EvalAction::Retrieval { data, details },
        } => {
            let questions = eval::read_questions(&data)?;
            let store = open_store(config)?;
            let kb = app::load_knowledge(config, &store)?;
            let report = eval::retrieval(&kb, &questions, |outcome| {
                if details {
                    eprintln!("{}", serde_json::to_string(outcome).unwrap_or_default());
                }
            })?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Recommend(RecommendArgs {
            action: None,
            user,
            k,
            query,
        }) => {
            let user = user.ok_or_else(|| {
                anyhow::anyhow!("recommend needs --user ID (or the eval subcommand)")
            })?;
            let store = open_store(config)?;
            let ranker = app::load_ranker(config, &store)?;
            let history = store.user_events(&user)?;
            let mut out = std::io::stdout().lock();
            for pick in ranker.recommend(&history, k.max(1), query.as_deref()) {
                use std::io::Write;
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
        Command::Recommend(RecommendArgs {
            action:
                Some(RecommendAction::Eval {
                    interactions,
                    protocol,
                    seed,
                    k,
                }),
            ..
        }) => {
            let data = recommend::dataset::Interactions::read(&interactions)?;
            let protocol = if protocol == "full" {
                recommend::evaluate::Protocol::Full
            } else {
                recommend::evaluate::Protocol::Loo100
            };
            let seeds = seed.map_or_else(|| vec![1, 2, 3], |seed| vec![seed]);
            let texts = recommend::dataset::item_texts(&interactions, &data.items);
            let report =
                recommend::evaluate::run(&data, texts.as_deref(), protocol, &seeds, k.max(1))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Eval {
            what:
                EvalAction::Intents {
                    data,
                    text_column,
                    label_column,
                    folds,
                },
        } => {
            let examples =
                intent::read_examples(&data, text_column.as_deref(), label_column.as_deref())?;
            let shipped = config.escalation.intents_dir.as_path();
            let base =
                intent::read_all_examples(&intent::default_training_files(shipped)?, None, None)?;
            let model = if folds == 0 {
                Some(intent::load_or_train(&config.store.data_dir, shipped)?)
            } else {
                None
            };
            let report = intent::evaluate::evaluate(&examples, &base, folds, model.as_ref(), 1);
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Classify { .. } => {
            let classifier =
                intent::load_or_train(&config.store.data_dir, &config.escalation.intents_dir)?;
            let mut out = std::io::stdout().lock();
            for line in std::io::stdin().lock().lines() {
                use std::io::Write;
                let line = line.context("reading stdin")?;
                if line.trim().is_empty() {
                    continue;
                }
                let result = classifier.classify(line.trim());
                writeln!(out, "{}", serde_json::to_string(&result)?)?;
            }
            Ok(())
        }
        Command::Train {
            what:
                TrainAction::Intents {
                    data,
                    text_column,
                    label_column,
                },
        } => {
            let files = if data.is_empty() {
                intent::default_training_files(&config.escalation.intents_dir)?
            } else {
                data
            };
            let examples =
                intent::read_all_examples(&files, text_column.as_deref(), label_column.as_deref())?;
            anyhow::ensure!(!examples.is_empty(), "no labelled messages in {files:?}");
            let classifier = intent::Classifier::train(&examples, &intent::TrainOptions::default());
            let path = config.store.data_dir.join(intent::MODEL_FILE);
            classifier.model().save(&path)?;
            let report = serde_json::json!({
                "examples": examples.len(),
                "files": files,
                "model": path,
            });
            println!("{report}");
            Ok(())
        }
        Command::Tickets { action } => tickets(config, action),
        Command::Config { .. } => Ok(()),
    }
}

/// `concierge tickets …`: calls the daemon's operator API.
fn tickets(config: &Config, action: TicketsAction) -> anyhow::Result<()> {
    let token = config.operator.token.as_ref().context(
        "operator.token is not set: set CONCIERGE_OPERATOR_TOKEN or operator.token_file (the same as the daemon's)",
    )?;
    let base = format!("http://{}", config.operator.listen);
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let (request, lines) = match &action {
        TicketsAction::List { state } => {
            let mut request = client.get(format!("{base}/v1/tickets"));
            if let Some(state) = state {
                request = request.query(&[("state", state)]);
            }
            (request, true)
        }
        TicketsAction::Show { id } => (client.get(format!("{base}/v1/tickets/{id}")), false),
        TicketsAction::Reply { id, agent, text } => (
            client
                .post(format!("{base}/v1/tickets/{id}/reply"))
                .json(&serde_json::json!({"agent": agent, "text": text})),
            false,
        ),
        TicketsAction::Assign { id, agent } => (
            client
                .post(format!("{base}/v1/tickets/{id}/assign"))
                .json(&serde_json::json!({"agent": agent})),
            false,
        ),
        TicketsAction::Resolve { id, agent } => (
            client
                .post(format!("{base}/v1/tickets/{id}/resolve"))
                .json(&serde_json::json!({"agent": agent})),
            false,
        ),
        TicketsAction::Note { id, agent, text } => (
            client
                .post(format!("{base}/v1/tickets/{id}/note"))
                .json(&serde_json::json!({"agent": agent, "text": text})),
            false,
        ),
        TicketsAction::Reopen { id, agent } => (
            client
                .post(format!("{base}/v1/tickets/{id}/reopen"))
                .json(&serde_json::json!({"agent": agent})),
            false,
        ),
    };
    let response = request.bearer_auth(token.expose()).send().with_context(|| {
        format!("cannot reach the daemon at {base} (operator.listen): is `concierge serve` running?")
    })?;
    let status = response.status();
    let body: serde_json::Value = response.json().context("the daemon's answer is not JSON")?;
    if !status.is_success() {
        let message = body["error"].as_str().unwrap_or("unknown error");
        anyhow::bail!("{message} (HTTP {status})");
    }
    match (lines, body.as_array()) {
        (true, Some(tickets)) => {
            for ticket in tickets {
                println!("{ticket}");
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(&body)?),
    }
    Ok(())
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

/// Opens the store for a command-line tool, explaining a lock held by a daemon.
fn open_store(config: &Config) -> anyhow::Result<Store> {
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

fn print_history(config: &Config, user: &str, platform: &str) -> anyhow::Result<()> {
    let store = match concierge::store::Store::open(&config.store.data_dir) {
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
        use std::io::Write;
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    }
    Ok(())
}
