//! The recommendation handler: catalog items from the ranker, in the
//! customer's language, each with a one-line reason (the model's, kept only
//! when every sentence rests on the item's own data, else one naming the
//! attribute that matched) and 👍/👎/details buttons.

use std::time::Instant;

use concierge_adapter::{Choice, ConversationRef, Outbound, Outbox};

use super::{event_user, price_text, send_split};
use super::{Context, Model};
use crate::buttons::{Button, ItemAction};
use crate::knowledge::support::Evidence;
use crate::knowledge::text::{analyze, query_units, unit_covered, word_analyzer};
use crate::prompts::{Locale, Template};
use crate::recommend::ranker::{subject, Recommendation, SharedRanker};
use crate::store::{CatalogItem, Conversation, Customer, Role};
use crate::telemetry;
use std::collections::HashSet;

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
        let reason = reason(ctx, model, pick, request, locale).await;
        let item = &pick.item;
        let text = format!(
            "{}. {} — {}\n{}\n{}",
            number + 1,
            item.title_in(locale),
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
/// item's data, kept only if every sentence rests on that data (never on
/// the customer's words); otherwise a template naming the strongest
/// signal: the item's attributes the request named, a liked item, or
/// similarity and popularity.
async fn reason(
    ctx: Context<'_>,
    model: Model<'_>,
    pick: &Recommendation,
    request: Option<&str>,
    locale: Locale,
) -> String {
    let item = &pick.item;
    let liked = pick
        .liked
        .as_ref()
        .map(|liked| liked.title_in(locale).to_string())
        .unwrap_or_default();
    let request_text = request.map(subject).unwrap_or_default();
    let prompt = ctx.prompts.render(
        locale,
        Template::RecommendReason,
        &[
            ("title", item.title_in(locale)),
            ("description", item.description_in(locale)),
            ("category", &item.category),
            ("history", &liked),
            ("request", &request_text),
        ],
    );
    let category = item.category.replace('-', " ");
    let tags = format!("{} {}", item.tags.join(" "), item.tags_zh.join(" "));
    let price = price_text(item);
    let evidence = Evidence::new([
        item.title.as_str(),
        item.title_zh.as_str(),
        item.description.as_str(),
        item.description_zh.as_str(),
        category.as_str(),
        tags.as_str(),
        price.as_str(),
        liked.as_str(),
    ])
    .allow_links([item.url.clone()]);
    let signals = &pick.signals;
    let matched = request
        .map(|request| matched_attributes(item, request, locale))
        .unwrap_or_default();
    if let Some(written) = model.complete(locale, &prompt, REASON_TOKENS).await {
        let sentence = written.lines().next().unwrap_or_default().trim();
        let in_language =
            locale != Locale::Zh || sentence.chars().any(crate::knowledge::text::is_han);
        // Cut off by the token limit, it is no sentence ("… Weighs: 3").
        let finished = sentence
            .trim_end_matches(['"', '\'', '”', '’', ')', '）', '」'])
            .ends_with(['.', '!', '?', '。', '！', '？', '…']);
        // Where the request named attributes, the reason names one of them,
        // as a whole word ("men" is not in "women"): a copy of the
        // description is no reason.
        let lowered = sentence.to_lowercase();
        let names_the_match = matched.is_empty()
            || matched.iter().any(|attribute| {
                crate::knowledge::text::holds_cue(&lowered, &attribute.to_lowercase())
            });
        if in_language && finished && names_the_match && evidence.check_answer(sentence).is_ok() {
            return sentence.to_string();
        }
    }
    if signals.query > 0.0 && !matched.is_empty() {
        let separator = if locale == Locale::Zh { "、" } else { ", " };
        let matched = matched.join(separator);
        return ctx
            .prompts
            .render(
                locale,
                Template::ReasonMatches,
                &[("matched", &matched), ("request", &matched)],
            )
            .trim()
            .to_string();
    }
    if pick.liked.is_some() && signals.collaborative > 0.0 {
        return ctx
            .prompts
            .render(locale, Template::ReasonAlsoBought, &[("item", &liked)])
            .trim()
            .to_string();
    }
    let template = if signals.content > 0.0 {
        Template::ReasonSimilar
    } else {
        Template::ReasonPopular
    };
    ctx.prompts.text(locale, template).trim().to_string()
}

/// The item's category and tags that `request` names, as the shop wrote
/// them (whole words), in the customer's language where the shop gives it.
fn matched_attributes(item: &CatalogItem, request: &str, locale: Locale) -> Vec<String> {
    let units = query_units(request);
    let mut analyzer = word_analyzer();
    let mut named = |attribute: &str| {
        let tokens: HashSet<String> = analyze(&mut analyzer, attribute).into_iter().collect();
        let lowered = attribute.to_lowercase();
        units
            .iter()
            .any(|unit| unit_covered(unit, &tokens, &lowered))
    };
    let mut matched: Vec<String> = Vec::new();
    let mut add = |attribute: String| {
        if !attribute.is_empty() && !matched.contains(&attribute) {
            matched.push(attribute);
        }
    };
    let category = item.category.replace('-', " ");
    // A Chinese tag stands for the English one in the same place.
    let shown = |at: usize, english: &str| match (locale, item.tags_zh.get(at)) {
        (Locale::Zh, Some(chinese)) => chinese.clone(),
        _ => english.replace('-', " "),
    };
    if named(&category) {
        add(category.clone());
    }
    for (at, tag) in item.tags.iter().enumerate() {
        let chinese = item.tags_zh.get(at).map(String::as_str).unwrap_or_default();
        if named(&tag.replace('-', " ")) || (!chinese.is_empty() && named(chinese)) {
            add(shown(at, tag));
        }
    }
    if locale == Locale::Zh {
        // Tags beyond the English list (a shop may give more in Chinese).
        for chinese in item.tags_zh.iter().skip(item.tags.len()) {
            if named(chinese) {
                add(chinese.clone());
            }
        }
    }
    matched
}
