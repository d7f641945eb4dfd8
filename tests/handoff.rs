//! Hand-off to people end to end over the fake Telegram: a complaint opens a
//! ticket, the customer is told, the bot stays silent while agents answer
//! through `concierge tickets` (the operator API), and resolving brings the
//! bot back with rating buttons.

#![cfg(feature = "telegram")]

mod support;

use std::process::Command;
use std::time::Duration;

use support::fake_telegram::{FakeTelegram, TOKEN};
use support::{binary, eventually, free_port, InProcessDaemon};

const WAIT: Duration = Duration::from_secs(30);
const CHAT: i64 = 555;
const SCRIPT: &str = "token_delay_ms = 0\ndefault_reply = \"You said: {last_user}\"\n\
[[rule]]\ncontains = \"support agent\"\nreply = \"The parcel arrived smashed and nobody answers the emails.\"\n";
const OPERATOR_TOKEN: &str = "desk-token-123";

fn texts(fake: &FakeTelegram) -> Vec<String> {
    fake.messages_in(CHAT)
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

fn tickets_cli(
    dir: &std::path::Path,
    port: u16,
    token: &str,
    args: &[&str],
) -> std::process::Output {
    let config = dir.join("cli.toml");
    std::fs::write(
        &config,
        format!("[operator]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    Command::new(binary())
        .arg("--config")
        .arg(&config)
        .arg("tickets")
        .args(args)
        .env("CONCIERGE_OPERATOR_TOKEN", token)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_complaint_goes_to_a_person_and_comes_back_with_a_rating() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let port = free_port();
    let section = format!(
        "[telegram]\nenabled = true\ntoken = {TOKEN:?}\napi_url = {:?}\npoll_timeout_secs = 1\n",
        fake.url
    );
    let listen = format!("127.0.0.1:{port}");
    let daemon = InProcessDaemon::start_with_env(
        dir.path(),
        SCRIPT,
        &section,
        &[
            ("CONCIERGE_OPERATOR_ENABLED", "true"),
            ("CONCIERGE_OPERATOR_LISTEN", &listen),
            ("CONCIERGE_OPERATOR_TOKEN", OPERATOR_TOKEN),
        ],
    );
    fake.push_message(CHAT, "private", 555, "hello");
    assert!(eventually(WAIT, || texts(&fake).len() == 1).await);
    fake.push_message(
        CHAT,
        "private",
        555,
        "This is unacceptable, my parcel arrived smashed and nobody answers my emails",
    );
    assert!(eventually(WAIT, || texts(&fake).len() == 2).await);
    assert!(texts(&fake)[1].contains("T-000001"), "{:?}", texts(&fake));

    // The bot stays silent while the ticket is with people.
    fake.push_message(CHAT, "private", 555, "hello? anyone there?");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(texts(&fake).len(), 2, "{:?}", texts(&fake));

    let dir_path = dir.path().to_path_buf();
    let cli = move |token: &'static str, args: Vec<&'static str>| {
        let dir = dir_path.clone();
        tokio::task::spawn_blocking(move || tickets_cli(&dir, port, token, &args))
    };
    let listed = cli(OPERATOR_TOKEN, vec!["list", "--state", "open"])
        .await
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    let ticket: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(ticket["ticket"], "T-000001");
    assert_eq!(ticket["category"], "complaint");
    assert_eq!(ticket["state"], "open");
    // The engine wrote the summary, and it stuck to the transcript.
    assert_eq!(
        ticket["summary"],
        "The parcel arrived smashed and nobody answers the emails."
    );
    let transcript: Vec<&str> = ticket["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["text"].as_str().unwrap())
        .collect();
    assert!(
        transcript.contains(&"hello? anyone there?"),
        "{transcript:?}"
    );

    let refused = cli(
        "wrong-token",
        vec!["reply", "T-000001", "--agent", "ann", "hi"],
    )
    .await
    .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));

    let replied = cli(
        OPERATOR_TOKEN,
        vec![
            "reply",
            "T-000001",
            "--agent",
            "ann",
            "Sorry about that, a new parcel leaves today.",
        ],
    )
    .await
    .unwrap();
    assert!(
        replied.status.success(),
        "{}",
        String::from_utf8_lossy(&replied.stderr)
    );
    assert!(eventually(WAIT, || texts(&fake).len() == 3).await);
    assert_eq!(
        texts(&fake)[2],
        "Sorry about that, a new parcel leaves today."
    );

    let resolved = cli(
        OPERATOR_TOKEN,
        vec!["resolve", "T-000001", "--agent", "ann"],
    )
    .await
    .unwrap();
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    assert!(eventually(WAIT, || texts(&fake).len() == 4).await);
    let rating_message = fake.calls_of("sendMessage").into_iter().last().unwrap();
    let buttons: Vec<String> = rating_message.body["reply_markup"]["inline_keyboard"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|button| button["callback_data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(buttons.len(), 5);
    let (message_id, _) = fake.messages_in(CHAT).last().cloned().unwrap();
    fake.push_callback(CHAT, 555, message_id, &buttons[4]);
    assert!(eventually(WAIT, || texts(&fake).len() == 5).await);

    // The bot is back.
    fake.push_message(CHAT, "private", 555, "one more question");
    assert!(
        eventually(WAIT, || texts(&fake)
            .get(5)
            .is_some_and(|text| text == "You said: one more question"))
        .await,
        "{:?}",
        texts(&fake)
    );
    daemon.stop().await;

    // Everything survived the restart: state, transitions and the rating.
    let store = concierge::store::Store::open(&dir.path().join("data")).unwrap();
    let ticket = store.ticket(1).unwrap().unwrap();
    assert_eq!(ticket.rating, Some(5));
    let states: Vec<&str> = ticket.transitions.iter().map(|t| t.to.label()).collect();
    assert_eq!(states, ["open", "assigned", "resolved", "closed"]);
    assert_eq!(ticket.transitions[1].actor, "ann");
    assert_eq!(ticket.transitions[3].actor, "customer");
}
