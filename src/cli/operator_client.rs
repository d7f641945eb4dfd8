//! The running daemon's operator API as the CLI calls it: the address from
//! `operator.listen`, the bearer token, and errors a person can act on.

use anyhow::Context;
use concierge::config::Config;

/// A client of one daemon's operator API.
pub(super) struct OperatorClient {
    client: reqwest::blocking::Client,
    base: url::Url,
    token: String,
}

impl OperatorClient {
    /// The client of the daemon at `operator.listen`, with `token`.
    pub(super) fn new(config: &Config, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?,
            base: url::Url::parse(&format!("http://{}/", config.operator.listen))
                .context("operator.listen is not an address")?,
            token: token.to_string(),
        })
    }

    /// A request to the path made of `segments` (each escaped).
    pub(super) fn request(
        &self,
        method: reqwest::Method,
        segments: &[&str],
    ) -> anyhow::Result<reqwest::blocking::RequestBuilder> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| anyhow::anyhow!("operator.listen is not an address"))?
            .pop_if_empty()
            .extend(segments);
        Ok(self.client.request(method, url).bearer_auth(&self.token))
    }

    /// Sends `request`; its JSON answer, or the daemon's error with its
    /// status. `unreachable` says what it means when nothing answers.
    pub(super) fn send(
        &self,
        request: reqwest::blocking::RequestBuilder,
        unreachable: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let response = request
            .send()
            .with_context(|| format!("{unreachable} (operator API at {})", self.base))?;
        let status = response.status();
        let body: serde_json::Value = response.json().context("the daemon's answer is not JSON")?;
        if !status.is_success() {
            let message = body["error"].as_str().unwrap_or("unknown error");
            anyhow::bail!("{message} (HTTP {status})");
        }
        Ok(body)
    }
}
