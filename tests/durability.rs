//! Nothing acknowledged is lost: the real `concierge serve` binary, polling
//! the fake Bot API, is killed with `kill -9` (or stopped past its shutdown
//! deadline) while one reply is running and five more messages wait. After a
//! restart every message is in the history once and answered once.

#![cfg(feature = "telegram")]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::eventually;
use support::fake_telegram::{FakeTelegram, TOKEN};

const WAIT: Duration = Duration::from_secs(60);
const CUSTOMER: u64 = 4242;
const CHAT: i64 = 4242;
const QUESTIONS: usize = 6;

/// Every reply takes 30 s: three words, 10 s before each.
const SLOW: &str = "token_delay_ms = 10000\ndefault_reply = \"Answer to: {last_user}\"\n";
const FAST: &str = "token_delay_ms = 0\ndefault_reply = \"Answer to: {last_user}\"\n";

fn write_config(dir: &Path, fake: &FakeTelegram, script: &str, deadline_secs: u64) -> String {
    let script_path = dir.join("script.toml");
    std::fs::write(&script_path, script).unwrap();
    let config = dir.join("concierge.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\ndata_dir = {data:?}\n[engine]\nbackend = \"scripted\"\nscript_file = {script:?}\n\
             [operator]\nenabled = false\n[daemon]\nshutdown_deadline_secs = {deadline_secs}\n\
             [chat]\nprompts_dir = {prompts:?}\n[knowledge]\ndemo = false\n\
             [telegram]\nenabled = true\ntoken = {TOKEN:?}\napi_url = {url:?}\npoll_timeout_secs = 1\n",
            data = dir.join("data").display().to_string(),
            script = script_path.display().to_string(),
            prompts = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("prompts")
                .display()
                .to_string(),
            url = fake.url,
        ),
    )
    .unwrap();
    config.display().to_string()
}

fn serve(config: &str) -> Child {
    Command::new(support::binary())
        .args(["--config", config, "serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn wait_exit(mut child: Child) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

fn answers(fake: &FakeTelegram) -> Vec<String> {
    fake.messages_in(CHAT)
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

/// Six questions arrive while the first reply is running; the daemon is
/// stopped with `stop`; a restart on a fast script must answer all six,
/// each once, and store each once.
async fn six_questions_survive(stop: &str, deadline_secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let config = write_config(dir.path(), &fake, SLOW, deadline_secs);
    let daemon = serve(&config);
    let mut last = 0;
    for n in 1..=QUESTIONS {
        last = fake.push_message(CHAT, "private", CUSTOMER, &format!("question {n}"));
    }
    // All six are acknowledged to Telegram, and the first reply has started.
    assert!(eventually(WAIT, || fake.confirmed(last)).await);
    assert!(
        eventually(WAIT, || !fake.calls_of("sendChatAction").is_empty()).await,
        "the first reply starts"
    );
    assert!(answers(&fake).is_empty(), "no reply is complete yet");
    signal(&daemon, stop);
    let status = wait_exit(daemon).await;
    if stop == "-KILL" {
        assert!(!status.success());
    }

    write_config(dir.path(), &fake, FAST, deadline_secs);
    let daemon = serve(&config);
    let expected: Vec<String> = (1..=QUESTIONS)
        .map(|n| format!("Answer to: question {n}"))
        .collect();
    assert!(
        eventually(WAIT, || answers(&fake).len() >= QUESTIONS).await,
        "{:?}",
        answers(&fake)
    );
    // Another message after the replay: answered, and nothing is repeated.
    let next = fake.push_message(CHAT, "private", CUSTOMER, "question 7");
    assert!(eventually(WAIT, || answers(&fake).len() > QUESTIONS).await);
    assert!(eventually(WAIT, || fake.confirmed(next)).await);
    signal(&daemon, "-TERM");
    assert!(wait_exit(daemon).await.success());
    let mut all = expected.clone();
    all.push("Answer to: question 7".into());
    assert_eq!(answers(&fake), all, "each question answered once, in order");

    let output = Command::new(support::binary())
        .args([
            "--config",
            &config,
            "history",
            "--platform",
            "telegram",
            "--user",
            &CUSTOMER.to_string(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let history = String::from_utf8_lossy(&output.stdout);
    for n in 1..=QUESTIONS + 1 {
        let question = format!("\"question {n}\"");
        assert_eq!(
            history.matches(&question).count(),
            1,
            "{question}: {history}"
        );
        let answer = format!("\"Answer to: question {n}\"");
        assert_eq!(history.matches(&answer).count(), 1, "{answer}: {history}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_reply_loses_no_acknowledged_message() {
    six_questions_survive("-KILL", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_past_its_deadline_loses_no_acknowledged_message() {
    six_questions_survive("-TERM", 1).await;
}
