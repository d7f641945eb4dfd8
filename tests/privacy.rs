//! Customers' data rights end to end: `/export` and `/forget` on Telegram
//! and Discord (fake platforms, real wire protocols) and at the console (the
//! binary), erasure leaving nothing readable in the data directory, payment
//! data masked everywhere with `log.level = "debug"`, `require_start`, and
//! the operators' `customers` and `privacy` commands, on the store and
//! through the operator API.

// Each test needs its channel; builds with fewer channels skip some.
#![cfg_attr(
    not(all(feature = "console", feature = "telegram", feature = "discord")),
    allow(unused_imports, dead_code)
)]

mod support;

use support::concierge_with as concierge;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use concierge::store::AuditAction;
use serde_json::Value;
use support::{binary, eventually, free_port, reopen_store, InProcessDaemon};

const WAIT: Duration = Duration::from_secs(30);
const ECHO: &str = "token_delay_ms = 0\ndefault_reply = \"You said: {last_user}\"\n";

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
            {
                found.push(path);
            }
        }
    }
    found
}

fn audit_actions(data_dir: &Path) -> Vec<(AuditAction, String)> {
    reopen_store(data_dir)
        .audit_log()
        .unwrap()
        .into_iter()
        .map(|entry| (entry.action, entry.actor))
        .collect()
}

#[cfg(feature = "telegram")]
mod telegram {
    use super::*;
    use support::fake_telegram::{FakeTelegram, TOKEN};

    const CUSTOMER: u64 = 555;
    const STRANGER: u64 = 556;
    const CHAT: i64 = 555;

    fn texts(fake: &FakeTelegram, chat: i64) -> Vec<String> {
        fake.messages_in(chat)
            .into_iter()
            .map(|(_, text)| text)
            .collect()
    }

    fn section(fake: &FakeTelegram) -> String {
        format!(
            "[telegram]\nenabled = true\ntoken = {TOKEN:?}\napi_url = {:?}\npoll_timeout_secs = 1\n",
            fake.url
        )
    }

