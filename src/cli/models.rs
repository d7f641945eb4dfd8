//! `concierge models fetch|list|convert`.

use std::path::{Path, PathBuf};

use concierge::config::Config;
use concierge::models;

/// `concierge models fetch [NAME] [--dir DIR]`: the default model, or one of
/// the known hub models, into the model file's directory.
pub(super) fn fetch(
    config: &Config,
    name: Option<String>,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let default_dir = config
        .engine
        .model_path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let dir = dir.unwrap_or(default_dir);
    match name {
        Some(name) => models::fetch_known(&name, &dir).map(|_| ()),
        None => models::fetch(&dir),
    }
}

/// `concierge models list`: the known hub models, as JSON lines.
pub(super) fn list() -> anyhow::Result<()> {
    for model in models::catalog::KNOWN_MODELS {
        println!("{}", serde_json::to_string(model)?);
    }
    Ok(())
}

/// `concierge models convert [--input F] [--output F] [--to q8_0|q4_0]`.
pub(super) fn convert(
    config: &Config,
    input: Option<PathBuf>,
    output: Option<PathBuf>,
    to: &str,
) -> anyhow::Result<()> {
    use concierge::engine::convert::{quant_path, Target};
    let target = if to == "q4_0" {
        Target::Q4_0
    } else {
        Target::Q8_0
    };
    let input = input.unwrap_or_else(|| config.engine.model_path.clone());
    let output = output.unwrap_or_else(|| quant_path(&input, target));
    models::convert_to(&input, &output, target)
}
