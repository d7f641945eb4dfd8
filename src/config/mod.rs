//! Configuration: the TOML file, `CONCIERGE_<SECTION>_<KEY>` environment
//! overrides, secrets from the environment or `*_file` keys, and validation
//! that reports every problem at once, each naming its key.
//!
//! Architecture invariant: a `Config` that exists is valid; nothing later
//! re-checks it. Secrets are held in `Secret`, whose `Debug` never shows them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::prompts::Locale;

mod check;
mod raw;
mod read;
#[cfg(test)]
mod tests;

use read::Reader;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "config/concierge.toml";
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "CONCIERGE_";

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `[store]`: where data lives.
    pub store: StoreConfig,
    /// `[engine]`: the language model.
    pub engine: EngineConfig,
    /// `[chat]`: conversation behaviour.
    pub chat: ChatConfig,
    /// `[operator]`: the operator HTTP API of `serve`.
    pub operator: OperatorConfig,
    /// `[daemon]`: lifecycle of `serve`.
    pub daemon: DaemonConfig,
    /// `[console]`: the console channel inside `serve`.
    pub console: ConsoleConfig,
    /// `[log]`: diagnostics.
    pub log: LogConfig,
    /// `[knowledge]`: the knowledge base.
    pub knowledge: KnowledgeConfig,
    /// `[recommend]`: recommendations.
    pub recommend: RecommendConfig,
    /// `[telegram]`: the Telegram channel.
    pub telegram: TelegramConfig,
    /// `[discord]`: the Discord channel.
    pub discord: DiscordConfig,
    /// `[escalation]`: intent detection and hand-off to people.
    pub escalation: EscalationConfig,
    /// `[moderation]`: flood limits per sender.
    pub moderation: ModerationConfig,
    /// `[privacy]`: retention, consent before storing, what is masked.
    pub privacy: PrivacyConfig,
    /// Findings that do not stop the program (a `CONCIERGE_` variable that
    /// matches no key); logged at start, errors under `config check --strict`.
    pub warnings: Vec<ConfigIssue>,
}

/// `[privacy]`
#[derive(Clone, Debug, PartialEq)]
pub struct PrivacyConfig {
    /// Messages and events older than this many days are deleted, and
    /// tickets closed before then anonymised; 0 keeps everything.
    pub retention_days: u32,
    /// Nothing a customer writes is stored before they sent `/start`.
    pub require_start: bool,
    /// What is masked before it is stored, sent to the model or to agents.
    pub redact: Vec<crate::privacy::redact::Kind>,
}

/// `[escalation]`
#[derive(Clone, Debug)]
pub struct EscalationConfig {
    /// Complaints and requests for a person open tickets in `serve`.
    pub enabled: bool,
    /// Labelled CSV files the intent classifier trains on.
    pub intents_dir: PathBuf,
    /// Confidence at or above which an escalation decision hands the chat
    /// to people without the customer asking (`/human` always does).
    pub auto_min_confidence: f64,
    /// Ask the generative model about messages whose escalation probability
    /// lies between `tiebreak_from` and `auto_min_confidence`.
    pub model_tiebreak: bool,
    /// Judge messages in that band by their meaning too (the embedding
    /// model of `knowledge.embedder_path`, trained on `intents_dir`).
    pub meaning_tiebreak: bool,
    /// Lower edge of that uncertain band.
    pub tiebreak_from: f64,
    /// Minutes for an agent's first answer to an urgent ticket.
    pub sla_urgent_minutes: u64,
    /// The same for high priority.
    pub sla_high_minutes: u64,
    /// The same for normal priority.
    pub sla_normal_minutes: u64,
    /// Share of a deadline after which the agents are reminded (0.75: at
    /// three quarters of the time).
    pub sla_remind_at: f64,
    /// Seconds between two checks of the deadlines.
    pub sla_check_secs: u64,
    /// People who answer tickets from the agents' spaces, by name.
    pub agents: Vec<AgentConfig>,
}

