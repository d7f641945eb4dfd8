//! The remote engine (`engine.backend = "openai"`): a pool of
//! OpenAI-compatible servers (llama.cpp's `llama-server`, vLLM, Ollama,
//! `mistralrs serve`) spoken to over the chat-completions API with streaming
//! (server-sent events), behind the same `Llm` trait as the in-process
//! engines. Requests go to the endpoint with the fewest in flight; an
//! endpoint that fails is taken out with back-off and probed back in; a
//! request that failed before its first token is retried once elsewhere.
//! Dropping a reply stream drops its HTTP request, so the server stops.
//! Given labels are scored by the server's first-token log-probabilities.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    ChatMessage, ChatRequest, ChatRole, EngineError, Llm, ReplyStream, StreamEvent, Usage,
};

/// The first back-off of an endpoint that failed; it doubles per failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest an SSE line may grow before the stream is refused.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// What the remote engine needs, from `[engine]`.
#[derive(Clone, Debug)]
pub struct RemoteSettings {
    /// Base URLs, each ending in the API root (`http://gpu1:8000/v1`).
    pub base_urls: Vec<url::Url>,
    /// Bearer key, if the servers want one.
    pub api_key: Option<crate::config::Secret>,
    /// The model name sent with each request.
    pub model: String,
    /// Longest a request may take to its first token, and between two.
    pub request_timeout: Duration,
    /// A `tokenizer.json` or GGUF file for the token budget.
    pub tokenizer: Option<PathBuf>,
}

/// How one endpoint stands, for `/healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointHealth {
    /// Its base URL.
    pub url: String,
    /// `up`, or `down` while it backs off.
    pub state: &'static str,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Why it went down, when it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

struct Endpoint {
    url: url::Url,
    /// `url` without credentials or query, for logs and metrics.
    label: String,
    in_flight: AtomicUsize,
    state: Mutex<EndpointState>,
    /// Whether it answered a label question without log-probabilities:
    /// it is then not asked again, and the caller writes at once.
    lacks_logprobs: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct EndpointState {
    failures: u32,
    /// While set and in the future, the endpoint is out; past it, one probe
    /// may go.
    down_until: Option<Instant>,
    last_error: Option<String>,
}

impl Endpoint {
    fn is_up(&self, now: Instant) -> bool {
        let state = self.lock();
        state.down_until.is_none_or(|until| until <= now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EndpointState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn succeeded(&self) {
        let mut state = self.lock();
        if state.down_until.is_some() {
            tracing::info!(endpoint = %self.label, "inference endpoint is back");
        }
        *state = EndpointState::default();
    }

    fn failed(&self, why: &str) {
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << state.failures.saturating_sub(1).min(5))
            .min(MAX_BACKOFF);
        state.down_until = Some(Instant::now() + backoff);
        state.last_error = Some(why.to_string());
        tracing::warn!(endpoint = %self.label, backoff_secs = backoff.as_secs(), "inference endpoint taken out: {why}");
    }
}

/// Counts a request in flight on an endpoint until dropped.
struct InFlight(Arc<Endpoint>);

impl InFlight {
    fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The endpoints, chosen by load.
struct Pool {
    endpoints: Vec<Arc<Endpoint>>,
}

impl Pool {
    /// The endpoint to send to: among those up, the one with the fewest
    /// requests in flight, never `avoid`. When none is up, the one whose
    /// back-off ends first (a probe).
    fn pick(&self, avoid: Option<&Arc<Endpoint>>) -> Option<Arc<Endpoint>> {
        let now = Instant::now();
        let candidates = self
            .endpoints
            .iter()
            .filter(|endpoint| avoid.is_none_or(|avoid| !Arc::ptr_eq(avoid, endpoint)));
        let up = candidates
            .clone()
            .filter(|endpoint| endpoint.is_up(now))
            .min_by_key(|endpoint| endpoint.in_flight.load(Ordering::SeqCst));
        up.or_else(|| candidates.min_by_key(|endpoint| endpoint.lock().down_until.unwrap_or(now)))
            .cloned()
    }
}

/// Why one attempt on one endpoint failed.
enum Failure {
    /// The endpoint is at fault (unreachable, 5xx, timeout) and no text was
    /// streamed yet: another endpoint may serve the request.
    Retryable(String),
    /// The prompt is longer than the server's context.
    ContextTooLong(String),
    /// Anything else; the error says what to do.
    Fatal(EngineError),
}

/// The remote engine; every request's task shares one `Remote`.
pub struct RemoteEngine(Arc<Remote>);

/// The settings, HTTP client, pool and tokenizer of the remote engine.
struct Remote {
    settings: RemoteSettings,
    client: reqwest::Client,
    pool: Pool,
    tokenizer: Option<tokenizers::Tokenizer>,
    name: String,
}

impl RemoteEngine {
    /// The engine over `settings.base_urls`. Nothing is fetched or loaded;
    /// the tokenizer file, when given, is read now.
    pub fn new(settings: RemoteSettings) -> Result<Self, EngineError> {
        if settings.base_urls.is_empty() {
            return Err(EngineError::Load(
                "engine.backend = \"openai\" needs engine.base_url (or CONCIERGE_ENGINE_BASE_URL)"
                    .into(),
            ));
        }
        let tokenizer = match &settings.tokenizer {
            Some(path) => Some(load_tokenizer(path)?),
            None => {
                tracing::info!("no engine.tokenizer: the token budget is estimated from characters (conservatively)");
                None
            }
        };
        let client = reqwest::Client::builder()
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|err| EngineError::Load(format!("cannot build the HTTP client: {err}")))?;
        let endpoints = settings
            .base_urls
            .iter()
            .map(|url| {
                let mut label = url.clone();
                let _ = label.set_username("");
                let _ = label.set_password(None);
                label.set_query(None);
                Arc::new(Endpoint {
                    url: url.clone(),
                    label: label.to_string(),
                    in_flight: AtomicUsize::new(0),
                    state: Mutex::new(EndpointState::default()),
                    lacks_logprobs: std::sync::atomic::AtomicBool::new(false),
                })
            })
            .collect();
        Ok(Self(Arc::new(Remote {
            name: format!("{} (openai)", settings.model),
            settings,
            client,
            pool: Pool { endpoints },
            tokenizer,
        })))
    }

