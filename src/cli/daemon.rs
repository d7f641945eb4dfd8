//! `concierge chat` and `concierge serve`: the pipeline at the console, and
//! the daemon until SIGINT/SIGTERM.

use concierge::app;
use concierge::config::Config;

use super::block_on;

/// `concierge chat [--user ID]`.
pub(super) fn chat(config: &Config, user: Option<String>) -> anyhow::Result<()> {
    let user = user.unwrap_or_else(|| config.console.user.clone());
    block_on(app::chat(config, &user, async {
        let _ = tokio::signal::ctrl_c().await;
    }))
}

/// `concierge serve`.
pub(super) fn serve(config: &Config) -> anyhow::Result<()> {
    block_on(app::serve(config, shutdown_signal()))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!("cannot watch SIGTERM: {err}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
