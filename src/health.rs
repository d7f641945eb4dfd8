//! Readiness of the daemon's parts (store, engine and its inference
//! endpoints, channels), shared between the components that change it and
//! `GET /healthz` that reports it.

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
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoints: Option<Vec<crate::engine::remote::EndpointHealth>>,
    channels: BTreeMap<String, ComponentState>,
}

/// Reads the state of a remote engine's endpoints when asked.
pub type EndpointProbe = Arc<dyn Fn() -> Vec<crate::engine::remote::EndpointHealth> + Send + Sync>;

struct State {
    store: ComponentState,
    engine: ComponentState,
    model: Option<String>,
    channels: BTreeMap<String, ComponentState>,
    endpoints: Option<EndpointProbe>,
}

/// Shared readiness. Cheap to clone.
#[derive(Clone)]
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
                endpoints: None,
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

    /// Lets the report read the engine's inference endpoints: the daemon is
    /// not ready while none of them is up.
    pub fn watch_endpoints(&self, probe: EndpointProbe) {
        self.update(|s| s.endpoints = Some(probe));
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
        let endpoints = state.endpoints.as_ref().map(|probe| probe());
        let some_endpoint_up = endpoints
            .as_ref()
            .is_none_or(|endpoints| endpoints.iter().any(|endpoint| endpoint.state == "up"));
        let ready = state.store == ComponentState::Ready
            && state.engine == ComponentState::Ready
            && some_endpoint_up
            && !state
                .channels
                .values()
                .any(|channel| matches!(channel, ComponentState::Failed(_)));
        let snapshot = Snapshot {
            ready,
            store: state.store.clone(),
            engine: state.engine.clone(),
            model: state.model.clone(),
            endpoints,
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

    #[test]
    fn with_inference_endpoints_ready_needs_one_of_them_up() {
        use crate::engine::remote::EndpointHealth;
        let health = Health::default();
        health.set_store(ComponentState::Ready);
        health.set_engine(ComponentState::Ready, Some("m".into()));
        let states = Arc::new(std::sync::Mutex::new(vec!["down", "up"]));
        let probe_states = Arc::clone(&states);
        health.watch_endpoints(Arc::new(move || {
            probe_states
                .lock()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(index, state)| EndpointHealth {
                    url: format!("http://gpu{index}:8000/v1"),
                    state,
                    in_flight: 0,
                    last_error: None,
                })
                .collect()
        }));
        let (ready, json) = health.report();
        assert!(ready);
        assert_eq!(json["endpoints"][0]["state"], "down");
        *states.lock().unwrap() = vec!["down", "down"];
        assert!(!health.is_ready());
    }
}