    /// Each endpoint's state.
    pub fn endpoints(&self) -> Vec<EndpointHealth> {
        let now = Instant::now();
        self.0
            .pool
            .endpoints
            .iter()
            .map(|endpoint| {
                let up = endpoint.is_up(now);
                EndpointHealth {
                    url: endpoint.label.clone(),
                    state: if up { "up" } else { "down" },
                    in_flight: endpoint.in_flight.load(Ordering::SeqCst),
                    last_error: if up {
                        None
                    } else {
                        endpoint.lock().last_error.clone()
                    },
                }
            })
            .collect()
    }
}

fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer, EngineError> {
    let is_gguf = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("gguf"));
    if is_gguf {
        let header = super::gguf::read_header(path)?;
        return super::gguf::tokenizer_from_header(&header).ok_or_else(|| {
            EngineError::ModelUnreadable {
                path: path.to_path_buf(),
                detail: "engine.tokenizer: this GGUF file holds no vocabulary Concierge can read"
                    .into(),
            }
        });
    }
    tokenizers::Tokenizer::from_file(path).map_err(|err| EngineError::ModelUnreadable {
        path: path.to_path_buf(),
        detail: format!("engine.tokenizer is not a tokenizer.json: {err}"),
    })
}

/// The request body of the chat-completions API.
#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    stream_options: StreamOptions,
    max_tokens: usize,
    temperature: f64,
    top_p: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

/// The chat as the API spells it.
fn wire_messages(messages: &[ChatMessage]) -> Vec<WireMessage<'_>> {
    messages
        .iter()
        .map(|message| WireMessage {
            role: wire_role(message.role),
            content: &message.content,
        })
        .collect()
}

fn wire_role(role: ChatRole) -> &'static str {
    match role {
        ChatRole::System => "system",
        ChatRole::User => "user",
        ChatRole::Assistant => "assistant",
    }
}

