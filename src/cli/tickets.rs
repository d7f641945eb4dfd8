//! `concierge tickets …`: the agents' desk from a shell, over the daemon's
//! operator API.

use anyhow::Context;
use concierge::config::Config;

use super::TicketsAction;

/// `concierge tickets …`: calls the daemon's operator API.
pub(super) fn run(config: &Config, action: TicketsAction) -> anyhow::Result<()> {
    let token = concierge::operator_token::for_client(config).with_context(|| {
        format!(
            "no operator token: start the daemon (`concierge serve` or `concierge chat`) with this data directory, which writes one to {}, or set CONCIERGE_OPERATOR_TOKEN or operator.token_file (the same as the daemon's)",
            concierge::operator_token::path(&config.store.data_dir).display()
        )
    })?;
    let api = super::operator_client::OperatorClient::new(config, token.expose())?;
    let post = |segments: &[&str], body: serde_json::Value| {
        api.request(reqwest::Method::POST, segments)
            .map(|request| request.json(&body))
    };
    let (request, lines) = match &action {
        TicketsAction::List { state } => {
            let mut request = api.request(reqwest::Method::GET, &["v1", "tickets"])?;
            if let Some(state) = state {
                request = request.query(&[("state", state)]);
            }
            (request, true)
        }
        TicketsAction::Show { id } => (
            api.request(reqwest::Method::GET, &["v1", "tickets", id])?,
            false,
        ),
        TicketsAction::Reply { id, agent, text } => (
            post(
                &["v1", "tickets", id, "reply"],
                serde_json::json!({"agent": agent, "text": text}),
            )?,
            false,
        ),
        TicketsAction::Assign { id, agent } => (
            post(
                &["v1", "tickets", id, "assign"],
                serde_json::json!({"agent": agent}),
            )?,
            false,
        ),
        TicketsAction::Resolve { id, agent } => (
            post(
                &["v1", "tickets", id, "resolve"],
                serde_json::json!({"agent": agent}),
            )?,
            false,
        ),
        TicketsAction::Note { id, agent, text } => (
            post(
                &["v1", "tickets", id, "note"],
                serde_json::json!({"agent": agent, "text": text}),
            )?,
            false,
        ),
        TicketsAction::Reopen { id, agent } => (
            post(
                &["v1", "tickets", id, "reopen"],
                serde_json::json!({"agent": agent}),
            )?,
            false,
        ),
    };
    let body = api.send(
        request,
        "cannot reach the daemon: is `concierge serve` running?",
    )?;
    match (lines, body.as_array()) {
        (true, Some(tickets)) => {
            for ticket in tickets {
                println!("{ticket}");
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(&body)?),
    }
    Ok(())
}
