//! The remote engine (`engine.backend = "openai"`) against the fake
//! OpenAI-compatible server in tests/support/fake_openai.rs: streamed
//! replies at the console and over the fake Telegram, a pool that loses an
//! endpoint mid-run, the errors a person can act on (401, 404, context
//! length), cancellation reaching the server, the key kept out of logs,
//! labels scored by the server's log-probabilities, and each endpoint in
//! `/healthz` and `/metrics` of `serve`.

// The console and Telegram tests need their channels; builds without them skip them.
#![cfg_attr(
    not(all(feature = "console", feature = "telegram")),
    allow(unused_imports, dead_code)
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use concierge::engine::remote::{RemoteEngine, RemoteSettings};
use concierge::engine::{ChatMessage, ChatRequest, ChatRole, Llm, Sampling, StreamEvent, Usage};
use support::fake_openai::FakeOpenAi;
use support::{concierge_with as concierge, eventually, free_port, run_with_stdin};
use tokio_util::sync::CancellationToken;

const MODEL: &str = "qwen2.5-0.5b-instruct";
const WAIT: Duration = Duration::from_secs(30);

fn settings(urls: &[&str]) -> RemoteSettings {
    RemoteSettings {
        base_urls: urls
            .iter()
            .map(|url| url::Url::parse(url).unwrap())
            .collect(),
        api_key: None,
        model: MODEL.into(),
        request_timeout: Duration::from_secs(10),
        tokenizer: None,
    }
}

fn request(messages: &[(ChatRole, &str)]) -> ChatRequest {
    ChatRequest {
        messages: messages
            .iter()
            .map(|(role, text)| ChatMessage::new(*role, *text))
            .collect(),
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 64,
            repetition_penalty: 1.0,
            top_k: 0,
            seed: Some(7),
        },
    }
}

/// The whole reply, or the error's text.
async fn reply(engine: &RemoteEngine, request: ChatRequest) -> Result<String, String> {
    let mut stream = engine
        .stream_chat(request, CancellationToken::new())
        .await
        .map_err(|err| err.to_string())?;
    let mut text = String::new();
    while let Some(event) = stream.recv().await {
        match event.map_err(|err| err.to_string())? {
            StreamEvent::Delta(delta) => text.push_str(&delta),
            StreamEvent::Done(_) => return Ok(text),
        }
    }
    Err(format!("the stream ended without Done after {text:?}"))
}