/// The request without its oldest turns: the system prompt and the newest
/// half of the rest (at least the last message) stay.
fn trimmed(request: &ChatRequest) -> ChatRequest {
    let (system, rest): (Vec<&ChatMessage>, Vec<&ChatMessage>) = request
        .messages
        .iter()
        .partition(|message| message.role == ChatRole::System);
    let keep = (rest.len() / 2).max(1);
    let mut messages: Vec<ChatMessage> = system.into_iter().cloned().collect();
    messages.extend(
        rest[rest.len().saturating_sub(keep)..]
            .iter()
            .cloned()
            .cloned(),
    );
    ChatRequest {
        messages,
        sampling: request.sampling,
    }
}

/// Whether a 400 (or 413) answer says the prompt is too long.
fn is_context_error(status: u16, body: &str) -> bool {
    let lower = body.to_ascii_lowercase();
    (status == 400 || status == 413)
        && (lower.contains("context_length_exceeded")
            || lower.contains("context length")
            || lower.contains("context window")
            || lower.contains("maximum context")
            || lower.contains("exceeds the available context")
            || lower.contains("too many tokens"))
}

/// The server's error message in an error body, else the body.
fn error_message(body: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|value| {
            value["error"]["message"]
                .as_str()
                .or_else(|| value["error"].as_str())
                .or_else(|| value["message"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.trim().to_string());
    message.chars().take(300).collect()
}

/// What one SSE `data:` payload carried.
enum Event {
    Text(String),
    Usage(usize, usize),
    Error(String),
    Done,
    Nothing,
}

/// One streamed chunk, read without building a JSON tree (it runs for
/// every token).
#[derive(serde::Deserialize)]
struct WireChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<WireChoice<'a>>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct WireChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<WireDelta<'a>>,
}

#[derive(serde::Deserialize)]
struct WireDelta<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

fn parse_event(data: &str) -> Event {
    let data = data.trim();
    if data == "[DONE]" {
        return Event::Done;
    }
    let Ok(chunk) = serde_json::from_str::<WireChunk>(data) else {
        return Event::Error(format!(
            "the server sent an event that is not JSON: {}",
            error_message(data)
        ));
    };
    if chunk.error.is_some() {
        return Event::Error(error_message(data));
    }
    if let Some(text) = chunk
        .choices
        .into_iter()
        .flatten()
        .next()
        .and_then(|choice| choice.delta)
        .and_then(|delta| delta.content)
    {
        if !text.is_empty() {
            return Event::Text(text.into_owned());
        }
    }
    if let Some(WireUsage {
        prompt_tokens: Some(prompt),
        completion_tokens: Some(completion),
    }) = chunk.usage
    {
        return Event::Usage(prompt as usize, completion as usize);
    }
    Event::Nothing
}

/// Splits server-sent events out of a byte stream.
#[derive(Default)]
struct SseReader {
    buffer: Vec<u8>,
}

impl SseReader {
    /// Adds bytes; returns the `data:` payloads of the events completed.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut payloads = Vec::new();
        let mut consumed = 0;
        while let Some(length) = self.buffer[consumed..]
            .iter()
            .position(|byte| *byte == b'\n')
        {
            let line = String::from_utf8_lossy(&self.buffer[consumed..consumed + length]);
            let line = line.trim_end_matches('\r');
            if let Some(data) = line.strip_prefix("data:") {
                payloads.push(data.trim_start().to_string());
            }
            consumed += length + 1;
        }
        self.buffer.drain(..consumed);
        if self.buffer.len() > MAX_EVENT_BYTES {
            return Err("the server sent an event line over 1 MiB".into());
        }
        Ok(payloads)
    }
}

/// How long the rest of a finished stream is read for.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Reads what follows `[DONE]` (the end of the chunked body), so the
/// connection goes back to the client's pool: the next reply then skips the
/// TCP (and TLS) handshake.
async fn drain(response: &mut reqwest::Response) {
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    while let Ok(Ok(Some(_))) = tokio::time::timeout_at(deadline, response.chunk()).await {}
}

