//! A customer's stored conversation as JSON lines `{"ts","role","text"}`,
//! shared by `concierge history` and the operator API.

use serde::Serialize;

use crate::store::{Role, SourceRef, Store, StoreError};

/// One line of history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryLine {
    /// RFC 3339 time, UTC.
    pub ts: String,
    /// `user` or `assistant`.
    pub role: Role,
    /// The text.
    pub text: String,
    /// Knowledge-base passages an answer used.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceRef>,
}

/// Every message of the customer known as `user` on `platform`, oldest
/// first, across all their conversations on that platform.
pub fn history(store: &Store, platform: &str, user: &str) -> Result<Vec<HistoryLine>, StoreError> {
    let Some(customer) = store.find_customer(platform, user)? else {
        return Err(StoreError::NotFound(format!(
            "customer {user:?} on {platform}"
        )));
    };
    let mut lines = Vec::new();
    for conversation in store.customer_conversations(customer.id, Some(platform))? {
        for message in store.conversation_messages(conversation.id)? {
            lines.push(HistoryLine {
                ts: format_ts(message.ts_ms),
                role: message.role,
                text: message.text,
                sources: message.sources,
            });
        }
    }
    Ok(lines)
}

fn format_ts(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
