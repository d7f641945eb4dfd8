//! Stage one of reading the configuration: the file deserialised by serde
//! into raw per-section types, then the `CONCIERGE_<SECTION>_<KEY>`
//! overrides laid over them. Only the shape of each value is known here (a
//! number, a string, a list); ranges, choices, defaults and rules across keys
//! are stage two (`read.rs`, `check.rs`), which turns a `RawConfig` into a
//! valid `Config`. A value of the wrong shape is kept as written, so that
//! stage two reports every problem at once.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::ENV_PREFIX;

/// One key as given: unset, or its value (`None` when it has the wrong
/// shape) with how it was written, for error messages.
#[derive(Debug)]
pub(super) struct Given<T> {
    /// `section.key`.
    pub(super) key: &'static str,
    pub(super) value: Option<Written<T>>,
}

/// A value as written in the file or the environment.
#[derive(Debug)]
pub(super) struct Written<T> {
    /// The value, or `None` when its shape is wrong.
    pub(super) parsed: Option<T>,
    /// "got 5" or "got \"5\" from CONCIERGE_…", for error messages.
    pub(super) shown: String,
    /// Whether it came from the environment.
    pub(super) from_env: bool,
}

impl<T> Default for Given<T> {
    fn default() -> Self {
        Self {
            key: "",
            value: None,
        }
    }
}

impl<'de, T: RawValue> Deserialize<'de> for Given<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        Ok(Self {
            key: "",
            value: Some(Written {
                parsed: T::from_toml(&value),
                shown: format!("got {value}"),
                from_env: false,
            }),
        })
    }
}

impl<T: RawValue> Given<T> {
    fn set_from_env(&mut self, name: &str, text: &str) {
        self.value = Some(Written {
            parsed: T::from_env(text),
            shown: format!("got {text:?} from {name}"),
            from_env: true,
        });
    }
}

/// The shape of a raw value, in TOML and in the environment.
pub(super) trait RawValue: Sized {
    fn from_toml(value: &toml::Value) -> Option<Self>;
    fn from_env(text: &str) -> Option<Self>;
}

impl RawValue for bool {
    fn from_toml(value: &toml::Value) -> Option<Self> {
        value.as_bool()
    }
    fn from_env(text: &str) -> Option<Self> {
        match text {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        }
    }
}

impl RawValue for String {
    fn from_toml(value: &toml::Value) -> Option<Self> {
        value.as_str().map(str::to_string)
    }
    fn from_env(text: &str) -> Option<Self> {
        Some(text.to_string())
    }
}

/// A number; whether it was written as a whole number.
#[derive(Clone, Copy, Debug)]
pub(super) struct Number {
    pub(super) value: f64,
    pub(super) integer: bool,
}

impl RawValue for Number {
    fn from_toml(value: &toml::Value) -> Option<Self> {
        match value {
            toml::Value::Integer(value) => Some(Self {
                value: *value as f64,
                integer: true,
            }),
            toml::Value::Float(value) => Some(Self {
                value: *value,
                integer: false,
            }),
            _ => None,
        }
    }
    fn from_env(text: &str) -> Option<Self> {
        let text = text.trim();
        match text.parse::<i64>() {
            Ok(value) => Some(Self {
                value: value as f64,
                integer: true,
            }),
            Err(_) => text.parse::<f64>().ok().map(|value| Self {
                value,
                integer: false,
            }),
        }
    }
}

/// A list of strings: a TOML array, or comma-separated in the environment.
#[derive(Clone, Debug, Default)]
pub(super) struct List(pub(super) Vec<String>);

impl RawValue for List {
    fn from_toml(value: &toml::Value) -> Option<Self> {
        value
            .as_array()?
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Self)
    }
    fn from_env(text: &str) -> Option<Self> {
        Some(Self(
            text.split(',')
                .map(str::trim)
                .filter(|part| !part.is_empty())
                .map(str::to_string)
                .collect(),
        ))
    }
}

/// One string or a list of them: a TOML string or array, or
/// comma-separated in the environment.
#[derive(Clone, Debug, Default)]
pub(super) struct OneOrList(pub(super) Vec<String>);

impl RawValue for OneOrList {
    fn from_toml(value: &toml::Value) -> Option<Self> {
        match value {
            toml::Value::String(text) => Some(Self(vec![text.trim().to_string()])),
            other => List::from_toml(other).map(|List(items)| Self(items)),
        }
    }
    fn from_env(text: &str) -> Option<Self> {
        List::from_env(text).map(|List(items)| Self(items))
    }
}

/// A platform id written as a TOML integer or string (ids may exceed what
/// some tools keep exact as numbers).
#[derive(Clone, Debug)]
pub(super) struct IdText(pub(super) String);

