//! The handler of recommendation buttons (👍, 👎, details).

use concierge_adapter::{Inbound, Outbox};

use super::Context;
use super::{event_user, price_text, send_split};
use crate::buttons::ItemAction;
use crate::prompts::Template;
use crate::store::{Event, EventKind};

/// A 👍, 👎 or details button under a recommended item: the event is
/// stored, and the customer gets a short reply.
pub(crate) async fn item(
    ctx: Context<'_>,
    inbound: &Inbound,
    outbox: &dyn Outbox,
    action: ItemAction,
    item_id: &str,
) -> anyhow::Result<()> {
    let kind = match action {
        ItemAction::Like => EventKind::Like,
        ItemAction::Dislike => EventKind::Dislike,
        ItemAction::Details => EventKind::Click,
    };
    let sender = &inbound.sender;
    let customer = ctx.store.customer_for_identity(
        &sender.platform,
        &sender.user_id,
        sender
            .display_name
            .as_deref()
            .and_then(crate::sanitize::display_name)
            .as_deref(),
    )?;
    let locale = customer.locale.unwrap_or(ctx.default_locale);
    let Some(item) = ctx.store.catalog_item(item_id)? else {
        return Ok(());
    };
    ctx.store.events_append(&[Event {
        v: crate::store::RECORD_VERSION,
        user: event_user(&customer),
        item: item.id.clone(),
        kind,
        ts_ms: crate::store::now_ms(),
        value: None,
        id: None,
    }])?;
    ctx.store.flush().await?;
    let reply = match kind {
        EventKind::Like => ctx.prompts.render(
            locale,
            Template::FeedbackLike,
            &[("title", item.title_in(locale))],
        ),
        EventKind::Dislike => ctx.prompts.render(
            locale,
            Template::FeedbackDislike,
            &[("title", item.title_in(locale))],
        ),
        _ => ctx.prompts.render(
            locale,
            Template::ItemDetails,
            &[
                ("title", item.title_in(locale)),
                ("description", item.description_in(locale)),
                ("price", &price_text(&item)),
                ("url", &item.url),
            ],
        ),
    };
    send_split(outbox, &inbound.conversation, reply.trim()).await
}
