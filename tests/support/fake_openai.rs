//! A fake OpenAI-compatible chat server on 127.0.0.1, speaking the wire
//! protocol of llama.cpp's server, vLLM and the OpenAI API:
//! `POST /v1/chat/completions` with `"stream": true` answers server-sent
//! events (`data: {chunk}\n\n`, a usage chunk, `data: [DONE]\n\n`), and
//! without it one JSON completion, with the first token's `logprobs` when
//! asked for and set; errors
//! are `{"error": {"message", "type", "code"}}` with their HTTP status.
//! Latency, failures, a context limit and a sudden death can be injected; it
//! counts the streams a client dropped before their end.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

struct Inner {
    key: Option<String>,
    model: String,
    reply: String,
    first_token_delay: Duration,
    token_delay: Duration,
    /// Prompts longer than this many characters are refused as too long.
    context_chars: Option<usize>,
    /// Statuses to answer the next requests with, in order.
    failures: VecDeque<u16>,
    /// Whether streams carry a usage chunk.
    usage: bool,
    /// The first token's likeliest alternatives (token, log-probability),
    /// sent with a completion that asks for `logprobs`; none when unset, as
    /// servers without log-probabilities answer.
    alternatives: Option<Vec<(String, f32)>>,
    requests: Vec<Value>,
    authorizations: Vec<String>,
    completed: usize,
    dropped: usize,
}

/// The fake server.
#[derive(Clone)]
pub struct FakeOpenAi {
    inner: Arc<Mutex<Inner>>,
    killed: Arc<AtomicBool>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// The base URL for `engine.base_url` (ends in `/v1`).
    pub url: String,
}

/// Marks a stream dropped unless it reached its end.
struct StreamGuard {
    inner: Arc<Mutex<Inner>>,
    finished: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut inner = self.inner.lock().unwrap();
        if self.finished {
            inner.completed += 1;
        } else {
            inner.dropped += 1;
        }
    }
}

impl FakeOpenAi {
    /// Starts a server that knows `model` and answers every prompt with
    /// "Hello from the fake server." at once.
    pub async fn start(model: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = Self {
            inner: Arc::new(Mutex::new(Inner {
                key: None,
                model: model.to_string(),
                reply: "Hello from the fake server.".into(),
                first_token_delay: Duration::ZERO,
                token_delay: Duration::ZERO,
                context_chars: None,
                failures: VecDeque::new(),
                usage: true,
                alternatives: None,
                requests: Vec::new(),
                authorizations: Vec::new(),
                completed: 0,
                dropped: 0,
            })),
            killed: Arc::new(AtomicBool::new(false)),
            task: Arc::new(Mutex::new(None)),
            url: format!("http://127.0.0.1:{port}/v1"),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(fake.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *fake.task.lock().unwrap() = Some(task);
        fake
    }

    /// Requires `Authorization: Bearer key`.
    pub fn require_key(&self, key: &str) {
        self.inner.lock().unwrap().key = Some(key.to_string());
    }

    /// The text every reply streams, word by word.
    pub fn set_reply(&self, reply: &str) {
        self.inner.lock().unwrap().reply = reply.to_string();
    }

    /// Time to the first token, and between two tokens.
    pub fn set_latency(&self, first_token: Duration, per_token: Duration) {
        let mut inner = self.inner.lock().unwrap();
        inner.first_token_delay = first_token;
        inner.token_delay = per_token;
    }

    /// Prompts of more characters than this are refused as over the context.
    pub fn set_context_chars(&self, chars: usize) {
        self.inner.lock().unwrap().context_chars = Some(chars);
    }

    /// The next `count` requests are answered with `status`.
    pub fn fail_next(&self, status: u16, count: usize) {
        let mut inner = self.inner.lock().unwrap();
        inner.failures.extend(std::iter::repeat_n(status, count));
    }

    /// The first token's alternatives a completion with `logprobs` gets.
    pub fn set_first_token_alternatives(&self, alternatives: &[(&str, f32)]) {
        self.inner.lock().unwrap().alternatives = Some(
            alternatives
                .iter()
                .map(|(token, log_probability)| (token.to_string(), *log_probability))
                .collect(),
        );
    }

    /// Leaves the usage chunk out, as some servers do.
    pub fn without_usage(&self) {
        self.inner.lock().unwrap().usage = false;
    }

    /// Dies at once: new connections are refused, and streams under way
    /// break off without another byte.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Every request body, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Every `Authorization` header, in order.
    pub fn authorizations(&self) -> Vec<String> {
        self.inner.lock().unwrap().authorizations.clone()
    }

    /// Streams sent to their end.
    pub fn completed(&self) -> usize {
        self.inner.lock().unwrap().completed
    }

    /// Streams the client dropped (or a kill broke) before their end.
    pub fn dropped(&self) -> usize {
        self.inner.lock().unwrap().dropped
    }
}

fn error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": kind, "code": code}})),
    )
        .into_response()
}

/// The text of each message of a chat request.
fn contents(request: &Value) -> impl Iterator<Item = &str> {
    request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|message| message["content"].as_str().unwrap_or_default())
}

