//! `concierge customers …` and `concierge privacy …`: customers' data rights
//! for operators. They open the store directly, or, when a running daemon
//! holds it, go through that daemon's operator API with `operator.token`.

use anyhow::Context;
use concierge::config::Config;
use concierge::privacy;
use concierge::store::{Store, StoreError};

use super::operator_client::OperatorClient;
use super::{CustomersAction, PrivacyAction};

/// How this command reaches the data.
enum Access {
    /// The store, opened here.
    Store(Store),
    /// The daemon that holds it.
    Api(Api),
}

struct Api(OperatorClient);

impl Api {
    fn call(
        &self,
        method: reqwest::Method,
        segments: &[&str],
    ) -> anyhow::Result<serde_json::Value> {
        self.0.send(
            self.0.request(method, segments)?,
            "the store is held by a running daemon, but it does not answer",
        )
    }
}

fn access(config: &Config) -> anyhow::Result<Access> {
    match Store::open(&config.store.data_dir) {
        Ok(store) => Ok(Access::Store(store)),
        Err(StoreError::Locked { path }) => {
            let token = concierge::operator_token::for_client(config).with_context(|| {
                format!(
                    "the store at {} is held by a running daemon; set CONCIERGE_OPERATOR_TOKEN (or operator.token_file) to go through its operator API",
                    path.display()
                )
            })?;
            Ok(Access::Api(Api(OperatorClient::new(
                config,
                token.expose(),
            )?)))
        }
        Err(err) => Err(err.into()),
    }
}

fn print_pretty(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_lines(values: &[serde_json::Value]) {
    for value in values {
        println!("{value}");
    }
}

/// `concierge customers list|show|export|forget`.
pub(super) fn customers(config: &Config, action: CustomersAction) -> anyhow::Result<()> {
    if let CustomersAction::Forget { yes: false, .. } = &action {
        anyhow::bail!("erasure cannot be undone: add --yes to erase this customer");
    }
    match (access(config)?, action) {
        (Access::Store(store), CustomersAction::List) => {
            let summaries = store.customer_summaries()?;
            let values: Vec<serde_json::Value> = summaries
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?;
            print_lines(&values);
        }
        (Access::Api(api), CustomersAction::List) => {
            let body = api.call(reqwest::Method::GET, &["v1", "customers"])?;
            print_lines(body.as_array().map(Vec::as_slice).unwrap_or_default());
        }
        (Access::Store(store), CustomersAction::Show { user, platform }) => {
            print_pretty(&privacy::show_customer(&store, &platform, &user)?)?;
        }
        (Access::Api(api), CustomersAction::Show { user, platform }) => {
            print_pretty(&api.call(reqwest::Method::GET, &["v1", "customers", &platform, &user])?)?;
        }
        (Access::Store(store), CustomersAction::Export { user, platform }) => {
            let export =
                privacy::export_for_operator(&store, &platform, &user, privacy::OPERATOR_CLI)?;
            store.flush_blocking()?;
            print_pretty(&export)?;
        }
        (Access::Api(api), CustomersAction::Export { user, platform }) => {
            print_pretty(&api.call(
                reqwest::Method::GET,
                &["v1", "customers", &platform, &user, "export"],
            )?)?;
        }
        (Access::Store(store), CustomersAction::Forget { user, platform, .. }) => {
            let erasure =
                privacy::forget_for_operator(&store, &platform, &user, privacy::OPERATOR_CLI)?;
            print_pretty(&erasure)?;
        }
        (Access::Api(api), CustomersAction::Forget { user, platform, .. }) => {
            print_pretty(&api.call(
                reqwest::Method::DELETE,
                &["v1", "customers", &platform, &user],
            )?)?;
        }
    }
    Ok(())
}

/// `concierge privacy sweep|audit|rotate-keys`.
pub(super) fn privacy(config: &Config, action: PrivacyAction) -> anyhow::Result<()> {
    if let PrivacyAction::RotateKeys = action {
        // Resealing while a daemon writes could seal a record under a key
        // that is then destroyed: only with the store to itself.
        let store = match Store::open(&config.store.data_dir) {
            Err(StoreError::Locked { path }) => anyhow::bail!(
                "the store at {} is held by a running daemon; stop it first: keys are rotated with the store closed to everyone else",
                path.display()
            ),
            other => other?,
        };
        let rotation = store.rotate_keys()?;
        store.audit(concierge::store::AuditEntry {
            v: concierge::store::RECORD_VERSION,
            ts_ms: concierge::store::now_ms(),
            action: concierge::store::AuditAction::KeyRotation,
            actor: privacy::OPERATOR_CLI.into(),
            customer_id: None,
            platform: None,
            user: None,
            detail: format!(
                "{} customers, {} records resealed, {} keys destroyed",
                rotation.customers, rotation.records_resealed, rotation.keys_destroyed
            ),
        })?;
        return print_pretty(&rotation);
    }
    match (access(config)?, action) {
        (Access::Store(store), PrivacyAction::Sweep) => {
            print_pretty(&privacy::sweep_report(&store, &config.privacy)?)?;
        }
        (Access::Api(api), PrivacyAction::Sweep) => {
            print_pretty(&api.call(reqwest::Method::POST, &["v1", "privacy", "sweep"])?)?;
        }
        (Access::Store(store), PrivacyAction::Audit) => {
            let values: Vec<serde_json::Value> = store
                .audit_log()?
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?;
            print_lines(&values);
        }
        (Access::Api(api), PrivacyAction::Audit) => {
            let body = api.call(reqwest::Method::GET, &["v1", "audit"])?;
            print_lines(body.as_array().map(Vec::as_slice).unwrap_or_default());
        }
        (_, PrivacyAction::RotateKeys) => {}
    }
    Ok(())
}
