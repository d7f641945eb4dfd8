//! The `concierge` binary as a user runs it, with the scripted engine: piped
//! chat, history, configuration errors, model-file errors, the daemon's
//! operator API and graceful shutdown, and durability across `kill -9`.

// The chat tests need the console channel; builds without it skip them.
#![cfg_attr(not(feature = "console"), allow(unused_imports))]

mod support;

use support::concierge_with as concierge;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{binary, free_port, http_get, run_with_stdin, scripted_config, wait_for, wait_ready};

const ECHO: &str = "default_reply = \"echo: {last_user}\"\n";

#[test]
#[cfg(feature = "console")]
fn piped_chat_answers_every_line_and_history_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = scripted_config(dir.path(), ECHO, free_port());
    let mut command = concierge(&config);
    command.args(["chat", "--user", "ann"]);
    let output = run_with_stdin(
        command,
        "hello there\n/help\n你好\nmy parcel is late\n我的包裹呢\n",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Small talk is answered in the customer's language and in role.
    assert!(stdout.contains("this shop's assistant"), "{stdout}");
    assert!(stdout.contains("/reset"), "help text: {stdout}");
    assert!(stdout.contains("我是本店的客服助手"), "{stdout}");
    // Without a knowledge base, questions go to the model.
    assert!(stdout.contains("echo: my parcel is late"), "{stdout}");
    assert!(stdout.contains("echo: 我的包裹呢"), "{stdout}");
    assert!(stdout.find("this shop's assistant") < stdout.find("我是本店的客服助手"));

    let output = concierge(&config)
        .args(["history", "--user", "ann"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let roles: Vec<&str> = lines
        .iter()
        .map(|line| line["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant"].repeat(4));
    assert_eq!(lines[0]["text"], "hello there");
    assert_eq!(lines[7]["text"], "echo: 我的包裹呢");
    assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        lines[0].as_object().unwrap().len(),
        3,
        "exactly ts, role, text"
    );
}

#[test]
fn history_of_an_unknown_customer_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = scripted_config(dir.path(), ECHO, free_port());
    let output = concierge(&config)
        .args(["history", "--user", "nobody"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nobody"));
}

#[test]
fn kubernetes_service_variables_pass_and_typos_warn_unless_strict() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/concierge.toml");
    let check = |strict: bool, vars: &[(&str, &str)]| {
        let mut command = Command::new(binary());
        command.args(["config", "check"]).arg(&shipped);
        if strict {
            command.arg("--strict");
        }
        command.envs(vars.iter().copied());
        command.output().unwrap()
    };
    let injected = [
        ("CONCIERGE_SERVICE_HOST", "10.0.0.1"),
        ("CONCIERGE_PORT", "tcp://10.0.0.1:8686"),
        ("CONCIERGE_PORT_8686_TCP", "tcp://10.0.0.1:8686"),
    ];
    for strict in [false, true] {
        let output = check(strict, &injected);
        assert_eq!(output.status.code(), Some(0), "strict {strict}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("warning"));
    }
    let typo = [("CONCIERGE_ENGINE_MAX_TOKEN", "64")];
    let output = check(false, &typo);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("did you mean CONCIERGE_ENGINE_MAX_TOKENS?"));
    let output = check(true, &typo);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("CONCIERGE_ENGINE_MAX_TOKEN"));
}

#[test]
fn config_check_lists_every_error_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[engine]\nmax_tokens = 0\ntemperature = 9\n[operator]\nlisten = \"here\"\n[chat]\ndefault_locale = \"fr\"\n",
    )
    .unwrap();
    let output = Command::new(binary())
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in [
        "engine.max_tokens",
        "engine.temperature",
        "operator.listen",
        "chat.default_locale",
    ] {
        assert!(stderr.contains(key), "{key} missing: {stderr}");
    }
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/concierge.toml");
    let output = Command::new(binary())
        .args(["config", "check"])
        .arg(&shipped)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = Command::new(binary())
        .args(["config", "check"])
        .arg(&shipped)
        .env("CONCIERGE_ENGINE_MAX_TOKENS", "many")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("CONCIERGE_ENGINE_MAX_TOKENS"));

    let output = Command::new(binary())
        .arg("--config")
        .arg(&bad)
        .arg("chat")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "other commands refuse a bad config too"
    );
    let missing = Command::new(binary())
        .args(["--config", "/nonexistent/concierge.toml", "chat"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/concierge.toml"));
}

fn model_config(dir: &Path, model: &Path) -> std::path::PathBuf {
    let path = dir.join("model.toml");
    std::fs::write(
        &path,
        format!(
            "[store]\ndata_dir = {:?}\n[engine]\nmodel_path = {:?}\nauto_fetch = false\n",
            dir.join("data").display().to_string(),
            model.display().to_string()
        ),
    )
    .unwrap();
    path
}

fn chat_error(dir: &Path, model: &Path) -> String {
    let config = model_config(dir, model);
    let output = run_with_stdin(
        {
            let mut command = concierge(&config);
            command.arg("chat");
            command
        },
        "hello\n",
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "must fail cleanly, not panic"
    );
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn a_missing_model_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = chat_error(dir.path(), &dir.path().join("absent.gguf"));
    assert!(
        stderr.contains("absent.gguf") && stderr.contains("not found"),
        "{stderr}"
    );
    assert!(stderr.contains("models/fetch"), "says what to do: {stderr}");
}

#[test]
fn a_corrupt_model_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken.gguf");
    std::fs::write(
        &model,
        b"GGUF\x03\x00\x00\x00 then garbage that ends too soon",
    )
    .unwrap();
    let stderr = chat_error(dir.path(), &model);
    assert!(stderr.contains("corrupt"), "{stderr}");
}