impl Remote {
    fn count_tokens(&self, text: &str) -> usize {
        match &self.tokenizer {
            Some(tokenizer) => tokenizer
                .encode(text, false)
                .map(|encoding| encoding.len())
                .unwrap_or_else(|_| super::estimate_tokens(text)),
            // Without the server's tokenizer, err on the long side.
            None => super::estimate_tokens(text) + super::estimate_tokens(text) / 4 + 1,
        }
    }

    fn body<'a>(&'a self, request: &'a ChatRequest) -> Body<'a> {
        Body {
            model: &self.settings.model,
            messages: wire_messages(&request.messages),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            max_tokens: request.sampling.max_tokens,
            temperature: request.sampling.temperature,
            top_p: request.sampling.top_p,
            seed: request.sampling.seed,
        }
    }

    /// A POST of `body` to `endpoint`'s chat completions, with the key.
    fn completions_call(
        &self,
        endpoint: &Endpoint,
        body: &impl Serialize,
    ) -> Result<reqwest::RequestBuilder, EngineError> {
        let mut url = endpoint.url.clone();
        url.path_segments_mut()
            .map_err(|_| {
                EngineError::Load(format!(
                    "engine.base_url {} cannot take a path",
                    endpoint.label
                ))
            })?
            .pop_if_empty()
            .extend(["chat", "completions"]);
        let call = self.client.post(url).json(body);
        Ok(match &self.settings.api_key {
            Some(key) => call.bearer_auth(key.expose()),
            None => call,
        })
    }