/// One agent of `[escalation.agents]`: a name and their platform accounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// How tickets and transitions name them (`/assign NAME`).
    pub name: String,
    /// `(platform, user id)` pairs, e.g. `("telegram", "5551234")`.
    pub identities: Vec<(String, String)>,
}

/// How Telegram delivers updates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TelegramMode {
    /// Long polling with `getUpdates`.
    Polling,
    /// Telegram posts to `webhook_url`, which reaches `listen`.
    Webhook {
        /// Public HTTPS address registered with Telegram.
        webhook_url: String,
        /// Local address of the webhook server.
        listen: SocketAddr,
        /// Value Telegram sends in `X-Telegram-Bot-Api-Secret-Token`.
        secret_token: Option<Secret>,
    },
}

/// `[telegram]`
#[derive(Clone, Debug)]
pub struct TelegramConfig {
    /// Whether `serve` runs the channel.
    pub enabled: bool,
    /// The bot token (required when enabled).
    pub token: Option<Secret>,
    /// Bot API base URL.
    pub api_url: String,
    /// Polling or webhook.
    pub mode: TelegramMode,
    /// In groups, answer on `@mention`.
    pub group_mention: bool,
    /// In groups, answer replies to the bot.
    pub group_reply: bool,
    /// In groups, answer `/commands`.
    pub group_command: bool,
    /// Seconds one long poll waits for updates.
    pub poll_timeout_secs: u32,
    /// Milliseconds between two edits of a streamed reply in one chat.
    pub edit_interval_ms: u64,
    /// The agents' group: tickets are posted there (one topic each in a
    /// forum) and agents answer from it.
    pub agents_chat_id: Option<i64>,
}

/// `[discord]`
#[derive(Clone, Debug)]
pub struct DiscordConfig {
    /// Whether `serve` runs the channel.
    pub enabled: bool,
    /// The bot token (required when enabled).
    pub token: Option<Secret>,
    /// REST base for a self-hosted or fake API; the official API when unset.
    pub api_url: Option<String>,
    /// Channel ids served in full (with `respond_to` containing "channels").
    pub channels: Vec<u64>,
    /// Answer guild messages that mention the bot.
    pub respond_to_mentions: bool,
    /// Answer direct messages.
    pub respond_to_dms: bool,
    /// Answer every message in `channels`.
    pub respond_to_channels: bool,
    /// Milliseconds between two edits of a streamed reply in one channel.
    pub edit_interval_ms: u64,
    /// The agents' channel: one thread per ticket, agents answer there.
    pub agents_channel_id: Option<u64>,
    /// Gateway shards of the bot in all daemons together.
    pub shards: u32,
    /// The shards this daemon runs, consecutive (all of them by default).
    pub shard_ids: std::ops::Range<u32>,
}

/// `[recommend]`
#[derive(Clone, Debug)]
pub struct RecommendConfig {
    /// Load the demo catalog into a store that has none.
    pub demo: bool,
    /// Where the demo catalog is.
    pub demo_catalog: PathBuf,
    /// Minutes between background refits of the item-item model.
    pub retrain_minutes: u64,
}

/// `[knowledge]`
#[derive(Clone, Debug)]
pub struct KnowledgeConfig {
    /// Files and directories imported at start-up (changed ones re-imported).
    pub paths: Vec<PathBuf>,
    /// Load the demo shop when `paths` is empty and the store has no documents.
    pub demo: bool,
    /// Where the demo shop's knowledge base is.
    pub demo_dir: PathBuf,
    /// Passages given to the model per answer.
    pub top_k: usize,
    /// Semantic search beside the words: passages and questions compared
    /// by meaning (multilingual-e5-small), in either language.
    pub semantic: bool,
    /// The embedding model; fetched by models/fetch-embedder when missing.
    pub embedder_path: PathBuf,
}

