//! Offline measurement and training: `eval answers|retrieval|intents`, `recommend
//! eval`, `classify` and `train intents`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use concierge::config::Config;
use concierge::escalation::tiebreak;
use concierge::{app, eval, intent, recommend};

use super::data::open_store;

/// `concierge eval answers --data FILE [--details] [--rows all|odd|even]`.
pub(super) fn answers(
    config: &Config,
    data: &Path,
    details: bool,
    rows: &str,
) -> anyhow::Result<()> {
    let rows = match rows {
        "odd" => eval::answers::Rows::Odd,
        "even" => eval::answers::Rows::Even,
        _ => eval::answers::Rows::All,
    };
    let questions = eval::answers::read_questions(data, rows)?;
    let report = super::block_on(app::eval_answers(config, &questions, |outcome| {
        if details {
            eprintln!("{}", serde_json::to_string(outcome).unwrap_or_default());
        }
    }))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `concierge eval retrieval DATA [--details]`.
pub(super) fn retrieval(config: &Config, data: &Path, details: bool) -> anyhow::Result<()> {
    let questions = eval::read_questions(data)?;
    let store = open_store(config)?;
    let kb = app::load_knowledge(config, &store)?;
    let report = eval::retrieval(&kb, &questions, |outcome| {
        if details {
            eprintln!("{}", serde_json::to_string(outcome).unwrap_or_default());
        }
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `concierge eval intents --data FILE [--folds N] [--details] [--tiebreak | --meaning]`.
pub(super) fn intents(
    config: &Config,
    data: &Path,
    (text_column, label_column): (Option<String>, Option<String>),
    folds: usize,
    details: bool,
    (tiebreak, meaning): (bool, bool),
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !meaning || folds == 0,
        "--meaning judges the model trained on the shipped files: use it with --folds 0"
    );
    let examples = intent::read_examples(data, text_column.as_deref(), label_column.as_deref())?;
    let shipped = config.escalation.intents_dir.as_path();
    let base = intent::read_all_examples(&intent::default_training_files(shipped)?, None, None)?;
    let model = if folds == 0 {
        Some(intent::load_or_train(&config.store.data_dir, shipped)?)
    } else {
        None
    };
    let auto = config.escalation.auto_min_confidence;
    let mut judged = Vec::new();
    let report =
        intent::evaluate::evaluate(&examples, &base, folds, model.as_ref(), auto, 1, |one| {
            if details {
                eprintln!("{}", serde_json::to_string(one).unwrap_or_default());
            }
            judged.push(one.clone());
        });
    let band = app::tiebreak_band(config);
    if meaning {
        let (embedder, model) = app::load_meaning_model(config, &base)?;
        let cache = app::embedding_cache(&config.knowledge.embedder_path);
        let measured = intent::meaning::measure(&embedder, &model, &mut judged, band, &cache);
        let with_meaning = intent::evaluate::summarise(&judged, folds, auto);
        let combined = serde_json::json!({
            "classifier": report,
            "meaning": measured,
            "with_meaning": with_meaning,
        });
        println!("{}", serde_json::to_string_pretty(&combined)?);
        return Ok(());
    }
    if !tiebreak {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let measured = super::block_on(async {
        let llm = app::build_engine(config).await?;
        let prompts = concierge::prompts::Prompts::load(&config.chat.prompts_dir)?;
        let sampling = app::settings(config).sampling;
        Ok(tiebreak::measure(llm.as_ref(), &prompts, sampling, &mut judged, band).await)
    })?;
    let with_model = intent::evaluate::summarise(&judged, folds, auto);
    let combined = serde_json::json!({
        "classifier": report,
        "tiebreak": measured,
        "with_tiebreak": with_model,
    });
    println!("{}", serde_json::to_string_pretty(&combined)?);
    Ok(())
}

/// `concierge recommend eval INTERACTIONS [--protocol full|loo100]`.
pub(super) fn recommendations(
    interactions: &Path,
    protocol: &str,
    seed: Option<u64>,
    k: usize,
) -> anyhow::Result<()> {
    let data = recommend::dataset::Interactions::read(interactions)?;
    let protocol = if protocol == "full" {
        recommend::evaluate::Protocol::Full
    } else {
        recommend::evaluate::Protocol::Loo100
    };
    let seeds = seed.map_or_else(|| vec![1, 2, 3], |seed| vec![seed]);
    let texts = recommend::dataset::item_texts(interactions, &data.items);
    let report = recommend::evaluate::run(&data, texts.as_deref(), protocol, &seeds, k.max(1))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `concierge classify`: one JSON verdict per line of stdin.
pub(super) fn classify(config: &Config) -> anyhow::Result<()> {
    // As the daemon decides: with the meaning judge when it is on.
    let classifier = super::block_on(app::load_classifier(config))?;
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let mut result = classifier.classify(line.trim());
        if let Some(judge) = classifier.meaning() {
            judge.decide(&mut result);
        }
        writeln!(out, "{}", serde_json::to_string(&result)?)?;
    }
    Ok(())
}

/// `concierge train intents [DATA…]`: the classifier, saved in the data directory.
pub(super) fn train_intents(
    config: &Config,
    data: Vec<PathBuf>,
    text_column: Option<String>,
    label_column: Option<String>,
) -> anyhow::Result<()> {
    let files = if data.is_empty() {
        intent::default_training_files(&config.escalation.intents_dir)?
    } else {
        data
    };
    let examples =
        intent::read_all_examples(&files, text_column.as_deref(), label_column.as_deref())?;
    anyhow::ensure!(!examples.is_empty(), "no labelled messages in {files:?}");
    let classifier = intent::Classifier::train(&examples, &intent::TrainOptions::default());
    let path = config.store.data_dir.join(intent::MODEL_FILE);
    classifier.model().save(&path)?;
    let report = serde_json::json!({
        "examples": examples.len(),
        "files": files,
        "model": path,
    });
    println!("{report}");
    Ok(())
}