    /// The `callback_data` of the button labelled `label` under the last
    /// message that had buttons.
    fn button(fake: &FakeTelegram, label: &str) -> Option<String> {
        fake.calls_of("sendMessage")
            .into_iter()
            .rev()
            .find_map(|call| {
                call.body["reply_markup"]["inline_keyboard"]
                    .as_array()?
                    .iter()
                    .flat_map(|row| row.as_array().cloned().unwrap_or_default())
                    .find(|button| button["text"] == label)
                    .and_then(|button| button["callback_data"].as_str().map(str::to_string))
            })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_telegram_customer_downloads_their_data_then_erases_it() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let marker = "marker-tg-4e2f91";
        let fake = FakeTelegram::start().await;
        let daemon = InProcessDaemon::start(dir.path(), ECHO, &section(&fake));
        fake.push_message(CHAT, "private", CUSTOMER, &format!("hello {marker}"));
        assert!(eventually(WAIT, || texts(&fake, CHAT).len() == 1).await);

        fake.push_message(CHAT, "private", CUSTOMER, "/export");
        assert!(
            eventually(WAIT, || fake.documents().len() == 1).await,
            "{:?} {:?}",
            texts(&fake, CHAT),
            fake.calls_of("sendDocument")
        );
        let document = fake.documents().remove(0);
        assert_eq!(document.chat, CHAT);
        assert!(
            document.file_name.starts_with("customer-") && document.file_name.ends_with(".json"),
            "{}",
            document.file_name
        );
        assert!(document.caption.contains("JSON"), "{}", document.caption);
        let export: Value = serde_json::from_slice(&document.bytes).unwrap();
        assert_eq!(export["identities"][0]["platform"], "telegram");
        assert_eq!(export["identities"][0]["user_id"], "555");
        let messages = export["conversations"][0]["messages"].as_array().unwrap();
        assert!(messages
            .iter()
            .any(|message| message["text"].as_str().unwrap().contains(marker)));

        // In a group the file goes to the customer's private chat.
        const GROUP: i64 = -100_777;
        fake.push_message(GROUP, "group", CUSTOMER, "/export@shop_bot");
        assert!(eventually(WAIT, || fake.documents().len() == 2).await);
        assert_eq!(fake.documents()[1].chat, CHAT);
        assert!(
            eventually(WAIT, || texts(&fake, GROUP)
                .iter()
                .any(|text| text.contains("private chat")))
            .await,
            "{:?}",
            texts(&fake, GROUP)
        );

        fake.push_message(CHAT, "private", CUSTOMER, "/forget");
        assert!(eventually(WAIT, || button(&fake, "Yes, erase my data").is_some()).await);
        let yes = button(&fake, "Yes, erase my data").unwrap();
        let (question, _) = fake.messages_in(CHAT).last().cloned().unwrap();
        // Someone else pressing it changes nothing.
        fake.push_callback(CHAT, STRANGER, question, &yes);
        fake.push_callback(CHAT, CUSTOMER, question, &yes);
        assert!(
            eventually(WAIT, || texts(&fake, CHAT)
                .iter()
                .any(|text| text.starts_with("Done. I erased")))
            .await,
            "{:?}",
            texts(&fake, CHAT)
        );
        let done = texts(&fake, CHAT).last().cloned().unwrap();
        assert!(
            done.contains("1 conversation(s) with 2 message(s)"),
            "{done}"
        );
        // A later message starts afresh.
        fake.push_message(CHAT, "private", CUSTOMER, "tell me something new");
        assert!(
            eventually(WAIT, || texts(&fake, CHAT)
                .last()
                .is_some_and(|text| text.contains("tell me something new")))
            .await
        );
        daemon.stop().await;

        assert_eq!(files_holding(&data_dir, marker), Vec::<PathBuf>::new());
        let store = reopen_store(&data_dir);
        let stranger = store.find_customer("telegram", "555").unwrap().unwrap();
        let fresh = store.export_customer(stranger.id).unwrap();
        let texts: Vec<&str> = fresh.conversations[0]
            .messages
            .iter()
            .map(|message| message.text.as_str())
            .collect();
        assert_eq!(
            texts,
            ["tell me something new", "You said: tell me something new"]
        );
        drop(store);
        assert_eq!(
            audit_actions(&data_dir),
            [
                (AuditAction::Export, "customer".to_string()),
                (AuditAction::Export, "customer".to_string()),
                (AuditAction::Forget, "customer".to_string())
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn erasing_a_customer_closes_their_ticket_and_tells_the_agents() {
        const AGENTS: i64 = -1_002_000;
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeTelegram::start().await;
        let daemon = InProcessDaemon::start(
            dir.path(),
            ECHO,
            &format!(
                "{}agents_chat_id = {AGENTS}\n[escalation.agents]\nalice = [\"telegram:7001\"]\n",
                section(&fake)
            ),
        );
        fake.push_message(CHAT, "private", CUSTOMER, "/human");
        assert!(eventually(WAIT, || !texts(&fake, AGENTS).is_empty()).await);
        // With people on the chat, /forget still reaches the bot.
        fake.push_message(CHAT, "private", CUSTOMER, "/forget");
        assert!(eventually(WAIT, || button(&fake, "Yes, erase my data").is_some()).await);
        let (question, _) = fake.messages_in(CHAT).last().cloned().unwrap();
        fake.push_callback(
            CHAT,
            CUSTOMER,
            question,
            &button(&fake, "Yes, erase my data").unwrap(),
        );
        assert!(
            eventually(WAIT, || texts(&fake, AGENTS).iter().any(
                |text| text.starts_with("T-000001: the customer erased their data")
            ))
            .await,
            "{:?}",
            texts(&fake, AGENTS)
        );
        let done = texts(&fake, CHAT).last().cloned().unwrap();
        assert!(done.contains("1 support ticket(s) were kept"), "{done}");
        daemon.stop().await;
        let store = reopen_store(&dir.path().join("data"));
        let ticket = store.ticket(1).unwrap().unwrap();
        assert_eq!(ticket.state, concierge::store::TicketState::Closed);
        assert!(ticket.transcript.is_empty() && ticket.summary.is_empty());
        assert!(store.active_tickets().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn card_numbers_and_ibans_reach_no_store_model_agent_or_log_and_contacts_no_log() {
        const AGENTS: i64 = -1_002_000;
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let fake = FakeTelegram::start().await;
        let script = dir.path().join("script.toml");
        std::fs::write(&script, ECHO).unwrap();
        let config = dir.path().join("concierge.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\ndata_dir = {data:?}\n[engine]\nbackend = \"scripted\"\nscript_file = {script:?}\n\
                 [operator]\nenabled = false\n[log]\nlevel = \"debug\"\n[knowledge]\ndemo = false\n\
                 {telegram}agents_chat_id = {AGENTS}\n[escalation.agents]\nalice = [\"telegram:7001\"]\n",
                data = data_dir.display().to_string(),
                script = script.display().to_string(),
                telegram = section(&fake),
            ),
        )
        .unwrap();
        let child = Command::new(binary())
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let first = "My card is 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00; \
                     mail anna.k@example.com or call +49 30 1234567";
        fake.push_message(CHAT, "private", CUSTOMER, first);
        assert!(eventually(WAIT, || texts(&fake, CHAT).len() == 2).await);
        fake.push_message(CHAT, "private", CUSTOMER, "/human");
        assert!(eventually(WAIT, || !texts(&fake, AGENTS).is_empty()).await);
        fake.push_message(
            CHAT,
            "private",
            CUSTOMER,
            "Here it is again: 5555-5555-5555-4444",
        );
        assert!(
            eventually(WAIT, || texts(&fake, AGENTS)
                .iter()
                .any(|text| text.contains("•••• 4444")))
            .await,
            "{:?}",
            texts(&fake, AGENTS)
        );
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{log}");
        assert!(log.contains("DEBUG"), "the log was at debug level: {log}");

        let raw_payment = [
            "4111 1111 1111 1111",
            "4111111111111111",
            "DE89 3704",
            "3704 0044 0532",
            "5555-5555-5555-4444",
        ];
        let customer = texts(&fake, CHAT);
        let agents = texts(&fake, AGENTS);
        for text in customer.iter().chain(&agents) {
            for raw in raw_payment {
                assert!(!text.contains(raw), "{raw} in {text}");
            }
        }
        // The model saw the masked text (the scripted engine repeats it).
        assert!(
            customer
                .iter()
                .any(|text| text.contains("You said: My card is •••• 1111, IBAN DE•• •••• 3000")),
            "{customer:?}"
        );
        let warnings = customer
            .iter()
            .filter(|text| text.contains("never send card numbers"))
            .count();
        assert_eq!(warnings, 1, "{customer:?}");
        // Agents see the contact details they need, and no payment data.
        assert!(
            agents
                .iter()
                .any(|text| text.contains("anna.k@example.com")),
            "{agents:?}"
        );
        for secret in raw_payment
            .iter()
            .chain(&["anna.k@example.com", "+49 30 1234567"])
        {
            assert!(!log.contains(secret), "{secret} in the log");
        }
        let store = reopen_store(&data_dir);
        let id = store.find_customer("telegram", "555").unwrap().unwrap().id;
        let stored = serde_json::to_string(&store.export_customer(id).unwrap()).unwrap();
        for raw in raw_payment {
            assert!(!stored.contains(raw), "{raw} stored");
        }
        assert!(stored.contains("anna.k@example.com"));
        for ticket in store.tickets().unwrap() {
            let transcript = serde_json::to_string(&ticket).unwrap();
            assert!(!transcript.contains("4111 1111"), "{transcript}");
        }
    }
}

#[cfg(feature = "discord")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_discord_customer_gets_their_export_as_an_attachment_and_can_erase_it() {
    use support::fake_discord::{FakeDiscord, TOKEN};
    const CUSTOMER: u64 = 700_000_000_000_000_001;
    const DM: u64 = 800_000_000_000_000_001;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let marker = "marker-dc-90aa17";
    let fake = FakeDiscord::start().await;
    let daemon = InProcessDaemon::start(
        dir.path(),
        ECHO,
        &format!(
            "[discord]\nenabled = true\ntoken = {TOKEN:?}\napi_url = {:?}\n",
            fake.url
        ),
    );
    assert!(eventually(WAIT, || fake.gateway_live()).await);
    let texts = |fake: &FakeDiscord| -> Vec<String> {
        fake.messages_in(DM)
            .into_iter()
            .map(|(_, text)| text)
            .collect()
    };
    fake.push_message(DM, CUSTOMER, &format!("hi {marker}"), false, false);
    assert!(eventually(WAIT, || texts(&fake).len() == 1).await);
    // As a slash command: the file replaces the "thinking…" response.
    fake.push_slash_command(DM, CUSTOMER, "export");
    assert!(eventually(WAIT, || fake.attachments().len() == 1).await);
    let attachment = fake.attachments().remove(0);
    assert_eq!(attachment.channel, DM);
    let export: Value = serde_json::from_slice(&attachment.bytes).unwrap();
    assert!(export["conversations"][0]["messages"][0]["text"]
        .as_str()
        .unwrap()
        .contains(marker));

    fake.push_message(DM, CUSTOMER, "/forget", false, false);
    let yes = || {
        fake.calls_matching("POST", &format!("/channels/{DM}/messages"))
            .into_iter()
            .rev()
            .find_map(|call| {
                call.body["components"]
                    .as_array()?
                    .iter()
                    .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
                    .find(|button| button["label"] == "Yes, erase my data")
                    .and_then(|button| button["custom_id"].as_str().map(str::to_string))
            })
    };
    assert!(
        eventually(WAIT, || yes().is_some()).await,
        "{:?}",
        texts(&fake)
    );
    let (question, _) = fake.messages_in(DM).last().cloned().unwrap();
    fake.push_button(DM, CUSTOMER, question, &yes().unwrap());
    assert!(
        eventually(WAIT, || texts(&fake)
            .iter()
            .any(|text| text.starts_with("Done. I erased")))
        .await,
        "{:?}",
        texts(&fake)
    );
    daemon.stop().await;
    assert_eq!(files_holding(&data_dir, marker), Vec::<PathBuf>::new());
    assert!(reopen_store(&data_dir)
        .find_customer("discord", &CUSTOMER.to_string())
        .unwrap()
        .is_none());
}

#[cfg(feature = "console")]
#[test]
fn at_the_console_the_export_is_a_file_and_a_number_confirms_the_erasure() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let marker = "marker-console-77c3";
    let config = support::scripted_config(dir.path(), ECHO, free_port());
    let mut command = concierge(&config);
    command.args(["chat", "--user", "kim"]);
    let output = support::run_with_stdin(
        command,
        &format!(
            "hello {marker}\nmy card 4111-1111-1111-1111 expires soon\n/export\n/forget\n2\n/export\n/forget\n1\n"
        ),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("[1] Yes, erase my data"), "{stdout}");
    assert!(stdout.contains("never send card numbers"), "{stdout}");
    assert!(
        stdout.contains("You said: my card •••• 1111 expires soon"),
        "{stdout}"
    );
    assert!(!stdout.contains("4111-1111"), "{stdout}");
    assert!(stdout.contains("[2] No, keep it"), "{stdout}");
    assert!(stdout.contains("Nothing was erased."), "{stdout}");
    let written: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split("was written to ").nth(1))
        .collect();
    assert_eq!(written.len(), 2, "{stdout}");
    assert!(written[0].contains("/exports/customer-"), "{stdout}");
    assert!(stdout.contains("Done. I erased"), "{stdout}");
    // Both exports were the plain copies; the erasure removed them.
    assert!(!Path::new(written[0]).exists() && !Path::new(written[1]).exists());
    assert_eq!(files_holding(&data_dir, marker), Vec::<PathBuf>::new());
    assert_eq!(
        audit_actions(&data_dir)
            .into_iter()
            .map(|(action, _)| action)
            .collect::<Vec<_>>(),
        [
            AuditAction::Export,
            AuditAction::Export,
            AuditAction::Forget
        ]
    );
}

#[cfg(feature = "console")]
#[test]
fn operators_list_show_export_and_erase_customers_and_read_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::scripted_config(dir.path(), ECHO, free_port());
    let mut command = concierge(&config);
    command.args(["chat", "--user", "ann"]);
    let output = support::run_with_stdin(command, "where is my parcel\n");
    assert!(output.status.success());