#[test]
fn a_model_of_an_unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("gemma.gguf");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"GGUF");
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    let key = b"general.architecture";
    bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&8u32.to_le_bytes());
    bytes.extend_from_slice(&5u64.to_le_bytes());
    bytes.extend_from_slice(b"gemma");
    std::fs::write(&model, bytes).unwrap();
    let stderr = chat_error(dir.path(), &model);
    assert!(
        stderr.contains("\"gemma\"") && stderr.contains("llama"),
        "{stderr}"
    );
}

#[test]
fn serve_reports_health_and_metrics_guards_routes_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = scripted_config(dir.path(), ECHO, port);
    let mut daemon = concierge(&config)
        .arg("serve")
        .env("CONCIERGE_OPERATOR_TOKEN", "test-token-123")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let health = wait_for(Duration::from_secs(30), || {
        http_get(port, "/healthz", None)
            .ok()
            .filter(|(status, _)| *status == 200)
    });
    let (_, body) = health.expect("healthz becomes ready");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], true);
    assert_eq!(report["store"]["state"], "ready");
    assert_eq!(report["engine"]["state"], "ready");

    let (status, metrics) = http_get(port, "/metrics", None).unwrap();
    assert_eq!(status, 200, "metrics need no token");
    assert!(metrics.contains("concierge_up 1"), "{metrics}");
    assert!(metrics.contains("concierge_tokens_total"), "{metrics}");

    let (status, _) = http_get(port, "/v1/history?user=x", None).unwrap();
    assert_eq!(status, 401);
    let (status, _) = http_get(port, "/v1/history?user=x", Some("wrong")).unwrap();
    assert_eq!(status, 401);
    let (status, _) = http_get(port, "/v1/history?user=x", Some("test-token-123")).unwrap();
    assert_eq!(status, 404, "authorised, and no such customer");

    // While the daemon holds the store, `history` says so.
    let output = concierge(&config)
        .args(["history", "--user", "x"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("running Concierge daemon"), "{stderr}");

    let status = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = wait_for(Duration::from_secs(20), || daemon.try_wait().unwrap());
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut log).unwrap();
    let exit = exited.expect("the daemon exits after SIGTERM");
    assert!(exit.success(), "{log}");
    assert!(log.contains("store flushed"), "{log}");
    assert!(
        !log.contains("test-token-123"),
        "the token never reaches the log"
    );
}

