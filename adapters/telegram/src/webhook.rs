//! Webhook mode: an HTTP endpoint Telegram posts updates to. The secret
//! header is checked before anything is parsed; updates handled lately
//! (Telegram's redeliveries) are acknowledged and skipped.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use concierge_adapter::{AdapterError, InboundSink};
use teloxide::types::Update;
use tokio_util::sync::CancellationToken;

use crate::{Inner, SeenUpdates};

const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

#[derive(Clone)]
struct WebhookState {
    inner: Arc<Inner>,
    sink: InboundSink,
    /// The update ids handled lately, from the last one of the offset file
    /// on; the lock also serialises deliveries.
    seen: Arc<tokio::sync::Mutex<SeenUpdates>>,
}

/// Serves the webhook on `listen` at `path` until `shutdown`.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    listen: SocketAddr,
    path: String,
    sink: InboundSink,
    shutdown: CancellationToken,
) -> Result<(), AdapterError> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|err| {
        AdapterError::Platform(format!(
            "cannot listen on {listen} (telegram.listen): {err}"
        ))
    })?;
    let last_handled = inner
        .offsets
        .load()
        .map_err(|err| AdapterError::Platform(err.to_string()))?;
    tracing::info!(%listen, "telegram webhook listening");
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    let state = WebhookState {
        inner,
        sink,
        seen: Arc::new(tokio::sync::Mutex::new(SeenUpdates::new(last_handled))),
    };
    let app = Router::new().route(&path, post(receive)).with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(AdapterError::Io)
}

async fn receive(State(state): State<WebhookState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if let Some(expected) = secret_of(&state.inner) {
        let given = headers
            .get(SECRET_HEADER)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if !constant_time_eq(given, expected.as_bytes()) {
            tracing::warn!("telegram webhook call without the right secret token refused");
            return StatusCode::UNAUTHORIZED;
        }
    }
    let update: Update = match serde_json::from_slice(&body) {
        Ok(update) => update,
        Err(err) => {
            tracing::warn!("telegram webhook body is not an update: {err}");
            return StatusCode::BAD_REQUEST;
        }
    };
    let mut seen = state.seen.lock().await;
    let id = update.id.0;
    if seen.is_repeat(id) {
        return StatusCode::OK;
    }
    if let Some(inbound) = state.inner.to_inbound(update).await {
        if state.sink.send(inbound).await.is_err() {
            // Shutting down: Telegram delivers it again later.
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    if seen.record(id) {
        tracing::warn!(update_id = id, "telegram restarted its update ids lower");
    }
    if let Err(err) = state.inner.offsets.save(id) {
        tracing::error!("cannot record the last handled telegram update: {err}");
    }
    StatusCode::OK
}

fn secret_of(inner: &Inner) -> Option<&str> {
    match &inner.settings.mode {
        crate::Mode::Webhook { secret_token, .. } => secret_token.as_deref(),
        crate::Mode::Polling => None,
    }
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}
