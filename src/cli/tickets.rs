//! `concierge tickets …`: the agents' desk from a shell, over the daemon's
//! operator API.

use anyhow::Context;
use concierge::config::Config;

use super::TicketsAction;

/// `concierge tickets …`: calls the daemon's operator API.
pub(super) fn run(config: &Config, action: TicketsAction) -> anyhow::Result<()> {
    let token = config.operator.token.as_ref().context(
        "operator.token is not set: set CONCIERGE_OPERATOR_TOKEN or operator.token_file (the same as the daemon's)",
    )?;
    let base = format!("http://{}", config.operator.listen);
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let (request, lines) = match &action {
        TicketsAction::List { state } => {
            let mut request = client.get(format!("{base}/v1/tickets"));
            if let Some(state) = state {
                request = request.query(&[("state", state)]);
            }
            (request, true)
        }
        TicketsAction::Show { id } => (client.get(format!("{base}/v1/tickets/{id}")), false),
        TicketsAction::Reply { id, agent, text } => (
            client
                .post(format!("{base}/v1/tickets/{id}/reply"))
                .json(&serde_json::json!({"agent": agent, "text": text})),
            false,
        ),
        TicketsAction::Assign { id, agent } => (
            client
                .post(format!("{base}/v1/tickets/{id}/assign"))
                .json(&serde_json::json!({"agent": agent})),
            false,
        ),
        TicketsAction::Resolve { id, agent } => (
            client
                .post(format!("{base}/v1/tickets/{id}/resolve"))
                .json(&serde_json::json!({"agent": agent})),
            false,
        ),
        TicketsAction::Note { id, agent, text } => (
            client
                .post(format!("{base}/v1/tickets/{id}/note"))
                .json(&serde_json::json!({"agent": agent, "text": text})),
            false,
        ),
        TicketsAction::Reopen { id, agent } => (
            client
                .post(format!("{base}/v1/tickets/{id}/reopen"))
                .json(&serde_json::json!({"agent": agent})),
            false,
        ),
    };
    let response = request.bearer_auth(token.expose()).send().with_context(|| {
        format!("cannot reach the daemon at {base} (operator.listen): is `concierge serve` running?")
    })?;
    let status = response.status();
    let body: serde_json::Value = response.json().context("the daemon's answer is not JSON")?;
    if !status.is_success() {
        let message = body["error"].as_str().unwrap_or("unknown error");
        anyhow::bail!("{message} (HTTP {status})");
    }
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
