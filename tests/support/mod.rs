//! Shared helpers of the integration tests: an in-memory channel that records
//! what the bot sends, an in-process pipeline on the scripted engine, a
//! minimal HTTP client for the operator API, and helpers that run the real
//! `concierge` binary with a scripted-engine configuration.

#![allow(dead_code)]

pub mod fake_discord;
pub mod fake_openai;
pub mod fake_telegram;
pub mod multipart;
pub mod tiny_gguf;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use concierge::engine::scripted::{Script, ScriptedEngine};
use concierge::engine::Sampling;
use concierge::pipeline::{Pipeline, PipelineSettings};
use concierge::prompts::{Locale, Prompts};
use concierge::store::Store;
use concierge_adapter::{
    collect_stream, AdapterError, Capabilities, ConversationRef, DeltaStream, Inbound,
    InboundContent, Outbound, Outbox, SenderRef, SentMessage,
};
use tokio_util::sync::CancellationToken;

/// Platform name of the recording channel.
pub const PLATFORM: &str = "test";

/// One thing the bot did on the recording channel.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// Chat it went to.
    pub chat_id: String,
    /// Full text.
    pub text: String,
    /// Buttons under it.
    pub choices: Vec<concierge_adapter::Choice>,
    /// When it completed.
    pub at: Instant,
}

/// An in-memory channel that records every delivered message.
#[derive(Default)]
pub struct RecordingChannel {
    pub delivered: Mutex<Vec<Delivered>>,
}

impl RecordingChannel {
    pub fn texts(&self, chat_id: &str) -> Vec<String> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .filter(|delivered| delivered.chat_id == chat_id)
            .map(|delivered| delivered.text.clone())
            .collect()
    }

    fn record(&self, chat_id: &str, text: String, choices: Vec<concierge_adapter::Choice>) {
        self.delivered.lock().unwrap().push(Delivered {
            chat_id: chat_id.to_string(),
            text,
            choices,
            at: Instant::now(),
        });
    }
}

#[async_trait]
impl Outbox for RecordingChannel {
    fn platform(&self) -> &str {
        PLATFORM
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_message_chars: 4096,
            appends_stream: false,
            can_edit: false,
            buttons: true,
            threads: false,
            typing: false,
        }
    }
    async fn send(&self, message: Outbound) -> Result<SentMessage, AdapterError> {
        self.record(&message.conversation.chat_id, message.text, message.choices);
        Ok(SentMessage {
            conversation: message.conversation,
            message_id: "1".into(),
        })
    }
    async fn deliver_stream(
        &self,
        conversation: &ConversationRef,
        deltas: DeltaStream,
    ) -> Result<String, AdapterError> {
        let text = collect_stream(deltas).await;
        self.record(&conversation.chat_id, text.clone(), Vec::new());
        Ok(text)
    }
}

/// A text message from `user` in a private chat named after them.
pub fn message(user: &str, text: &str) -> Inbound {
    Inbound {
        chat: concierge_adapter::ChatKind::Private,
        conversation: ConversationRef {
            platform: PLATFORM.into(),
            chat_id: user.into(),
        },
        sender: SenderRef {
            platform: PLATFORM.into(),
            user_id: user.into(),
            display_name: None,
            language_hint: None,
        },
        content: InboundContent::Text(text.into()),
        message_id: None,
        delivery_id: None,
        in_reply_to: None,
        thread_parent: None,
        received_at: SystemTime::now(),
    }
}

/// A button press from `user` in their private chat.
pub fn choice(user: &str, id: &str) -> Inbound {
    let mut inbound = message(user, "");
    inbound.content = InboundContent::Choice { id: id.into() };
    inbound
}

/// An in-process pipeline over a store in `data_dir`.
pub struct Harness {
    pub pipeline: Arc<Pipeline>,
    pub engine: Arc<ScriptedEngine>,
    pub channel: Arc<RecordingChannel>,
    pub store: Store,
}

pub fn settings(context_tokens: usize, max_tokens: usize) -> PipelineSettings {
    PipelineSettings {
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens,
            repetition_penalty: 1.0,
            top_k: 0,
            seed: None,
        },
        context_tokens,
        max_message_chars: 4000,
        reply_timeout: Duration::from_secs(30),
        default_locale: Locale::En,
        top_k: 3,
        auto_handoff_confidence: 0.75,
        tiebreak: None,
        privacy: concierge::config::Config::defaults().privacy,
    }
}

