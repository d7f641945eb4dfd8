//! Which channels run: the configuration turned into adapters. The only
//! module that names adapter crates, each behind its cargo feature; a channel
//! whose feature is off fails with a clear "not compiled in" error.

use std::sync::Arc;

use concierge_adapter::{Adapter, CommandSpec};

use crate::config::Config;
use crate::prompts::{Locale, Prompts, Template};

/// The console channel for `concierge chat`, for the customer `user`.
pub fn console(user: &str) -> anyhow::Result<Arc<dyn Adapter>> {
    #[cfg(feature = "console")]
    {
        Ok(Arc::new(concierge_console::ConsoleAdapter::new(user)))
    }
    #[cfg(not(feature = "console"))]
    {
        let _ = user;
        anyhow::bail!("the console channel is not compiled into this build: rebuild with `--features console`")
    }
}

/// The channels that `serve` runs, from the configuration.
pub fn from_config(config: &Config, prompts: &Prompts) -> anyhow::Result<Vec<Arc<dyn Adapter>>> {
    let mut adapters = Vec::new();
    if config.console.enabled {
        adapters.push(console(&config.console.user)?);
    }
    let commands = command_specs(prompts);
    if config.telegram.enabled {
        adapters.push(telegram(config, commands.clone())?);
    }
    if config.discord.enabled {
        adapters.push(discord(config, commands)?);
    }
    Ok(adapters)
}

/// The commands for platform menus, read from the `/name - description`
/// lines of the help template in each locale.
pub fn command_specs(prompts: &Prompts) -> Vec<CommandSpec> {
    let mut specs: Vec<CommandSpec> = Vec::new();
    for locale in [Locale::En, Locale::Zh] {
        for line in prompts.text(locale, Template::Help).lines() {
            let Some(rest) = line.trim().strip_prefix('/') else {
                continue;
            };
            let Some((head, description)) = rest.split_once(" - ") else {
                continue;
            };
            let name = head
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_lowercase();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                continue;
            }
            let description: String = description.trim().chars().take(100).collect();
            let entry = (locale.code().to_string(), description);
            match specs.iter_mut().find(|spec| spec.name == name) {
                Some(spec) => spec.descriptions.push(entry),
                None => specs.push(CommandSpec {
                    name,
                    descriptions: vec![entry],
                }),
            }
        }
    }
    specs
}

#[cfg(feature = "telegram")]
fn telegram(config: &Config, commands: Vec<CommandSpec>) -> anyhow::Result<Arc<dyn Adapter>> {
    use anyhow::Context;
    use concierge_telegram::{GroupTriggers, Mode, TelegramAdapter, TelegramSettings};

    let section = &config.telegram;
    let token = section
        .token
        .as_ref()
        .context("telegram token missing: set CONCIERGE_TELEGRAM_TOKEN or telegram.token_file")?;
    let api_url = url::Url::parse(&section.api_url).context("telegram.api_url is not a URL")?;
    let mode = match &section.mode {
        crate::config::TelegramMode::Polling => Mode::Polling,
        crate::config::TelegramMode::Webhook {
            webhook_url,
            listen,
            secret_token,
        } => Mode::Webhook {
            public_url: url::Url::parse(webhook_url)
                .context("telegram.webhook_url is not a URL")?,
            listen: *listen,
            secret_token: secret_token
                .as_ref()
                .map(|secret| secret.expose().to_string()),
        },
    };
    let settings = TelegramSettings {
        token: token.expose().to_string(),
        api_url: Some(api_url),
        mode,
        group_triggers: GroupTriggers {
            mention: section.group_mention,
            reply: section.group_reply,
            command: section.group_command,
        },
        poll_timeout_secs: section.poll_timeout_secs,
        edit_interval: std::time::Duration::from_millis(section.edit_interval_ms),
        offset_file: config
            .store
            .data_dir
            .join("telegram")
            .join("last_update_id"),
        commands,
        agents_chat: section.agents_chat_id.filter(|_| config.escalation.enabled),
    };
    Ok(Arc::new(TelegramAdapter::new(settings)?))
}

#[cfg(not(feature = "telegram"))]
fn telegram(_: &Config, _: Vec<CommandSpec>) -> anyhow::Result<Arc<dyn Adapter>> {
    anyhow::bail!("telegram.enabled is true but the telegram channel is not compiled into this build: rebuild with `--features telegram`")
}

#[cfg(feature = "discord")]
fn discord(config: &Config, commands: Vec<CommandSpec>) -> anyhow::Result<Arc<dyn Adapter>> {
    use anyhow::Context;
    use concierge_discord::{DiscordAdapter, DiscordSettings, RespondTo};

    let section = &config.discord;
    let token = section
        .token
        .as_ref()
        .context("discord token missing: set CONCIERGE_DISCORD_TOKEN or discord.token_file")?;
    let settings = DiscordSettings {
        token: token.expose().to_string(),
        api_url: section.api_url.clone(),
        channels: section.channels.iter().copied().collect(),
        respond_to: RespondTo {
            mentions: section.respond_to_mentions,
            dms: section.respond_to_dms,
            channels: section.respond_to_channels,
        },
        edit_interval: std::time::Duration::from_millis(section.edit_interval_ms),
        commands,
        agents_channel: section
            .agents_channel_id
            .filter(|_| config.escalation.enabled),
        shards: (section.shard_ids.clone(), section.shards),
    };
    Ok(Arc::new(DiscordAdapter::new(settings)))
}

#[cfg(not(feature = "discord"))]
fn discord(_: &Config, _: Vec<CommandSpec>) -> anyhow::Result<Arc<dyn Adapter>> {
    anyhow::bail!("discord.enabled is true but the discord channel is not compiled into this build: rebuild with `--features discord`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_come_from_the_help_text_in_both_locales() {
        let prompts = Prompts::load(std::path::Path::new("prompts")).unwrap();
        let specs = command_specs(&prompts);
        let help = specs.iter().find(|spec| spec.name == "help").unwrap();
        assert_eq!(help.description("en"), "this message");
        assert!(help.description("zh").contains("帮助"));
        assert!(specs.iter().any(|spec| spec.name == "reset"));
        assert!(specs.iter().any(|spec| spec.name == "link"));
    }
}
