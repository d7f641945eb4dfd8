//! Metrics: counters and histograms of messages, replies, tokens and
//! latencies, recorded through the `metrics` facade and rendered as
//! Prometheus text for `GET /metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS).ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    // Series that exist from the start, so a scrape before the
                    // first message already shows the daemon.
                    metrics::gauge!("concierge_up").set(1.0);
                    tokens_used(0, 0);
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!(%err, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// The Prometheus text of every metric.
pub fn render() -> String {
    install().map(|handle| handle.render()).unwrap_or_default()
}

fn describe() {
    metrics::describe_gauge!("concierge_up", "1 while the daemon runs");
    metrics::describe_counter!("concierge_messages_total", "Customer messages received");
    metrics::describe_counter!(
        "concierge_messages_limited_total",
        "Messages and presses over the flood limits (dropped or answered with the notice)"
    );
    metrics::describe_counter!("concierge_replies_total", "Replies delivered");
    metrics::describe_counter!("concierge_reply_errors_total", "Replies that failed");
    metrics::describe_counter!(
        "concierge_tokens_total",
        "Model tokens, by kind (prompt, completion)"
    );
    metrics::describe_histogram!(
        "concierge_reply_seconds",
        "Time from message to complete reply"
    );
    metrics::describe_histogram!(
        "concierge_first_token_seconds",
        "Time from message to first streamed token"
    );
    metrics::describe_counter!(
        "concierge_engine_requests_total",
        "Requests to each inference endpoint (engine.backend = openai)"
    );
    metrics::describe_counter!(
        "concierge_engine_errors_total",
        "Failed requests to each inference endpoint"
    );
    metrics::describe_counter!(
        "concierge_engine_tokens_total",
        "Tokens each inference endpoint generated"
    );
    metrics::describe_histogram!(
        "concierge_engine_first_token_seconds",
        "Time from a request to an inference endpoint to its first token"
    );
}

/// A message or press was over the flood limits.
pub fn message_limited(platform: &str) {
    metrics::counter!("concierge_messages_limited_total", "platform" => platform.to_string())
        .increment(1);
}

/// A customer message arrived.
pub fn message_received(platform: &str) {
    metrics::counter!("concierge_messages_total", "platform" => platform.to_string()).increment(1);
}

/// A reply was delivered.
pub fn reply_delivered(platform: &str, kind: &'static str, elapsed: Duration) {
    metrics::counter!("concierge_replies_total", "platform" => platform.to_string(), "kind" => kind)
        .increment(1);
    metrics::histogram!("concierge_reply_seconds", "kind" => kind).record(elapsed.as_secs_f64());
}

/// A reply failed.
pub fn reply_failed(platform: &str) {
    metrics::counter!("concierge_reply_errors_total", "platform" => platform.to_string())
        .increment(1);
}

/// The first token of a generated reply arrived.
pub fn first_token(elapsed: Duration) {
    metrics::histogram!("concierge_first_token_seconds").record(elapsed.as_secs_f64());
}

/// Tokens used by one generation.
pub fn tokens_used(prompt: usize, completion: usize) {
    metrics::counter!("concierge_tokens_total", "kind" => "prompt").increment(prompt as u64);
    metrics::counter!("concierge_tokens_total", "kind" => "completion")
        .increment(completion as u64);
}

/// A ticket was opened.
pub fn ticket_opened(category: &str, priority: &'static str) {
    metrics::counter!("concierge_tickets_opened_total", "category" => category.to_string(), "priority" => priority)
        .increment(1);
}

/// A request went to an inference endpoint.
pub fn remote_request(endpoint: &str) {
    metrics::counter!("concierge_engine_requests_total", "endpoint" => endpoint.to_string())
        .increment(1);
}

/// A request to an inference endpoint failed.
pub fn remote_error(endpoint: &str) {
    metrics::counter!("concierge_engine_errors_total", "endpoint" => endpoint.to_string())
        .increment(1);
}

/// Tokens an inference endpoint generated.
pub fn remote_tokens(endpoint: &str, tokens: usize) {
    metrics::counter!("concierge_engine_tokens_total", "endpoint" => endpoint.to_string())
        .increment(tokens as u64);
}

/// Time from sending a request to an inference endpoint to its first token.
pub fn remote_first_token(endpoint: &str, elapsed: Duration) {
    metrics::histogram!("concierge_engine_first_token_seconds", "endpoint" => endpoint.to_string())
        .record(elapsed.as_secs_f64());
}

/// A ticket's first-answer deadline passed.
pub fn sla_breached(priority: &'static str) {
    metrics::counter!("concierge_sla_breaches_total", "priority" => priority).increment(1);
}
