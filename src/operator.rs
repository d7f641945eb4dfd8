//! The operator HTTP API that `serve` starts: `GET /healthz` (readiness) and
//! `GET /metrics` (Prometheus) open to the local network, and every other route
//! behind `Authorization: Bearer <operator.token>`: history, events, tickets,
//! and customers' data rights (`/v1/customers…`, `/v1/audit`,
//! `/v1/privacy/sweep`).
//!
//! Architecture invariant: handlers read shared state (`Health`, `Store`);
//! they never block the runtime on the store's disk I/O for long.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::extract::Path;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::config::Secret;
use crate::escalation::ticket::{display_id, parse_id};
use crate::escalation::EscalationError;
use crate::health::Health;
use crate::pipeline::Pipeline;
use crate::store::{Store, StoreError, Ticket};

/// What the routes read.
#[derive(Clone)]
pub struct OperatorState {
    /// Readiness of the daemon.
    pub health: Health,
    /// The store, once open.
    pub store: Store,
    /// Bearer token of protected routes; `None` disables them.
    pub token: Option<Secret>,
    /// The pipeline agents act through, once the engine is loaded.
    pub desk: Arc<OnceLock<Arc<Pipeline>>>,
    /// `[privacy]`, for sweeps on request.
    pub privacy: crate::config::PrivacyConfig,
}

/// The API's routes.
pub fn router(state: OperatorState) -> Router {
    let protected = Router::new()
        .route("/v1/history", get(history))
        .route("/v1/events", post(events))
        .route("/v1/tickets", get(tickets))
        .route("/v1/tickets/{id}", get(ticket))
        .route("/v1/tickets/{id}/{action}", post(ticket_action))
        .route("/v1/customers", get(customers))
        .route(
            "/v1/customers/{platform}/{user}",
            get(customer).delete(forget_customer),
        )
        .route(
            "/v1/customers/{platform}/{user}/export",
            get(export_customer),
        )
        .route("/v1/audit", get(audit_log))
        .route("/v1/privacy/sweep", post(sweep))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(protected)
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: OperatorState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Compares without an early exit, so timing does not leak the token.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

async fn require_token(
    State(state): State<OperatorState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return error(
            StatusCode::UNAUTHORIZED,
            "operator.token is not configured: set CONCIERGE_OPERATOR_TOKEN or operator.token_file",
        );
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if same_secret(given.as_bytes(), token.expose().as_bytes()) => {
            next.run(request).await
        }
        _ => error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"),
    }
}

async fn healthz(State(state): State<OperatorState>) -> Response {
    let (ready, report) = state.health.report();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(),
    )
        .into_response()
}

/// Most events accepted in one request.
const MAX_EVENT_BATCH: usize = 10_000;

/// `POST /v1/events`: a JSON array of events (or `{"events": [...]}`), each
/// `{"user","item","kind","timestamp"?,"value"?,"id"?}`. The batch is stored
/// and flushed before the answer, or rejected whole with every bad entry
/// named; an event whose `id` is stored already is skipped (a retried batch
/// does not double) and counted in `duplicates`.
async fn events(State(state): State<OperatorState>, body: axum::body::Bytes) -> Response {
    let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&body);
    let list = match parsed {
        Ok(serde_json::Value::Array(list)) => list,
        Ok(serde_json::Value::Object(mut object)) => match object.remove("events") {
            Some(serde_json::Value::Array(list)) => list,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "expected a JSON array of events or {\"events\": [...]}",
                )
            }
        },
        Ok(_) => return error(StatusCode::BAD_REQUEST, "expected a JSON array of events"),
        Err(err) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {err}")),
    };
    if list.len() > MAX_EVENT_BATCH {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_EVENT_BATCH} events per request"),
        );
    }
    let mut accepted = Vec::with_capacity(list.len());
    let mut problems = Vec::new();
    for (index, entry) in list.iter().enumerate() {
        let result = match entry {
            serde_json::Value::Object(row) => crate::recommend::import::event_from_row(row),
            _ => Err("not a JSON object".to_string()),
        };
        match result {
            Ok(event) => accepted.push(event),
            Err(problem) => problems.push(serde_json::json!({ "index": index, "error": problem })),
        }
    }
    if !problems.is_empty() {
        let body = serde_json::json!({ "error": "no event stored: some are invalid", "invalid": problems });
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    }
    let store = state.store.clone();
    let count = accepted.len();
    let stored = tokio::task::spawn_blocking(move || store.events_append(&accepted)).await;
    let stored = match stored {
        Ok(Ok(stored)) => stored,
        Ok(Err(err)) => return error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "event task failed"),
    };
    // Acknowledged events survive a crash.
    if let Err(err) = state.store.flush().await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string());
    }
    (
        StatusCode::OK,
        Json(serde_json::json!({ "accepted": count, "duplicates": count - stored })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct HistoryQuery {
    user: String,
    #[serde(default = "default_platform")]
    platform: String,
}

fn default_platform() -> String {
    "console".to_string()
}

async fn history(
    State(state): State<OperatorState>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let store = state.store.clone();
    let lines = tokio::task::spawn_blocking(move || {
        crate::history::history(&store, &query.platform, &query.user)
    })
    .await;
    match lines {
        Ok(Ok(lines)) => {
            let body: String = lines
                .iter()
                .filter_map(|line| serde_json::to_string(line).ok())
                .map(|line| line + "\n")
                .collect();
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
        Ok(Err(StoreError::NotFound(what))) => {
            error(StatusCode::NOT_FOUND, format!("{what} not found"))
        }
        Ok(Err(err)) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "history task failed"),
    }
}

/// Runs a store task off the runtime and answers with its JSON, 404 for
/// what does not exist.
async fn store_json<T: serde::Serialize + Send + 'static>(
    store: &Store,
    task: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Response {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || task(&store)).await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(StoreError::NotFound(what))) => {
            error(StatusCode::NOT_FOUND, format!("{what} not found"))
        }
        Ok(Err(err)) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "store task failed"),
    }
}