pub fn harness(data_dir: &Path, script: &str, settings: PipelineSettings) -> Harness {
    let script: Script = toml::from_str(script).expect("test script parses");
    let engine = Arc::new(ScriptedEngine::new(script));
    let channel = Arc::new(RecordingChannel::default());
    let store = reopen_store(data_dir);
    let channel_dyn: Arc<dyn Outbox> = channel.clone();
    let pipeline = Arc::new(Pipeline {
        store: store.clone(),
        llm: engine.clone(),
        prompts: Prompts::built_in(),
        adapters: [(PLATFORM.to_string(), channel_dyn)].into_iter().collect(),
        settings,
        cancel: CancellationToken::new(),
        knowledge: None,
        recommender: None,
        classifier: None,
        escalation: None,
        desk: Default::default(),
        link_guard: Default::default(),
        fluency: Default::default(),
    });
    Harness {
        pipeline,
        engine,
        channel,
        store,
    }
}

/// Runs the router over `messages` (sent in order) until all are handled.
pub async fn run_messages(harness: &Harness, messages: Vec<Inbound>) {
    let (sink, delivered) = tokio::sync::mpsc::channel(1024);
    // The pipeline tests send faster than a customer may: no flood limits,
    // and queues long enough for every message of a test.
    let limits = concierge::config::ModerationConfig {
        enabled: false,
        queue_per_conversation: 100_000,
        ..concierge::config::Config::defaults().moderation
    };
    let router = tokio::spawn(concierge::router::run(
        delivered,
        concierge::inbox::Inbox::transient(),
        harness.pipeline.clone(),
        Default::default(),
        limits,
    ));
    for message in messages {
        sink.send(concierge::inbox::Delivery::transient(message))
            .await
            .unwrap();
    }
    drop(sink);
    tokio::time::timeout(Duration::from_secs(60), router)
        .await
        .expect("router finishes")
        .unwrap();
}

/// The `concierge` binary built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_concierge"))
}

/// The binary with `--config config`, run from the repository root, without
/// an operator token from the environment.
pub fn concierge_with(config: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(binary());
    command
        .arg("--config")
        .arg(config)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CONCIERGE_OPERATOR_TOKEN");
    command
}