    /// One attempt on `endpoint`, streaming into `events`. Returns whether
    /// any text was sent.
    async fn attempt(
        &self,
        endpoint: &Arc<Endpoint>,
        request: &ChatRequest,
        events: &mpsc::Sender<Result<StreamEvent, EngineError>>,
        cancel: &CancellationToken,
    ) -> Result<(), Failure> {
        let _in_flight = InFlight::new(Arc::clone(endpoint));
        let started = Instant::now();
        crate::telemetry::remote_request(&endpoint.label);
        let call = self
            .completions_call(endpoint, &self.body(request))
            .map_err(Failure::Fatal)?;
        let timeout = self.settings.request_timeout;
        let response = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = events.closed() => return Ok(()),
            answer = tokio::time::timeout(timeout, call.send()) => answer,
        };
        let response = match response {
            Err(_) => {
                return Err(Failure::Retryable(format!(
                    "no answer within {} s (engine.request_timeout_secs)",
                    timeout.as_secs()
                )))
            }
            Ok(Err(err)) => {
                return Err(Failure::Retryable(format!(
                    "unreachable: {}",
                    without_url(&err)
                )))
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        if !response.status().is_success() {
            let body = response.text().await.unwrap_or_default();
            let message = error_message(&body);
            return Err(match status {
                401 | 403 => Failure::Fatal(EngineError::Generation(format!(
                    "{} refused the request ({status}: {message}): check engine.api_key",
                    endpoint.label
                ))),
                404 => Failure::Fatal(EngineError::Generation(format!(
                    "{} answered 404, it knows no model {:?} or no path /chat/completions ({message}): check engine.model and engine.base_url (it should end in /v1)",
                    endpoint.label, self.settings.model
                ))),
                _ if is_context_error(status, &body) => Failure::ContextTooLong(message),
                500.. => Failure::Retryable(format!("HTTP {status}: {message}")),
                _ => Failure::Fatal(EngineError::Generation(format!(
                    "{} answered {status}: {message}",
                    endpoint.label
                ))),
            });
        }
        let mut response = response;
        let mut reader = SseReader::default();
        let mut sent_text = false;
        let mut usage = Usage::default();
        let mut completion_chunks = 0usize;
        let mut done = false;
        'stream: loop {
            let chunk = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = events.closed() => return Ok(()),
                chunk = tokio::time::timeout(timeout, response.chunk()) => chunk,
            };
            let chunk = match chunk {
                Err(_) if !sent_text => {
                    return Err(Failure::Retryable(format!(
                        "no token within {} s",
                        timeout.as_secs()
                    )))
                }
                Err(_) => {
                    return Err(Failure::Fatal(EngineError::Generation(format!(
                        "{} stopped streaming for {} s",
                        endpoint.label,
                        timeout.as_secs()
                    ))))
                }
                Ok(Err(err)) if !sent_text => {
                    return Err(Failure::Retryable(format!(
                        "the stream broke: {}",
                        without_url(&err)
                    )))
                }
                Ok(Err(err)) => {
                    return Err(Failure::Fatal(EngineError::Generation(format!(
                        "{} broke the stream: {}",
                        endpoint.label,
                        without_url(&err)
                    ))))
                }
                // The server closed the stream without `[DONE]`.
                Ok(Ok(None)) => break 'stream,
                Ok(Ok(Some(chunk))) => chunk,
            };
            let payloads = reader
                .push(&chunk)
                .map_err(|why| Failure::Fatal(EngineError::Generation(why)))?;
            for payload in payloads {
                match parse_event(&payload) {
                    Event::Text(text) => {
                        if !sent_text {
                            crate::telemetry::remote_first_token(
                                &endpoint.label,
                                started.elapsed(),
                            );
                        }
                        sent_text = true;
                        completion_chunks += 1;
                        if events.send(Ok(StreamEvent::Delta(text))).await.is_err() {
                            return Ok(());
                        }
                    }
                    Event::Usage(prompt, completion) => {
                        usage.prompt_tokens = prompt;
                        usage.completion_tokens = completion;
                    }
                    Event::Error(message) if !sent_text && is_context_error(400, &message) => {
                        return Err(Failure::ContextTooLong(message))
                    }
                    Event::Error(message) => {
                        return Err(Failure::Fatal(EngineError::Generation(format!(
                            "{}: {message}",
                            endpoint.label
                        ))))
                    }
                    Event::Done => {
                        done = true;
                        break 'stream;
                    }
                    Event::Nothing => {}
                }
            }
        }
        self.finish(
            endpoint,
            request,
            events,
            (usage, completion_chunks),
            started,
        )
        .await?;
        if done {
            drain(&mut response).await;
        }
        Ok(())
    }

    async fn finish(
        &self,
        endpoint: &Arc<Endpoint>,
        request: &ChatRequest,
        events: &mpsc::Sender<Result<StreamEvent, EngineError>>,
        (mut usage, completion_chunks): (Usage, usize),
        started: Instant,
    ) -> Result<(), Failure> {
        endpoint.succeeded();
        if usage.prompt_tokens == 0 {
            // Some servers (llama-cpp-python's) send no usage when streaming.
            usage.prompt_tokens = request
                .messages
                .iter()
                .map(|message| self.count_tokens(&message.content))
                .sum();
        }
        if usage.completion_tokens == 0 {
            // A server without usage reports: each streamed piece is about a token.
            usage.completion_tokens = completion_chunks;
        }
        let seconds = started.elapsed().as_secs_f64().max(1e-6);
        usage.decode_tokens_per_sec = usage.completion_tokens as f64 / seconds;
        crate::telemetry::remote_tokens(&endpoint.label, usage.completion_tokens);
        let _ = events.send(Ok(StreamEvent::Done(usage))).await;
        Ok(())
    }

    /// The whole request: an endpoint, a second one if the first failed
    /// before any text, and a trimmed history if the prompt was too long.
    async fn run(
        &self,
        request: ChatRequest,
        events: mpsc::Sender<Result<StreamEvent, EngineError>>,
        cancel: CancellationToken,
    ) {
        let mut request = request;
        let mut retried_elsewhere = false;
        let mut trimmed_once = false;
        let mut avoid: Option<Arc<Endpoint>> = None;
        loop {
            let Some(endpoint) = self.pool.pick(avoid.as_ref()) else {
                let _ = events
                    .send(Err(EngineError::Generation(
                        "no inference endpoint is configured".into(),
                    )))
                    .await;
                return;
            };
            let failure = match self.attempt(&endpoint, &request, &events, &cancel).await {
                Ok(()) => return,
                Err(failure) => failure,
            };
            crate::telemetry::remote_error(&endpoint.label);
            match failure {
                Failure::Retryable(why) => {
                    endpoint.failed(&why);
                    if retried_elsewhere || self.pool.endpoints.len() < 2 {
                        let _ = events
                            .send(Err(EngineError::Generation(format!(
                                "the inference server {} failed: {why}",
                                endpoint.label
                            ))))
                            .await;
                        return;
                    }
                    retried_elsewhere = true;
                    avoid = Some(endpoint);
                }
                Failure::ContextTooLong(why) if !trimmed_once => {
                    tracing::info!(endpoint = %endpoint.label, "the prompt exceeds the server's context ({why}); retrying with the older half of the history left out");
                    trimmed_once = true;
                    request = trimmed(&request);
                }
                Failure::ContextTooLong(why) => {
                    let _ = events
                        .send(Err(EngineError::Generation(format!(
                            "the prompt is longer than {}'s context even without the older history ({why}): lower engine.context_tokens",
                            endpoint.label
                        ))))
                        .await;
                    return;
                }
                Failure::Fatal(err) => {
                    let _ = events.send(Err(err)).await;
                    return;
                }
            }
        }
    }
}

