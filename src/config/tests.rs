//! Tests of reading, overriding and validating the configuration.

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
    let issues = parse("[engine]\nmax_tokens = 2000\ncontext_tokens = 2048\n", &[]).unwrap_err();
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

#[test]
fn stage_one_keeps_each_value_as_written_and_its_origin() {
    let text =
        "[engine]\nmax_tokens = \"many\"\ntemperature = 0.5\n[knowledge]\npaths = [\"a\", 3]\n";
    let table: toml::Table = text.parse().unwrap();
    let env = env(&[
        ("CONCIERGE_ENGINE_TEMPERATURE", "0.7"),
        ("CONCIERGE_KNOWLEDGE_TOP_K", "5"),
        ("CONCIERGE_ENGINE_NO_SUCH_KEY", "1"),
        ("CONCIERGE_engine_top_k", "1"),
    ]);
    let (raw, unmatched) = raw::RawConfig::read(table, &env).unwrap();
    let max_tokens = raw.engine.max_tokens.value.as_ref().unwrap();
    assert_eq!(raw.engine.max_tokens.key, "engine.max_tokens");
    assert!(max_tokens.parsed.is_none(), "a string is no number");
    assert_eq!(max_tokens.shown, "got \"many\"");
    let temperature = raw.engine.temperature.value.as_ref().unwrap();
    assert!(temperature.from_env);
    assert_eq!(temperature.parsed.unwrap().value, 0.7);
    assert!(raw.knowledge.paths.value.as_ref().unwrap().parsed.is_none());
    assert!(raw.chat.default_locale.value.is_none(), "unset");
    assert_eq!(
        unmatched,
        ["CONCIERGE_ENGINE_NO_SUCH_KEY", "CONCIERGE_engine_top_k"],
        "names are upper case"
    );
    // Stage two names both problems, with where each value came from.
    let issues = parse(text, &env).unwrap_err();
    let keys: Vec<&str> = issues.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(keys, ["engine.max_tokens", "knowledge.paths"]);
}

#[test]
fn a_section_that_is_not_a_table_is_one_clear_error() {
    let issues = parse("engine = 5\n", &[]).unwrap_err();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].key, "file");
    assert!(
        issues[0]
            .message
            .contains("expected a table of keys in `engine`")
            && !issues[0].message.contains("Raw"),
        "{}",
        issues[0].message
    );
}

#[test]
fn every_key_of_the_shipped_configuration_is_known() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/concierge.toml"
    ))
    .unwrap();
    let table: toml::Table = text.parse().unwrap();
    let (raw, _) = raw::RawConfig::read(table, &[]).unwrap();
    assert_eq!(raw.unknown_keys(), Vec::<String>::new());
    let keys: Vec<&str> = raw::RawConfig::keys().collect();
    assert!(keys.contains(&"telegram.secret_token_file"));
    assert!(keys.contains(&"escalation.agents"));
}

#[test]
fn the_remote_engine_needs_its_urls_and_model_and_takes_a_url_list_from_the_environment() {
    let issues = parse("[engine]\nbackend = \"openai\"\n", &[]).unwrap_err();
    let keys: Vec<&str> = issues.iter().map(|issue| issue.key.as_str()).collect();
    assert!(
        keys.contains(&"engine.base_url") && keys.contains(&"engine.model"),
        "{keys:?}"
    );
    let issues = parse(
        "[engine]\nbackend = \"openai\"\nmodel = \"m\"\nbase_url = \"ftp://gpu1/v1\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(issues[0].key, "engine.base_url");

    let text =
        "[engine]\nbackend = \"openai\"\nmodel = \"m\"\nbase_url = \"http://gpu1:8000/v1\"\n";
    let config = parse(text, &[]).unwrap();
    assert_eq!(config.engine.base_urls.len(), 1);
    let config = parse(
        text,
        &env(&[
            (
                "CONCIERGE_ENGINE_BASE_URL",
                "http://gpu1:8000/v1, http://gpu2:8000/v1",
            ),
            ("CONCIERGE_ENGINE_API_KEY", "sk-123456"),
        ]),
    )
    .unwrap();
    assert_eq!(config.engine.base_urls[1].as_str(), "http://gpu2:8000/v1");
    assert_eq!(config.engine.api_key.unwrap().expose(), "sk-123456");
    assert_eq!(config.engine.request_timeout_secs, 120);
}

#[test]
fn discord_shards_are_checked() {
    let config = parse("[discord]\nshards = 4\nshard_ids = [3, 2]\n", &[]).unwrap();
    assert_eq!((config.discord.shards, config.discord.shard_ids), (4, 2..4));
    let config = parse("[discord]\nshards = 3\n", &[]).unwrap();
    assert_eq!(config.discord.shard_ids, 0..3);
    for text in [
        "[discord]\nshards = 2\nshard_ids = [2]\n",
        "[discord]\nshards = 3\nshard_ids = [0, 2]\n",
        "[discord]\nshards = 0\n",
    ] {
        let issues = parse(text, &[]).unwrap_err();
        assert!(
            issues[0].key.starts_with("discord.shard"),
            "{text}: {issues:?}"
        );
    }
}