#[test]
#[cfg(feature = "console")]
fn messages_survive_kill_9_in_the_middle_of_a_reply() {
    let dir = tempfile::tempdir().unwrap();
    let script = "default_reply = \"echo: {last_user}\"\n[[rule]]\ncontains = \"long\"\nreply = \"this reply takes a long time to stream out word by word\"\ntoken_delay_ms = 400\n";
    let config = scripted_config(dir.path(), script, free_port());
    let mut child = concierge(&config)
        .args(["chat", "--user", "kim"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "first message").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "echo: first message");
    writeln!(stdin, "a long answer please").unwrap();
    // Wait until the reply is streaming, then kill without warning.
    let mut first_word = [0u8; 4];
    std::io::Read::read_exact(&mut stdout, &mut first_word).unwrap();
    assert_eq!(&first_word, b"this");
    child.kill().unwrap();
    child.wait().unwrap();

    let output = concierge(&config)
        .args(["history", "--user", "kim"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let texts: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        texts,
        [
            "first message",
            "echo: first message",
            "a long answer please"
        ]
    );
}

#[test]
#[cfg(feature = "console")]
fn shutdown_cancels_a_reply_past_the_deadline_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let script = "[[rule]]\ncontains = \"slow\"\nreply = \"one two three four five six seven eight nine ten eleven twelve\"\ntoken_delay_ms = 700\n";
    let config = scripted_config(dir.path(), script, port);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[console]\nenabled = true\nuser = \"desk\"\n");
    std::fs::write(&config, text).unwrap();
    let mut daemon = concierge(&config)
        .arg("serve")
        .env("CONCIERGE_DAEMON_SHUTDOWN_DEADLINE_SECS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(port);
    let mut stdin = daemon.stdin.take().unwrap();
    writeln!(stdin, "slow answer please").unwrap();
    let mut stdout = daemon.stdout.take().unwrap();
    let mut first_word = [0u8; 3];
    std::io::Read::read_exact(&mut stdout, &mut first_word).unwrap();
    assert_eq!(&first_word, b"one");
    let (_, metrics) = http_get(port, "/metrics", None).unwrap();
    assert!(
        metrics.contains("concierge_messages_total{platform=\"console\"} 1"),
        "{metrics}"
    );
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    let exit = wait_for(Duration::from_secs(20), || daemon.try_wait().unwrap())
        .expect("the daemon exits after its deadline");
    drop(stdin);
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(exit.success(), "{log}");
    assert!(log.contains("shutdown deadline passed"), "{log}");
    assert!(
        log.contains("console:desk"),
        "the log names the running reply: {log}"
    );
    assert!(log.contains("store flushed"), "{log}");

    let output = concierge(&config)
        .args(["history", "--user", "desk"])
        .output()
        .unwrap();
    let history = String::from_utf8_lossy(&output.stdout);
    assert!(history.contains("slow answer please"), "{history}");
}

/// The console is the full product: a complaint opens a ticket, the
/// customer is told its number, an agent answers with `concierge tickets`
/// from another terminal while the chat runs (with no token configured: the
/// chat writes one for this machine's clients), and `/human` opens one too.
#[test]
#[cfg(feature = "console")]
fn at_the_console_a_complaint_opens_a_ticket_an_agent_answers_with_concierge_tickets() {
    const TOKEN: &str = "desk-token";
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = scripted_config(dir.path(), ECHO, port);
    let token_file = dir.path().join("data").join("operator.token");
    let mut chat = concierge(&config)
        .env_remove("CONCIERGE_OPERATOR_TOKEN")
        .args(["chat", "--user", "ann"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    writeln!(stdin, "你们的快递太慢了，我非常生气！").unwrap();
    wait_ready(port);
    let tickets = |args: &[&str]| {
        concierge(&config)
            .env_remove("CONCIERGE_OPERATOR_TOKEN")
            .arg("tickets")
            .args(args)
            .output()
            .unwrap()
    };
    let listed = wait_for(Duration::from_secs(30), || {
        let output = tickets(&["list"]);
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        text.contains("T-000001").then_some(text)
    })
    .expect("the complaint opened a ticket");
    assert!(listed.contains("complaint"), "{listed}");
    let answered = tickets(&[
        "reply",
        "--agent",
        "mei",
        "T-000001",
        "您好，我们已经联系快递公司，明天送达。",
    ]);
    assert!(
        answered.status.success(),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );
    let written = std::fs::read_to_string(&token_file).expect("the chat wrote a token");
    let wrong = concierge(&config)
        .env("CONCIERGE_OPERATOR_TOKEN", "not-the-token")
        .args(["tickets", "list"])
        .output()
        .unwrap();
    assert!(!wrong.status.success(), "another token is refused");
    drop(stdin);
    let output = chat.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(written.trim().len(), 64);
    assert!(
        !token_file.exists(),
        "the token is withdrawn when the chat stops"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("T-000001"), "the ticket notice: {stdout}");
    assert!(
        stdout.contains("您好，我们已经联系快递公司，明天送达。"),
        "the agent's answer reached the console: {stdout}"
    );
    assert!(
        !stdout.contains("echo:"),
        "no model reply to a complaint: {stdout}"
    );

    let mut command = concierge(&config);
    command
        .env("CONCIERGE_OPERATOR_TOKEN", TOKEN)
        .args(["chat", "--user", "bob"]);
    let output = run_with_stdin(command, "/human\n");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("T-000002"),
        "/human opened a ticket: {stdout}"
    );
}
