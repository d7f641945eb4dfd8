//! Catalog and event import through the command line, and events pushed to
//! the daemon's operator API surviving `kill -9`.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use concierge::store::{EventKind, Store};
use support::{binary, free_port, http_post, scripted_config, wait_ready};

fn concierge(data: &Path) -> Command {
    let mut command = Command::new(binary());
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("--data-dir")
        .arg(data);
    command
}

#[test]
fn the_demo_catalog_imports_and_bad_rows_are_reported_by_line() {
    let data = tempfile::tempdir().unwrap();
    let report = support::json_report(concierge(data.path()).args([
        "import",
        "catalog",
        "config/demo/catalog.csv",
    ]));
    assert_eq!(report["added"], 150);
    // Importing again updates, never duplicates.
    let output = concierge(data.path())
        .args(["import", "catalog", "config/demo/catalog.csv"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (report["added"].as_u64(), report["updated"].as_u64()),
        (Some(0), Some(150))
    );

    let events = data.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"user\":\"u1\",\"item\":\"NW-1001\",\"kind\":\"view\",\"timestamp\":1700000000}\n\
         {\"user\":\"u1\",\"item\":\"NW-1002\",\"kind\":\"sneeze\"}\n\
         {\"user\":\"u2\",\"item\":\"NW-1001\",\"kind\":\"purchase\",\"timestamp\":\"2024-01-02T03:04:05Z\"}\n",
    )
    .unwrap();
    let output = concierge(data.path())
        .args(["import", "events"])
        .arg(&events)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "a bad row fails the command");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["added"], 2);
    assert_eq!(report["errors"][0]["line"], 2);
    let store = Store::open(data.path()).unwrap();
    assert_eq!(store.catalog_items().unwrap().len(), 150);
    assert_eq!(
        store.user_events("u2").unwrap()[0].kind,
        EventKind::Purchase
    );
}

#[test]
fn acknowledged_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = scripted_config(dir.path(), "default_reply = \"ok\"\n", port);
    let mut daemon = Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("CONCIERGE_OPERATOR_TOKEN", "events-token")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(port);
    let batch = r#"[{"user":"shopper","item":"NW-1001","kind":"cart"},{"user":"shopper","item":"NW-1003","kind":"rating","value":4}]"#;
    let (status, _) = http_post(port, "/v1/events", None, batch).unwrap();
    assert_eq!(status, 401, "events need the token");
    let bad =
        r#"[{"user":"shopper","item":"NW-1001","kind":"cart"},{"user":"shopper","kind":"view"}]"#;
    let (status, body) = http_post(port, "/v1/events", Some("events-token"), bad).unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("missing item"), "{body}");
    let (status, body) = http_post(port, "/v1/events", Some("events-token"), batch).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"accepted\":2"), "{body}");
    // A batch with event ids, retried: the retry stores nothing twice.
    let with_ids = r#"[{"id":"ord-1","user":"shopper","item":"NW-1002","kind":"purchase"},{"id":"ord-2","user":"shopper","item":"NW-1004","kind":"view"}]"#;
    let (status, body) = http_post(port, "/v1/events", Some("events-token"), with_ids).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"duplicates\":0"), "{body}");
    let (status, body) = http_post(port, "/v1/events", Some("events-token"), with_ids).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"duplicates\":2"), "{body}");
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    let store = Store::open(&dir.path().join("data")).unwrap();
    let events = store.user_events("shopper").unwrap();
    assert_eq!(
        events.len(),
        4,
        "the rejected batch stored nothing, the accepted ones everything, the retry nothing"
    );
    assert_eq!(events[1].value, Some(4.0));
}

