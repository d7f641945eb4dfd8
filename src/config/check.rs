//! Stage two, across keys: checks once every key is read — tokens of enabled
//! channels, agents for every agents' space, keys and environment variables
//! that match nothing (Kubernetes service links excepted).

use super::raw::{env_name, RawConfig};
use super::*;

impl Reader<'_> {
    pub(super) fn require_token(&mut self, section: &str, enabled: bool, token: &Option<Secret>) {
        if enabled && token.is_none() {
            let upper = section.to_uppercase();
            self.issue(
                &format!("{section}.token"),
                format!("required when {section}.enabled = true: set CONCIERGE_{upper}_TOKEN or {section}.token_file"),
            );
        }
    }

    /// An agents' space without an agent who can answer there is a mistake.
    pub(super) fn check_agent_spaces(
        &mut self,
        telegram: &TelegramConfig,
        discord: &DiscordConfig,
        escalation: &EscalationConfig,
    ) {
        let spaces = [
            (
                "telegram",
                "telegram.agents_chat_id",
                telegram.agents_chat_id.is_some(),
            ),
            (
                "discord",
                "discord.agents_channel_id",
                discord.agents_channel_id.is_some(),
            ),
        ];
        for (platform, key, configured) in spaces {
            let someone = escalation
                .agents
                .iter()
                .any(|agent| agent.identities.iter().any(|(on, _)| on == platform));
            if configured && escalation.enabled && !someone {
                self.issue(
                    "escalation.agents",
                    format!("{key} is set but no agent has a {platform} account: add one, e.g. alice = [\"{platform}:USER_ID\"]"),
                );
            }
        }
    }

    /// Records unknown keys of the file as issues, and returns the
    /// `unmatched` environment variables as warnings.
    pub(super) fn check_unknown(&mut self, unmatched: &[String]) -> Vec<ConfigIssue> {
        for key in self.raw.unknown_keys() {
            self.issue(
                &key,
                "unknown key (see the configuration reference in README.md)",
            );
        }
        let known_env: BTreeSet<String> = RawConfig::keys().map(env_name).collect();
        unmatched
            .iter()
            .filter(|name| !is_service_link(name))
            .map(|name| {
                let closest = known_env
                    .iter()
                    .map(|known| (strsim::levenshtein(name, known), known))
                    .min()
                    .filter(|(distance, _)| *distance <= 3);
                let message = match closest {
                    Some((_, known)) => format!(
                        "environment variable matches no configuration key (did you mean {known}?)"
                    ),
                    None => "environment variable matches no configuration key".to_string(),
                };
                ConfigIssue {
                    key: name.clone(),
                    message,
                }
            })
            .collect()
    }
}

/// Whether `name` has the shape of the variables Kubernetes injects for a
/// Service (for one named `concierge`: `CONCIERGE_SERVICE_HOST`,
/// `CONCIERGE_SERVICE_PORT[_NAME]`, `CONCIERGE_PORT`,
/// `CONCIERGE_PORT_8686_TCP[_PROTO|_PORT|_ADDR]`; other Services add their
/// name, `CONCIERGE_API_SERVICE_HOST`).
fn is_service_link(name: &str) -> bool {
    if name.ends_with("_SERVICE_HOST") || name.ends_with("_PORT") {
        return true;
    }
    if name.contains("_SERVICE_PORT") {
        return true;
    }
    let parts: Vec<&str> = name.split('_').collect();
    parts.windows(3).any(|window| {
        window[0] == "PORT"
            && !window[1].is_empty()
            && window[1].bytes().all(|byte| byte.is_ascii_digit())
            && matches!(window[2], "TCP" | "UDP" | "SCTP")
    })
}