impl RawValue for IdText {
    fn from_toml(value: &toml::Value) -> Option<Self> {
        match value {
            toml::Value::Integer(id) => Some(Self(id.to_string())),
            toml::Value::String(text) => Some(Self(text.trim().to_string())),
            _ => None,
        }
    }
    fn from_env(text: &str) -> Option<Self> {
        Some(Self(text.trim().to_string()))
    }
}

/// A list of platform ids, integers or strings; comma-separated in the
/// environment.
#[derive(Clone, Debug, Default)]
pub(super) struct IdList(pub(super) Vec<String>);

impl RawValue for IdList {
    fn from_toml(value: &toml::Value) -> Option<Self> {
        value
            .as_array()?
            .iter()
            .map(|item| IdText::from_toml(item).map(|id| id.0))
            .collect::<Option<Vec<_>>>()
            .map(Self)
    }
    fn from_env(text: &str) -> Option<Self> {
        List::from_env(text).map(|List(ids)| Self(ids))
    }
}

/// `[escalation.agents]`: each name with its identities, or `None` for a
/// name whose value is not a list of strings. In the environment:
/// `name=telegram:ID discord:ID;other=…`.
#[derive(Clone, Debug, Default)]
pub(super) struct Agents(pub(super) Vec<(String, Option<Vec<String>>)>);

impl RawValue for Agents {
    fn from_toml(value: &toml::Value) -> Option<Self> {
        let table = value.as_table()?;
        Some(Self(
            table
                .iter()
                .map(|(name, identities)| (name.clone(), List::from_toml(identities).map(|l| l.0)))
                .collect(),
        ))
    }
    fn from_env(text: &str) -> Option<Self> {
        Some(Self(
            text.split(';')
                .filter(|entry| !entry.trim().is_empty())
                .map(|entry| {
                    let (name, identities) = entry.split_once('=').unwrap_or((entry, ""));
                    let identities = identities
                        .split([' ', ','])
                        .filter(|part| !part.is_empty())
                        .map(str::to_string)
                        .collect();
                    (name.trim().to_string(), Some(identities))
                })
                .collect(),
        ))
    }
}

/// Keys that are in no raw section, as `section.key` (or `section`).
pub(super) type Unknown = Vec<String>;

/// Declares one raw section: its serde type, its keys, and how the
/// environment sets them.
macro_rules! raw_section {
    ($type:ident, $section:literal { $($field:ident: $raw:ty),* $(,)? }) => {
        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        pub(super) struct $type {
            $(pub(super) $field: Given<$raw>,)*
            #[serde(flatten)]
            unknown: BTreeMap<String, toml::Value>,
        }

        impl $type {
            /// Its keys, as `section.key`.
            pub(super) const KEYS: &'static [&'static str] =
                &[$(concat!($section, ".", stringify!($field))),*];

            fn name_keys(&mut self) {
                $(self.$field.key = concat!($section, ".", stringify!($field));)*
            }

            /// Sets `key` from the environment variable `name`; false when
            /// the section has no such key.
            fn set_env(&mut self, key: &str, name: &str, text: &str) -> bool {
                match key {
                    $(stringify!($field) => self.$field.set_from_env(name, text),)*
                    _ => return false,
                }
                true
            }

            fn unknown_keys(&self) -> impl Iterator<Item = String> + '_ {
                self.unknown
                    .keys()
                    .map(|key| format!("{}.{key}", $section))
            }
        }
    };
}

raw_section!(RawStore, "store" { data_dir: String });
raw_section!(RawEngine, "engine" {
    backend: String,
    model_path: String,
    auto_fetch: bool,
    convert_to: String,
    max_tokens: Number,
    temperature: Number,
    top_p: Number,
    top_k: Number,
    seed: Number,
    repetition_penalty: Number,
    context_tokens: Number,
    max_num_seqs: Number,
    prefix_cache: Number,
    kv_cache_mb: Number,
    precise_activations: bool,
    threads: Number,
    script_file: String,
    base_url: OneOrList,
    api_key: String,
    api_key_file: String,
    model: String,
    request_timeout_secs: Number,
    tokenizer: String,
});
raw_section!(RawChat, "chat" {
    default_locale: String,
    prompts_dir: String,
    max_message_chars: Number,
    reply_timeout_secs: Number,
});
raw_section!(RawOperator, "operator" {
    enabled: bool,
    listen: String,
    token: String,
    token_file: String,
});
raw_section!(RawDaemon, "daemon" { shutdown_deadline_secs: Number });
raw_section!(RawModeration, "moderation" {
    enabled: bool,
    messages_per_minute: Number,
    message_burst: Number,
    presses_per_minute: Number,
    press_burst: Number,
    notice_window_secs: Number,
    queue_per_conversation: Number,
});
raw_section!(RawConsole, "console" { enabled: bool, user: String });
raw_section!(RawPrivacy, "privacy" {
    retention_days: Number,
    require_start: bool,
    redact: List,
});
raw_section!(RawLog, "log" { level: String, format: String });
raw_section!(RawKnowledge, "knowledge" {
    paths: List,
    demo: bool,
    demo_dir: String,
    top_k: Number,
    semantic: bool,
    embedder_path: String,
});
raw_section!(RawRecommend, "recommend" {
    demo: bool,
    demo_catalog: String,
    retrain_minutes: Number,
});
raw_section!(RawTelegram, "telegram" {
    enabled: bool,
    token: String,
    token_file: String,
    api_url: String,
    mode: String,
    webhook_url: String,
    listen: String,
    secret_token: String,
    secret_token_file: String,
    group_triggers: List,
    poll_timeout_secs: Number,
    edit_interval_ms: Number,
    agents_chat_id: IdText,
});
raw_section!(RawDiscord, "discord" {
    enabled: bool,
    token: String,
    token_file: String,
    api_url: String,
    channels: IdList,
    respond_to: List,
    edit_interval_ms: Number,
    agents_channel_id: IdText,
    shards: Number,
    shard_ids: IdList,
});
raw_section!(RawEscalation, "escalation" {
    enabled: bool,
    intents_dir: String,
    auto_min_confidence: Number,
    model_tiebreak: bool,
    meaning_tiebreak: bool,
    tiebreak_from: Number,
    sla_urgent_minutes: Number,
    sla_high_minutes: Number,
    sla_normal_minutes: Number,
    sla_remind_at: Number,
    sla_check_secs: Number,
    agents: Agents,
});

