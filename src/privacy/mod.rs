//! Customers' data rights while Concierge runs: payment data masked at
//! intake (`redact`), logs masked (`log`), exports written as files, the
//! retention sweep on a timer, and the one place the audit log is written
//! from. The store does the erasing itself (`store::privacy`).

pub mod log;
pub mod redact;

use std::path::{Path, PathBuf};
use std::time::Duration;

use concierge_adapter::{Inbound, InboundContent};
use tokio_util::sync::CancellationToken;

use crate::config::PrivacyConfig;
use crate::store::{AuditAction, AuditEntry, CustomerExport, Store};

/// How often `serve` sweeps by `retention_days`.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// Masks what `[privacy] redact` names in a customer's message, before it
/// is stored anywhere. Returns whether payment data (a card or an IBAN) was
/// masked.
pub fn mask_inbound(message: &mut Inbound, kinds: &[redact::Kind]) -> bool {
    let InboundContent::Text(text) = &mut message.content else {
        return false;
    };
    let (masked, found) = redact::mask_text(text, kinds);
    if found.is_empty() {
        return false;
    }
    *text = masked;
    found
        .iter()
        .any(|kind| matches!(kind, redact::Kind::Card | redact::Kind::Iban))
}

/// The JSON of an export, as the customer downloads it.
pub fn export_json(export: &CustomerExport) -> Vec<u8> {
    let mut json = serde_json::to_vec_pretty(export).unwrap_or_default();
    json.push(b'\n');
    json
}

/// The file name of an export; erasure removes files by its prefix.
pub fn export_file_name(export: &CustomerExport) -> String {
    format!(
        "{}{}.json",
        crate::store::export_file_prefix(export.profile.id),
        export.exported_ms
    )
}

/// Writes an export under `<data_dir>/exports/` (owner-only where the
/// system allows) and returns its path.
pub fn write_export(data_dir: &Path, export: &CustomerExport) -> std::io::Result<PathBuf> {
    let dir = data_dir.join("exports");
    std::fs::create_dir_all(&dir)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    // Two exports in one millisecond get the same name: the second is
    // numbered, keeping the prefix erasure removes them by.
    let name = export_file_name(export);
    let mut path = dir.join(&name);
    let mut copy = 1;
    let mut file = loop {
        match options.open(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && copy < 100 => {
                copy += 1;
                let stem = name.trim_end_matches(".json");
                path = dir.join(format!("{stem}-{copy}.json"));
            }
            other => break other?,
        }
    };
    std::io::Write::write_all(&mut file, &export_json(export))?;
    file.sync_all()?;
    Ok(path)
}

/// Records an export or erasure in the audit log; a failure is logged, the
/// action itself already happened.
pub fn audit(
    store: &Store,
    action: AuditAction,
    actor: &str,
    customer_id: u64,
    account: Option<(&str, &str)>,
    detail: String,
) {
    let entry = AuditEntry {
        v: crate::store::RECORD_VERSION,
        ts_ms: crate::store::now_ms(),
        action,
        actor: actor.to_string(),
        customer_id: Some(customer_id),
        platform: account.map(|(platform, _)| platform.to_string()),
        user: account.map(|(_, user)| user.to_string()),
        detail,
    };
    if let Err(err) = store.audit(entry) {
        tracing::error!(
            customer = customer_id,
            "could not write the audit log: {err}"
        );
    }
}

/// One retention sweep by `retention_days` (nothing when it is 0), audited.
pub fn sweep_once(
    store: &Store,
    config: &PrivacyConfig,
) -> Result<Option<crate::store::Sweep>, crate::store::StoreError> {
    if config.retention_days == 0 {
        return Ok(None);
    }
    let days = u64::from(config.retention_days);
    let cutoff = crate::store::now_ms().saturating_sub(days * 86_400_000);
    let sweep = store.sweep_retention(cutoff)?;
    let entry = AuditEntry {
        v: crate::store::RECORD_VERSION,
        ts_ms: crate::store::now_ms(),
        action: AuditAction::RetentionSweep,
        actor: "retention".into(),
        customer_id: None,
        platform: None,
        user: None,
        detail: format!(
            "{} messages, {} events, {} tickets anonymised (older than {days} days)",
            sweep.messages, sweep.events, sweep.tickets_anonymised
        ),
    };
    store.audit(entry)?;
    Ok(Some(sweep))
}