/// Runs `command`, which must succeed (its stderr is shown when not), and
/// returns the JSON report it printed.
pub fn json_report(command: &mut std::process::Command) -> serde_json::Value {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Writes a configuration that uses the scripted engine with `script`, the
/// data directory `dir/data`, and the operator API on `operator_port`.
pub fn scripted_config(dir: &Path, script: &str, operator_port: u16) -> PathBuf {
    let script_path = dir.join("script.toml");
    std::fs::write(&script_path, script).unwrap();
    let config = format!(
        "[store]\ndata_dir = {data:?}\n[engine]\nbackend = \"scripted\"\nscript_file = {script:?}\n\
         [operator]\nlisten = \"127.0.0.1:{operator_port}\"\n[daemon]\nshutdown_deadline_secs = 3\n\
         [chat]\nprompts_dir = {prompts:?}\n[knowledge]\ndemo = false\n",
        data = dir.join("data").display().to_string(),
        script = script_path.display().to_string(),
        prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts").display().to_string(),
    );
    let path = dir.join("concierge.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Opens the store a daemon or harness of this process used, once it has
/// stopped: its flusher threads can hold the file lock for a moment after
/// the last handle is dropped.
pub fn reopen_store(data_dir: &Path) -> Store {
    Store::open_when_released(data_dir, Duration::from_secs(10)).expect("the store opens")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.1 request; returns status and body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    json_body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let body_headers = json_body
        .map(|body| {
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
        })
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{body_headers}Connection: close\r\n\r\n{}",
        json_body.unwrap_or_default()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A GET; returns status and body.
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, token, None)
}

/// A POST of a JSON body; returns status and body.
pub fn http_post(
    port: u16,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String)> {
    http_request(port, "POST", path, token, Some(body))
}

/// Runs `command` with `input` on stdin and returns its output.
pub fn run_with_stdin(mut command: std::process::Command, input: &str) -> std::process::Output {
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Waits until the daemon's `/healthz` on `port` answers 200.
pub fn wait_ready(port: u16) {
    wait_for(Duration::from_secs(30), || {
        http_get(port, "/healthz", None)
            .ok()
            .filter(|(status, _)| *status == 200)
    })
    .expect("the daemon becomes ready");
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if let Some(value) = check() {
            return Some(value);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `concierge serve` running in this process, stopped by `stop`.
pub struct InProcessDaemon {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The configuration it runs with.
    pub config: concierge::config::Config,
}

impl InProcessDaemon {
    /// Starts the daemon with the scripted engine (`script`), data in
    /// `dir/data`, no operator API, and the extra configuration `extra`.
    pub fn start(dir: &Path, script: &str, extra: &str) -> Self {
        Self::start_with_env(dir, script, extra, &[])
    }

    /// The same, with `CONCIERGE_*` overrides in `env`.
    pub fn start_with_env(dir: &Path, script: &str, extra: &str, env: &[(&str, &str)]) -> Self {
        let script_path = dir.join("script.toml");
        std::fs::write(&script_path, script).unwrap();
        let text = format!(
            "[store]\ndata_dir = {data:?}\n[engine]\nbackend = \"scripted\"\nscript_file = {script:?}\n\
             max_tokens = 2048\ncontext_tokens = 8192\n[operator]\nenabled = false\n[daemon]\nshutdown_deadline_secs = 5\n\
             [chat]\nprompts_dir = {prompts:?}\n[knowledge]\ndemo = false\n{extra}\n",
            data = dir.join("data").display().to_string(),
            script = script_path.display().to_string(),
            prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts").display().to_string(),
        );
        Self::start_with_config(&text, env)
    }

    /// The daemon with the whole configuration `text` and the `CONCIERGE_*`
    /// overrides in `env`.
    pub fn start_with_config(text: &str, env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let config = concierge::config::parse(text, &env).expect("test configuration is valid");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let config = config.clone();
            async move {
                concierge::app::serve(&config, async move {
                    let _ = stopped.await;
                })
                .await
            }
        });
        Self {
            stop: Some(stop),
            task,
            config,
        }
    }

    /// Stops the daemon and waits until it has shut down.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("the daemon stops within its deadline")
            .expect("the daemon task does not panic")
            .expect("the daemon exits cleanly");
    }
}

/// Waits until `check` holds or `timeout` passes; true if it held.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// A reply of about 6,000 characters in whole sentences.
pub fn long_reply() -> String {
    let sentence = "Our shop ships every parcel within two days and tracks it to your door. ";
    sentence.repeat(6000 / sentence.len() + 1)
}

/// A scripted-engine script that answers `reply` to messages containing "long".
pub fn long_reply_script(reply: &str) -> String {
    format!(
        "token_delay_ms = 0\ndefault_reply = \"ok\"\n[[rule]]\ncontains = \"long\"\nreply = {reply:?}\n"
    )
}

/// Whether the messages `texts` hold every word of `reply`.
pub fn holds_every_word(texts: &[String], reply: &str) -> bool {
    texts.join(" ").split_whitespace().count() == reply.split_whitespace().count()
}

/// Checks that `texts` show `reply` split into messages of at most `limit`
/// characters, each ending after a sentence, with no word lost or cut.
pub fn assert_split_on_sentences(texts: &[String], reply: &str, limit: usize) {
    for text in texts {
        assert!(
            text.chars().count() <= limit,
            "{} characters",
            text.chars().count()
        );
        // Split after a sentence, not inside a word.
        assert!(
            text.trim_end().ends_with('.'),
            "ends with {:?}",
            text.chars().rev().take(20).collect::<String>()
        );
    }
    let words: Vec<&str> = texts
        .iter()
        .flat_map(|text| text.split_whitespace())
        .collect();
    assert_eq!(words, reply.split_whitespace().collect::<Vec<_>>());
}

/// Runs `concierge eval answers` on the demo shop's evaluation file (the
/// rows `rows`: all, odd or even) with `env` set, as an operator would from
/// the repository; returns the report and each question's outcome.
pub fn eval_demo_answers(
    rows: &str,
    env: &[(&str, &str)],
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = std::process::Command::new(binary());
    command
        .current_dir(repo)
        .args([
            "eval",
            "answers",
            "--data",
            "config/demo/eval/answers.csv",
            "--rows",
            rows,
            "--details",
        ])
        .envs(env.iter().copied());
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "eval answers failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let outcomes = stderr
        .lines()
        .filter(|line| line.starts_with('{'))
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    (report, outcomes)
}
