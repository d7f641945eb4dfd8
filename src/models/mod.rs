//! Getting the model ready to load: fetching the default model with
//! `models/fetch` when it is missing, downloading a known stronger model
//! from the hub (`catalog`, `hub`), and converting it once to a quant type
//! with fast CPU kernels (`engine.convert_to`). Progress goes to stderr.

pub mod catalog;
pub mod hub;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::config::{ConvertTo, EngineBackend, EngineConfig};
use crate::engine::{convert, gguf};

/// The fetch script, relative to the working directory.
pub const FETCH_SCRIPT: &str = "models/fetch";

/// The embedding model's fetch script, relative to the working directory.
pub const FETCH_EMBEDDER_SCRIPT: &str = "models/fetch-embedder";

/// Runs `models/fetch` so the default model lands in `dest_dir`.
pub fn fetch(dest_dir: &Path) -> anyhow::Result<()> {
    run_fetch_script(
        FETCH_SCRIPT,
        "the default model",
        "engine.model_path",
        dest_dir,
    )
}

/// Runs `models/fetch-embedder` so the embedding model for search by
/// meaning lands in `dest_dir`.
pub fn fetch_embedder(dest_dir: &Path) -> anyhow::Result<()> {
    run_fetch_script(
        FETCH_EMBEDDER_SCRIPT,
        "the embedding model",
        "knowledge.embedder_path",
        dest_dir,
    )
}

/// Runs the fetch `script` for `what` into `dest_dir`; `key` is the setting
/// that names the file, for the error when the script is not there.
fn run_fetch_script(script: &str, what: &str, key: &str, dest_dir: &Path) -> anyhow::Result<()> {
    if !Path::new(script).exists() {
        bail!(
            "{script} not found in {}: run Concierge from the repository root, or fetch the model yourself and set {key}",
            std::env::current_dir().map(|dir| dir.display().to_string()).unwrap_or_default()
        );
    }
    eprintln!("concierge: fetching {what} into {} ...", dest_dir.display());
    let status = Command::new("bash")
        .arg(script)
        .arg(dest_dir)
        .status()
        .with_context(|| format!("cannot run {script}"))?;
    if !status.success() {
        bail!("{script} failed ({status}); see its messages above");
    }
    Ok(())
}

/// Downloads the known model `name` into `dir` from the hub, with progress
/// on stderr; returns the file.
pub fn fetch_known(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let Some(model) = catalog::find(name) else {
        let names: Vec<&str> = catalog::KNOWN_MODELS.iter().map(|m| m.name).collect();
        bail!(
            "unknown model {name:?}: `concierge models list` shows the known ones ({})",
            names.join(", ")
        );
    };
    let hub = hub::Hub::from_env()?;
    let dest = dir.join(model.file);
    eprintln!(
        "concierge: fetching {} ({}, about {} MB, licence: {}) into {} ...",
        model.name,
        model.repo,
        model.approx_mb,
        model.license,
        dir.display()
    );
    let mut shown = None;
    let path = hub.download(model.repo, model.file, &dest, |done, total| {
        let percent = (done * 100).checked_div(total).unwrap_or(100);
        if shown != Some(percent) {
            shown = Some(percent);
            eprint!(
                "\rconcierge: {percent:3}% ({:.1} of {:.1} MB)",
                done as f64 / 1e6,
                total as f64 / 1e6
            );
        }
    })?;
    eprintln!();
    eprintln!(
        "concierge: {} ready (sha256 verified). Use it with engine.model_path = \"{}\" (or CONCIERGE_ENGINE_MODEL_PATH)",
        path.display(),
        path.display()
    );
    Ok(path)
}

/// Converts `source` to Q8_0 beside it, printing progress.
pub fn convert_q8_0(source: &Path, target: &Path) -> anyhow::Result<()> {
    convert_to(source, target, convert::Target::Q8_0)
}

/// Converts `source` to `to` at `target`, printing progress.
pub fn convert_to(source: &Path, target: &Path, to: convert::Target) -> anyhow::Result<()> {
    eprintln!(
        "concierge: converting {} to {} (once; fast CPU kernels) ...",
        source.display(),
        to.name()
    );
    let mut last_percent = None;
    convert::convert(source, target, to, |done, total| {
        let percent = done * 100 / total.max(1);
        if last_percent != Some(percent / 10) {
            last_percent = Some(percent / 10);
            eprint!("\rconcierge: converting: {percent:3}%");
        }
    })?;
    eprintln!("\rconcierge: converted to {}", target.display());
    Ok(())
}

/// Makes sure the configured model is present (fetching it if allowed) and
/// returns the file to load (the converted copy when conversion is on).
pub fn prepare(config: &EngineConfig) -> anyhow::Result<PathBuf> {
    let source = &config.model_path;
    if !source.exists() {
        if !config.auto_fetch {
            bail!(crate::engine::EngineError::ModelMissing {
                path: source.clone()
            });
        }
        let dest_dir = source
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fetch(dest_dir)?;
        if !source.exists() {
            bail!(
                "{FETCH_SCRIPT} fetches the default model, but engine.model_path is {}: fetch that model yourself",
                source.display()
            );
        }
    }
    let header = gguf::read_header(source)?;
    gguf::check_supported(source, &header)?;
    if config.convert_to == ConvertTo::None || header.dominant_type() == Some("Q8_0") {
        return Ok(source.clone());
    }
    // Q4_0 has native kernels in the CPU engine; only mistral.rs wants it converted.
    let convertible: &[&str] = if config.backend == EngineBackend::Mistralrs {
        &["Q4_0", "Q4_1", "Q5_0", "Q5_1"]
    } else {
        &["Q4_1", "Q5_0", "Q5_1"]
    };
    if !header
        .dominant_type()
        .is_some_and(|kind| convertible.contains(&kind))
    {
        return Ok(source.clone());
    }
    let target = convert::q8_0_path(source);
    if is_fresh(&target, source) && gguf::read_header(&target).is_ok() {
        return Ok(target);
    }
    convert_q8_0(source, &target)?;
    Ok(target)
}

/// Whether `derived` exists and is newer than `source`.
fn is_fresh(derived: &Path, source: &Path) -> bool {
    let modified = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
    };
    match (modified(derived), modified(source)) {
        (Some(derived), Some(source)) => derived >= source,
        _ => false,
    }
}