/// How many of the likeliest first tokens a server is asked for when
/// labels are scored (OpenAI's API allows up to 20).
const TOP_LOGPROBS: u8 = 20;

/// A one-token completion with the likeliest first tokens, for scoring
/// labels.
#[derive(Serialize)]
struct ScoreBody<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    max_tokens: usize,
    temperature: f64,
    logprobs: bool,
    top_logprobs: u8,
}

/// The first token's alternatives in a completion, where the server gave
/// them (`choices[0].logprobs.content[0].top_logprobs`).
fn first_token_alternatives(body: &serde_json::Value) -> Option<Vec<(String, f32)>> {
    let alternatives = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"].as_array()?;
    Some(
        alternatives
            .iter()
            .filter_map(|alternative| {
                Some((
                    alternative["token"].as_str()?.to_string(),
                    alternative["logprob"].as_f64()? as f32,
                ))
            })
            .collect(),
    )
}

/// Each label's log-probability as the first token's alternatives add up
/// for it: a token counts for a label it begins, in any case and spacing
/// ("Yes", " yes" and "yes" for "yes"). A label none begins scores minus
/// infinity.
fn label_scores(alternatives: &[(String, f32)], labels: &[&str]) -> Vec<f32> {
    labels
        .iter()
        .map(|label| {
            let label = label.trim().to_lowercase();
            let probability: f32 = alternatives
                .iter()
                .filter(|(token, _)| super::begins_label(token, &label))
                .map(|(_, log_probability)| log_probability.exp())
                .sum();
            probability.ln()
        })
        .collect()
}

impl Remote {
    /// Asks one endpoint for the first token's alternatives after
    /// `messages` and scores `labels` by them; `None` when the server
    /// sends no alternatives.
    async fn score_labels(
        &self,
        messages: &[ChatMessage],
        labels: &[&str],
    ) -> Result<Option<Vec<f32>>, EngineError> {
        let Some(endpoint) = self.pool.pick(None) else {
            return Err(EngineError::Generation(
                "no inference endpoint is configured".into(),
            ));
        };
        if endpoint.lacks_logprobs.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let _in_flight = InFlight::new(Arc::clone(&endpoint));
        crate::telemetry::remote_request(&endpoint.label);
        let body = ScoreBody {
            model: &self.settings.model,
            messages: wire_messages(messages),
            stream: false,
            max_tokens: 1,
            temperature: 0.0,
            logprobs: true,
            top_logprobs: TOP_LOGPROBS,
        };
        let call = self.completions_call(&endpoint, &body)?;
        let answer = tokio::time::timeout(self.settings.request_timeout, async {
            let response = call.send().await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        })
        .await;
        let failed = |why: String| {
            crate::telemetry::remote_error(&endpoint.label);
            endpoint.failed(&why);
            EngineError::Generation(format!(
                "the inference server {} failed: {why}",
                endpoint.label
            ))
        };
        let (status, text) = match answer {
            Err(_) => {
                return Err(failed(format!(
                    "no answer within {} s (engine.request_timeout_secs)",
                    self.settings.request_timeout.as_secs()
                )))
            }
            Ok(Err(err)) => return Err(failed(format!("unreachable: {}", without_url(&err)))),
            Ok(Ok(answer)) => answer,
        };
        if status.is_server_error() {
            return Err(failed(format!("HTTP {status}: {}", error_message(&text))));
        }
        if !status.is_success() {
            crate::telemetry::remote_error(&endpoint.label);
            let hint = match status.as_u16() {
                401 | 403 => ": check engine.api_key",
                404 => ": check engine.model and engine.base_url (it should end in /v1)",
                _ => "",
            };
            return Err(EngineError::Generation(format!(
                "{} answered {status}: {}{hint}",
                endpoint.label,
                error_message(&text)
            )));
        }
        let body: serde_json::Value = serde_json::from_str(&text)
            .map_err(|_| failed(format!("the answer is not JSON: {}", error_message(&text))))?;
        endpoint.succeeded();
        let alternatives = first_token_alternatives(&body);
        if alternatives.is_none() {
            tracing::info!(endpoint = %endpoint.label, "the server sends no log-probabilities: the model's verdicts are written instead of scored");
            endpoint.lacks_logprobs.store(true, Ordering::Relaxed);
        }
        Ok(alternatives.map(|alternatives| label_scores(&alternatives, labels)))
    }
}