/// The streamed pieces of the reply to "be brief" / "returns?", and the
/// usage its `Done` carried.
async fn pieces_and_usage(engine: &RemoteEngine) -> (Vec<String>, Option<Usage>) {
    let mut stream = engine
        .stream_chat(
            request(&[(ChatRole::System, "be brief"), (ChatRole::User, "returns?")]),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let mut deltas = Vec::new();
    let mut usage = None;
    while let Some(event) = stream.recv().await {
        match event.unwrap() {
            StreamEvent::Delta(delta) => deltas.push(delta),
            StreamEvent::Done(done) => usage = Some(done),
        }
    }
    (deltas, usage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_streams_with_the_servers_usage_and_the_sampling_sent() {
    let fake = FakeOpenAi::start(MODEL).await;
    fake.set_reply("Returns are free within 45 days.");
    let engine = RemoteEngine::new(settings(&[&fake.url])).unwrap();
    let (deltas, usage) = pieces_and_usage(&engine).await;
    assert_eq!(deltas.concat(), "Returns are free within 45 days.");
    assert!(deltas.len() > 1, "streamed in pieces: {deltas:?}");
    let usage = usage.unwrap();
    assert_eq!(usage.completion_tokens, 6);
    assert_eq!(usage.prompt_tokens, 3);
    let sent = &fake.requests()[0];
    assert_eq!(sent["model"], MODEL);
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["seed"], 7);
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["messages"][1]["content"], "returns?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_streams_no_usage_gets_the_tokens_counted_here() {
    let fake = FakeOpenAi::start(MODEL).await;
    fake.set_reply("Returns are free within 45 days.");
    fake.without_usage();
    let engine = RemoteEngine::new(settings(&[&fake.url])).unwrap();
    let (_, usage) = pieces_and_usage(&engine).await;
    let usage = usage.expect("the stream ends with Done");
    // One streamed piece per word; the prompt estimated from its characters.
    assert_eq!(usage.completion_tokens, 6);
    let estimated = engine.count_tokens("be brief") + engine.count_tokens("returns?");
    assert_eq!(usage.prompt_tokens, estimated);
    assert!(estimated > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_that_loses_an_endpoint_mid_run_fails_no_request_that_could_be_retried() {
    let first = FakeOpenAi::start(MODEL).await;
    let second = FakeOpenAi::start(MODEL).await;
    for fake in [&first, &second] {
        fake.set_latency(Duration::from_millis(400), Duration::from_millis(5));
    }
    let engine = Arc::new(RemoteEngine::new(settings(&[&first.url, &second.url])).unwrap());
    let mut requests = Vec::new();
    for index in 0..12 {
        let engine = Arc::clone(&engine);
        requests.push(tokio::spawn(async move {
            reply(
                &engine,
                request(&[(ChatRole::User, &format!("question {index}"))]),
            )
            .await
        }));
    }
    // Both endpoints share the load, then one dies before any first token.
    assert!(
        eventually(WAIT, || first.requests().len() >= 3
            && second.requests().len() >= 3)
        .await
    );
    first.kill();
    for request in requests {
        assert_eq!(
            request.await.unwrap().as_deref(),
            Ok("Hello from the fake server.")
        );
    }
    let health = engine.endpoints();
    assert_eq!(health[0].state, "down", "{health:?}");
    assert_eq!(health[1].state, "up", "{health:?}");
    // Later requests go to the endpoint that is up.
    let before = second.requests().len();
    assert!(reply(&engine, request(&[(ChatRole::User, "again")]))
        .await
        .is_ok());
    assert_eq!(second.requests().len(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_error_before_the_first_token_is_retried_on_another_endpoint() {
    let first = FakeOpenAi::start(MODEL).await;
    let second = FakeOpenAi::start(MODEL).await;
    first.fail_next(503, 1);
    second.fail_next(503, 1);
    let engine = RemoteEngine::new(settings(&[&first.url, &second.url])).unwrap();
    // One endpoint failing is retried on the other; both failing is an error.
    let outcome = reply(&engine, request(&[(ChatRole::User, "hi")])).await;
    assert!(outcome.is_err(), "{outcome:?}");
    assert!(outcome.unwrap_err().contains("503"));
    let outcome = reply(&engine, request(&[(ChatRole::User, "hi")])).await;
    assert_eq!(outcome.as_deref(), Ok("Hello from the fake server."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_keys_unknown_models_and_long_prompts_get_errors_a_person_can_act_on() {
    let fake = FakeOpenAi::start(MODEL).await;
    fake.require_key("sk-right-key-123");
    let mut wrong_key = settings(&[&fake.url]);
    wrong_key.api_key = Some(concierge::config::Secret::new("sk-wrong-key-456"));
    let error = reply(
        &RemoteEngine::new(wrong_key).unwrap(),
        request(&[(ChatRole::User, "hi")]),
    )
    .await
    .unwrap_err();
    assert!(
        error.contains("401") && error.contains("engine.api_key"),
        "{error}"
    );

    let mut unknown_model = settings(&[&fake.url]);
    unknown_model.api_key = Some(concierge::config::Secret::new("sk-right-key-123"));
    unknown_model.model = "no-such-model".into();
    let error = reply(
        &RemoteEngine::new(unknown_model).unwrap(),
        request(&[(ChatRole::User, "hi")]),
    )
    .await
    .unwrap_err();
    assert!(
        error.contains("404") && error.contains("engine.model"),
        "{error}"
    );
    assert!(error.contains("no-such-model"), "{error}");

    // Over the context: the older half of the history goes, once.
    let mut right = settings(&[&fake.url]);
    right.api_key = Some(concierge::config::Secret::new("sk-right-key-123"));
    let engine = RemoteEngine::new(right).unwrap();
    fake.set_context_chars(100);
    let long = "x".repeat(50);
    let history = [
        (ChatRole::System, "rules"),
        (ChatRole::User, long.as_str()),
        (ChatRole::Assistant, long.as_str()),
        (ChatRole::User, "and now?"),
    ];
    let before = fake.requests().len();
    assert_eq!(
        reply(&engine, request(&history)).await.as_deref(),
        Ok("Hello from the fake server.")
    );
    let sent = fake.requests();
    assert_eq!(sent.len(), before + 2);
    let retried = sent.last().unwrap()["messages"].as_array().unwrap().clone();
    assert_eq!(retried.first().unwrap()["content"], "rules");
    assert_eq!(retried.last().unwrap()["content"], "and now?");
    assert!(retried.len() < history.len());
    // A prompt that stays too long is an error naming the setting.
    let huge = "y".repeat(500);
    let error = reply(&engine, request(&[(ChatRole::User, huge.as_str())]))
        .await
        .unwrap_err();
    assert!(error.contains("context"), "{error}");
}

/// Labels scored by the server: one token asked for with its likeliest
/// alternatives, added up per label; a server that sends none is asked once
/// and then leaves the caller to write; a refusal is an error naming the
/// server's answer and the setting to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labels_are_scored_by_the_servers_first_token_log_probabilities() {
    let fake = FakeOpenAi::start(MODEL).await;
    fake.set_reply("Yes it does");
    fake.set_first_token_alternatives(&[
        ("Yes", -0.4),
        ("No", -1.3),
        (" yes", -2.0),
        ("Maybe", -4.0),
    ]);
    let engine = RemoteEngine::new(settings(&[&fake.url])).unwrap();
    let messages = request(&[
        (ChatRole::System, "rules"),
        (ChatRole::User, "needs a person?"),
    ])
    .messages;
    let scores = engine
        .label_log_probs(&messages, &["yes", "no"])
        .await
        .unwrap()
        .expect("the server sent log-probabilities");
    let yes = (-0.4f32).exp() + (-2.0f32).exp();
    assert!((scores[0] - yes.ln()).abs() < 1e-4, "{scores:?}");
    assert!((scores[1] + 1.3).abs() < 1e-4, "{scores:?}");
    let sent = fake.requests().pop().unwrap();
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["max_tokens"], 1);
    assert_eq!(sent["logprobs"], true);
    assert_eq!(sent["top_logprobs"], 20);
    assert_eq!(sent["model"], MODEL);
    assert_eq!(sent["messages"][1]["content"], "needs a person?");

    // A server without log-probabilities is asked once: its verdicts are
    // written from then on.
    let plain = FakeOpenAi::start(MODEL).await;
    let engine = RemoteEngine::new(settings(&[&plain.url])).unwrap();
    for _ in 0..2 {
        assert_eq!(
            engine
                .label_log_probs(&messages, &["yes", "no"])
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(plain.requests().len(), 1);

    let locked = FakeOpenAi::start(MODEL).await;
    locked.require_key("right");
    let engine = RemoteEngine::new(settings(&[&locked.url])).unwrap();
    let error = engine
        .label_log_probs(&messages, &["yes", "no"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("401")
            && error.contains("Incorrect API key")
            && error.contains("engine.api_key"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_a_reply_closes_the_request_on_the_server() {
    let fake = FakeOpenAi::start(MODEL).await;
    fake.set_reply(&"word ".repeat(200));
    fake.set_latency(Duration::ZERO, Duration::from_millis(20));
    let engine = RemoteEngine::new(settings(&[&fake.url])).unwrap();
    let cancel = CancellationToken::new();
    let mut stream = engine
        .stream_chat(request(&[(ChatRole::User, "talk")]), cancel.clone())
        .await
        .unwrap();
    assert!(matches!(
        stream.recv().await,
        Some(Ok(StreamEvent::Delta(_)))
    ));
    drop(stream);
    assert!(
        eventually(WAIT, || fake.dropped() == 1).await,
        "the server saw the request closed"
    );
    // The cancellation token does the same.
    let mut stream = engine
        .stream_chat(request(&[(ChatRole::User, "talk")]), cancel.clone())
        .await
        .unwrap();
    assert!(matches!(
        stream.recv().await,
        Some(Ok(StreamEvent::Delta(_)))
    ));
    cancel.cancel();
    assert!(eventually(WAIT, || fake.dropped() == 2).await);
    assert_eq!(fake.completed(), 0);
}

fn remote_config(dir: &std::path::Path, urls: &[&str], extra: &str) -> std::path::PathBuf {
    let config = dir.join("concierge.toml");
    let list = urls
        .iter()
        .map(|url| format!("{url:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &config,
        format!(
            "[store]\ndata_dir = {data:?}\n[engine]\nbackend = \"openai\"\nbase_url = [{list}]\nmodel = {MODEL:?}\n\
             [operator]\nlisten = \"127.0.0.1:{port}\"\n[knowledge]\ndemo = false\n{extra}",
            data = dir.join("data").display().to_string(),
            port = free_port(),
        ),
    )
    .unwrap();
    config
}

#[cfg(feature = "console")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_console_the_remote_reply_streams_and_the_key_stays_out_of_the_log() {
    let fake = FakeOpenAi::start(MODEL).await;
    fake.require_key("sk-secret-key-789");
    fake.set_reply("Our shop opens at nine.");
    let dir = tempfile::tempdir().unwrap();
    let config = remote_config(dir.path(), &[&fake.url], "[log]\nlevel = \"trace\"\n");
    let mut command = concierge(&config);
    command
        .args(["chat", "--user", "ann"])
        .env("CONCIERGE_ENGINE_API_KEY", "sk-secret-key-789");
    let output =
        tokio::task::spawn_blocking(move || run_with_stdin(command, "when do you open?\n"))
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("Our shop opens at nine."), "{stdout}");
    assert!(stderr.contains("estimated from characters"), "{stderr}");
    assert!(!stderr.contains("sk-secret-key-789"), "the key was logged");
    assert_eq!(fake.authorizations()[0], "Bearer sk-secret-key-789");
    // No model file was fetched or converted.
    assert!(!dir.path().join("data").join("models").exists());

    // A wrong key: the customer gets the apology, the log says what to fix.
    let mut command = concierge(&config);
    command
        .args(["chat", "--user", "ann"])
        .env("CONCIERGE_ENGINE_API_KEY", "sk-wrong-key-000");
    let output =
        tokio::task::spawn_blocking(move || run_with_stdin(command, "when do you open?\n"))
            .await
            .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("engine.api_key"), "{stderr}");
    assert!(!stderr.contains("sk-wrong-key-000"), "{stderr}");
}

#[cfg(feature = "telegram")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_telegram_customer_gets_the_remote_reply_growing_by_edits() {
    use support::fake_telegram::{FakeTelegram, TOKEN};
    let fake = FakeOpenAi::start(MODEL).await;
    let words = "one two three four five six seven eight nine ten eleven twelve";
    fake.set_reply(words);
    fake.set_latency(Duration::from_millis(50), Duration::from_millis(150));
    let telegram = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = support::InProcessDaemon::start_with_config(
        &format!(
            "[store]\ndata_dir = {data:?}\n[engine]\nbackend = \"openai\"\nmodel = {MODEL:?}\n\
             [operator]\nenabled = false\n[knowledge]\ndemo = false\n\
             [telegram]\nenabled = true\ntoken = {TOKEN:?}\napi_url = {url:?}\npoll_timeout_secs = 1\n",
            data = dir.path().join("data").display().to_string(),
            url = telegram.url,
        ),
        &[("CONCIERGE_ENGINE_BASE_URL", fake.url.as_str())],
    );
    telegram.push_message(555, "private", 555, "tell me a long story please");
    assert!(
        eventually(WAIT, || telegram
            .messages_in(555)
            .last()
            .is_some_and(|(_, text)| text == words))
        .await,
        "{:?}",
        telegram.messages_in(555)
    );
    daemon.stop().await;
    assert!(
        !telegram.calls_of("editMessageText").is_empty(),
        "it grew by edits"
    );
}

#[cfg(feature = "telegram")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_shows_each_endpoint_in_healthz_and_metrics_and_is_unready_when_none_is_up() {
    use support::fake_telegram::{FakeTelegram, TOKEN};
    let fake = FakeOpenAi::start(MODEL).await;
    fake.set_reply("We open at nine.");
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let telegram = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = remote_config(
        dir.path(),
        &[&fake.url, &dead],
        &format!(
            "[telegram]\nenabled = true\napi_url = {url:?}\npoll_timeout_secs = 1\n",
            url = telegram.url
        ),
    );
    let port: u16 = std::fs::read_to_string(&config)
        .unwrap()
        .split("listen = \"127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|port| port.parse().ok())
        .unwrap();
    let mut daemon = concierge(&config)
        .arg("serve")
        .env("CONCIERGE_TELEGRAM_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let health = move || {
        support::http_get(port, "/healthz", None)
            .ok()
            .and_then(|(status, body)| {
                Some((
                    status,
                    serde_json::from_str::<serde_json::Value>(&body).ok()?,
                ))
            })
    };
    // Two customers' messages: whichever endpoint the first goes to, the
    // dead one is tried once and taken out, and both are answered.
    telegram.push_message(601, "private", 601, "when do you open?");
    telegram.push_message(602, "private", 602, "and on sundays?");
    assert!(
        eventually(WAIT, || [601, 602].iter().all(|chat| telegram
            .messages_in(*chat)
            .iter()
            .any(|(_, text)| text.contains("We open at nine."))))
        .await,
        "{:?} {:?}",
        telegram.messages_in(601),
        telegram.messages_in(602)
    );
    let (status, report) = tokio::task::spawn_blocking(move || {
        support::wait_for(WAIT, || {
            health().filter(|(_, report)| {
                report["endpoints"]
                    .as_array()
                    .is_some_and(|endpoints| endpoints.len() == 2)
            })
        })
    })
    .await
    .unwrap()
    .expect("healthz answers with the endpoints");
    assert_eq!(status, 200, "{report}");
    let endpoints = report["endpoints"].as_array().unwrap();
    let state_of = |url: &str| {
        endpoints
            .iter()
            .find(|endpoint| {
                endpoint["url"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(url.trim_end_matches("/v1"))
            })
            .map(|endpoint| endpoint["state"].clone())
    };
    assert_eq!(state_of(&fake.url), Some("up".into()), "{report}");
    let (_, metrics) = support::http_get(port, "/metrics", None).unwrap();
    // The endpoint label is its URL without credentials.
    let label = fake.url.trim_end_matches("/v1");
    for series in [
        format!("concierge_engine_requests_total{{endpoint=\"{label}"),
        format!("concierge_engine_tokens_total{{endpoint=\"{label}"),
        format!("concierge_engine_first_token_seconds_count{{endpoint=\"{label}"),
    ] {
        assert!(metrics.contains(&series), "{series} missing in\n{metrics}");
    }

    // The only live server dies: the next message fails, and the daemon
    // reports itself unready until an endpoint is back.
    fake.kill();
    telegram.push_message(603, "private", 603, "how long does delivery take?");
    let unready = tokio::task::spawn_blocking(move || {
        support::wait_for(WAIT, || health().filter(|(status, _)| *status == 503))
    })
    .await
    .unwrap();
    let (_, report) = unready.expect("503 once no endpoint is up");
    assert!(
        report["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|endpoint| endpoint["state"] == "down"),
        "{report}"
    );
    let (_, metrics) = support::http_get(port, "/metrics", None).unwrap();
    assert!(
        metrics.contains(&format!(
            "concierge_engine_errors_total{{endpoint=\"{label}"
        )),
        "{metrics}"
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
}
