//! The intent classifier through the binary: `classify` prints one JSON
//! object per line with the promised keys, and `eval intents` meets the
//! escalation targets on the Bitext dev set by cross-validation (CI fails
//! below them), and messages written apart from the training data, in
//! English and Chinese (tests/data/intents-heldout*.csv), stay above a floor.

mod support;

use std::process::Command;

use support::{binary, run_with_stdin};

const DEV_SET: &str = "config/intents/bitext-customer-support.csv";

#[test]
fn classify_prints_one_labelled_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(binary());
    command
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["classify", "--format", "jsonl"]);
    let output = run_with_stdin(
        command,
        "I need to talk to a human agent\n\n我想知道运费是多少\n",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "blank lines are skipped");
    for line in &lines {
        let keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["text", "lang", "intent", "escalate", "confidence"]);
    }
    assert_eq!(lines[0]["intent"], "human_request");
    assert_eq!(lines[0]["escalate"], true);
    assert_eq!(lines[1]["lang"], "zh");
    assert_eq!(lines[1]["escalate"], false);
    // The trained model was saved for the next start.
    assert!(dir.path().join("intents.model").exists());
}

#[test]
fn escalation_meets_its_targets_on_the_dev_set_by_cross_validation() {
    let report = eval_intents(&[
        "--data",
        DEV_SET,
        "--text-column",
        "instruction",
        "--label-column",
        "intent",
    ]);
    println!("{report:#}");
    assert_eq!(report["folds"], 5);
    assert!(report["rows"].as_u64().unwrap() > 2900);
    let recall = report["escalation"]["recall"].as_f64().unwrap();
    let precision = report["escalation"]["precision"].as_f64().unwrap();
    assert!(recall >= 0.95, "escalation recall {recall} below 0.95");
    assert!(
        precision >= 0.90,
        "escalation precision {precision} below 0.90"
    );
    assert!(
        report["confusion"]["contact_human_agent"]["human_request"]
            .as_u64()
            .unwrap()
            > 90
    );
}

#[test]
fn a_bad_data_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.csv");
    std::fs::write(&file, "message,label\nhello,smalltalk\n").unwrap();
    let output = Command::new(binary())
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["eval", "intents", "--data"])
        .arg(&file)
        .args(["--text-column", "body"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no column named body"), "{stderr}");

    // An unquoted comma would shift the label: refused with its line.
    std::fs::write(
        &file,
        "text,intent\nhello,smalltalk\ngreat, thanks,smalltalk\n",
    )
    .unwrap();
    let output = Command::new(binary())
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["eval", "intents", "--folds", "0", "--data"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 3: 3 fields"), "{stderr}");
}

/// `concierge eval intents ARGS` in a fresh data directory: its JSON report.
fn eval_intents(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(binary())
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["eval", "intents"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Judges the model trained on the shipped data only on `file`.
fn judge(file: &str) -> serde_json::Value {
    eval_intents(&["--folds", "0", "--data", file])
}

#[test]
fn messages_unlike_the_training_data_are_still_mostly_right_in_both_languages() {
    // Floors, not targets: these sets are small and were written apart from
    // the training examples (README gives the measured figures, among them
    // an English recall of 0.64 on the second set).
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "tests/data/intents-heldout.csv",
        "tests/data/intents-heldout-b.csv",
    ] {
        let report = judge(file);
        println!("{file}: {report:#}");
        let recall = report["escalation"]["recall"].as_f64().unwrap();
        assert!(recall >= 0.70, "{file}: recall {recall}");
        let text = std::fs::read_to_string(file).unwrap();
        let (header, rows) = text.split_once('\n').unwrap();
        for (language, is_chinese) in [("en", false), ("zh", true)] {
            let subset: Vec<&str> = rows
                .lines()
                .filter(|row| {
                    row.chars()
                        .any(|ch| ('\u{4e00}'..='\u{9fff}').contains(&ch))
                        == is_chinese
                })
                .collect();
            let path = dir.path().join(format!("{language}.csv"));
            std::fs::write(&path, format!("{header}\n{}\n", subset.join("\n"))).unwrap();
            let report = judge(path.to_str().unwrap());
            let escalation = &report["escalation"];
            let precision = escalation["precision"].as_f64().unwrap();
            let recall = escalation["recall"].as_f64().unwrap();
            let accuracy = report["intent_accuracy"].as_f64().unwrap();
            assert!(
                precision >= 0.85,
                "{file} {language}: precision {precision}"
            );
            assert!(recall >= 0.55, "{file} {language}: recall {recall}");
            assert!(
                accuracy >= 0.65,
                "{file} {language}: intent accuracy {accuracy}"
            );
        }
    }
}
