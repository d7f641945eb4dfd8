//! The recommendation handler: catalog items from the ranker, each with a
//! one-line reason the model writes (kept only when it sticks to the item)
//! and 👍/👎/details buttons.

use std::time::Instant;

use concierge_adapter::{Choice, ConversationRef, Outbound, Outbox};

use super::{event_user, price_text, send_split};
use super::{Context, Model};
use crate::buttons::{Button, ItemAction};
use crate::knowledge::{answer, Hit};
use crate::prompts::{Locale, Template};
use crate::recommend::ranker::{subject, Recommendation, SharedRanker};
use crate::store::{Conversation, Customer, Role};
use crate::telemetry;

/// Items per recommendation reply.
const RECOMMENDATIONS: usize = 5;
/// Tokens for a one-line recommendation reason.
const REASON_TOKENS: usize = 40;

/// Replies with catalog items for the customer, each with a reason and
/// buttons (👍, 👎, details) that come back as choices. The customer's
/// message is stored in `conversation` already.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    ctx: Context<'_>,
    model: Model<'_>,
    recommender: Option<&SharedRanker>,
    customer: &Customer,
    conversation: &Conversation,
    chat: &ConversationRef,
    outbox: &dyn Outbox,
    request: Option<&str>,
    locale: Locale,
    started: Instant,
) -> anyhow::Result<()> {
    let Some(recommender) = recommender else {
        let reply = ctx
            .prompts
            .text(locale, Template::RecommendNone)
            .to_string();
        send_split(outbox, chat, &reply).await?;
        return Ok(());
    };
    let history = ctx.store.user_events(&event_user(customer))?;
    let request = request.filter(|request| !request.trim().is_empty());
    let picks = recommender
        .current()
        .recommend(&history, RECOMMENDATIONS, request);
    if picks.is_empty() {
        let reply = ctx
            .prompts
            .text(locale, Template::RecommendNone)
            .to_string();
        send_split(outbox, chat, &reply).await?;
        ctx.store
            .append_message(conversation.id, Role::Assistant, &reply)?;
        ctx.store.flush().await?;
        return Ok(());
    }
    let intro = ctx
        .prompts
        .text(locale, Template::RecommendIntro)
        .to_string();
    outbox
        .send(Outbound::text(chat.clone(), intro.clone()))
        .await?;
    let mut transcript = vec![intro];
    for (number, pick) in picks.iter().enumerate() {
        let reason = reason(ctx, model, pick, request.map(subject).as_deref(), locale).await;
        let item = &pick.item;
        let text = format!(
            "{}. {} — {}\n{}\n{}",
            number + 1,
            item.title,
            price_text(item),
            item.url,
            reason
        );
        // Channels without buttons (the console) get none to misread.
        let choices = if outbox.capabilities().buttons {
            vec![
                Choice {
                    id: Button::Item {
                        action: ItemAction::Like,
                        item: item.id.clone(),
                    }
                    .id(),
                    label: "👍".into(),
                },
                Choice {
                    id: Button::Item {
                        action: ItemAction::Dislike,
                        item: item.id.clone(),
                    }
                    .id(),
                    label: "👎".into(),
                },
                Choice {
                    id: Button::Item {
                        action: ItemAction::Details,
                        item: item.id.clone(),
                    }
                    .id(),
                    label: "details".into(),
                },
            ]
        } else {
            Vec::new()
        };
        outbox
            .send(Outbound {
                conversation: chat.clone(),
                text: text.clone(),
                choices,
                reply_to: None,
            })
            .await?;
        transcript.push(text);
    }
    ctx.store
        .append_message(conversation.id, Role::Assistant, &transcript.join("\n"))?;
    ctx.store.flush().await?;
    telemetry::reply_delivered(&chat.platform, "recommend", started.elapsed());
    Ok(())
}

/// A one-line reason for a recommendation: written by the model from the
/// item's data and the customer's history, kept only if it sticks to
/// them; otherwise a template chosen by the strongest signal.
async fn reason(
    ctx: Context<'_>,
    model: Model<'_>,
    pick: &Recommendation,
    request: Option<&str>,
    locale: Locale,
) -> String {
    let item = &pick.item;
    let history = pick.because_of.clone().unwrap_or_default();
    let request_text = request.unwrap_or_default();
    let prompt = ctx.prompts.render(
        locale,
        Template::RecommendReason,
        &[
            ("title", &item.title),
            ("description", &item.description),
            ("category", &item.category),
            ("history", &history),
            ("request", request_text),
        ],
    );
    let facts = Hit {
        doc: item.id.clone(),
        title: item.title.clone(),
        passage: format!(
            "{} {} {} {} {} {history} {request_text}",
            item.description,
            item.category.replace('-', " "),
            item.tags.join(" "),
            price_text(item),
            item.url
        ),
        score: 0.0,
        passage_index: 0,
        is_faq: false,
    };
    if let Some(written) = model.complete(locale, &prompt, REASON_TOKENS).await {
        let sentence = written
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        if answer::faithful(&sentence, std::slice::from_ref(&facts)) {
            return sentence;
        }
    }
    let signals = &pick.signals;
    let template = if let Some(because) = pick
        .because_of
        .as_deref()
        .filter(|_| signals.collaborative > 0.0)
    {
        return ctx
            .prompts
            .render(locale, Template::ReasonAlsoBought, &[("item", because)])
            .trim()
            .to_string();
    } else if signals.query > 0.0 {
        return ctx
            .prompts
            .render(
                locale,
                Template::ReasonMatches,
                &[("request", request_text)],
            )
            .trim()
            .to_string();
    } else if signals.content > 0.0 {
        Template::ReasonSimilar
    } else {
        Template::ReasonPopular
    };
    ctx.prompts.text(locale, template).trim().to_string()
}