    let run = |args: &[&str]| concierge(&config).args(args).output().unwrap();
    let list = run(&["customers", "list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed["identities"][0]["user_id"], "ann");
    assert_eq!(listed["conversations"], 1);

    let show = run(&[
        "customers",
        "show",
        "--user",
        "ann",
        "--platform",
        "console",
    ]);
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["id"], listed["id"]);

    // Fresh keys change nothing that can be read.
    let rotate = run(&["privacy", "rotate-keys"]);
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    let rotation: Value = serde_json::from_slice(&rotate.stdout).unwrap();
    assert_eq!(rotation["customers"], 1);

    let export = run(&[
        "customers",
        "export",
        "--user",
        "ann",
        "--platform",
        "console",
    ]);
    let exported: Value = serde_json::from_slice(&export.stdout).unwrap();
    assert_eq!(
        exported["conversations"][0]["messages"][0]["text"],
        "where is my parcel"
    );

    let refused = run(&[
        "customers",
        "forget",
        "--user",
        "ann",
        "--platform",
        "console",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    let unknown = run(&[
        "customers",
        "forget",
        "--user",
        "bob",
        "--platform",
        "console",
        "--yes",
    ]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"));
    let forget = run(&[
        "customers",
        "forget",
        "--user",
        "ann",
        "--platform",
        "console",
        "--yes",
    ]);
    assert!(
        forget.status.success(),
        "{}",
        String::from_utf8_lossy(&forget.stderr)
    );
    let erasure: Value = serde_json::from_slice(&forget.stdout).unwrap();
    assert_eq!(erasure["messages"], 2);

    let audit = run(&["privacy", "audit"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&audit.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["action"], "key_rotation");
    assert_eq!(lines[1]["action"], "export");
    assert_eq!(lines[2]["action"], "forget");
    assert_eq!(lines[2]["actor"], "operator (cli)");
    assert!(!String::from_utf8_lossy(&audit.stdout).contains("parcel"));

    let sweep = run(&["privacy", "sweep"]);
    let swept: Value = serde_json::from_slice(&sweep.stdout).unwrap();
    assert_eq!(swept["retention_days"], 0);
    let sweep = concierge(&config)
        .args(["privacy", "sweep"])
        .env("CONCIERGE_PRIVACY_RETENTION_DAYS", "30")
        .output()
        .unwrap();
    let swept: Value = serde_json::from_slice(&sweep.stdout).unwrap();
    assert_eq!(swept["retention_days"], 30);
    assert_eq!(swept["messages_removed"], 0);
}

#[cfg(feature = "telegram")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_a_daemon_holds_the_store_the_commands_go_through_its_api() {
    use support::fake_telegram::{FakeTelegram, TOKEN};
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let port = free_port();
    let script = dir.path().join("script.toml");
    std::fs::write(&script, ECHO).unwrap();
    let data_dir = dir.path().join("data");
    let daemon = InProcessDaemon::start_with_config(
        &format!(
            "[store]\ndata_dir = {data:?}\n[engine]\nbackend = \"scripted\"\nscript_file = {script:?}\n\
             [operator]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"ops-token-1234\"\n[knowledge]\ndemo = false\n\
             [telegram]\nenabled = true\ntoken = {TOKEN:?}\napi_url = {url:?}\npoll_timeout_secs = 1\n",
            data = data_dir.display().to_string(),
            script = script.display().to_string(),
            url = fake.url,
        ),
        &[],
    );
    support::wait_ready(port);
    fake.push_message(555, "private", 555, "hello from telegram");
    assert!(eventually(WAIT, || !fake.messages_in(555).is_empty()).await);

    let cli = dir.path().join("cli.toml");
    std::fs::write(
        &cli,
        format!(
            "[store]\ndata_dir = {:?}\n[operator]\nlisten = \"127.0.0.1:{port}\"\n",
            data_dir.display().to_string()
        ),
    )
    .unwrap();
    let run = |args: &[&str], token: Option<&str>| {
        let mut command = concierge(&cli);
        if let Some(token) = token {
            command.env("CONCIERGE_OPERATOR_TOKEN", token);
        }
        command.args(args).output().unwrap()
    };
    let without = run(&["customers", "list"], None);
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("CONCIERGE_OPERATOR_TOKEN"));
    let wrong = run(&["customers", "list"], Some("nope"));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));

    let token = Some("ops-token-1234");
    let export = run(
        &[
            "customers",
            "export",
            "--user",
            "555",
            "--platform",
            "telegram",
        ],
        token,
    );
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let exported: Value = serde_json::from_slice(&export.stdout).unwrap();
    assert_eq!(
        exported["conversations"][0]["messages"][0]["text"],
        "hello from telegram"
    );
    let (status, _) =
        support::http_request(port, "DELETE", "/v1/customers/telegram/555", token, None).unwrap();
    assert_eq!(status, 200);
    let (status, _) = support::http_get(port, "/v1/customers/telegram/555", token).unwrap();
    assert_eq!(status, 404);
    let audit = run(&["privacy", "audit"], token);
    let text = String::from_utf8_lossy(&audit.stdout).into_owned();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("\"actor\":\"operator (api)\""), "{text}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_chinese_customer_is_asked_and_answered_in_chinese() {
    let dir = tempfile::tempdir().unwrap();
    let harness = support::harness(dir.path(), ECHO, support::settings(4096, 256));
    support::run_messages(
        &harness,
        vec![
            support::message("li", "你好，我想问一下"),
            support::message("li", "/forget"),
        ],
    )
    .await;
    let customer = harness
        .store
        .find_customer(support::PLATFORM, "li")
        .unwrap()
        .unwrap();
    let question = harness.channel.texts("li").last().cloned().unwrap();
    assert!(question.contains("确定要删除您的数据吗"), "{question}");
    support::run_messages(
        &harness,
        vec![support::choice("li", &format!("forget:no:{}", customer.id))],
    )
    .await;
    assert_eq!(
        harness.channel.texts("li").last().unwrap(),
        "没有删除任何数据。"
    );
    support::run_messages(
        &harness,
        vec![support::choice(
            "li",
            &format!("forget:yes:{}", customer.id),
        )],
    )
    .await;
    let done = harness.channel.texts("li").last().cloned().unwrap();
    assert!(done.starts_with("已完成"), "{done}");
    assert!(harness
        .store
        .find_customer(support::PLATFORM, "li")
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn with_require_start_nothing_is_stored_before_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::settings(4096, 256);
    settings.privacy.require_start = true;
    let harness = support::harness(dir.path(), ECHO, settings);
    support::run_messages(
        &harness,
        vec![
            support::message("kim", "my secret question"),
            support::message("kim", "/start"),
            support::message("kim", "what now"),
        ],
    )
    .await;
    let replies = harness.channel.texts("kim");
    assert!(replies[0].contains("Send /start to agree"), "{replies:?}");
    assert!(replies[1].contains("/export"), "{replies:?}");
    assert_eq!(replies[2], "You said: what now");
    let customer = harness
        .store
        .find_customer(support::PLATFORM, "kim")
        .unwrap()
        .unwrap();
    let stored = harness.store.export_customer(customer.id).unwrap();
    let texts: Vec<&str> = stored
        .conversations
        .iter()
        .flat_map(|conversation| &conversation.messages)
        .map(|message| message.text.as_str())
        .collect();
    assert_eq!(texts, ["what now", "You said: what now"]);
}

#[cfg(feature = "console")]
#[test]
fn at_the_console_require_start_holds_everything_until_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::scripted_config(dir.path(), ECHO, free_port());
    let mut command = concierge(&config);
    command
        .args(["chat", "--user", "sam"])
        .env("CONCIERGE_PRIVACY_REQUIRE_START", "true");
    let output = support::run_with_stdin(command, "is it stored?\n/start\nnow it is\n");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.contains("Send /start to agree"), "{stdout}");
    assert!(!stdout.contains("You said: is it stored?"), "{stdout}");
    assert!(stdout.contains("You said: now it is"), "{stdout}");
    let history = concierge(&config)
        .args(["history", "--user", "sam"])
        .output()
        .unwrap();
    let history = String::from_utf8_lossy(&history.stdout);
    assert!(!history.contains("is it stored?"), "{history}");
    assert!(history.contains("now it is"), "{history}");
}