#[test]
fn recommend_prints_catalog_items_and_follows_new_events_at_once() {
    let data = tempfile::tempdir().unwrap();
    let events = data.path().join("events.csv");
    // Customers who buy the road shoes (NW-1001) also buy NW-1101.
    let mut rows = String::from("user,item,kind,timestamp\n");
    for user in 0..15 {
        rows.push_str(&format!(
            "c{user},NW-1001,purchase,1700000000\nc{user},NW-1101,purchase,1700000100\n"
        ));
    }
    rows.push_str("me,NW-1001,purchase,1700000200\n");
    std::fs::write(&events, rows).unwrap();
    let output = concierge(data.path())
        .args(["import", "events"])
        .arg(&events)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let recommend = |extra: &[&str]| -> Vec<serde_json::Value> {
        let output = concierge(data.path())
            .args(["recommend", "--user", "me", "--k", "5"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let picks = recommend(&[]);
    assert_eq!(picks.len(), 5);
    assert_eq!(picks[0]["item"], "NW-1101", "{picks:?}");
    assert_eq!(picks[0]["because_of"], "Northwind Tempo Road Runner Men");
    for key in ["title", "price", "currency", "url", "score", "signals"] {
        assert!(picks[0].get(key).is_some(), "{key}");
    }
    assert!(
        picks.iter().all(|pick| pick["item"] != "NW-1001"),
        "already bought"
    );

    // A dislike is visible to the very next query.
    std::fs::write(&events, "user,item,kind\nme,NW-1101,dislike\n").unwrap();
    concierge(data.path())
        .args(["import", "events"])
        .arg(&events)
        .output()
        .unwrap();
    let picks = recommend(&[]);
    assert!(
        picks.iter().all(|pick| pick["item"] != "NW-1101"),
        "{picks:?}"
    );

    let picks = recommend(&["--query", "running shoes under 100"]);
    assert!(!picks.is_empty());
    for pick in &picks {
        assert!(pick["price"].as_f64().unwrap() <= 100.0, "{pick}");
    }
}

#[tokio::test]
async fn chat_recommendations_show_catalog_facts_and_a_dislike_sticks() {
    use support::{choice, message, run_messages};

    let data = tempfile::tempdir().unwrap();
    // The scripted model invents a price in every reason: it must not show.
    let harness = with_demo_catalog(
        data.path(),
        "default_reply = \"A bargain at only 1.99 EUR from cheapshoes.example!\"\n",
    );

    run_messages(
        &harness,
        vec![
            message(
                "eve",
                "Is the Northwind Tempo Road Runner Men good for a marathon?",
            ),
            message("eve", "Can you recommend running shoes under 100?"),
        ],
    )
    .await;
    let first: Vec<_> = harness.channel.delivered.lock().unwrap()[1..].to_vec();
    let before = first.len() + 1;
    let items: Vec<_> = first
        .iter()
        .filter(|delivered| !delivered.choices.is_empty())
        .collect();
    assert!((3..=5).contains(&items.len()), "{first:?}");
    for delivered in &items {
        let id = delivered.choices[1]
            .id
            .strip_prefix("rec:dislike:")
            .unwrap();
        let item = harness.store.catalog_item(id).unwrap().unwrap();
        assert!(delivered.text.contains(&item.title));
        assert!(delivered
            .text
            .contains(&format!("{:.2} EUR", item.price.unwrap())));
        assert!(item.price.unwrap() <= 100.0);
        assert!(delivered.text.contains(&item.url));
        assert!(
            !delivered.text.contains("1.99") && !delivered.text.contains("cheapshoes"),
            "{}",
            delivered.text
        );
        let labels: Vec<&str> = delivered.choices.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["👍", "👎", "details"]);
    }
    let disliked = items[0].choices[1].id.clone();
    let disliked_item = disliked.strip_prefix("rec:dislike:").unwrap().to_string();

    run_messages(
        &harness,
        vec![
            choice("eve", &disliked),
            message("eve", "/recommend running shoes under 100"),
        ],
    )
    .await;
    let all = harness.channel.delivered.lock().unwrap().clone();
    let after: Vec<_> = all[before..].to_vec();
    assert!(after[0].text.contains("won't suggest"), "{}", after[0].text);
    let shown: Vec<String> = after
        .iter()
        .filter(|delivered| !delivered.choices.is_empty())
        .map(|delivered| delivered.choices[0].id.clone())
        .collect();
    assert!(!shown.is_empty());
    assert!(
        shown.iter().all(|id| !id.ends_with(&disliked_item)),
        "{shown:?}"
    );
    let customer = harness.store.find_customer("test", "eve").unwrap().unwrap();
    let events = harness
        .store
        .user_events(&concierge::pipeline::event_user(&customer))
        .unwrap();
    let kinds: Vec<(EventKind, &str)> = events
        .iter()
        .map(|event| (event.kind, event.item.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::View, "NW-1001"),
            (EventKind::Dislike, disliked_item.as_str())
        ],
        "naming an item is a view; the 👎 is stored"
    );
}

/// A pipeline with the scripted engine of `script` and the demo catalog
/// behind its recommender.
fn with_demo_catalog(data: &Path, script: &str) -> support::Harness {
    use std::sync::Arc;

    use concierge::recommend::ranker::{Ranker, SharedRanker};

    let mut harness = support::harness(data, script, support::settings(2048, 256));
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo/catalog.csv");
    concierge::recommend::import::catalog(&harness.store, &catalog).unwrap();
    let ranker = Ranker::build(harness.store.catalog_items().unwrap(), &[]).unwrap();
    Arc::get_mut(&mut harness.pipeline).unwrap().recommender =
        Some(Arc::new(SharedRanker::new(ranker)));
    harness
}

/// A model's reason that copies the item's description, cut off by the
/// token limit, or that names none of the attributes asked for, is not
/// shown: the reason names what matched instead.
#[tokio::test]
async fn a_copied_or_cut_short_description_is_no_reason() {
    use support::{message, run_messages};

    for written in [
        // Cut off by the token limit.
        "Northwind Stormline 3L Jacket Men. Three-layer waterproof shell with 20,000 mm hydrostatic head, pit zips and a helmet-compatible hood. Weighs 395",
        // A finished sentence of the item's data that names nothing asked for.
        "The Northwind Stormline 3L Jacket Men weighs 395 g.",
    ] {
        let data = tempfile::tempdir().unwrap();
        let harness = with_demo_catalog(data.path(), &format!("default_reply = \"{written}\"\n"));
        run_messages(
            &harness,
            vec![message("ada", "recommend me a waterproof shell jacket for hiking")],
        )
        .await;
        let delivered = harness.channel.delivered.lock().unwrap().clone();
        let stormline = delivered
            .iter()
            .find(|shown| shown.text.contains("Stormline 3L Jacket Men"))
            .unwrap_or_else(|| panic!("the Stormline jacket is picked: {delivered:?}"));
        let reason = stormline.text.lines().last().unwrap();
        assert!(
            reason.starts_with("Matches what you asked for: "),
            "{written}: {reason}"
        );
    }
}

/// Reasons name the item's own attributes in whole words and in the
/// customer's language, never pieces of the request; a Chinese request
/// finds items by their Chinese words and shows their Chinese titles.
#[tokio::test]
async fn reasons_name_the_matching_attributes_in_the_customers_language() {
    use std::sync::Arc;

    use concierge::recommend::ranker::{Ranker, SharedRanker};
    use support::{harness, message, run_messages, settings};

    let data = tempfile::tempdir().unwrap();
    // A model whose reasons lean on the customer's words only.
    let mut harness = harness(
        data.path(),
        "default_reply = \"Perfect for what you asked: {last_user}\"\n",
        settings(2048, 256),
    );
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo/catalog.csv");
    concierge::recommend::import::catalog(&harness.store, &catalog).unwrap();
    let ranker = Ranker::build(harness.store.catalog_items().unwrap(), &[]).unwrap();
    let intents = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/intents");
    let classifier = concierge::intent::load_or_train(data.path(), &intents).unwrap();
    let pipeline = Arc::get_mut(&mut harness.pipeline).unwrap();
    pipeline.recommender = Some(Arc::new(SharedRanker::new(ranker)));
    pipeline.classifier = Some(Arc::new(classifier));
    run_messages(
        &harness,
        vec![
            message(
                "ada",
                "I am looking for a warm jacket for hiking, what do you have?",
            ),
            message("li", "我想买一个适合徒步的背包"),
        ],
    )
    .await;
    let delivered = harness.channel.delivered.lock().unwrap().clone();
    let items_for = |user: &str| -> Vec<(concierge::store::CatalogItem, String)> {
        delivered
            .iter()
            .filter(|shown| shown.chat_id == user && !shown.choices.is_empty())
            .map(|shown| {
                let id = shown.choices[0].id.rsplit(':').next().unwrap();
                (
                    harness.store.catalog_item(id).unwrap().unwrap(),
                    shown.text.clone(),
                )
            })
            .collect()
    };
    let english = items_for("ada");
    assert!(!english.is_empty(), "{delivered:?}");
    for (item, text) in &english {
        let reason = text.lines().last().unwrap();
        assert!(!reason.contains("asked:"), "the model's echo: {reason}");
        let named = reason
            .strip_prefix("Matches what you asked for: ")
            .and_then(|rest| rest.strip_suffix('.'))
            .unwrap_or_else(|| panic!("a matching reason: {reason}"));
        let attributes: Vec<String> = std::iter::once(item.category.replace('-', " "))
            .chain(item.tags.iter().map(|tag| tag.replace('-', " ")))
            .collect();
        for part in named.split(", ") {
            assert!(
                attributes.iter().any(|a| a == part),
                "{part:?} is not an attribute of {}: {attributes:?}",
                item.id
            );
        }
    }
    let chinese = items_for("li");
    assert!(!chinese.is_empty(), "{delivered:?}");
    for (item, text) in &chinese {
        assert!(text.contains(&item.title_zh), "{text}");
        assert!(
            item.tags_zh
                .iter()
                .any(|tag| tag.contains("背包") || tag.contains("徒步"))
                || item.title_zh.contains("背包"),
            "{}: {:?}",
            item.id,
            item.tags_zh
        );
        let reason = text.lines().last().unwrap();
        let named = reason
            .strip_prefix("符合您的要求：")
            .and_then(|rest| rest.strip_suffix('。'))
            .unwrap_or_else(|| panic!("a matching reason in Chinese: {reason}"));
        for part in named.split('、') {
            assert!(
                item.tags_zh.iter().any(|tag| tag == part),
                "{part:?} is not a Chinese tag of {}",
                item.id
            );
        }
    }
}

#[test]
fn the_eval_command_beats_popularity_on_synthetic_tastes() {
    // 300 customers in 10 taste groups of 40 items; each customer touches 20
    // items, mostly of their group, plus a few of a popular set everyone sees.
    let dir = tempfile::tempdir().unwrap();
    let mut state: u64 = 12345;
    let mut next = |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    let mut rows = String::from("user,item,timestamp,rating\n");
    for user in 0..300u64 {
        let group = user % 10;
        let mut seen = std::collections::HashSet::new();
        let mut time = 0;
        while seen.len() < 20 {
            let item = if next(5) == 0 {
                400 + next(10)
            } else {
                group * 40 + next(40)
            };
            if seen.insert(item) {
                time += 1;
                rows.push_str(&format!("u{user},i{item},{time},5\n"));
            }
        }
    }
    let file = dir.path().join("interactions.csv");
    std::fs::write(&file, rows).unwrap();
    for protocol in ["full", "loo-100"] {
        let report = support::json_report(
            Command::new(binary())
                .args(["recommend", "eval", "--interactions"])
                .arg(&file)
                .args(["--protocol", protocol, "--seed", "1"]),
        );
        for metric in ["ndcg@10", "recall@10", "hr@10", "mrr@10"] {
            let ours = report["ours"][metric].as_f64().unwrap();
            let popularity = report["popularity"][metric].as_f64().unwrap();
            assert!(
                ours > popularity,
                "{protocol} {metric}: ours {ours} vs popularity {popularity}"
            );
        }
    }
}
