//! The customer's data rights in chat: `/export` sends everything stored
//! about them as one JSON file (in a group, privately; at the console, a file
//! under `<data_dir>/exports/`), and `/forget` asks first, then erases them
//! when they press "yes". Both are written to the audit log.

use concierge_adapter::{
    AdapterError, ChatKind, Choice, ConversationRef, Document, Inbound, Outbound, Outbox,
};

use super::Context;
use crate::buttons::Button;
use crate::prompts::{Locale, Template};
use crate::store::Customer;

/// `/export`: the customer's data as a file.
pub(crate) async fn export(
    ctx: Context<'_>,
    inbound: &Inbound,
    outbox: &dyn Outbox,
    customer: &Customer,
    locale: Locale,
) -> anyhow::Result<()> {
    let sender = &inbound.sender;
    // Only the customer may read it: in a group it goes to their private chat.
    let (target, target_outbox): (ConversationRef, &dyn Outbox) = match inbound.chat {
        ChatKind::Private => (inbound.conversation.clone(), outbox),
        ChatKind::Group => {
            let private = ctx.private_chat(sender).await;
            let raw = ctx.outboxes.get(&sender.platform);
            match (private, raw) {
                (Some(private), Some(raw)) => (private, raw.as_ref()),
                _ => {
                    let text = ctx.prompts.text(locale, Template::PrivateChatNeeded);
                    outbox
                        .send(Outbound::text(inbound.conversation.clone(), text.trim()))
                        .await?;
                    return Ok(());
                }
            }
        }
    };
    let store = ctx.store.clone();
    let (id, platform, user) = (customer.id, sender.platform.clone(), sender.user_id.clone());
    let export = tokio::task::spawn_blocking(move || {
        crate::privacy::export_audited(&store, id, "customer", (&platform, &user))
    })
    .await??;
    let document = Document {
        conversation: target.clone(),
        file_name: crate::privacy::export_file_name(&export),
        bytes: crate::privacy::export_json(&export),
        caption: ctx
            .prompts
            .text(locale, Template::ExportReady)
            .trim()
            .to_string(),
        reply_to: None,
    };
    let reply = match target_outbox.send_document(document).await {
        Ok(_) if inbound.chat == ChatKind::Group => Some(
            ctx.prompts
                .text(locale, Template::ExportSentPrivately)
                .to_string(),
        ),
        Ok(_) => None,
        // A channel without files (the console): a file the operator's
        // machine keeps, removed again by `/forget`.
        Err(AdapterError::Unsupported(_)) => {
            let data_dir = ctx.store.data_dir().to_path_buf();
            let path = tokio::task::spawn_blocking(move || {
                crate::privacy::write_export(&data_dir, &export)
            })
            .await??;
            Some(ctx.prompts.render(
                locale,
                Template::ExportWritten,
                &[("path", &path.display().to_string())],
            ))
        }
        Err(err) if inbound.chat == ChatKind::Group => {
            tracing::info!(platform = %sender.platform, "cannot send the export privately: {err}");
            Some(
                ctx.prompts
                    .text(locale, Template::PrivateChatNeeded)
                    .to_string(),
            )
        }
        Err(err) => return Err(err.into()),
    };
    if let Some(reply) = reply {
        outbox
            .send(Outbound::text(inbound.conversation.clone(), reply.trim()))
            .await?;
    }
    Ok(())
}

/// `/forget`: what erasure removes, and two buttons.
pub(crate) async fn ask_to_forget(
    ctx: Context<'_>,
    inbound: &Inbound,
    outbox: &dyn Outbox,
    customer: &Customer,
    locale: Locale,
) -> anyhow::Result<()> {
    let choice = |erase: bool, label: Template| Choice {
        id: Button::Forget {
            customer: customer.id,
            erase,
        }
        .id(),
        label: ctx.prompts.text(locale, label).trim().to_string(),
    };
    let question = Outbound {
        conversation: inbound.conversation.clone(),
        text: ctx
            .prompts
            .text(locale, Template::ForgetConfirm)
            .trim()
            .to_string(),
        choices: vec![
            choice(true, Template::ForgetYes),
            choice(false, Template::ForgetNo),
        ],
        reply_to: None,
    };
    outbox.send(question).await?;
    Ok(())
}

/// The answer to `/forget`'s question. Only the customer who asked may
/// answer it; anyone else's press is ignored. Returns the erased customer's
/// tickets that agents saw (now anonymised), so their spaces can be told.
pub(crate) async fn answer_forget(
    ctx: Context<'_>,
    inbound: &Inbound,
    outbox: &dyn Outbox,
    customer_id: u64,
    erase: bool,
) -> anyhow::Result<Vec<crate::store::Ticket>> {
    let sender = &inbound.sender;
    let presser = ctx.store.find_customer(&sender.platform, &sender.user_id)?;
    let Some(presser) = presser.filter(|presser| presser.id == customer_id) else {
        tracing::info!(platform = %sender.platform, "an erasure button pressed by someone else, or after the erasure, was ignored");
        return Ok(Vec::new());
    };
    let mut seen_by_agents = Vec::new();
    let locale = presser.locale.unwrap_or(ctx.default_locale);
    let reply = if erase {
        let tickets: Vec<u64> = ctx
            .store
            .tickets_of_customer(customer_id)?
            .into_iter()
            .filter(|ticket| !ticket.agent_posts.is_empty())
            .map(|ticket| ticket.id)
            .collect();
        let store = ctx.store.clone();
        let (platform, user) = (sender.platform.clone(), sender.user_id.clone());
        let erasure = tokio::task::spawn_blocking(move || {
            crate::privacy::erase_audited(&store, customer_id, "customer", (&platform, &user))
        })
        .await??;
        let counts = [
            ("accounts", erasure.identities.to_string()),
            ("conversations", erasure.conversations.to_string()),
            ("messages", erasure.messages.to_string()),
            ("events", erasure.events.to_string()),
            ("tickets", erasure.tickets_anonymised.to_string()),
        ];
        for id in tickets {
            seen_by_agents.extend(ctx.store.ticket(id)?);
        }
        let pairs: Vec<(&str, &str)> = counts
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        ctx.prompts.render(locale, Template::Forgotten, &pairs)
    } else {
        ctx.prompts
            .text(locale, Template::ForgetCancelled)
            .to_string()
    };
    outbox
        .send(Outbound::text(inbound.conversation.clone(), reply.trim()))
        .await?;
    Ok(seen_by_agents)
}
