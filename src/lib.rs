//! Concierge: a self-hosted customer-service and recommendation bot. This
//! crate is the core: configuration, store, engine, conversation pipeline and
//! the daemon's lifecycle. Channels live in `adapters/*` crates and meet the
//! core only through `concierge-adapter`. See ARCHITECTURE.md.

pub mod agents;
pub mod app;
pub mod bench;
pub mod buttons;
pub mod channels;
pub mod config;
pub mod engine;
pub mod escalation;
pub mod eval;
pub mod fingerprint;
mod handlers;
pub mod health;
pub mod history;
pub mod inbox;
pub mod intent;
pub mod knowledge;
pub mod language;
pub mod link_guard;
pub mod models;
pub mod moderation;
pub mod operator;
pub mod operator_token;
pub mod pipeline;
pub mod privacy;
pub mod prompts;
pub mod recommend;
pub mod route;
pub mod router;
pub mod sanitize;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod understand;