/// Declares the whole file: one field per section.
macro_rules! raw_config {
    ($($section:ident: $type:ident),* $(,)?) => {
        /// The configuration as written: the file's sections, with the
        /// environment's overrides laid over them.
        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        pub(super) struct RawConfig {
            $(pub(super) $section: $type,)*
            #[serde(flatten)]
            unknown: BTreeMap<String, toml::Value>,
        }

        impl RawConfig {
            /// Every key, as `section.key`.
            pub(super) fn keys() -> impl Iterator<Item = &'static str> {
                std::iter::empty()$(.chain($type::KEYS.iter().copied()))*
            }

            fn name_keys(&mut self) {
                $(self.$section.name_keys();)*
            }

            fn set_env(&mut self, section_key: &str, name: &str, text: &str) -> bool {
                $(
                    if let Some(key) = section_key
                        .strip_prefix(stringify!($section))
                        .and_then(|rest| rest.strip_prefix('_'))
                    {
                        if self.$section.set_env(key, name, text) {
                            return true;
                        }
                    }
                )*
                false
            }

            /// Keys and sections of the file that match nothing.
            pub(super) fn unknown_keys(&self) -> Unknown {
                let mut unknown: Unknown = self.unknown.keys().cloned().collect();
                $(unknown.extend(self.$section.unknown_keys());)*
                unknown
            }
        }
    };
}

raw_config!(
    store: RawStore,
    engine: RawEngine,
    chat: RawChat,
    operator: RawOperator,
    daemon: RawDaemon,
    moderation: RawModeration,
    console: RawConsole,
    log: RawLog,
    knowledge: RawKnowledge,
    recommend: RawRecommend,
    telegram: RawTelegram,
    discord: RawDiscord,
    escalation: RawEscalation,
    privacy: RawPrivacy,
);

/// The environment variable of `section.key`.
pub(super) fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_")).to_uppercase()
}

impl RawConfig {
    /// Deserialises the file's table, then lays `env` over it (the last of
    /// two equal names wins). Returns the raw configuration and the
    /// environment variables that match no key.
    pub(super) fn read(
        table: toml::Table,
        env: &[(String, String)],
    ) -> Result<(Self, Vec<String>), String> {
        let mut raw: Self =
            toml::Value::Table(table)
                .try_into()
                .map_err(|err: toml::de::Error| {
                    let text = err.to_string();
                    // serde names the raw type; a person needs the shape.
                    match text.find("expected struct Raw") {
                        Some(at) => {
                            // "expected struct RawEngine" and what follows it.
                            let rest: Vec<&str> = text[at..].split_whitespace().skip(3).collect();
                            format!("{}expected a table of keys {}", &text[..at], rest.join(" "))
                        }
                        None => text,
                    }
                    .replace('\n', " ")
                    .trim()
                    .to_string()
                })?;
        raw.name_keys();
        let mut unmatched = Vec::new();
        for (name, text) in env {
            // Names are upper case, as `env_name` writes them.
            let Some(rest) = name
                .strip_prefix(ENV_PREFIX)
                .filter(|rest| *rest == rest.to_uppercase())
            else {
                unmatched.push(name.clone());
                continue;
            };
            if !raw.set_env(&rest.to_lowercase(), name, text) {
                unmatched.push(name.clone());
            }
        }
        Ok((raw, unmatched))
    }
}