/// Sweeps at start and then hourly until `stop`, when `retention_days` is set.
pub async fn run_sweeps(store: Store, config: PrivacyConfig, stop: CancellationToken) {
    if config.retention_days == 0 {
        return;
    }
    loop {
        let (store_now, config_now) = (store.clone(), config.clone());
        match tokio::task::spawn_blocking(move || sweep_once(&store_now, &config_now)).await {
            Ok(Ok(Some(sweep))) => tracing::info!(
                messages = sweep.messages,
                events = sweep.events,
                tickets_anonymised = sweep.tickets_anonymised,
                "retention sweep done"
            ),
            Ok(Ok(None)) => {}
            Ok(Err(err)) => tracing::error!("the retention sweep failed: {err}"),
            Err(err) => tracing::error!("the retention sweep task failed: {err}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
        }
    }
}

/// Who asks for an export or an erasure outside the chat, as the audit log
/// writes it.
pub const OPERATOR_CLI: &str = "operator (cli)";
/// The same, through the operator API.
pub const OPERATOR_API: &str = "operator (api)";

/// The customer behind a platform account, or `NotFound`.
pub fn customer_of_account(
    store: &Store,
    platform: &str,
    user: &str,
) -> Result<crate::store::Customer, crate::store::StoreError> {
    store
        .find_customer(platform, user)?
        .ok_or_else(|| crate::store::StoreError::NotFound(format!("customer {platform}:{user}")))
}

/// One customer as operators see them.
pub fn show_customer(
    store: &Store,
    platform: &str,
    user: &str,
) -> Result<crate::store::CustomerSummary, crate::store::StoreError> {
    store.customer_summary(customer_of_account(store, platform, user)?)
}

/// Everything stored about a customer, audited as asked by `actor` from (or
/// naming) the platform account `account`.
pub fn export_audited(
    store: &Store,
    customer_id: u64,
    actor: &str,
    account: (&str, &str),
) -> Result<CustomerExport, crate::store::StoreError> {
    let export = store.export_customer(customer_id)?;
    let messages: usize = export
        .conversations
        .iter()
        .map(|conversation| conversation.messages.len())
        .sum();
    audit(
        store,
        AuditAction::Export,
        actor,
        customer_id,
        Some(account),
        format!(
            "{} conversations, {messages} messages, {} events, {} tickets",
            export.conversations.len(),
            export.events.len(),
            export.tickets.len()
        ),
    );
    tracing::info!(
        platform = account.0,
        customer = customer_id,
        actor,
        "customer data exported"
    );
    Ok(export)
}

/// Erases a customer, audited as asked by `actor` from (or naming) the
/// platform account `account`.
pub fn erase_audited(
    store: &Store,
    customer_id: u64,
    actor: &str,
    account: (&str, &str),
) -> Result<crate::store::Erasure, crate::store::StoreError> {
    let erasure = store.forget_customer(customer_id)?;
    audit(
        store,
        AuditAction::Forget,
        actor,
        customer_id,
        Some(account),
        format!(
            "{} accounts, {} conversations, {} messages, {} events, {} tickets anonymised, {} keys destroyed, {} exports removed",
            erasure.identities,
            erasure.conversations,
            erasure.messages,
            erasure.events,
            erasure.tickets_anonymised,
            erasure.keys_destroyed,
            erasure.exports_removed
        ),
    );
    tracing::info!(
        platform = account.0,
        customer = customer_id,
        actor,
        "customer erased"
    );
    Ok(erasure)
}

/// An operator's export of the customer behind a platform account.
pub fn export_for_operator(
    store: &Store,
    platform: &str,
    user: &str,
    actor: &str,
) -> Result<CustomerExport, crate::store::StoreError> {
    let customer = customer_of_account(store, platform, user)?;
    export_audited(store, customer.id, actor, (platform, user))
}

/// An operator's erasure of the customer behind a platform account.
pub fn forget_for_operator(
    store: &Store,
    platform: &str,
    user: &str,
    actor: &str,
) -> Result<crate::store::Erasure, crate::store::StoreError> {
    let customer = customer_of_account(store, platform, user)?;
    erase_audited(store, customer.id, actor, (platform, user))
}

/// What `concierge privacy sweep` and `POST /v1/privacy/sweep` print.
pub fn sweep_report(
    store: &Store,
    config: &PrivacyConfig,
) -> Result<serde_json::Value, crate::store::StoreError> {
    Ok(match sweep_once(store, config)? {
        Some(sweep) => serde_json::json!({
            "retention_days": config.retention_days,
            "cutoff_ms": sweep.cutoff_ms,
            "messages_removed": sweep.messages,
            "events_removed": sweep.events,
            "tickets_anonymised": sweep.tickets_anonymised,
        }),
        None => serde_json::json!({
            "retention_days": 0,
            "note": "privacy.retention_days is 0: everything is kept, nothing was removed",
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_exports_in_one_millisecond_get_two_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let customer = store.customer_for_identity("console", "kim", None).unwrap();
        let export = store.export_customer(customer.id).unwrap();
        let first = write_export(dir.path(), &export).unwrap();
        let second = write_export(dir.path(), &export).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            store.forget_customer(customer.id).unwrap().exports_removed,
            2
        );
    }
}