/// `[store]`
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory of the sled database and derived files.
    pub data_dir: PathBuf,
}

/// Which implementation of the engine trait runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineBackend {
    /// Concierge's CPU engine when no GPU feature is compiled in and the
    /// model's architecture is supported; mistral.rs otherwise.
    Auto,
    /// Concierge's own CPU engine (`engine::cpu`), always.
    Cpu,
    /// mistral.rs in process, loading a local GGUF file.
    Mistralrs,
    /// The scripted test double (`engine.script_file`); for tests and demos
    /// of the pipeline without a model. Never the default.
    Scripted,
    /// A pool of OpenAI-compatible servers (`engine.base_url`).
    Openai,
}

/// Quantisation that the model is converted to before loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvertTo {
    /// Load the file as it is.
    None,
    /// Re-quantise to Q8_0, which has SIMD CPU kernels.
    Q8_0,
}

/// `[engine]`
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Which engine implementation runs.
    pub backend: EngineBackend,
    /// The GGUF file as fetched.
    pub model_path: PathBuf,
    /// Fetch the default model with `models/fetch` when `model_path` is missing.
    pub auto_fetch: bool,
    /// Conversion applied before loading (the result is cached beside the model).
    pub convert_to: ConvertTo,
    /// Most tokens generated per reply.
    pub max_tokens: usize,
    /// Sampling temperature; 0 decodes greedily.
    pub temperature: f64,
    /// Nucleus sampling mass.
    pub top_p: f64,
    /// Most likely tokens kept before nucleus sampling; 0 keeps all.
    pub top_k: usize,
    /// Sampler seed for reproducible replies; unset draws one per reply.
    pub seed: Option<u64>,
    /// Penalty on repeated tokens; 1.0 is none.
    pub repetition_penalty: f64,
    /// Token budget of one prompt (system prompt, history and reply).
    pub context_tokens: usize,
    /// Sequences the engine schedules at once.
    pub max_num_seqs: usize,
    /// Prompt prefixes kept in the prefix cache.
    pub prefix_cache: usize,
    /// Memory the CPU engine's KV caches may hold together, in MiB.
    pub kv_cache_mb: usize,
    /// Whether the CPU engine multiplies Q8_0 weights with activations in
    /// two int8 terms (exact up to rounding) rather than one.
    pub precise_activations: bool,
    /// Compute threads; 0 means one per available core.
    pub threads: usize,
    /// Script of the scripted backend.
    pub script_file: Option<PathBuf>,
    /// `openai`: the servers' API roots (`http://gpu1:8000/v1`).
    pub base_urls: Vec<url::Url>,
    /// `openai`: the servers' bearer key.
    pub api_key: Option<Secret>,
    /// `openai`: the model name sent with each request.
    pub model: String,
    /// `openai`: longest wait for an answer, and between two tokens.
    pub request_timeout_secs: u64,
    /// `openai`: a `tokenizer.json` or GGUF for the token budget.
    pub tokenizer: Option<PathBuf>,
}

/// `[chat]`
#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// Locale used when a message gives no clue (commands, empty text).
    pub default_locale: Locale,
    /// Directory holding `<locale>/*.txt` templates.
    pub prompts_dir: PathBuf,
    /// Longest customer message accepted, in characters; longer ones are cut.
    pub max_message_chars: usize,
    /// Longest a reply may take before it is cancelled, in seconds.
    pub reply_timeout_secs: u64,
}

/// `[operator]`
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Whether `serve` starts the operator API.
    pub enabled: bool,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token for every route but `/healthz` and `/metrics`.
    pub token: Option<Secret>,
}

/// `[daemon]`
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Seconds that shutdown waits for in-flight replies before cancelling them.
    pub shutdown_deadline_secs: u64,
}

