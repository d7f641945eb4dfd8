//! Which channels run: the configuration turned into adapters. The only
//! module that names adapter crates, each behind its cargo feature; a channel
//! whose feature is off fails with a clear "not compiled in" error.

use std::sync::Arc;

use concierge_adapter::Adapter;

use crate::config::Config;

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
pub fn from_config(config: &Config) -> anyhow::Result<Vec<Arc<dyn Adapter>>> {
    let mut adapters = Vec::new();
    if config.console.enabled {
        adapters.push(console(&config.console.user)?);
    }
    Ok(adapters)
}