/// An HTTP error's text without its URL, which may carry credentials.
fn without_url(err: &reqwest::Error) -> String {
    let kind = if err.is_connect() {
        "connection refused or unreachable"
    } else if err.is_timeout() {
        "timed out"
    } else if err.is_body() || err.is_decode() {
        "the body broke off"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(err);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} ({detail})")
    }
}

#[async_trait]
impl Llm for RemoteEngine {
    fn model_name(&self) -> &str {
        &self.0.name
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.0.count_tokens(text)
    }

    async fn stream_chat(
        &self,
        request: ChatRequest,
        cancel: CancellationToken,
    ) -> Result<ReplyStream, EngineError> {
        let (events, stream) = mpsc::channel(64);
        let remote = Arc::clone(&self.0);
        tokio::spawn(async move { remote.run(request, events, cancel).await });
        Ok(stream)
    }

    fn remote_endpoints(&self) -> Option<Vec<EndpointHealth>> {
        Some(self.endpoints())
    }

    /// Scored by the server's log-probabilities of the first token, where
    /// it sends them (llama.cpp's server, vLLM and OpenAI do).
    async fn label_log_probs(
        &self,
        messages: &[ChatMessage],
        labels: &[&str],
    ) -> Result<Option<Vec<f32>>, EngineError> {
        self.0.score_labels(messages, labels).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_add_up_the_first_tokens_they_begin_with() {
        let alternatives = [
            ("Yes".to_string(), (0.5f32).ln()),
            (" yes".to_string(), (0.2f32).ln()),
            ("No".to_string(), (0.25f32).ln()),
            ("Maybe".to_string(), (0.05f32).ln()),
            (" ".to_string(), (0.01f32).ln()),
        ];
        let scores = label_scores(&alternatives, &["yes", "no", "perhaps"]);
        assert!((scores[0] - (0.7f32).ln()).abs() < 1e-5, "{scores:?}");
        assert!((scores[1] - (0.25f32).ln()).abs() < 1e-5, "{scores:?}");
        assert_eq!(scores[2], f32::NEG_INFINITY);
        // A label of several tokens counts the token it begins with.
        let chinese = [("是".to_string(), -0.1f32), ("否".to_string(), -2.5f32)];
        let scores = label_scores(&chinese, &["是的", "否"]);
        assert!((scores[0] + 0.1).abs() < 1e-5 && (scores[1] + 2.5).abs() < 1e-5);
        let body = serde_json::json!({"choices": [{"message": {"content": "Yes"},
            "logprobs": {"content": [{"token": "Yes", "logprob": -0.1,
                "top_logprobs": [{"token": "Yes", "logprob": -0.1}, {"token": "No", "logprob": -2.4}]}]}}]});
        assert_eq!(
            first_token_alternatives(&body),
            Some(vec![("Yes".to_string(), -0.1), ("No".to_string(), -2.4)])
        );
        let without = serde_json::json!({"choices": [{"message": {"content": "Yes"}}]});
        assert_eq!(first_token_alternatives(&without), None);
    }

    #[test]
    fn server_sent_events_are_split_across_chunks() {
        let mut reader = SseReader::default();
        assert!(reader.push(b"data: {\"a\"").unwrap().is_empty());
        let payloads = reader.push(b":1}\r\n\r\ndata: [DONE]\n\n").unwrap();
        assert_eq!(payloads, ["{\"a\":1}", "[DONE]"]);
        assert!(matches!(parse_event("[DONE]"), Event::Done));
        assert!(matches!(
            parse_event(r#"{"choices":[{"delta":{"content":"hi"}}]}"#),
            Event::Text(text) if text == "hi"
        ));
        assert!(matches!(
            parse_event(r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#),
            Event::Usage(5, 2)
        ));
        assert!(
            matches!(parse_event(r#"{"error":{"message":"boom"}}"#), Event::Error(message) if message == "boom")
        );
        // What servers vary in: escapes, nulls, a role-only first chunk.
        assert!(matches!(
            parse_event(r#"{"choices":[{"delta":{"content":"a \"b\"\n\u4f60"}}],"error":null}"#),
            Event::Text(text) if text == "a \"b\"\n你"
        ));
        assert!(matches!(
            parse_event(
                r#"{"choices":[{"delta":{"role":"assistant","content":null}}],"usage":null}"#
            ),
            Event::Nothing
        ));
        assert!(matches!(
            parse_event(r#"{"choices":null,"usage":{"prompt_tokens":1,"completion_tokens":1}}"#),
            Event::Usage(1, 1)
        ));
        assert!(matches!(parse_event("not json"), Event::Error(_)));
    }

    #[test]
    fn context_errors_are_told_apart_and_trimming_keeps_the_system_and_newest() {
        assert!(is_context_error(
            400,
            r#"{"error":{"message":"This model's maximum context length is 4096 tokens","code":"context_length_exceeded"}}"#
        ));
        assert!(!is_context_error(
            400,
            r#"{"error":{"message":"bad temperature"}}"#
        ));
        let sampling = crate::engine::Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 8,
            repetition_penalty: 1.0,
            top_k: 0,
            seed: None,
        };
        let request = ChatRequest {
            messages: vec![
                ChatMessage::new(ChatRole::System, "rules"),
                ChatMessage::new(ChatRole::User, "1"),
                ChatMessage::new(ChatRole::Assistant, "2"),
                ChatMessage::new(ChatRole::User, "3"),
                ChatMessage::new(ChatRole::Assistant, "4"),
                ChatMessage::new(ChatRole::User, "5"),
            ],
            sampling,
        };
        let contents: Vec<String> = trimmed(&request)
            .messages
            .into_iter()
            .map(|message| message.content)
            .collect();
        assert_eq!(contents, ["rules", "4", "5"]);
    }

    #[test]
    fn the_pool_prefers_the_least_loaded_endpoint_that_is_up() {
        let endpoint = |url: &str| {
            Arc::new(Endpoint {
                url: url::Url::parse(url).unwrap(),
                label: url.into(),
                in_flight: AtomicUsize::new(0),
                state: Mutex::new(EndpointState::default()),
                lacks_logprobs: std::sync::atomic::AtomicBool::new(false),
            })
        };
        let pool = Pool {
            endpoints: vec![endpoint("http://a/v1"), endpoint("http://b/v1")],
        };
        let busy = InFlight::new(Arc::clone(&pool.endpoints[0]));
        assert_eq!(pool.pick(None).unwrap().label, "http://b/v1");
        pool.endpoints[1].failed("refused");
        assert_eq!(pool.pick(None).unwrap().label, "http://a/v1");
        assert_eq!(
            pool.pick(Some(&pool.endpoints[0])).unwrap().label,
            "http://b/v1",
            "with nothing else up, the one backing off is probed"
        );
        drop(busy);
        pool.endpoints[1].succeeded();
        assert_eq!(
            pool.pick(Some(&pool.endpoints[0])).unwrap().label,
            "http://b/v1"
        );
    }
}