/// `[moderation]`
#[derive(Clone, Debug)]
pub struct ModerationConfig {
    /// Whether the limits apply.
    pub enabled: bool,
    /// Messages a sender may send per minute, on average.
    pub messages_per_minute: u32,
    /// Messages a sender may send at once before the rate applies.
    pub message_burst: u32,
    /// Button presses a sender may make per minute, on average.
    pub presses_per_minute: u32,
    /// Presses at once before the rate applies.
    pub press_burst: u32,
    /// A limited sender is told at most once per this many seconds.
    pub notice_window_secs: u64,
    /// Messages waiting per conversation; more are refused.
    pub queue_per_conversation: usize,
}

/// `[console]`
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    /// Whether `serve` also reads customers' messages from stdin.
    pub enabled: bool,
    /// Customer id of the console user.
    pub user: String,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[log]`
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `concierge=debug`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// A secret value: printable only on purpose.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// One problem in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The key, as `section.key`, or the file.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Every problem found, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file that was read, if any.
    pub path: Option<PathBuf>,
    /// All problems.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = self
            .path
            .as_ref()
            .map_or_else(|| "defaults".to_string(), |path| path.display().to_string());
        writeln!(
            f,
            "invalid configuration ({source}): {} error(s)",
            self.issues.len()
        )?;
        for issue in &self.issues {
            writeln!(f, "  {}: {}", issue.key, issue.message)?;
        }
        Ok(())
    }
}

/// Where the configuration comes from.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    /// The file; `None` means defaults only.
    pub path: Option<PathBuf>,
    /// Whether a missing file is an error (the user named it).
    pub required: bool,
}

impl ConfigSource {
    /// `--config PATH` when given, else the default path if it exists.
    pub fn from_flag(flag: Option<&Path>) -> Self {
        match flag {
            Some(path) => Self {
                path: Some(path.to_path_buf()),
                required: true,
            },
            None => Self {
                path: Some(PathBuf::from(DEFAULT_CONFIG_PATH)),
                required: false,
            },
        }
    }
}

/// Loads, overrides from `env` and validates.
pub fn load(source: &ConfigSource, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let (text, path) = match &source.path {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (text, Some(path.clone())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !source.required => {
                (String::new(), None)
            }
            Err(err) => {
                return Err(ConfigError {
                    path: Some(path.clone()),
                    issues: vec![ConfigIssue {
                        key: "file".into(),
                        message: format!("cannot read {}: {err}", path.display()),
                    }],
                })
            }
        },
        None => (String::new(), None),
    };
    parse(&text, env).map_err(|issues| ConfigError { path, issues })
}

/// Loads with the process environment.
pub fn load_from_process(source: &ConfigSource) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    load(source, &env)
}

/// Parses TOML text with environment overrides: stage one reads the raw
/// values (`raw.rs`), stage two checks them into a `Config` (`read.rs`,
/// `check.rs`).
pub fn parse(text: &str, env: &[(String, String)]) -> Result<Config, Vec<ConfigIssue>> {
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(err) => {
            return Err(vec![ConfigIssue {
                key: "file".into(),
                message: format!("not valid TOML: {}", err.to_string().trim()),
            }])
        }
    };
    let (raw, unmatched_env) = match raw::RawConfig::read(table, env) {
        Ok(read) => read,
        Err(err) => {
            return Err(vec![ConfigIssue {
                key: "file".into(),
                message: format!("cannot read the configuration: {err}"),
            }])
        }
    };
    let mut reader = Reader {
        raw: &raw,
        issues: Vec::new(),
    };
    let mut config = reader.read_all();
    config.warnings = reader.check_unknown(&unmatched_env);
    if reader.issues.is_empty() {
        Ok(config)
    } else {
        Err(reader.issues)
    }
}

impl Config {
    /// The configuration with every default.
    pub fn defaults() -> Self {
        parse("", &[]).unwrap_or_else(|issues| panic!("defaults are invalid: {issues:?}"))
    }
}
