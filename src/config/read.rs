//! Stage one of reading the configuration: every key from the TOML table
//! or its `CONCIERGE_<SECTION>_<KEY>` override, parsed into its type and
//! range, each problem recorded against its key.

use super::*;

/// Reads typed keys from the table and the environment, collecting issues.
pub(super) struct Reader<'a> {
    pub(super) table: toml::Table,
    pub(super) env: &'a [(String, String)],
    pub(super) issues: Vec<ConfigIssue>,
    pub(super) known: BTreeSet<String>,
}

/// Where a raw value came from, for error messages.
pub(super) enum Raw {
    Toml(toml::Value),
    Env { name: String, value: String },
}

impl Reader<'_> {
    pub(super) fn read_all(&mut self) -> Config {
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

    pub(super) fn telegram(&mut self) -> TelegramConfig {
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

    pub(super) fn discord(&mut self) -> DiscordConfig {
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
    pub(super) fn chat_id(&mut self, section: &str, key: &str, negative: bool) -> Option<i64> {
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
    pub(super) fn agents(&mut self) -> Vec<AgentConfig> {
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

    /// A list of words from `allowed`: a TOML array, or comma-separated in the environment.
    pub(super) fn choice_list(
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
    pub(super) fn id_list(&mut self, section: &str, key: &str) -> Vec<u64> {
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

    pub(super) fn engine(&mut self) -> EngineConfig {
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

    pub(super) fn issue(&mut self, key: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn env_name(section: &str, key: &str) -> String {
        format!("{ENV_PREFIX}{}_{}", section, key).to_uppercase()
    }

    pub(super) fn raw(&mut self, section: &str, key: &str) -> Option<Raw> {
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

    pub(super) fn describe(raw: &Raw) -> String {
        match raw {
            Raw::Toml(value) => format!("got {value}"),
            Raw::Env { name, value } => format!("got {value:?} from {name}"),
        }
    }

    pub(super) fn parsed<T>(
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

    pub(super) fn string(&mut self, section: &str, key: &str, default: &str) -> String {
        self.parsed(section, key, default.to_string(), |raw| Ok(raw.to_string()))
    }

    pub(super) fn path(&mut self, section: &str, key: &str, default: &str) -> PathBuf {
        self.parsed(section, key, PathBuf::from(default), |raw| {
            if raw.trim().is_empty() {
                Err("expected a non-empty path".into())
            } else {
                Ok(PathBuf::from(raw))
            }
        })
    }

    /// A list of paths: a TOML array of strings, or comma-separated in the environment.
    pub(super) fn path_list(&mut self, section: &str, key: &str) -> Vec<PathBuf> {
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

    pub(super) fn optional_path(&mut self, section: &str, key: &str) -> Option<PathBuf> {
        self.parsed(section, key, None, |raw| Ok(Some(PathBuf::from(raw))))
    }

    pub(super) fn number(&mut self, section: &str, key: &str) -> Option<(f64, bool, Raw)> {
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

    pub(super) fn integer(
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

    pub(super) fn float(
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

    pub(super) fn boolean(&mut self, section: &str, key: &str, default: bool) -> bool {
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
    pub(super) fn secret(&mut self, section: &str, key: &str) -> Option<Secret> {
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
}
