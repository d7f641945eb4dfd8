//! The command handler: `/start`, `/help`, `/reset`, `/link` (asking for a
//! code, or entering one) and unknown commands, answered from templates.

use std::time::Duration;

use concierge_adapter::{ChatKind, Inbound, Outbound};

use super::Context;
use crate::link_guard::LinkGuard;
use crate::prompts::{Locale, Template};
use crate::store::{Customer, LinkOutcome};
use crate::understand::{
    as_link_code, Command, LINK_CODE_ALPHABET, LINK_CODE_LENGTH, LINK_CODE_PREFIX,
};

/// How long a `/link` code works.
const LINK_CODE_VALIDITY: Duration = Duration::from_secs(10 * 60);
/// A fresh random link code.
fn new_link_code() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let body: String = (0..LINK_CODE_LENGTH)
        .map(|_| LINK_CODE_ALPHABET[rng.random_range(0..LINK_CODE_ALPHABET.len())] as char)
        .collect();
    format!("{LINK_CODE_PREFIX}{body}")
}

pub(crate) async fn run(
    ctx: Context<'_>,
    link_guard: &LinkGuard,
    command: Command,
    customer: &mut Customer,
    inbound: &Inbound,
    locale: Locale,
) -> anyhow::Result<String> {
    let conversation = &inbound.conversation;
    let reply = match command {
        Command::Start => {
            customer.registered = true;
            if customer.display_name.is_none() {
                customer.display_name = inbound
                    .sender
                    .display_name
                    .as_deref()
                    .and_then(crate::sanitize::display_name);
            }
            ctx.store.update_customer(customer)?;
            ctx.store.flush().await?;
            ctx.prompts.text(locale, Template::Start).to_string()
        }
        Command::Help => ctx.prompts.text(locale, Template::Help).to_string(),
        Command::Reset => {
            ctx.store.start_conversation(
                customer.id,
                &conversation.platform,
                &conversation.chat_id,
            )?;
            ctx.store.flush().await?;
            ctx.prompts.text(locale, Template::Reset).to_string()
        }
        // Handled before commands that only reply with text.
        Command::Recommend(_) | Command::Export | Command::Forget => String::new(),
        Command::Link(None) => {
            let code = new_link_code();
            let minutes = (LINK_CODE_VALIDITY.as_secs() / 60).to_string();
            let text = ctx.prompts.render(
                locale,
                Template::LinkCode,
                &[("code", &code), ("minutes", &minutes)],
            );
            let expires = crate::store::now_ms() + LINK_CODE_VALIDITY.as_millis() as u64;
            // A code is the key to the customer's history: in a group it
            // goes to their private chat only.
            let owner_chat = match inbound.chat {
                ChatKind::Private => conversation.clone(),
                ChatKind::Group => match ctx.private_chat(&inbound.sender).await {
                    Some(private) => private,
                    None => {
                        return Ok(ctx
                            .prompts
                            .text(locale, Template::PrivateChatNeeded)
                            .to_string())
                    }
                },
            };
            ctx.store.create_link_code(
                &code,
                customer.id,
                expires,
                (&owner_chat.platform, &owner_chat.chat_id),
            )?;
            ctx.store.flush().await?;
            let reply = match inbound.chat {
                ChatKind::Private => return Ok(text),
                ChatKind::Group if ctx.send_privately(&owner_chat, text).await => {
                    Template::LinkCodeSentPrivately
                }
                ChatKind::Group => Template::PrivateChatNeeded,
            };
            ctx.prompts.text(locale, reply).to_string()
        }
        Command::Link(Some(code)) => {
            link(ctx, link_guard, customer, inbound, &code, locale).await?
        }
        // Reached only when hand-off is disabled.
        Command::Human => {
            ctx.prompts
                .render(locale, Template::UnknownCommand, &[("command", "/human")])
        }
        Command::Unknown(word) => {
            let name = crate::understand::split_command(&word).map(|(name, _)| name);
            if name.is_some_and(|name| crate::agents::is_agent_command(&name)) {
                // Agent commands work only in the agents' spaces, for agents.
                tracing::warn!(platform = %inbound.sender.platform, user = %inbound.sender.user_id, command = %word, "agent command refused in a customer chat");
                ctx.prompts
                    .render(locale, Template::AgentOnly, &[("command", &word)])
            } else {
                ctx.prompts
                    .render(locale, Template::UnknownCommand, &[("command", &word)])
            }
        }
    };
    Ok(reply)
}

/// Enters a link code: this identity joins the code's customer.
async fn link(
    ctx: Context<'_>,
    link_guard: &LinkGuard,
    customer: &mut Customer,
    inbound: &Inbound,
    code: &str,
    locale: Locale,
) -> anyhow::Result<String> {
    let code = as_link_code(code).unwrap_or_default();
    let sender = &inbound.sender;
    let sender_key = format!("{}:{}", sender.platform, sender.user_id);
    let now = tokio::time::Instant::now();
    if !link_guard.may_try(&sender_key, &code, now) {
        tracing::warn!(platform = %sender.platform, user = %sender.user_id, "link code refused: too many wrong codes");
        return Ok(ctx.prompts.text(locale, Template::LinkLimited).to_string());
    }
    let outcome = ctx.store.redeem_link_code(
        &code,
        &sender.platform,
        &sender.user_id,
        crate::store::now_ms(),
    )?;
    let template = match outcome {
        LinkOutcome::Linked {
            from,
            into,
            code: origin,
        } => {
            if let Some(joined) = ctx.store.customer(into)? {
                *customer = joined;
            }
            tracing::info!(platform = %sender.platform, from, into, "identities linked");
            tell_code_owner(ctx, &origin, &sender.platform, customer.locale).await;
            Template::LinkDone
        }
        LinkOutcome::AlreadyLinked => Template::LinkAlready,
        LinkOutcome::Unknown | LinkOutcome::Expired => {
            // A failure changed nothing worth an fsync (at most an
            // expired code was swept).
            link_guard.failed(&sender_key, &code, now);
            return Ok(ctx.prompts.text(locale, Template::LinkInvalid).to_string());
        }
    };
    ctx.store.flush().await?;
    Ok(ctx.prompts.text(locale, template).to_string())
}

/// Tells the customer who asked for a link code, in the chat where they
/// asked, that another identity (on `platform`) joined them.
async fn tell_code_owner(
    ctx: Context<'_>,
    code: &crate::store::LinkCode,
    platform: &str,
    locale: Option<Locale>,
) {
    let Some(adapter) = ctx.outboxes.get(&code.platform) else {
        return;
    };
    let locale = locale.unwrap_or(ctx.default_locale);
    let platform_name = match platform {
        "telegram" => "Telegram",
        "discord" => "Discord",
        "console" => "console",
        other => other,
    };
    let text = ctx
        .prompts
        .render(locale, Template::LinkJoined, &[("platform", platform_name)]);
    let chat = concierge_adapter::ConversationRef {
        platform: code.platform.clone(),
        chat_id: code.chat_id.clone(),
    };
    if let Err(err) = adapter.send(Outbound::text(chat, text)).await {
        tracing::warn!(platform = %code.platform, "could not tell the code's owner about the link: {err}");
    }
}
