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
    /// Findings that do not stop the program (a `CONCIERGE_` variable that
    /// matches no key); logged at start, errors under `config check --strict`.
    pub warnings: Vec<ConfigIssue>,
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
    /// Compute threads; 0 means one per available core.
    pub threads: usize,
    /// Script of the scripted backend.
    pub script_file: Option<PathBuf>,
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

/// Parses TOML text with environment overrides.
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
    let mut reader = Reader {
        table,
        env,
        issues: Vec::new(),
        known: BTreeSet::new(),
    };
    let mut config = reader.read_all();
    config.warnings = reader.check_unknown();
    if reader.issues.is_empty() {
        Ok(config)
    } else {
        Err(reader.issues)
    }
}

/// Reads typed keys from the table and the environment, collecting issues.
struct Reader<'a> {
    table: toml::Table,
    env: &'a [(String, String)],
    issues: Vec<ConfigIssue>,
    known: BTreeSet<String>,
}

/// Where a raw value came from, for error messages.
enum Raw {
    Toml(toml::Value),
    Env { name: String, value: String },
}

impl Reader<'_> {
    fn read_all(&mut self) -> Config {
        let store = StoreConfig {
            data_dir: self.path("store", "data_dir", "./data"),
        };
        let engine = self.engine();
        let chat = ChatConfig {
            default_locale: self.parsed("chat", "default_locale", Locale::En, |raw| {
                Locale::parse(raw).ok_or_else(|| "expected \"en\" or \"zh\"".to_string())
            }),
            prompts_dir: self.path("chat", "prompts_dir", "prompts"),
            max_message_chars: self.integer("chat", "max_message_chars", 4000, 1..=100_000),
            reply_timeout_secs: self.integer("chat", "reply_timeout_secs", 300, 1..=86_400) as u64,
        };
        let operator = OperatorConfig {
            enabled: self.boolean("operator", "enabled", true),
            listen: self
                .parsed("operator", "listen", "127.0.0.1:8686".parse().ok(), |raw| {
                    raw.parse::<SocketAddr>()
                        .map(Some)
                        .map_err(|_| "expected an address like 127.0.0.1:8686".to_string())
                })
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8686))),
            token: self.secret("operator", "token"),
        };
        let daemon = DaemonConfig {
            shutdown_deadline_secs: self.integer("daemon", "shutdown_deadline_secs", 10, 1..=3600)
                as u64,
        };
        let moderation = ModerationConfig {
            enabled: self.boolean("moderation", "enabled", true),
            messages_per_minute: self.integer("moderation", "messages_per_minute", 20, 1..=10_000)
                as u32,
            message_burst: self.integer("moderation", "message_burst", 8, 1..=1_000) as u32,
            presses_per_minute: self.integer("moderation", "presses_per_minute", 30, 1..=10_000)
                as u32,
            press_burst: self.integer("moderation", "press_burst", 10, 1..=1_000) as u32,
            notice_window_secs: self.integer("moderation", "notice_window_secs", 60, 1..=86_400)
                as u64,
            queue_per_conversation: self.integer(
                "moderation",
                "queue_per_conversation",
                100,
                1..=100_000,
            ),
        };
        let console = ConsoleConfig {
            enabled: self.boolean("console", "enabled", false),
            user: self.string("console", "user", "local"),
        };
        let log = LogConfig {
            level: self.string("log", "level", "info"),
            format: self.parsed("log", "format", LogFormat::Text, |raw| match raw {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected \"text\" or \"json\"".into()),
            }),
        };
        let knowledge = KnowledgeConfig {
            paths: self.path_list("knowledge", "paths"),
            demo: self.boolean("knowledge", "demo", true),
            demo_dir: self.path("knowledge", "demo_dir", "config/demo/kb"),
            top_k: self.integer("knowledge", "top_k", 3, 1..=20),
        };
        let recommend = RecommendConfig {
            demo: self.boolean("recommend", "demo", true),
            demo_catalog: self.path("recommend", "demo_catalog", "config/demo/catalog.csv"),
            retrain_minutes: self.integer("recommend", "retrain_minutes", 10, 1..=10_080) as u64,
        };
        let telegram = self.telegram();
        let discord = self.discord();
        let escalation = EscalationConfig {
            enabled: self.boolean("escalation", "enabled", true),
            intents_dir: self.path("escalation", "intents_dir", crate::intent::DEFAULT_DATA_DIR),
            auto_min_confidence: self.float("escalation", "auto_min_confidence", 0.9, 0.5..=1.0),
            sla_urgent_minutes: self.integer("escalation", "sla_urgent_minutes", 15, 1..=10_080)
                as u64,
            sla_high_minutes: self.integer("escalation", "sla_high_minutes", 60, 1..=10_080) as u64,
            sla_normal_minutes: self.integer("escalation", "sla_normal_minutes", 240, 1..=10_080)
                as u64,
            sla_remind_at: self.float("escalation", "sla_remind_at", 0.75, 0.05..=0.95),
            sla_check_secs: self.integer("escalation", "sla_check_secs", 30, 1..=3600) as u64,
            agents: self.agents(),
        };
        self.check_agent_spaces(&telegram, &discord, &escalation);
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&log.level) {
            self.issue("log.level", format!("not a valid filter: {err}"));
        }
        Config {
            store,
            engine,
            chat,
            operator,
            daemon,
            console,
            log,
            knowledge,
            recommend,
            telegram,
            discord,
            escalation,
            moderation,
            warnings: Vec::new(),
        }
    }

    fn require_token(&mut self, section: &str, enabled: bool, token: &Option<Secret>) {
        if enabled && token.is_none() {
            let upper = section.to_uppercase();
            self.issue(
                &format!("{section}.token"),
                format!("required when {section}.enabled = true: set CONCIERGE_{upper}_TOKEN or {section}.token_file"),
            );
        }
    }

    fn telegram(&mut self) -> TelegramConfig {
        let enabled = self.boolean("telegram", "enabled", false);
        let token = self.secret("telegram", "token");
        self.require_token("telegram", enabled, &token);
        let api_url = self.parsed(
            "telegram",
            "api_url",
            "https://api.telegram.org".to_string(),
            |raw| match url::Url::parse(raw) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(raw.to_string()),
                _ => Err("expected an http(s) URL like https://api.telegram.org".into()),
            },
        );
        let webhook = self.parsed("telegram", "mode", false, |raw| match raw {
            "polling" => Ok(false),
            "webhook" => Ok(true),
            _ => Err("expected \"polling\" or \"webhook\"".into()),
        });
        let webhook_url = self.parsed(
            "telegram",
            "webhook_url",
            None,
            |raw| match url::Url::parse(raw) {
                Ok(url) if url.scheme() == "https" => Ok(Some(raw.to_string())),
                _ => Err("expected a public https URL".into()),
            },
        );
        let listen = self
            .parsed("telegram", "listen", None, |raw| {
                raw.parse::<SocketAddr>()
                    .map(Some)
                    .map_err(|_| "expected an address like 127.0.0.1:8443".to_string())
            })
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
        let secret_token = self.secret("telegram", "secret_token");
        if let Some(secret) = &secret_token {
            let valid = secret.expose().len() <= 256
                && secret
                    .expose()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                self.issue(
                    "telegram.secret_token",
                    "Telegram allows 1-256 characters A-Z, a-z, 0-9, _ and -",
                );
            }
        }
        let mode = match (webhook, webhook_url) {
            (false, _) => TelegramMode::Polling,
            (true, Some(webhook_url)) => {
                if secret_token.is_none() {
                    // Without it anyone who finds the URL can post updates as any customer.
                    self.issue(
                        "telegram.secret_token",
                        "required when telegram.mode = \"webhook\": set CONCIERGE_TELEGRAM_SECRET_TOKEN or telegram.secret_token_file",
                    );
                }
                TelegramMode::Webhook {
                    webhook_url,
                    listen,
                    secret_token,
                }
            }
            (true, None) => {
                self.issue(
                    "telegram.webhook_url",
                    "required when telegram.mode = \"webhook\"",
                );
                TelegramMode::Polling
            }
        };
        let triggers = self.choice_list(
            "telegram",
            "group_triggers",
            &["mention", "reply", "command"],
            &["mention", "reply", "command"],
        );
        TelegramConfig {
            enabled,
            token,
            api_url,
            mode,
            group_mention: triggers.contains("mention"),
            group_reply: triggers.contains("reply"),
            group_command: triggers.contains("command"),
            poll_timeout_secs: self.integer("telegram", "poll_timeout_secs", 25, 1..=50) as u32,
            edit_interval_ms: self.integer("telegram", "edit_interval_ms", 1000, 1000..=60_000)
                as u64,
            agents_chat_id: self.chat_id("telegram", "agents_chat_id", true),
        }
    }

    fn discord(&mut self) -> DiscordConfig {
        let enabled = self.boolean("discord", "enabled", false);
        let token = self.secret("discord", "token");
        self.require_token("discord", enabled, &token);
        let api_url = self.parsed("discord", "api_url", None, |raw| {
            match url::Url::parse(raw) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.path() == "/" => {
                    Ok(Some(raw.trim_end_matches('/').to_string()))
                }
                _ => Err("expected a base URL without a path, like http://127.0.0.1:3000".into()),
            }
        });
        let channels = self.id_list("discord", "channels");
        let respond_to = self.choice_list(
            "discord",
            "respond_to",
            &["mentions", "dms", "channels"],
            &["mentions", "dms", "channels"],
        );
        DiscordConfig {
            enabled,
            token,
            api_url,
            channels,
            respond_to_mentions: respond_to.contains("mentions"),
            respond_to_dms: respond_to.contains("dms"),
            respond_to_channels: respond_to.contains("channels"),
            edit_interval_ms: self.integer("discord", "edit_interval_ms", 1000, 1000..=60_000)
                as u64,
            agents_channel_id: self
                .chat_id("discord", "agents_channel_id", false)
                .map(|id| id as u64),
        }
    }

    /// One chat or channel id: a TOML integer or string, or the environment.
    /// Telegram groups have negative ids; Discord's never are.
    fn chat_id(&mut self, section: &str, key: &str, negative: bool) -> Option<i64> {
        let raw = self.raw(section, key)?;
        let parsed = match &raw {
            Raw::Toml(toml::Value::Integer(id)) => Some(*id),
            Raw::Toml(toml::Value::String(text)) | Raw::Env { value: text, .. } => {
                text.trim().parse::<i64>().ok()
            }
            Raw::Toml(_) => None,
        };
        match parsed {
            Some(id) if id != 0 && (negative || id > 0) => Some(id),
            _ => {
                let expected = if negative {
                    "expected a chat id like -1001234567890 (see README: agents' spaces)"
                } else {
                    "expected a channel id like 123456789012345678"
                };
                let why = format!("{expected}, {}", Self::describe(&raw));
                self.issue(&format!("{section}.{key}"), why);
                None
            }
        }
    }

    /// `[escalation.agents]`: `name = ["telegram:ID", "discord:ID"]`, or in
    /// the environment `name=telegram:ID discord:ID;other=…`.
    fn agents(&mut self) -> Vec<AgentConfig> {
        const KEY: &str = "escalation.agents";
        let entries: Vec<(String, Vec<String>)> = match self.raw("escalation", "agents") {
            None => return Vec::new(),
            Some(Raw::Env { value, .. }) => value
                .split(';')
                .filter(|entry| !entry.trim().is_empty())
                .map(|entry| {
                    let (name, identities) = entry.split_once('=').unwrap_or((entry, ""));
                    (
                        name.trim().to_string(),
                        identities
                            .split([' ', ','])
                            .filter(|part| !part.is_empty())
                            .map(str::to_string)
                            .collect(),
                    )
                })
                .collect(),
            Some(Raw::Toml(toml::Value::Table(table))) => {
                let mut entries = Vec::new();
                for (name, identities) in table {
                    let list: Option<Vec<String>> = identities.as_array().and_then(|items| {
                        items
                            .iter()
                            .map(|item| item.as_str().map(str::to_string))
                            .collect()
                    });
                    match list {
                        Some(list) => entries.push((name.clone(), list)),
                        None => self.issue(
                            &format!("{KEY}.{name}"),
                            "expected a list like [\"telegram:5551234\", \"discord:123456789012345678\"]",
                        ),
                    }
                }
                entries
            }
            Some(raw) => {
                let why = format!(
                    "expected a table of agent names, like alice = [\"telegram:5551234\"], {}",
                    Self::describe(&raw)
                );
                self.issue(KEY, why);
                return Vec::new();
            }
        };
        let mut agents: Vec<AgentConfig> = Vec::new();
        for (name, identities) in entries {
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|ch| ch.is_alphanumeric() || matches!(ch, '_' | '-' | '.'));
            if !valid_name {
                self.issue(
                    KEY,
                    format!("agent name {name:?}: use letters, digits, _, - and . only"),
                );
                continue;
            }
            let mut parsed = Vec::new();
            for identity in identities {
                let valid = identity.split_once(':').filter(|(platform, id)| {
                    matches!(*platform, "telegram" | "discord")
                        && id.parse::<u64>().is_ok_and(|id| id > 0)
                });
                match valid {
                    Some((platform, id)) => parsed.push((platform.to_string(), id.to_string())),
                    None => self.issue(
                        &format!("{KEY}.{name}"),
                        format!("{identity:?}: expected \"telegram:USER_ID\" or \"discord:USER_ID\" (numeric ids)"),
                    ),
                }
            }
            for (platform, id) in &parsed {
                if let Some(other) = agents
                    .iter()
                    .find(|agent| agent.identities.contains(&(platform.clone(), id.clone())))
                {
                    let why = format!("{platform}:{id} is already agent {}", other.name);
                    self.issue(&format!("{KEY}.{name}"), why);
                }
            }
            agents.push(AgentConfig {
                name,
                identities: parsed,
            });
        }
        agents
    }

    /// An agents' space without an agent who can answer there is a mistake.
    fn check_agent_spaces(
        &mut self,
        telegram: &TelegramConfig,
        discord: &DiscordConfig,
        escalation: &EscalationConfig,
    ) {
        let spaces = [
            (
                "telegram",
                "telegram.agents_chat_id",
                telegram.agents_chat_id.is_some(),
            ),
            (
                "discord",
                "discord.agents_channel_id",
                discord.agents_channel_id.is_some(),
            ),
        ];
        for (platform, key, configured) in spaces {
            let someone = escalation
                .agents
                .iter()
                .any(|agent| agent.identities.iter().any(|(on, _)| on == platform));
            if configured && escalation.enabled && !someone {
                self.issue(
                    "escalation.agents",
                    format!("{key} is set but no agent has a {platform} account: add one, e.g. alice = [\"{platform}:USER_ID\"]"),
                );
            }
        }
    }

    /// A list of words from `allowed`: a TOML array, or comma-separated in the environment.
    fn choice_list(
        &mut self,
        section: &str,
        key: &str,
        allowed: &[&str],
        default: &[&str],
    ) -> BTreeSet<String> {
        let full_key = format!("{section}.{key}");
        let words: Option<Vec<String>> = match self.raw(section, key) {
            None => return default.iter().map(|word| word.to_string()).collect(),
            Some(Raw::Env { value, .. }) => Some(
                value
                    .split(',')
                    .map(|part| part.trim().to_string())
                    .filter(|part| !part.is_empty())
                    .collect(),
            ),
            Some(Raw::Toml(toml::Value::Array(items))) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect(),
            Some(_) => None,
        };
        let expected = format!(
            "expected a list of {}",
            allowed
                .iter()
                .map(|word| format!("\"{word}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let Some(words) = words else {
            self.issue(&full_key, expected);
            return default.iter().map(|word| word.to_string()).collect();
        };
        let unknown: Vec<&String> = words
            .iter()
            .filter(|word| !allowed.contains(&word.as_str()))
            .collect();
        if !unknown.is_empty() {
            let why = format!("{expected}; unknown: {unknown:?}");
            self.issue(&full_key, why);
        }
        words.into_iter().collect()
    }

    /// A list of numeric ids: TOML integers or strings, or comma-separated in the environment.
    fn id_list(&mut self, section: &str, key: &str) -> Vec<u64> {
        let full_key = format!("{section}.{key}");
        let parse = |text: &str| text.trim().parse::<u64>().ok().filter(|id| *id != 0);
        let ids: Option<Vec<u64>> = match self.raw(section, key) {
            None => return Vec::new(),
            Some(Raw::Env { value, .. }) => value
                .split(',')
                .filter(|part| !part.trim().is_empty())
                .map(parse)
                .collect(),
            Some(Raw::Toml(toml::Value::Array(items))) => items
                .iter()
                .map(|item| match item {
                    toml::Value::Integer(id) if *id > 0 => Some(*id as u64),
                    toml::Value::String(text) => parse(text),
                    _ => None,
                })
                .collect(),
            Some(_) => None,
        };
        ids.unwrap_or_else(|| {
            self.issue(&full_key, "expected a list of numeric ids");
            Vec::new()
        })
    }

    fn engine(&mut self) -> EngineConfig {
        let backend = self.parsed("engine", "backend", EngineBackend::Auto, |raw| match raw {
            "auto" => Ok(EngineBackend::Auto),
            "cpu" => Ok(EngineBackend::Cpu),
            "mistralrs" => Ok(EngineBackend::Mistralrs),
            "scripted" => Ok(EngineBackend::Scripted),
            _ => Err("expected \"auto\", \"cpu\", \"mistralrs\" or \"scripted\"".into()),
        });
        let engine = EngineConfig {
            backend,
            model_path: self.path(
                "engine",
                "model_path",
                "models/SmolLM2-135M-Instruct.Q4_1.gguf",
            ),
            auto_fetch: self.boolean("engine", "auto_fetch", true),
            convert_to: self.parsed("engine", "convert_to", ConvertTo::Q8_0, |raw| match raw {
                "none" => Ok(ConvertTo::None),
                "q8_0" => Ok(ConvertTo::Q8_0),
                _ => Err("expected \"q8_0\" or \"none\"".into()),
            }),
            max_tokens: self.integer("engine", "max_tokens", 256, 1..=32_768),
            temperature: self.float("engine", "temperature", 0.3, 0.0..=2.0),
            top_p: self.float("engine", "top_p", 0.9, 0.01..=1.0),
            top_k: self.integer("engine", "top_k", 0, 0..=1_000_000),
            seed: match self.integer("engine", "seed", usize::MAX, 0..=usize::MAX) {
                usize::MAX => None,
                seed => Some(seed as u64),
            },
            repetition_penalty: self.float("engine", "repetition_penalty", 1.15, 1.0..=2.0),
            context_tokens: self.integer("engine", "context_tokens", 2048, 128..=1_048_576),
            max_num_seqs: self.integer("engine", "max_num_seqs", 4, 1..=256),
            prefix_cache: self.integer("engine", "prefix_cache", 16, 0..=4096),
            kv_cache_mb: self.integer("engine", "kv_cache_mb", 1024, 16..=1_048_576),
            threads: self.integer("engine", "threads", 0, 0..=1024),
            script_file: self.optional_path("engine", "script_file"),
        };
        if engine.max_tokens * 2 > engine.context_tokens {
            self.issue(
                "engine.max_tokens",
                format!(
                    "{} leaves too little room for the prompt: keep it at most half of engine.context_tokens ({})",
                    engine.max_tokens, engine.context_tokens
                ),
            );
        }
        if backend == EngineBackend::Scripted && engine.script_file.is_none() {
            self.issue(
                "engine.script_file",
                "required when engine.backend = \"scripted\"",
            );
        }
        engine
    }

    fn issue(&mut self, key: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn env_name(section: &str, key: &str) -> String {
        format!("{ENV_PREFIX}{}_{}", section, key).to_uppercase()
    }

    fn raw(&mut self, section: &str, key: &str) -> Option<Raw> {
        self.known.insert(format!("{section}.{key}"));
        let name = Self::env_name(section, key);
        if let Some((_, value)) = self.env.iter().rev().find(|(env, _)| *env == name) {
            return Some(Raw::Env {
                name,
                value: value.clone(),
            });
        }
        self.table
            .get(section)
            .and_then(|value| value.as_table())
            .and_then(|table| table.get(key))
            .cloned()
            .map(Raw::Toml)
    }

    fn describe(raw: &Raw) -> String {
        match raw {
            Raw::Toml(value) => format!("got {value}"),
            Raw::Env { name, value } => format!("got {value:?} from {name}"),
        }
    }

    fn parsed<T>(
        &mut self,
        section: &str,
        key: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        let full_key = format!("{section}.{key}");
        match self.raw(section, key) {
            None => default,
            Some(raw) => {
                let text = match &raw {
                    Raw::Toml(toml::Value::String(text)) => Some(text.clone()),
                    Raw::Env { value, .. } => Some(value.clone()),
                    Raw::Toml(_) => None,
                };
                match text.map(|text| parse(&text)) {
                    Some(Ok(value)) => value,
                    Some(Err(why)) => {
                        self.issue(&full_key, format!("{why}, {}", Self::describe(&raw)));
                        default
                    }
                    None => {
                        self.issue(
                            &full_key,
                            format!("expected a string, {}", Self::describe(&raw)),
                        );
                        default
                    }
                }
            }
        }
    }

    fn string(&mut self, section: &str, key: &str, default: &str) -> String {
        self.parsed(section, key, default.to_string(), |raw| Ok(raw.to_string()))
    }

    fn path(&mut self, section: &str, key: &str, default: &str) -> PathBuf {
        self.parsed(section, key, PathBuf::from(default), |raw| {
            if raw.trim().is_empty() {
                Err("expected a non-empty path".into())
            } else {
                Ok(PathBuf::from(raw))
            }
        })
    }

    /// A list of paths: a TOML array of strings, or comma-separated in the environment.
    fn path_list(&mut self, section: &str, key: &str) -> Vec<PathBuf> {
        let full_key = format!("{section}.{key}");
        match self.raw(section, key) {
            None => Vec::new(),
            Some(Raw::Env { value, .. }) => value
                .split(',')
                .map(str::trim)
                .filter(|part| !part.is_empty())
                .map(PathBuf::from)
                .collect(),
            Some(Raw::Toml(toml::Value::Array(items))) => {
                let paths: Option<Vec<PathBuf>> = items
                    .iter()
                    .map(|item| item.as_str().map(PathBuf::from))
                    .collect();
                paths.unwrap_or_else(|| {
                    self.issue(&full_key, "expected a list of path strings");
                    Vec::new()
                })
            }
            Some(raw) => {
                let why = format!("expected a list of path strings, {}", Self::describe(&raw));
                self.issue(&full_key, why);
                Vec::new()
            }
        }
    }

    fn optional_path(&mut self, section: &str, key: &str) -> Option<PathBuf> {
        self.parsed(section, key, None, |raw| Ok(Some(PathBuf::from(raw))))
    }

    fn number(&mut self, section: &str, key: &str) -> Option<(f64, bool, Raw)> {
        let raw = self.raw(section, key)?;
        let full_key = format!("{section}.{key}");
        let parsed = match &raw {
            Raw::Toml(toml::Value::Integer(value)) => Some((*value as f64, true)),
            Raw::Toml(toml::Value::Float(value)) => Some((*value, false)),
            Raw::Toml(_) => None,
            Raw::Env { value, .. } => match value.trim().parse::<i64>() {
                Ok(int) => Some((int as f64, true)),
                Err(_) => value.trim().parse::<f64>().ok().map(|float| (float, false)),
            },
        };
        match parsed {
            Some((value, is_integer)) => Some((value, is_integer, raw)),
            None => {
                let why = format!("expected a number, {}", Self::describe(&raw));
                self.issue(&full_key, why);
                None
            }
        }
    }

    fn integer(
        &mut self,
        section: &str,
        key: &str,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> usize {
        let Some((value, is_integer, raw)) = self.number(section, key) else {
            return default;
        };
        let full_key = format!("{section}.{key}");
        if !is_integer || value < *range.start() as f64 || value > *range.end() as f64 {
            let why = format!(
                "expected a whole number from {} to {}, {}",
                range.start(),
                range.end(),
                Self::describe(&raw)
            );
            self.issue(&full_key, why);
            return default;
        }
        value as usize
    }

    fn float(
        &mut self,
        section: &str,
        key: &str,
        default: f64,
        range: std::ops::RangeInclusive<f64>,
    ) -> f64 {
        let Some((value, _, raw)) = self.number(section, key) else {
            return default;
        };
        if !range.contains(&value) {
            let why = format!(
                "expected a number from {} to {}, {}",
                range.start(),
                range.end(),
                Self::describe(&raw)
            );
            self.issue(&format!("{section}.{key}"), why);
            return default;
        }
        value
    }

    fn boolean(&mut self, section: &str, key: &str, default: bool) -> bool {
        let full_key = format!("{section}.{key}");
        match self.raw(section, key) {
            None => default,
            Some(Raw::Toml(toml::Value::Boolean(value))) => value,
            Some(Raw::Env { value, .. }) if matches!(value.as_str(), "true" | "1" | "yes") => true,
            Some(Raw::Env { value, .. }) if matches!(value.as_str(), "false" | "0" | "no") => false,
            Some(raw) => {
                let why = format!("expected true or false, {}", Self::describe(&raw));
                self.issue(&full_key, why);
                default
            }
        }
    }

    /// A secret from `key` (environment or file) or from `key_file`.
    fn secret(&mut self, section: &str, key: &str) -> Option<Secret> {
        let from_env = self
            .env
            .iter()
            .any(|(name, _)| *name == Self::env_name(section, key));
        let direct = self.parsed(section, key, None, |raw| Ok(Some(raw.to_string())));
        let file_key = format!("{key}_file");
        let file = self.optional_path(section, &file_key);
        // The environment overrides the file, a `*_file` included.
        let file = if from_env { None } else { file };
        match (direct, file) {
            (Some(_), Some(_)) => {
                self.issue(
                    &format!("{section}.{key}"),
                    format!("set either {section}.{key} or {section}.{file_key}, not both"),
                );
                None
            }
            (Some(value), None) if value.trim().is_empty() => {
                self.issue(&format!("{section}.{key}"), "is empty");
                None
            }
            (Some(value), None) => Some(Secret::new(value.trim())),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(value) if !value.trim().is_empty() => Some(Secret::new(value.trim())),
                Ok(_) => {
                    self.issue(
                        &format!("{section}.{file_key}"),
                        format!("{} is empty", path.display()),
                    );
                    None
                }
                Err(err) => {
                    self.issue(
                        &format!("{section}.{file_key}"),
                        format!("cannot read {}: {err}", path.display()),
                    );
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// Records unknown keys of the file as issues, and returns the stray
    /// environment variables as warnings.
    fn check_unknown(&mut self) -> Vec<ConfigIssue> {
        let mut unknown = Vec::new();
        let sections: BTreeSet<String> = self
            .known
            .iter()
            .filter_map(|key| key.split_once('.').map(|(section, _)| section.to_string()))
            .collect();
        for (section, value) in &self.table {
            match value.as_table() {
                Some(table) if sections.contains(section) => {
                    for key in table.keys() {
                        if !self.known.contains(&format!("{section}.{key}")) {
                            unknown.push(format!("{section}.{key}"));
                        }
                    }
                }
                Some(_) => unknown.push(section.clone()),
                None => unknown.push(section.clone()),
            }
        }
        for key in unknown {
            self.issue(
                &key,
                "unknown key (see the configuration reference in README.md)",
            );
        }
        let known_env: BTreeSet<String> = self
            .known
            .iter()
            .filter_map(|key| key.split_once('.'))
            .map(|(section, key)| Self::env_name(section, key))
            .collect();
        self.env
            .iter()
            .map(|(name, _)| name)
            .filter(|name| name.starts_with(ENV_PREFIX) && !known_env.contains(*name))
            .filter(|name| !is_service_link(name))
            .map(|name| {
                let closest = known_env
                    .iter()
                    .map(|known| (strsim::levenshtein(name, known), known))
                    .min()
                    .filter(|(distance, _)| *distance <= 3);
                let message = match closest {
                    Some((_, known)) => format!(
                        "environment variable matches no configuration key (did you mean {known}?)"
                    ),
                    None => "environment variable matches no configuration key".to_string(),
                };
                ConfigIssue {
                    key: name.clone(),
                    message,
                }
            })
            .collect()
    }
}

/// Whether `name` has the shape of the variables Kubernetes injects for a
/// Service (for one named `concierge`: `CONCIERGE_SERVICE_HOST`,
/// `CONCIERGE_SERVICE_PORT[_NAME]`, `CONCIERGE_PORT`,
/// `CONCIERGE_PORT_8686_TCP[_PROTO|_PORT|_ADDR]`; other Services add their
/// name, `CONCIERGE_API_SERVICE_HOST`).
fn is_service_link(name: &str) -> bool {
    if name.ends_with("_SERVICE_HOST") || name.ends_with("_PORT") {
        return true;
    }
    if name.contains("_SERVICE_PORT") {
        return true;
    }
    let parts: Vec<&str> = name.split('_').collect();
    parts.windows(3).any(|window| {
        window[0] == "PORT"
            && !window[1].is_empty()
            && window[1].bytes().all(|byte| byte.is_ascii_digit())
            && matches!(window[2], "TCP" | "UDP" | "SCTP")
    })
}

impl Config {
    /// The configuration with every default.
    pub fn defaults() -> Self {
        parse("", &[]).unwrap_or_else(|issues| panic!("defaults are invalid: {issues:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::defaults();
        assert_eq!(config.store.data_dir, PathBuf::from("./data"));
        assert_eq!(config.operator.listen.to_string(), "127.0.0.1:8686");
        assert_eq!(config.engine.convert_to, ConvertTo::Q8_0);
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let text = r#"
            [engine]
            max_tokens = -3
            temperature = "hot"
            bogus = 1
            [operator]
            listen = "nowhere"
            [chat]
            default_locale = "fr"
            [mystery]
            x = 1
        "#;
        let issues = parse(text, &[]).unwrap_err();
        let keys: Vec<&str> = issues.iter().map(|issue| issue.key.as_str()).collect();
        for key in [
            "engine.max_tokens",
            "engine.temperature",
            "engine.bogus",
            "operator.listen",
            "chat.default_locale",
            "mystery",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let text = "[engine]\nmax_tokens = 100\n";
        let config = parse(text, &env(&[("CONCIERGE_ENGINE_MAX_TOKENS", "64")])).unwrap();
        assert_eq!(config.engine.max_tokens, 64);
        let issues = parse(text, &env(&[("CONCIERGE_ENGINE_MAX_TOKENS", "lots")])).unwrap_err();
        assert_eq!(issues[0].key, "engine.max_tokens");
        assert!(issues[0].message.contains("CONCIERGE_ENGINE_MAX_TOKENS"));
        // A typo is a warning naming the closest key, not an error.
        let config = parse("", &env(&[("CONCIERGE_ENGINE_MAX_TOKEN", "1")])).unwrap();
        assert_eq!(config.warnings.len(), 1);
        assert_eq!(config.warnings[0].key, "CONCIERGE_ENGINE_MAX_TOKEN");
        assert!(config.warnings[0]
            .message
            .contains("did you mean CONCIERGE_ENGINE_MAX_TOKENS?"));
        let config = parse("", &env(&[("CONCIERGE_NOTHING_LIKE_THIS", "1")])).unwrap();
        assert!(!config.warnings[0].message.contains("did you mean"));
    }

    #[test]
    fn kubernetes_service_links_are_ignored() {
        let injected = [
            ("CONCIERGE_SERVICE_HOST", "10.0.0.1"),
            ("CONCIERGE_SERVICE_PORT", "8686"),
            ("CONCIERGE_SERVICE_PORT_HTTP", "8686"),
            ("CONCIERGE_PORT", "tcp://10.0.0.1:8686"),
            ("CONCIERGE_PORT_8686_TCP", "tcp://10.0.0.1:8686"),
            ("CONCIERGE_PORT_8686_TCP_PROTO", "tcp"),
            ("CONCIERGE_PORT_8686_TCP_PORT", "8686"),
            ("CONCIERGE_PORT_8686_TCP_ADDR", "10.0.0.1"),
            ("CONCIERGE_API_SERVICE_HOST", "10.0.0.2"),
            ("CONCIERGE_API_PORT_80_UDP", "udp://10.0.0.2:80"),
        ];
        let config = parse("", &env(&injected)).unwrap();
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        // A real key still applies beside them.
        let mut with_key = injected.to_vec();
        with_key.push(("CONCIERGE_ENGINE_MAX_TOKENS", "64"));
        assert_eq!(parse("", &env(&with_key)).unwrap().engine.max_tokens, 64);
    }

    #[test]
    fn secrets_come_from_env_or_file_and_are_never_printed() {
        let config = parse("", &env(&[("CONCIERGE_OPERATOR_TOKEN", "s3cr3t-value")])).unwrap();
        let token = config.operator.token.clone().unwrap();
        assert_eq!(token.expose(), "s3cr3t-value");
        assert!(!format!("{config:?}").contains("s3cr3t-value"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let text = format!(
            "[operator]\ntoken_file = {:?}\n",
            file.display().to_string()
        );
        let config = parse(&text, &[]).unwrap();
        assert_eq!(config.operator.token.unwrap().expose(), "from-file");

        let config = parse(&text, &env(&[("CONCIERGE_OPERATOR_TOKEN", "from-env")])).unwrap();
        assert_eq!(
            config.operator.token.unwrap().expose(),
            "from-env",
            "env overrides token_file"
        );

        let text = "[operator]\ntoken_file = \"/nonexistent/token\"\n";
        let issues = parse(text, &[]).unwrap_err();
        assert_eq!(issues[0].key, "operator.token_file");
    }

    #[test]
    fn malformed_toml_is_one_clear_error() {
        let issues = parse("[engine\nmax_tokens = ", &[]).unwrap_err();
        assert_eq!(issues.len(), 1);
        assert!(issues[0].message.contains("not valid TOML"));
    }

    #[test]
    fn max_tokens_must_fit_the_context() {
        let issues =
            parse("[engine]\nmax_tokens = 2000\ncontext_tokens = 2048\n", &[]).unwrap_err();
        assert_eq!(issues[0].key, "engine.max_tokens");
    }

    #[test]
    fn agents_and_their_spaces_are_read_and_checked() {
        let text = "[telegram]\nagents_chat_id = -1001234567890\n\
                    [discord]\nagents_channel_id = \"900000000000000009\"\n\
                    [escalation.agents]\nalice = [\"telegram:5551\", \"discord:900000000000000007\"]\nbo = [\"telegram:5552\"]\n";
        let config = parse(text, &[]).unwrap();
        assert_eq!(config.telegram.agents_chat_id, Some(-1_001_234_567_890));
        assert_eq!(
            config.discord.agents_channel_id,
            Some(900_000_000_000_000_009)
        );
        let alice = &config.escalation.agents[0];
        assert_eq!(alice.name, "alice");
        assert_eq!(
            alice.identities,
            [
                ("telegram".to_string(), "5551".to_string()),
                ("discord".to_string(), "900000000000000007".to_string())
            ]
        );

        let config = parse(
            "[telegram]\nagents_chat_id = -100\n",
            &env(&[(
                "CONCIERGE_ESCALATION_AGENTS",
                "alice=telegram:1 discord:2; bo=telegram:3",
            )]),
        )
        .unwrap();
        assert_eq!(config.escalation.agents.len(), 2);
        assert_eq!(
            config.escalation.agents[1].identities,
            [("telegram".to_string(), "3".to_string())]
        );

        // A space nobody can answer in, a bad id, a bad account, a shared account.
        let issues = parse("[telegram]\nagents_chat_id = -100\n", &[]).unwrap_err();
        assert_eq!(issues[0].key, "escalation.agents");
        assert!(issues[0].message.contains("telegram.agents_chat_id"));
        let issues = parse("[discord]\nagents_channel_id = -5\n", &[]).unwrap_err();
        assert_eq!(issues[0].key, "discord.agents_channel_id");
        let issues = parse("[escalation.agents]\nalice = [\"slack:1\"]\n", &[]).unwrap_err();
        assert_eq!(issues[0].key, "escalation.agents.alice");
        let issues = parse(
            "[escalation.agents]\nalice = [\"telegram:1\"]\nbo = [\"telegram:1\"]\n",
            &[],
        )
        .unwrap_err();
        assert!(
            issues[0].message.contains("already agent alice"),
            "{issues:?}"
        );
        let issues = parse("[escalation]\nagents = [\"alice\"]\n", &[]).unwrap_err();
        assert_eq!(issues[0].key, "escalation.agents");
    }
}