/// A whole (not streamed) completion of at most `max_tokens` words, with
/// the first token's alternatives when asked for and known.
fn completion(
    request: &Value,
    model: &str,
    words: &[String],
    prompt_tokens: usize,
    alternatives: Option<Vec<(String, f32)>>,
) -> Response {
    let limit = request["max_tokens"]
        .as_u64()
        .map_or(words.len(), |max| max as usize);
    let content: String = words.iter().take(limit).map(String::as_str).collect();
    let mut choice = json!({
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": if limit < words.len() { "length" } else { "stop" },
    });
    if let (Some(alternatives), true) = (alternatives, request["logprobs"] == json!(true)) {
        let top = request["top_logprobs"].as_u64().unwrap_or(0) as usize;
        let listed: Vec<Value> = alternatives
            .iter()
            .take(top)
            .map(|(token, log_probability)| json!({"token": token, "logprob": log_probability}))
            .collect();
        if let Some((first, first_log_probability)) = alternatives.first() {
            choice["logprobs"] = json!({"content": [{
                "token": first, "logprob": first_log_probability, "top_logprobs": listed,
            }]});
        }
    }
    let completion_tokens = limit.min(words.len());
    axum::Json(json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_796_000_000,
        "model": model, "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response()
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> Bytes {
    let event = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_796_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    Bytes::from(format!("data: {event}\n\n"))
}

async fn chat(State(fake): State<FakeOpenAi>, headers: HeaderMap, body: Bytes) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid JSON body",
            "invalid_request_error",
            "invalid_json",
        );
    };
    let (model, reply, first_delay, token_delay, usage, status, alternatives) = {
        let mut inner = fake.inner.lock().unwrap();
        inner.requests.push(request.clone());
        inner.authorizations.push(authorization.clone());
        if let Some(key) = &inner.key {
            if authorization != format!("Bearer {key}") {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "Incorrect API key provided.",
                    "invalid_request_error",
                    "invalid_api_key",
                );
            }
        }
        if request["model"].as_str() != Some(inner.model.as_str()) {
            return error(
                StatusCode::NOT_FOUND,
                &format!(
                    "The model `{}` does not exist.",
                    request["model"].as_str().unwrap_or_default()
                ),
                "invalid_request_error",
                "model_not_found",
            );
        }
        let prompt_chars: usize = contents(&request)
            .map(|content| content.chars().count())
            .sum();
        if inner
            .context_chars
            .is_some_and(|limit| prompt_chars > limit)
        {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("This model's maximum context length is {} characters, but the messages have {prompt_chars}.", inner.context_chars.unwrap_or(0)),
                "invalid_request_error",
                "context_length_exceeded",
            );
        }
        let status = inner.failures.pop_front();
        (
            inner.model.clone(),
            inner.reply.clone(),
            inner.first_token_delay,
            inner.token_delay,
            inner.usage,
            status,
            inner.alternatives.clone(),
        )
    };
    if let Some(status) = status {
        return error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "the fake server failed on purpose",
            "server_error",
            "injected",
        );
    }
    let prompt_tokens: usize = contents(&request)
        .map(|content| content.split_whitespace().count())
        .sum();
    let words: Vec<String> = reply.split_inclusive(' ').map(str::to_string).collect();
    if request["stream"] != json!(true) {
        return completion(&request, &model, &words, prompt_tokens, alternatives);
    }
    let guard = StreamGuard {
        inner: Arc::clone(&fake.inner),
        finished: false,
    };
    let killed = Arc::clone(&fake.killed);
    // Steps: 0 the role chunk, 1..=n the words, then finish, usage, [DONE].
    let steps = futures::stream::unfold((0usize, guard), move |(step, mut guard)| {
        let (model, words, killed) = (model.clone(), words.clone(), Arc::clone(&killed));
        async move {
            if step == usize::MAX {
                return None;
            }
            let delay = match step {
                0 => Duration::ZERO,
                1 => first_delay,
                _ => token_delay,
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if killed.load(Ordering::SeqCst) {
                return Some((Err(std::io::Error::other("killed")), (usize::MAX, guard)));
            }
            let bytes = match step {
                0 => chunk(&model, json!({"role": "assistant", "content": ""}), None),
                step if step <= words.len() => {
                    chunk(&model, json!({"content": words[step - 1]}), None)
                }
                step if step == words.len() + 1 => chunk(&model, json!({}), Some("stop")),
                step if step == words.len() + 2 && usage => Bytes::from(format!(
                    "data: {}\n\n",
                    json!({
                        "id": "chatcmpl-fake", "object": "chat.completion.chunk",
                        "created": 1_796_000_000, "model": model, "choices": [],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": words.len(),
                                  "total_tokens": prompt_tokens + words.len()},
                    })
                )),
                step if step <= words.len() + 3 => {
                    guard.finished = true;
                    Bytes::from_static(b"data: [DONE]\n\n")
                }
                _ => return None,
            };
            let next = if step == words.len() + 1 && !usage {
                step + 2
            } else {
                step + 1
            };
            Some((Ok::<Bytes, std::io::Error>(bytes), (next, guard)))
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(steps))
        .unwrap()
}
