//! Stage two of reading the configuration: the raw values of stage one
//! (`raw.rs`) checked key by key (ranges, choices, URLs, secrets) and given
//! their defaults, each problem recorded against its key; the checks across
//! keys are in `check.rs`.

use super::raw::{Agents, Given, IdList, IdText, List, Number, OneOrList, RawConfig, Written};
use super::*;

/// Turns a `RawConfig` into a `Config`, collecting issues.
pub(super) struct Reader<'a> {
    pub(super) raw: &'a RawConfig,
    pub(super) issues: Vec<ConfigIssue>,
}

impl Reader<'_> {
    pub(super) fn read_all(&mut self) -> Config {
        let raw = self.raw;
        let store = StoreConfig {
            data_dir: self.path(&raw.store.data_dir, "./data"),
        };
        let engine = self.engine();
        let chat = ChatConfig {
            default_locale: self.parsed(&raw.chat.default_locale, Locale::En, |raw| {
                Locale::parse(raw).ok_or_else(|| "expected \"en\" or \"zh\"".to_string())
            }),
            prompts_dir: self.path(&raw.chat.prompts_dir, "prompts"),
            max_message_chars: self.integer(&raw.chat.max_message_chars, 4000, 1..=100_000),
            reply_timeout_secs: self.integer(&raw.chat.reply_timeout_secs, 300, 1..=86_400) as u64,
        };
        let operator = OperatorConfig {
            enabled: self.boolean(&raw.operator.enabled, true),
            listen: self
                .parsed(&raw.operator.listen, "127.0.0.1:8686".parse().ok(), |raw| {
                    raw.parse::<SocketAddr>()
                        .map(Some)
                        .map_err(|_| "expected an address like 127.0.0.1:8686".to_string())
                })
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8686))),
            token: self.secret(&raw.operator.token, &raw.operator.token_file),
        };
        let daemon = DaemonConfig {
            shutdown_deadline_secs: self.integer(&raw.daemon.shutdown_deadline_secs, 10, 1..=3600)
                as u64,
        };
        let moderation = ModerationConfig {
            enabled: self.boolean(&raw.moderation.enabled, true),
            messages_per_minute: self.integer(&raw.moderation.messages_per_minute, 20, 1..=10_000)
                as u32,
            message_burst: self.integer(&raw.moderation.message_burst, 8, 1..=1_000) as u32,
            presses_per_minute: self.integer(&raw.moderation.presses_per_minute, 30, 1..=10_000)
                as u32,
            press_burst: self.integer(&raw.moderation.press_burst, 10, 1..=1_000) as u32,
            notice_window_secs: self.integer(&raw.moderation.notice_window_secs, 60, 1..=86_400)
                as u64,
            queue_per_conversation: self.integer(
                &raw.moderation.queue_per_conversation,
                100,
                1..=100_000,
            ),
        };
        let console = ConsoleConfig {
            enabled: self.boolean(&raw.console.enabled, false),
            user: self.string(&raw.console.user, "local"),
        };
        let log = LogConfig {
            level: self.string(&raw.log.level, "info"),
            format: self.parsed(&raw.log.format, LogFormat::Text, |raw| match raw {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected \"text\" or \"json\"".into()),
            }),
        };
        let knowledge = KnowledgeConfig {
            paths: self.path_list(&raw.knowledge.paths),
            demo: self.boolean(&raw.knowledge.demo, true),
            demo_dir: self.path(&raw.knowledge.demo_dir, "config/demo/kb"),
            top_k: self.integer(&raw.knowledge.top_k, 3, 1..=20),
            semantic: self.boolean(&raw.knowledge.semantic, true),
            embedder_path: self.path(
                &raw.knowledge.embedder_path,
                "models/multilingual-e5-small.q4.bin",
            ),
        };
        let recommend = RecommendConfig {
            demo: self.boolean(&raw.recommend.demo, true),
            demo_catalog: self.path(&raw.recommend.demo_catalog, "config/demo/catalog.csv"),
            retrain_minutes: self.integer(&raw.recommend.retrain_minutes, 10, 1..=10_080) as u64,
        };
        let telegram = self.telegram();
        let discord = self.discord();
        let escalation = EscalationConfig {
            enabled: self.boolean(&raw.escalation.enabled, true),
            intents_dir: self.path(&raw.escalation.intents_dir, crate::intent::DEFAULT_DATA_DIR),
            auto_min_confidence: self.float(&raw.escalation.auto_min_confidence, 0.9, 0.5..=1.0),
            model_tiebreak: self.boolean(&raw.escalation.model_tiebreak, false),
            meaning_tiebreak: self.boolean(&raw.escalation.meaning_tiebreak, false),
            tiebreak_from: self.float(&raw.escalation.tiebreak_from, 0.3, 0.0..=1.0),
            sla_urgent_minutes: self.integer(&raw.escalation.sla_urgent_minutes, 15, 1..=10_080)
                as u64,
            sla_high_minutes: self.integer(&raw.escalation.sla_high_minutes, 60, 1..=10_080) as u64,
            sla_normal_minutes: self.integer(&raw.escalation.sla_normal_minutes, 240, 1..=10_080)
                as u64,
            sla_remind_at: self.float(&raw.escalation.sla_remind_at, 0.75, 0.05..=0.95),
            sla_check_secs: self.integer(&raw.escalation.sla_check_secs, 30, 1..=3600) as u64,
            agents: self.agents(&raw.escalation.agents),
        };
        let privacy = PrivacyConfig {
            retention_days: self.integer(&raw.privacy.retention_days, 0, 0..=36_500) as u32,
            require_start: self.boolean(&raw.privacy.require_start, false),
            redact: self
                .choice_list(
                    &raw.privacy.redact,
                    &["card", "iban", "email", "phone"],
                    &["card", "iban"],
                )
                .iter()
                .filter_map(|name| crate::privacy::redact::Kind::parse(name))
                .collect(),
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
            privacy,
            warnings: Vec::new(),
        }
    }

    pub(super) fn telegram(&mut self) -> TelegramConfig {
        let raw = self.raw;
        let enabled = self.boolean(&raw.telegram.enabled, false);
        let token = self.secret(&raw.telegram.token, &raw.telegram.token_file);
        self.require_token("telegram", enabled, &token);
        let api_url = self.parsed(
            &raw.telegram.api_url,
            "https://api.telegram.org".to_string(),
            |raw| match url::Url::parse(raw) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(raw.to_string()),
                _ => Err("expected an http(s) URL like https://api.telegram.org".into()),
            },
        );
        let webhook = self.parsed(&raw.telegram.mode, false, |raw| match raw {
            "polling" => Ok(false),
            "webhook" => Ok(true),
            _ => Err("expected \"polling\" or \"webhook\"".into()),
        });
        let webhook_url = self.parsed(
            &raw.telegram.webhook_url,
            None,
            |raw| match url::Url::parse(raw) {
                Ok(url) if url.scheme() == "https" => Ok(Some(raw.to_string())),
                _ => Err("expected a public https URL".into()),
            },
        );
        let listen = self
            .parsed(&raw.telegram.listen, None, |raw| {
                raw.parse::<SocketAddr>()
                    .map(Some)
                    .map_err(|_| "expected an address like 127.0.0.1:8443".to_string())
            })
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
        let secret_token = self.secret(&raw.telegram.secret_token, &raw.telegram.secret_token_file);
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
            &raw.telegram.group_triggers,
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
            poll_timeout_secs: self.integer(&raw.telegram.poll_timeout_secs, 25, 1..=50) as u32,
            edit_interval_ms: self.integer(&raw.telegram.edit_interval_ms, 1000, 1000..=60_000)
                as u64,
            agents_chat_id: self.chat_id(&raw.telegram.agents_chat_id, true),
        }
    }

    pub(super) fn discord(&mut self) -> DiscordConfig {
        let raw = self.raw;
        let enabled = self.boolean(&raw.discord.enabled, false);
        let token = self.secret(&raw.discord.token, &raw.discord.token_file);
        self.require_token("discord", enabled, &token);
        let api_url = self.parsed(&raw.discord.api_url, None, |raw| {
            match url::Url::parse(raw) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.path() == "/" => {
                    Ok(Some(raw.trim_end_matches('/').to_string()))
                }
                _ => Err("expected a base URL without a path, like http://127.0.0.1:3000".into()),
            }
        });
        let channels = self.id_list(&raw.discord.channels);
        let shards = self.integer(&raw.discord.shards, 1, 1..=10_000) as u32;
        let shard_ids = self.shard_ids(&raw.discord.shard_ids, shards);
        let respond_to = self.choice_list(
            &raw.discord.respond_to,
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
            edit_interval_ms: self.integer(&raw.discord.edit_interval_ms, 1000, 1000..=60_000)
                as u64,
            agents_channel_id: self
                .chat_id(&raw.discord.agents_channel_id, false)
                .map(|id| id as u64),
            shards,
            shard_ids,
        }
    }

    /// `discord.shard_ids`: consecutive shard numbers below `shards`; all of
    /// them when not given.
    fn shard_ids(&mut self, given: &Given<IdList>, shards: u32) -> std::ops::Range<u32> {
        let Some(written) = &given.value else {
            return 0..shards;
        };
        let ids: Option<Vec<u32>> = written
            .parsed
            .as_ref()
            .and_then(|IdList(ids)| ids.iter().map(|id| id.parse::<u32>().ok()).collect());
        let Some(mut ids) = ids.filter(|ids| !ids.is_empty()) else {
            self.issue(
                given.key,
                "expected a non-empty list of shard numbers, e.g. [0] or [2, 3]",
            );
            return 0..shards;
        };
        ids.sort_unstable();
        ids.dedup();
        let (first, last) = (ids[0], ids[ids.len() - 1]);
        if last >= shards {
            self.issue(
                given.key,
                format!("shard {last} does not exist: discord.shards is {shards}, so shards are 0 to {}", shards - 1),
            );
            return 0..shards;
        }
        if (last - first) as usize + 1 != ids.len() {
            self.issue(
                given.key,
                "the shards one daemon runs must be consecutive, e.g. [2, 3]; give the others to other daemons",
            );
            return 0..shards;
        }
        first..last + 1
    }

    /// One chat or channel id. Telegram groups have negative ids; Discord's
    /// never are.
    pub(super) fn chat_id(&mut self, given: &Given<IdText>, negative: bool) -> Option<i64> {
        let written = given.value.as_ref()?;
        let parsed = written
            .parsed
            .as_ref()
            .and_then(|id| id.0.parse::<i64>().ok());
        match parsed {
            Some(id) if id != 0 && (negative || id > 0) => Some(id),
            _ => {
                let expected = if negative {
                    "expected a chat id like -1001234567890 (see README: agents' spaces)"
                } else {
                    "expected a channel id like 123456789012345678"
                };
                self.issue(given.key, format!("{expected}, {}", written.shown));
                None
            }
        }
    }

    /// `[escalation.agents]`: `name = ["telegram:ID", "discord:ID"]`.
    pub(super) fn agents(&mut self, given: &Given<Agents>) -> Vec<AgentConfig> {
        let key = given.key;
        let Some(written) = &given.value else {
            return Vec::new();
        };
        let Some(Agents(entries)) = &written.parsed else {
            let why = format!(
                "expected a table of agent names, like alice = [\"telegram:5551234\"], {}",
                written.shown
            );
            self.issue(key, why);
            return Vec::new();
        };
        let mut agents: Vec<AgentConfig> = Vec::new();
        for (name, identities) in entries {
            let Some(identities) = identities else {
                self.issue(
                    &format!("{key}.{name}"),
                    "expected a list like [\"telegram:5551234\", \"discord:123456789012345678\"]",
                );
                continue;
            };
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|ch| ch.is_alphanumeric() || matches!(ch, '_' | '-' | '.'));
            if !valid_name {
                self.issue(
                    key,
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
                        &format!("{key}.{name}"),
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
                    self.issue(&format!("{key}.{name}"), why);
                }
            }
            agents.push(AgentConfig {
                name: name.clone(),
                identities: parsed,
            });
        }
        agents
    }

    /// A list of words from `allowed`.
    pub(super) fn choice_list(
        &mut self,
        given: &Given<List>,
        allowed: &[&str],
        default: &[&str],
    ) -> BTreeSet<String> {
        let defaults = || default.iter().map(|word| word.to_string()).collect();
        let Some(written) = &given.value else {
            return defaults();
        };
        let expected = format!(
            "expected a list of {}",
            allowed
                .iter()
                .map(|word| format!("\"{word}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let Some(List(words)) = &written.parsed else {
            self.issue(given.key, expected);
            return defaults();
        };
        let unknown: Vec<&String> = words
            .iter()
            .filter(|word| !allowed.contains(&word.as_str()))
            .collect();
        if !unknown.is_empty() {
            let why = format!("{expected}; unknown: {unknown:?}");
            self.issue(given.key, why);
        }
        words.iter().cloned().collect()
    }

    /// A list of numeric ids.
    pub(super) fn id_list(&mut self, given: &Given<IdList>) -> Vec<u64> {
        let Some(written) = &given.value else {
            return Vec::new();
        };
        let ids: Option<Vec<u64>> = written.parsed.as_ref().and_then(|IdList(ids)| {
            ids.iter()
                .map(|id| id.parse::<u64>().ok().filter(|id| *id != 0))
                .collect()
        });
        ids.unwrap_or_else(|| {
            self.issue(given.key, "expected a list of numeric ids");
            Vec::new()
        })
    }

    pub(super) fn engine(&mut self) -> EngineConfig {
        let raw = self.raw;
        let backend = self.parsed(&raw.engine.backend, EngineBackend::Auto, |raw| match raw {
            "auto" => Ok(EngineBackend::Auto),
            "cpu" => Ok(EngineBackend::Cpu),
            "mistralrs" => Ok(EngineBackend::Mistralrs),
            "scripted" => Ok(EngineBackend::Scripted),
            "openai" => Ok(EngineBackend::Openai),
            _ => {
                Err("expected \"auto\", \"cpu\", \"mistralrs\", \"openai\" or \"scripted\"".into())
            }
        });
        let base_urls = self.base_urls(&raw.engine.base_url);
        let api_key = self.secret(&raw.engine.api_key, &raw.engine.api_key_file);
        let engine = EngineConfig {
            backend,
            model_path: self.path(
                &raw.engine.model_path,
                "models/SmolLM2-135M-Instruct.Q4_1.gguf",
            ),
            auto_fetch: self.boolean(&raw.engine.auto_fetch, true),
            convert_to: self.parsed(&raw.engine.convert_to, ConvertTo::Q8_0, |raw| match raw {
                "none" => Ok(ConvertTo::None),
                "q8_0" => Ok(ConvertTo::Q8_0),
                _ => Err("expected \"q8_0\" or \"none\"".into()),
            }),
            max_tokens: self.integer(&raw.engine.max_tokens, 256, 1..=32_768),
            temperature: self.float(&raw.engine.temperature, 0.3, 0.0..=2.0),
            top_p: self.float(&raw.engine.top_p, 0.9, 0.01..=1.0),
            top_k: self.integer(&raw.engine.top_k, 0, 0..=1_000_000),
            seed: match self.integer(&raw.engine.seed, usize::MAX, 0..=usize::MAX) {
                usize::MAX => None,
                seed => Some(seed as u64),
            },
            repetition_penalty: self.float(&raw.engine.repetition_penalty, 1.15, 1.0..=2.0),
            context_tokens: self.integer(&raw.engine.context_tokens, 2048, 128..=1_048_576),
            max_num_seqs: self.integer(&raw.engine.max_num_seqs, 4, 1..=256),
            prefix_cache: self.integer(&raw.engine.prefix_cache, 16, 0..=4096),
            kv_cache_mb: self.integer(&raw.engine.kv_cache_mb, 1024, 16..=1_048_576),
            precise_activations: self.boolean(&raw.engine.precise_activations, true),
            threads: self.integer(&raw.engine.threads, 0, 0..=1024),
            script_file: self.optional_path(&raw.engine.script_file),
            base_urls,
            api_key,
            model: self.string(&raw.engine.model, ""),
            request_timeout_secs: self.integer(&raw.engine.request_timeout_secs, 120, 1..=3600)
                as u64,
            tokenizer: self.optional_path(&raw.engine.tokenizer),
        };
        if backend == EngineBackend::Openai {
            if engine.base_urls.is_empty() {
                self.issue(
                    "engine.base_url",
                    "required when engine.backend = \"openai\": the server's API root, e.g. \"http://gpu1:8000/v1\" (CONCIERGE_ENGINE_BASE_URL takes several, comma-separated)",
                );
            }
            if engine.model.trim().is_empty() {
                self.issue(
                    "engine.model",
                    "required when engine.backend = \"openai\": the model name the server knows",
                );
            }
        }
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

    /// `engine.base_url`: http or https URLs, without a query.
    fn base_urls(&mut self, given: &Given<OneOrList>) -> Vec<url::Url> {
        let urls = match self.value(given, "expected a URL or a list of URLs") {
            Some((OneOrList(urls), _)) => urls.clone(),
            None => return Vec::new(),
        };
        let mut parsed = Vec::new();
        for text in urls {
            match url::Url::parse(&text) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.query().is_none() => {
                    parsed.push(url)
                }
                Ok(_) => self.issue(
                    given.key,
                    format!("{text:?} is not an http(s) URL without a query"),
                ),
                Err(err) => self.issue(given.key, format!("{text:?} is not a URL: {err}")),
            }
        }
        parsed
    }

    pub(super) fn issue(&mut self, key: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// The value of `given`, or an issue naming `expected` when its shape
    /// is wrong; `None` when it is unset or wrong.
    fn value<'g, T>(
        &mut self,
        given: &'g Given<T>,
        expected: &str,
    ) -> Option<(&'g T, &'g Written<T>)> {
        let written = given.value.as_ref()?;
        match &written.parsed {
            Some(value) => Some((value, written)),
            None => {
                self.issue(given.key, format!("{expected}, {}", written.shown));
                None
            }
        }
    }

    pub(super) fn parsed<T>(
        &mut self,
        given: &Given<String>,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        let Some((text, written)) = self.value(given, "expected a string") else {
            return default;
        };
        match parse(text) {
            Ok(value) => value,
            Err(why) => {
                self.issue(given.key, format!("{why}, {}", written.shown));
                default
            }
        }
    }

    pub(super) fn string(&mut self, given: &Given<String>, default: &str) -> String {
        self.parsed(given, default.to_string(), |raw| Ok(raw.to_string()))
    }

    pub(super) fn path(&mut self, given: &Given<String>, default: &str) -> PathBuf {
        self.parsed(given, PathBuf::from(default), |raw| {
            if raw.trim().is_empty() {
                Err("expected a non-empty path".into())
            } else {
                Ok(PathBuf::from(raw))
            }
        })
    }

    pub(super) fn path_list(&mut self, given: &Given<List>) -> Vec<PathBuf> {
        match self.value(given, "expected a list of path strings") {
            Some((List(paths), _)) => paths.iter().map(PathBuf::from).collect(),
            None => Vec::new(),
        }
    }

    pub(super) fn optional_path(&mut self, given: &Given<String>) -> Option<PathBuf> {
        self.parsed(given, None, |raw| Ok(Some(PathBuf::from(raw))))
    }

    pub(super) fn integer(
        &mut self,
        given: &Given<Number>,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> usize {
        let Some((number, written)) = self.value(given, "expected a number") else {
            return default;
        };
        let value = number.value;
        if !number.integer || value < *range.start() as f64 || value > *range.end() as f64 {
            let why = format!(
                "expected a whole number from {} to {}, {}",
                range.start(),
                range.end(),
                written.shown
            );
            self.issue(given.key, why);
            return default;
        }
        value as usize
    }

    pub(super) fn float(
        &mut self,
        given: &Given<Number>,
        default: f64,
        range: std::ops::RangeInclusive<f64>,
    ) -> f64 {
        let Some((number, written)) = self.value(given, "expected a number") else {
            return default;
        };
        if !range.contains(&number.value) {
            let why = format!(
                "expected a number from {} to {}, {}",
                range.start(),
                range.end(),
                written.shown
            );
            self.issue(given.key, why);
            return default;
        }
        number.value
    }

    pub(super) fn boolean(&mut self, given: &Given<bool>, default: bool) -> bool {
        self.value(given, "expected true or false")
            .map_or(default, |(value, _)| *value)
    }

    /// A secret from `given` (environment or file) or from the file `file`.
    pub(super) fn secret(&mut self, given: &Given<String>, file: &Given<String>) -> Option<Secret> {
        let from_env = given.value.as_ref().is_some_and(|written| written.from_env);
        let direct = self.parsed(given, None, |raw| Ok(Some(raw.to_string())));
        let file_path = self.optional_path(file);
        // The environment overrides the file, a `*_file` included.
        let file_path = if from_env { None } else { file_path };
        match (direct, file_path) {
            (Some(_), Some(_)) => {
                self.issue(
                    given.key,
                    format!("set either {} or {}, not both", given.key, file.key),
                );
                None
            }
            (Some(value), None) if value.trim().is_empty() => {
                self.issue(given.key, "is empty");
                None
            }
            (Some(value), None) => Some(Secret::new(value.trim())),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(value) if !value.trim().is_empty() => Some(Secret::new(value.trim())),
                Ok(_) => {
                    self.issue(file.key, format!("{} is empty", path.display()));
                    None
                }
                Err(err) => {
                    self.issue(file.key, format!("cannot read {}: {err}", path.display()));
                    None
                }
            },
            (None, None) => None,
        }
    }
}
