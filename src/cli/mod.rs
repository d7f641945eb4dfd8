//! The `concierge` command line: arguments (clap), logging setup, exit codes
//! (0 success, 1 failure, 2 invalid configuration or usage), and one
//! function per command in the modules below.

mod bench;
mod customers;
mod daemon;
mod data;
mod evaluate;
mod models;
mod operator_client;
mod tickets;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use concierge::config::{self, Config, ConfigSource, LogFormat};

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
    /// Customers' data: list, show, export and erase (directly on the store,
    /// or through the running daemon's operator API when it holds the store)
    Customers {
        #[command(subcommand)]
        action: CustomersAction,
    },
    /// Retention sweeps and the audit log of exports and erasures
    Privacy {
        #[command(subcommand)]
        action: PrivacyAction,
    },
}

#[derive(Subcommand)]
enum CustomersAction {
    /// Every customer with their accounts and counts, as JSON lines
    List,
    /// One customer's accounts and counts, as JSON
    Show {
        /// The customer's id on the platform
        #[arg(long)]
        user: String,
        /// The platform the id belongs to (console, telegram, discord)
        #[arg(long)]
        platform: String,
    },
    /// Everything stored about a customer, as JSON on stdout (audited)
    Export {
        /// The customer's id on the platform
        #[arg(long)]
        user: String,
        /// The platform the id belongs to (console, telegram, discord)
        #[arg(long)]
        platform: String,
    },
    /// Erase a customer: profile, accounts, conversations, events and link
    /// codes removed, tickets anonymised, data keys destroyed (audited)
    Forget {
        /// The customer's id on the platform
        #[arg(long)]
        user: String,
        /// The platform the id belongs to (console, telegram, discord)
        #[arg(long)]
        platform: String,
        /// Confirm: erasure cannot be undone
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum PrivacyAction {
    /// Delete messages and events older than privacy.retention_days and
    /// anonymise tickets closed before then, once; prints what was removed
    Sweep,
    /// The audit log (exports, erasures, sweeps: who, when, which customer), as JSON lines
    Audit,
    /// Give every customer a fresh data key, reseal their records and destroy
    /// the old keys (needs the store alone: stop the daemon first)
    RotateKeys,
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
    /// Whole answers on a CSV with question,fact[,expected_doc] (fact: `|`-separated
    /// acceptable strings, or NONE): each question through the full pipeline
    Answers {
        /// The labelled questions
        #[arg(long)]
        data: PathBuf,
        /// Also print each question's outcome as a JSON line on stderr
        #[arg(long)]
        details: bool,
        /// Run only the odd rows (the half tuned on) or the even rows (held out)
        #[arg(long, value_parser = ["all", "odd", "even"], default_value = "all")]
        rows: String,
    },
    /// Retrieval quality on a CSV with question,expected_doc (empty: no document answers)
    Retrieval {
        /// The labelled questions
        #[arg(long)]
        data: PathBuf,
        /// Also print each question's outcome as a JSON line on stderr
        #[arg(long)]
        details: bool,
    },
    /// Escalation precision/recall/F1, a confusion table per label, the
    /// calibration table and the automatic hand-off figures, for all rows and
    /// per language, by stratified cross-validation on a labelled CSV (ours
    /// or Bitext's intents)
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
        /// Also print each message's verdict as a JSON line on stderr
        #[arg(long)]
        details: bool,
        /// Also ask the configured engine about the uncertain band
        /// (`escalation.tiebreak_from` up to `auto_min_confidence`) and
        /// report the figures with its verdicts beside those without
        #[arg(long)]
        tiebreak: bool,
        /// Also judge the uncertain band by the messages' meaning (the
        /// embedding model trained on the shipped files; with --folds 0) and
        /// report the figures with it beside those without
        #[arg(long, conflicts_with = "tiebreak")]
        meaning: bool,
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
    /// The daemon's overhead per reply and the conversations it sustains in
    /// front of an OpenAI-compatible server (a local stand-in at a fixed pace) (JSON)
    Remote {
        /// The stand-in server's time to first token
        #[arg(long, default_value_t = 50)]
        first_token_ms: u64,
        /// Its tokens per second per stream
        #[arg(long, default_value_t = 100)]
        tokens_per_sec: u64,
        /// Tokens per reply
        #[arg(long, default_value_t = 20)]
        tokens: usize,
        /// Conversations at once, per level
        #[arg(long, value_delimiter = ',', default_value = "1,50,100,250,500")]
        concurrency: Vec<usize>,
        /// Messages each conversation sends, each after the last reply
        #[arg(long, default_value_t = 10)]
        messages: usize,
    },
    /// Embedding speed of the semantic-search model on the demo shop's
    /// passages and evaluation questions (JSON)
    Embed {
        /// Compute threads (0: all cores)
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Questions to embed (first column of a CSV)
        #[arg(long, default_value = "config/demo/eval/answers.csv")]
        questions: PathBuf,
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
        .with_writer(concierge::privacy::log::masked_stderr);
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

/// Parses the arguments, runs the command, and says how it ended.
pub fn main() -> ExitCode {
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
        Command::Chat { user } => daemon::chat(config, user),
        Command::Serve => daemon::serve(config),
        Command::History { user, platform } => data::history(config, &user, &platform),
        Command::Models { action } => match action {
            ModelsAction::Fetch { name, dir } => models::fetch(config, name, dir),
            ModelsAction::List => models::list(),
            ModelsAction::Convert { input, output, to } => {
                models::convert(config, input, output, &to)
            }
        },
        Command::Bench { action } => match action {
            BenchAction::Engine {
                model,
                runs,
                max_tokens,
                backend,
                concurrency,
            } => bench::engine(config, model, runs, max_tokens, backend, &concurrency),
            BenchAction::Recommend {
                items,
                users,
                events,
                queries,
            } => bench::recommend(items, users, events, queries),
            BenchAction::Classify { messages, runs } => bench::classify(config, messages, runs),
            BenchAction::Search { passages, queries } => bench::search(passages, queries),
            BenchAction::Embed { threads, questions } => bench::embed(config, threads, &questions),
            BenchAction::Remote {
                first_token_ms,
                tokens_per_sec,
                tokens,
                concurrency,
                messages,
            } => bench::remote(
                config,
                first_token_ms,
                tokens_per_sec,
                tokens,
                &concurrency,
                messages,
            ),
        },
        Command::Import { what } => match what {
            ImportAction::Kb { paths } => data::import_kb(config, &paths),
            ImportAction::Catalog { file } => data::import_catalog(config, &file),
            ImportAction::Events { file } => data::import_events(config, &file),
        },
        Command::Kb {
            action: KbAction::Search { query, k },
        } => data::kb_search(config, &query, k),
        Command::Eval { what } => match what {
            EvalAction::Answers {
                data,
                details,
                rows,
            } => evaluate::answers(config, &data, details, &rows),
            EvalAction::Retrieval { data, details } => evaluate::retrieval(config, &data, details),
            EvalAction::Intents {
                data,
                text_column,
                label_column,
                folds,
                details,
                tiebreak,
                meaning,
            } => evaluate::intents(
                config,
                &data,
                (text_column, label_column),
                folds,
                details,
                (tiebreak, meaning),
            ),
        },
        Command::Recommend(RecommendArgs {
            action: None,
            user,
            k,
            query,
        }) => data::recommend_for(config, user, k, query),
        Command::Recommend(RecommendArgs {
            action:
                Some(RecommendAction::Eval {
                    interactions,
                    protocol,
                    seed,
                    k,
                }),
            ..
        }) => evaluate::recommendations(&interactions, &protocol, seed, k),
        Command::Classify { .. } => evaluate::classify(config),
        Command::Train {
            what:
                TrainAction::Intents {
                    data,
                    text_column,
                    label_column,
                },
        } => evaluate::train_intents(config, data, text_column, label_column),
        Command::Tickets { action } => tickets::run(config, action),
        Command::Customers { action } => customers::customers(config, action),
        Command::Privacy { action } => customers::privacy(config, action),
        Command::Config { .. } => Ok(()),
    }
}
