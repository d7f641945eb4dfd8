//! Telegram and Discord in one daemon: `/link` joins a customer's identities,
//! one failing channel never stops the other, and tokens stay out of logs.

#![cfg(all(feature = "telegram", feature = "discord"))]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::fake_discord::{self, FakeDiscord};
use support::fake_telegram::{self, FakeTelegram};
use support::{eventually, free_port, scripted_config, InProcessDaemon};

const WAIT: Duration = Duration::from_secs(30);
const TELEGRAM_USER: u64 = 555;
const DISCORD_USER: u64 = 700_000_000_000_000_001;
const DM: u64 = 800_000_000_000_000_001;
const SCRIPT: &str = "token_delay_ms = 0\ndefault_reply = \"You said: {last_user}\"\n";

fn sections(telegram: &FakeTelegram, discord_url: &str) -> String {
    format!(
        "[telegram]\nenabled = true\ntoken = {tt:?}\napi_url = {tu:?}\npoll_timeout_secs = 1\n\
         [discord]\nenabled = true\ntoken = {dt:?}\napi_url = {du:?}\n",
        tt = fake_telegram::TOKEN,
        tu = telegram.url,
        dt = fake_discord::TOKEN,
        du = discord_url,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_joins_a_telegram_and_a_discord_identity() {
    let dir = tempfile::tempdir().unwrap();
    let telegram = FakeTelegram::start().await;
    let discord = FakeDiscord::start().await;
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &sections(&telegram, &discord.url));
    assert!(eventually(WAIT, || discord.gateway_live()).await);

    telegram.push_message(
        TELEGRAM_USER as i64,
        "private",
        TELEGRAM_USER,
        "hello from telegram",
    );
    discord.push_message(DM, DISCORD_USER, "hello from discord", false, false);
    assert!(eventually(WAIT, || discord.messages_in(DM).len() == 1).await);
    telegram.push_message(TELEGRAM_USER as i64, "private", TELEGRAM_USER, "/link");
    let code = || {
        telegram
            .messages_in(TELEGRAM_USER as i64)
            .into_iter()
            .find_map(|(_, text)| text.find("LINK-").map(|at| text[at..at + 11].to_string()))
    };
    assert!(eventually(WAIT, || code().is_some()).await);
    let code = code().unwrap();
    discord.push_message(DM, DISCORD_USER, &code.to_lowercase(), false, false);
    assert!(eventually(WAIT, || discord.messages_in(DM).len() == 2).await);
    // The code works once.
    discord.push_message(DM, DISCORD_USER, &format!("/link {code}"), false, false);
    assert!(eventually(WAIT, || discord.messages_in(DM).len() == 3).await);
    daemon.stop().await;

    let replies: Vec<String> = discord
        .messages_in(DM)
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    assert!(replies[1].contains("linked"), "{replies:?}");
    assert!(replies[2].contains("already"), "{replies:?}");
    // The customer who asked for the code is told, where they asked.
    let on_telegram_chat: Vec<String> = telegram
        .messages_in(TELEGRAM_USER as i64)
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    assert!(
        on_telegram_chat
            .iter()
            .any(|text| text.contains("linked with your Discord account")),
        "{on_telegram_chat:?}"
    );
    let store = support::reopen_store(&dir.path().join("data"));
    let on_telegram = store
        .find_customer("telegram", &TELEGRAM_USER.to_string())
        .unwrap()
        .unwrap();
    let on_discord = store
        .find_customer("discord", &DISCORD_USER.to_string())
        .unwrap()
        .unwrap();
    assert_eq!(
        on_telegram.id, on_discord.id,
        "one customer behind both identities"
    );
    let platforms: Vec<String> = store
        .customer_conversations(on_telegram.id, None)
        .unwrap()
        .into_iter()
        .map(|conversation| conversation.platform)
        .collect();
    assert!(
        platforms.contains(&"telegram".to_string()) && platforms.contains(&"discord".to_string()),
        "{platforms:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_channel_never_stops_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let telegram = FakeTelegram::start().await;
    // Nothing listens there: the Discord channel fails and is retried.
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let daemon = InProcessDaemon::start(dir.path(), SCRIPT, &sections(&telegram, &unreachable));
    telegram.push_message(
        TELEGRAM_USER as i64,
        "private",
        TELEGRAM_USER,
        "still there?",
    );
    assert!(
        eventually(WAIT, || !telegram
            .messages_in(TELEGRAM_USER as i64)
            .is_empty())
        .await
    );
    daemon.stop().await;
    assert_eq!(
        telegram.messages_in(TELEGRAM_USER as i64)[0].1,
        "You said: still there?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_telegram_token_or_a_second_poller_fails_health_until_it_recovers() {
    for (fault, reason) in [
        (fake_telegram::Fault::Unauthorized, "revoked"),
        (fake_telegram::Fault::Conflict, "another process"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let telegram = FakeTelegram::start().await;
        // Refused three times, then accepted: the back-off retries reach it.
        telegram.fail_next("getUpdates", fault, 3);
        let operator_port = free_port();
        let config = scripted_config(dir.path(), SCRIPT, operator_port);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "[telegram]\nenabled = true\napi_url = {tu:?}\npoll_timeout_secs = 1\n",
            tu = telegram.url
        ));
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(support::binary())
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("CONCIERGE_TELEGRAM_TOKEN", fake_telegram::TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let health = || {
            support::http_get(operator_port, "/healthz", None)
                .ok()
                .map(|(status, body)| {
                    (
                        status,
                        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
                    )
                })
        };
        let failed = support::wait_for(WAIT, || {
            health().filter(|(status, body)| {
                *status == 503 && body["channels"]["telegram"]["state"] == "failed"
            })
        });
        let (_, body) = failed.expect("health reports the refused channel");
        let detail = body["channels"]["telegram"].to_string();
        assert!(detail.contains(reason), "{detail}");
        // Accepted again: ready without a restart of the daemon.
        let ready = support::wait_for(WAIT, || health().filter(|(status, _)| *status == 200));
        assert!(ready.is_some(), "{:?}", health());
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let _ = child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_log_even_when_the_platforms_fail() {
    let dir = tempfile::tempdir().unwrap();
    let telegram = FakeTelegram::start().await;
    telegram.outage(Duration::from_secs(600));
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let operator_port = free_port();
    let config = scripted_config(dir.path(), SCRIPT, operator_port);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[telegram]\nenabled = true\napi_url = {tu:?}\npoll_timeout_secs = 1\n[discord]\nenabled = true\napi_url = {unreachable:?}\n[log]\nlevel = \"debug\"\n",
        tu = telegram.url
    ));
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(support::binary())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("CONCIERGE_TELEGRAM_TOKEN", fake_telegram::TOKEN)
        .env("CONCIERGE_DISCORD_TOKEN", fake_discord::TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both channels fail and retry: Telegram's polls are refused twice,
    // Discord is reported failed; health says neither is up.
    let health = support::wait_for(WAIT, || {
        let (_, health) = support::http_get(operator_port, "/healthz", None).ok()?;
        let health: serde_json::Value = serde_json::from_str(&health).ok()?;
        (telegram.dropped_connections() >= 2 && health["channels"]["discord"]["state"] == "failed")
            .then_some(health)
    })
    .expect("both channels fail");
    for channel in ["telegram", "discord"] {
        let state = health["channels"][channel]["state"]
            .as_str()
            .unwrap_or_default();
        assert!(
            state == "starting" || state == "failed",
            "{channel}: {health}"
        );
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let output = tokio::task::spawn_blocking(move || {
        let _ = child.wait();
        let mut log = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
        log
    })
    .await
    .unwrap();
    assert!(output.contains("telegram unreachable"), "{output}");
    assert!(output.contains("channel failed"), "{output}");
    let telegram_secret = fake_telegram::TOKEN.split_once(':').unwrap().1;
    assert!(
        !output.contains(telegram_secret),
        "the telegram token leaked:\n{output}"
    );
    assert!(
        !output.contains(fake_discord::TOKEN),
        "the discord token leaked:\n{output}"
    );
}

#[test]
fn an_enabled_channel_without_a_token_fails_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = scripted_config(dir.path(), SCRIPT, free_port());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[telegram]\nenabled = true\n[discord]\nenabled = true\n");
    std::fs::write(&config, text).unwrap();
    let output = Command::new(support::binary())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("telegram.token") && stderr.contains("CONCIERGE_TELEGRAM_TOKEN"),
        "{stderr}"
    );
    assert!(stderr.contains("discord.token"), "{stderr}");
}
