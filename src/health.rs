//! Readiness of the daemon's parts (store, engine, channels), shared between
//! the components that change it and `GET /healthz` that reports it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// State of one component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum ComponentState {
    /// Not started yet, or starting (loading a model, connecting).
    Starting,
    /// Working.
    Ready,
    /// Stopped on purpose.
    Stopped,
    /// Failed; the detail says why.
    Failed(String),
}

#[derive(Debug, Serialize)]
struct Snapshot {
    ready: bool,
    store: ComponentState,
    engine: ComponentState,
    model: Option<String>,
    channels: BTreeMap<String, ComponentState>,
}

#[derive(Debug)]
struct State {
    store: ComponentState,
    engine: ComponentState,
    model: Option<String>,
    channels: BTreeMap<String, ComponentState>,
}

/// Shared readiness. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Health {
    state: Arc<RwLock<State>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: Arc::new(RwLock::new(State {
                store: ComponentState::Starting,
                engine: ComponentState::Starting,
                model: None,
                channels: BTreeMap::new(),
            })),
        }
    }
}

impl Health {
    fn update(&self, change: impl FnOnce(&mut State)) {
        if let Ok(mut state) = self.state.write() {
            change(&mut state);
        }
    }

    /// Sets the store's state.
    pub fn set_store(&self, state: ComponentState) {
        self.update(|s| s.store = state);
    }

    /// Sets the engine's state and the loaded model's name.
    pub fn set_engine(&self, state: ComponentState, model: Option<String>) {
        self.update(|s| {
            s.engine = state;
            if model.is_some() {
                s.model = model;
            }
        });
    }

    /// Sets one channel's state.
    pub fn set_channel(&self, name: &str, state: ComponentState) {
        self.update(|s| {
            s.channels.insert(name.to_string(), state);
        });
    }

    /// Marks a channel as connecting, unless it is failed: a failure stays
    /// until the channel is ready again.
    pub fn set_channel_connecting(&self, name: &str) {
        self.update(|s| {
            let state = s
                .channels
                .entry(name.to_string())
                .or_insert(ComponentState::Starting);
            if !matches!(state, ComponentState::Failed(_)) {
                *state = ComponentState::Starting;
            }
        });
    }

    /// Whether the daemon can serve: store and engine ready, no channel failed.
    pub fn is_ready(&self) -> bool {
        self.report().0
    }

    /// Readiness and the JSON report.
    pub fn report(&self) -> (bool, serde_json::Value) {
        let Ok(state) = self.state.read() else {
            return (
                false,
                serde_json::json!({"ready": false, "error": "health state poisoned"}),
            );
        };
        let ready = state.store == ComponentState::Ready
            && state.engine == ComponentState::Ready
            && !state
                .channels
                .values()
                .any(|channel| matches!(channel, ComponentState::Failed(_)));
        let snapshot = Snapshot {
            ready,
            store: state.store.clone(),
            engine: state.engine.clone(),
            model: state.model.clone(),
            channels: state.channels.clone(),
        };
        (ready, serde_json::to_value(snapshot).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_store_and_engine_and_no_failed_channel() {
        let health = Health::default();
        assert!(!health.is_ready());
        health.set_store(ComponentState::Ready);
        health.set_engine(ComponentState::Ready, Some("m".into()));
        assert!(health.is_ready());
        health.set_channel("telegram", ComponentState::Failed("down".into()));
        let (ready, json) = health.report();
        assert!(!ready);
        assert_eq!(json["channels"]["telegram"]["state"], "failed");
        assert_eq!(json["model"], "m");
        // Reconnecting does not hide the failure; being ready again does.
        health.set_channel_connecting("telegram");
        assert!(!health.is_ready());
        health.set_channel("telegram", ComponentState::Ready);
        assert!(health.is_ready());
        health.set_channel_connecting("telegram");
        assert_eq!(
            health.report().1["channels"]["telegram"]["state"],
            "starting"
        );
    }
}
