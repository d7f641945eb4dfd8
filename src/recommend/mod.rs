//! Recommendations: interaction data, collaborative rankers (EASE,
//! item-kNN, popularity) and their offline evaluation against the published
//! reference figures.

pub mod dataset;
pub mod evaluate;
pub mod import;
pub mod models;
pub mod ranker;