/// `GET /v1/customers`: every customer, with their accounts and counts.
async fn customers(State(state): State<OperatorState>) -> Response {
    store_json(&state.store, |store| store.customer_summaries()).await
}

/// `GET /v1/customers/{platform}/{user}`.
async fn customer(
    State(state): State<OperatorState>,
    Path((platform, user)): Path<(String, String)>,
) -> Response {
    store_json(&state.store, move |store| {
        crate::privacy::show_customer(store, &platform, &user)
    })
    .await
}

/// `GET /v1/customers/{platform}/{user}/export`: everything stored about them.
async fn export_customer(
    State(state): State<OperatorState>,
    Path((platform, user)): Path<(String, String)>,
) -> Response {
    store_json(&state.store, move |store| {
        crate::privacy::export_for_operator(store, &platform, &user, crate::privacy::OPERATOR_API)
    })
    .await
}

/// `DELETE /v1/customers/{platform}/{user}`: erases them.
async fn forget_customer(
    State(state): State<OperatorState>,
    Path((platform, user)): Path<(String, String)>,
) -> Response {
    store_json(&state.store, move |store| {
        crate::privacy::forget_for_operator(store, &platform, &user, crate::privacy::OPERATOR_API)
    })
    .await
}

/// `GET /v1/audit`: exports, erasures and sweeps, oldest first.
async fn audit_log(State(state): State<OperatorState>) -> Response {
    store_json(&state.store, |store| store.audit_log()).await
}

/// `POST /v1/privacy/sweep`: one retention sweep now.
async fn sweep(State(state): State<OperatorState>) -> Response {
    let config = state.privacy.clone();
    store_json(&state.store, move |store| {
        crate::privacy::sweep_report(store, &config)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_comparison() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
    }
}

/// A ticket as the API shows it: the stored record plus its readable id.
fn ticket_json(ticket: &Ticket) -> serde_json::Value {
    let mut value = serde_json::to_value(ticket).unwrap_or_default();
    value["ticket"] = serde_json::Value::String(display_id(ticket.id));
    value
}

#[derive(Deserialize)]
struct TicketFilter {
    state: Option<String>,
}

/// `GET /v1/tickets[?state=open]`: every ticket, newest first.
async fn tickets(
    State(state): State<OperatorState>,
    Query(filter): Query<TicketFilter>,
) -> Response {
    let store = state.store.clone();
    let listed = tokio::task::spawn_blocking(move || store.tickets()).await;
    match listed {
        Ok(Ok(tickets)) => {
            let list: Vec<serde_json::Value> = tickets
                .iter()
                .rev()
                .filter(|ticket| {
                    filter
                        .state
                        .as_deref()
                        .is_none_or(|wanted| ticket.state.label() == wanted)
                })
                .map(ticket_json)
                .collect();
            Json(list).into_response()
        }
        Ok(Err(err)) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "store task failed"),
    }
}

/// `GET /v1/tickets/{id}` (`T-000123` or `123`).
async fn ticket(
    State(state): State<OperatorState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let Some(number) = parse_id(&id) else {
        return error(StatusCode::BAD_REQUEST, format!("not a ticket id: {id}"));
    };
    match state.store.ticket(number) {
        Ok(Some(ticket)) => Json(ticket_json(&ticket)).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no ticket {}", display_id(number)),
        ),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

#[derive(Deserialize)]
struct AgentAction {
    agent: String,
    #[serde(default)]
    text: Option<String>,
}

/// `POST /v1/tickets/{id}/{reply|note|assign|resolve|reopen}` with
/// `{"agent": "...", "text": "..."}`.
async fn ticket_action(
    State(state): State<OperatorState>,
    axum::extract::Path((id, action)): axum::extract::Path<(String, String)>,
    Json(body): Json<AgentAction>,
) -> Response {
    let Some(number) = parse_id(&id) else {
        return error(StatusCode::BAD_REQUEST, format!("not a ticket id: {id}"));
    };
    let agent = body.agent.trim();
    if agent.is_empty() {
        return error(StatusCode::BAD_REQUEST, "\"agent\" names who acts");
    }
    let Some(desk) = state.desk.get().cloned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is still starting",
        );
    };
    let tickets = match desk.tickets() {
        Ok(tickets) => tickets,
        Err(err) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("{err:#}")),
    };
    let text = body.text.as_deref().map(str::trim).unwrap_or_default();
    let result = match action.as_str() {
        "reply" | "note" if text.is_empty() => {
            return error(StatusCode::BAD_REQUEST, "\"text\" is required")
        }
        "reply" => tickets.agent_reply(number, agent, text).await,
        "note" => tickets.agent_note(number, agent, text).await,
        "assign" => tickets.agent_assign(number, agent).await,
        "resolve" => tickets.agent_resolve(number, agent).await,
        "reopen" => tickets.agent_reopen(number, agent).await,
        other => return error(StatusCode::NOT_FOUND, format!("no ticket action {other:?}")),
    };
    match result {
        Ok(ticket) => Json(ticket_json(&ticket)).into_response(),
        Err(err) => match err.downcast_ref::<EscalationError>() {
            Some(EscalationError::NotFound(_)) => error(StatusCode::NOT_FOUND, err.to_string()),
            Some(EscalationError::Transition { .. } | EscalationError::ChatBusy { .. }) => {
                error(StatusCode::CONFLICT, err.to_string())
            }
            _ => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
        },
    }
}
