//! The knowledge base: import of good and bad files, re-import, search in
//! English and Chinese, and grounded answers through the pipeline on the
//! scripted engine (passages in the prompt, the source named, an honest
//! "not found").

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use concierge::knowledge::{self, KnowledgeBase};
use concierge::store::Store;
use support::{harness, message, run_messages, settings};

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A small shop of our own, independent of the demo data.
fn sample_kb(dir: &Path) {
    write(
        dir,
        "en/returns.md",
        "# Returns\n\n## Time limit\nYou can return any item within 45 days of delivery.\n\n## Refunds\nWe refund the purchase price within 7 working days after the parcel reaches our warehouse.\n",
    );
    write(
        dir,
        "en/delivery.md",
        "# Delivery\n\n## Costs\nStandard delivery costs 3.90 and takes 2 to 4 working days. Orders above 50 ship free.\n",
    );
    write(
        dir,
        "zh/delivery.md",
        "# 配送\n\n## 运费\n标准配送运费 3.90，需要 2 到 4 个工作日。订单满 50 免运费。\n",
    );
    write(
        dir,
        "contact.txt",
        "Contact\n\nWrite to help@shop.example or call 0800 123 456, Monday to Friday.\n",
    );
    write(
        dir,
        "faq.csv",
        "question,answer\nDo you have a physical store?,\"No, we sell online only.\"\n是否提供礼品包装？,提供，每件 2 元。\n",
    );
}

#[test]
fn import_reports_bad_files_and_reimport_updates_and_removes() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    sample_kb(kb_dir.path());
    write(kb_dir.path(), "broken.md", "");
    std::fs::write(kb_dir.path().join("binary.txt"), [0u8, 159, 146, 150, 0, 1]).unwrap();
    write(kb_dir.path(), "bad.csv", "q,a\nx,y\n");
    write(
        kb_dir.path(),
        "rows.csv",
        "question,answer\nGood?,Yes.\n,no question\n",
    );
    write(kb_dir.path(), "image.png", "not imported");
    let store = Store::open(data.path()).unwrap();
    let roots = [kb_dir.path().to_path_buf()];

    let report = knowledge::import(&store, &roots).unwrap();
    assert_eq!(report.added, 7, "{report:?}");
    let failed: Vec<&str> = report
        .errors
        .iter()
        .map(|error| error.path.as_str())
        .collect();
    assert_eq!(report.errors.len(), 4, "{failed:?}");
    assert!(failed.iter().any(|path| path.ends_with("broken.md")));
    assert!(failed.iter().any(|path| path.ends_with("binary.txt")));
    assert!(failed.iter().any(|path| path.ends_with("bad.csv")));
    let row_error = report
        .errors
        .iter()
        .find(|error| error.path.ends_with("rows.csv"))
        .unwrap();
    assert_eq!(row_error.line, Some(3));
    assert!(report
        .skipped
        .iter()
        .any(|path| path.ends_with("image.png")));

    // Change one document, delete another, leave the rest.
    write(
        kb_dir.path(),
        "en/returns.md",
        "# Returns\n\nReturns are accepted within 60 days.\n",
    );
    std::fs::remove_file(kb_dir.path().join("contact.txt")).unwrap();
    let report = knowledge::import(&store, &roots).unwrap();
    assert_eq!(
        (report.added, report.updated, report.removed),
        (0, 1, 1),
        "{report:?}"
    );
    assert_eq!(report.unchanged, 5);
    assert!(store.kb_doc("contact.txt").unwrap().is_none());
    let returns = store.kb_doc("en/returns.md").unwrap().unwrap();
    assert!(returns.passages[0].text.contains("60 days"));

    // The derived index follows the store.
    let kb = KnowledgeBase::open(&store, &data.path().join("index")).unwrap();
    let hits = kb.search("return window days", 3).unwrap();
    assert_eq!(hits[0].doc, "en/returns.md");
    assert!(hits[0].passage.contains("60 days"));
}

#[test]
fn search_works_in_both_languages_with_typos_and_synonyms() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    sample_kb(kb_dir.path());
    let store = Store::open(data.path()).unwrap();
    knowledge::import(&store, &[kb_dir.path().to_path_buf()]).unwrap();
    let kb = KnowledgeBase::open(&store, &data.path().join("index")).unwrap();

    let top = |query: &str| kb.search(query, 3).unwrap()[0].doc.clone();
    assert_eq!(top("How much does shipping cost?"), "en/delivery.md");
    assert_eq!(top("how much is delivry"), "en/delivery.md", "typo");
    assert_eq!(
        top("when do I get my money back"),
        "en/returns.md",
        "phrase synonym"
    );
    assert_eq!(top("运费是多少"), "zh/delivery.md");
    assert_eq!(top("有礼品包装吗"), "faq.csv#2");

    let answered = kb.retrieve("How much does delivery cost?", 3).unwrap();
    assert!(answered.found());
    let unrelated = kb
        .retrieve("Can you recommend a good pizza recipe?", 3)
        .unwrap();
    assert!(!unrelated.found(), "coverage {}", unrelated.coverage);
    let faq = kb.retrieve("Do you have a physical store?", 3).unwrap();
    assert!(faq.faq_answer().is_some());
}

#[test]
fn an_abbreviation_the_shop_never_writes_finds_the_phrase_it_stands_for() {
    // The demo shop writes "American Express" only, and "take" in a dozen
    // passages about taking things back.
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo/kb");
    knowledge::import(&store, &[demo]).unwrap();
    let kb = KnowledgeBase::open(&store, &data.path().join("index")).unwrap();
    let hits = kb.search("Do you take Amex?", 3).unwrap();
    assert_eq!(hits[0].doc, "en/payment-methods.md", "{hits:?}");
    // "Take" a card is "accept" it: every word of the question is covered
    // (without it, half: too little to answer beside a weak likeness in
    // meaning).
    let retrieval = kb.retrieve("Do you take Amex?", 3).unwrap();
    assert!(retrieval.coverage > 0.99, "coverage {}", retrieval.coverage);
}

#[test]
fn the_index_is_rebuilt_when_it_is_lost() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    sample_kb(kb_dir.path());
    let store = Store::open(data.path()).unwrap();
    knowledge::import(&store, &[kb_dir.path().to_path_buf()]).unwrap();
    let index = data.path().join("index");
    let passages = KnowledgeBase::open(&store, &index).unwrap().passages();
    std::fs::remove_dir_all(&index).unwrap();
    std::fs::create_dir_all(&index).unwrap();
    std::fs::write(index.join("generation"), "1").unwrap();
    let kb = KnowledgeBase::open(&store, &index).unwrap();
    assert_eq!(kb.passages(), passages);
    drop(kb);
    // An index recorded under the same documents but another lexicon (the
    // marker of an older version) is rebuilt and recorded anew.
    let current = std::fs::read_to_string(index.join("generation")).unwrap();
    let (documents, _lexicon) = current.split_once(' ').unwrap();
    std::fs::write(index.join("generation"), documents).unwrap();
    let kb = KnowledgeBase::open(&store, &index).unwrap();
    assert_eq!(kb.passages(), passages);
    assert_eq!(
        std::fs::read_to_string(index.join("generation")).unwrap(),
        current
    );
}

fn grounded_harness(data: &Path, kb_dir: &Path, script: &str) -> support::Harness {
    sample_kb(kb_dir);
    let mut harness = harness(data, script, settings(2048, 256));
    knowledge::import(&harness.store, &[kb_dir.to_path_buf()]).unwrap();
    let kb = KnowledgeBase::open(&harness.store, &data.join("index")).unwrap();
    Arc::get_mut(&mut harness.pipeline).unwrap().knowledge = Some(Arc::new(kb));
    harness
}

#[tokio::test]
async fn answers_carry_passages_name_their_source_and_admit_ignorance() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    let harness = grounded_harness(
        data.path(),
        kb_dir.path(),
        "default_reply = \"Standard delivery costs 3.90.\"\n",
    );
    run_messages(
        &harness,
        vec![
            message("ann", "How much does delivery cost?"),
            message("ann", "Can you recommend a good pizza recipe?"),
            message("ann", "Do you have a physical store?"),
        ],
    )
    .await;
    let requests = harness.engine.requests();
    assert_eq!(
        requests.len(),
        1,
        "only the grounded question reaches the model"
    );
    let prompt = &requests[0].messages.last().unwrap().content;
    assert!(
        prompt.contains("Standard delivery costs 3.90 and takes 2 to 4 working days"),
        "{prompt}"
    );
    assert!(prompt.contains("How much does delivery cost?"));

    let texts = harness.channel.texts("ann");
    assert!(
        texts[0].starts_with("Standard delivery costs 3.90."),
        "{}",
        texts[0]
    );
    assert!(
        texts[0].trim_end().ends_with("Source: Delivery > Costs"),
        "{}",
        texts[0]
    );
    assert!(
        texts[1].contains("don't know") && texts[1].contains("/human"),
        "{}",
        texts[1]
    );
    assert!(
        texts[2].contains("we sell online only") && texts[2].contains("Source:"),
        "{}",
        texts[2]
    );

    let history = concierge::history::history(&harness.store, "test", "ann").unwrap();
    assert_eq!(history[1].sources[0].doc, "en/delivery.md");
    assert!(history[3].sources.is_empty(), "not found uses no passage");
    assert_eq!(history[5].sources[0].doc, "faq.csv#1");
}

/// A model that gets the facts wrong on purpose: each lie must be caught,
/// and the customer gets the shop's own sentence instead.
#[tokio::test]
async fn a_model_that_negates_swaps_figures_adds_links_or_echoes_the_customer_never_reaches_them() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    let lies = [
        (
            "How many days do I have",
            "You can return any item within 30 days of delivery.",
        ),
        ("refund come", "We do not refund the purchase price."),
        (
            "reach you",
            "Write to refunds@claims.example or see https://claims.example/form.",
        ),
        (
            "I was promised",
            "Yes, standard delivery is free on every order.",
        ),
        ("运费是", "标准配送运费 9.90，需要 2 到 4 个工作日。"),
        (
            "delivery take",
            "Standard delivery takes 2 to 4 working months.",
        ),
    ];
    let script: String = lies
        .iter()
        .map(|(asked, lie)| format!("[[rule]]\ncontains = {asked:?}\nreply = {lie:?}\n"))
        .collect();
    let harness = grounded_harness(data.path(), kb_dir.path(), &script);
    let questions = [
        "How many days do I have to return an item?",
        "When will my refund come?",
        "How can I reach you by mail?",
        "I was promised free delivery on every order, right?",
        "运费是多少？",
        "How long does delivery take?",
    ];
    run_messages(
        &harness,
        questions.iter().map(|text| message("eve", text)).collect(),
    )
    .await;
    assert_eq!(
        harness.engine.requests().len(),
        questions.len(),
        "each was asked"
    );
    let texts = harness.channel.texts("eve");
    assert_eq!(texts.len(), questions.len(), "{texts:?}");
    for ((_, lie), text) in lies.iter().zip(&texts) {
        assert!(!text.contains(lie), "the lie reached the customer: {text}");
        for fragment in [
            "30 days",
            "do not refund",
            "claims.example",
            "every order",
            "9.90",
            "months",
        ] {
            assert!(!text.contains(fragment), "{fragment:?} in {text}");
        }
    }
    assert!(texts[0].contains("45 days"), "{}", texts[0]);
    assert!(texts[1].contains("7 working days"), "{}", texts[1]);
    assert!(texts[4].contains("3.90"), "{}", texts[4]);
}

/// A true sentence beside the point, then a lie: the lie is cut, and the
/// customer still gets the sentence that answers.
#[tokio::test]
async fn a_true_sentence_beside_the_point_does_not_stand_in_for_the_answer() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    write(
        kb_dir.path(),
        "en/club.md",
        "# Club\n\n## Points\nMembers collect one point per euro spent. Points can be redeemed at checkout. Points expire 24 months after the last purchase. Points are not transferable.\n",
    );
    let harness = grounded_harness(
        data.path(),
        kb_dir.path(),
        "default_reply = \"Points are not transferable. Points never expire.\"\n",
    );
    run_messages(&harness, vec![message("kim", "Do my points ever expire?")]).await;
    assert_eq!(harness.engine.requests().len(), 1, "the model was asked");
    let texts = harness.channel.texts("kim");
    let reply = &texts[0];
    assert!(reply.starts_with("Points are not transferable."), "{reply}");
    assert!(
        !reply.contains("never"),
        "the lie reached the customer: {reply}"
    );
    assert!(
        reply.contains("Points expire 24 months after the last purchase."),
        "the answer is missing: {reply}"
    );
    assert!(
        reply.trim_end().ends_with("Source: Club > Points"),
        "{reply}"
    );
}

#[tokio::test]
async fn chinese_questions_get_chinese_sources_and_chinese_not_found() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    let harness = grounded_harness(
        data.path(),
        kb_dir.path(),
        "default_reply = \"运费 3.90。\"\n",
    );
    run_messages(
        &harness,
        vec![
            message("li", "运费是多少？"),
            message("li", "你们招聘软件工程师吗？"),
        ],
    )
    .await;
    let requests = harness.engine.requests();
    let prompt = &requests[0].messages.last().unwrap().content;
    assert!(prompt.contains("标准配送运费 3.90"), "{prompt}");
    let texts = harness.channel.texts("li");
    assert!(texts[0].contains("来源：配送 > 运费"), "{}", texts[0]);
    assert!(
        texts[1].contains("/human") && texts[1].contains("抱歉"),
        "{}",
        texts[1]
    );
}

#[test]
fn the_cli_imports_searches_and_evaluates() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    sample_kb(kb_dir.path());
    write(kb_dir.path(), "empty.md", "   ");
    let binary = support::binary();
    let run = |args: &[&str]| {
        Command::new(&binary)
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .env("CONCIERGE_KNOWLEDGE_DEMO", "false")
            .output()
            .unwrap()
    };
    let kb_path = kb_dir.path().to_str().unwrap();
    let output = run(&["import", "kb", kb_path]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a bad file makes the import fail"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["added"], 6);
    assert!(String::from_utf8_lossy(&output.stderr).contains("could not be imported"));

    let output = run(&["kb", "search", "delivery cost", "--k", "2"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let hits: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0]["doc"], "en/delivery.md");
    for key in ["doc", "title", "passage", "score"] {
        assert!(hits[0].get(key).is_some(), "{key}");
    }

    let questions = data.path().join("questions.csv");
    std::fs::write(
        &questions,
        "question,expected_doc\nhow much is shipping,en/delivery.md\n运费多少,zh/delivery.md\nwho won the football match,\n",
    )
    .unwrap();
    let output = run(&["eval", "retrieval", "--data", questions.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["hit@1"], 1.0);
    assert_eq!(report["hit@3"], 1.0);
    assert_eq!(report["mrr"], 1.0);
    assert_eq!(report["not_found_accuracy"], 1.0);
}

/// A page the shop wrote in one language only still answers a customer
/// writing in the other: its sentences quoted as written, introduced in the
/// customer's language, with no model text around them.
#[tokio::test]
async fn a_page_written_only_in_english_answers_a_chinese_question_in_a_chinese_frame() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    write(
        kb_dir.path(),
        "en/sizes.md",
        "# Size guide\n\n## Tops\nWomen's sizes by chest: S fits 82-88 cm, M fits 88-94 cm. Men's sizes run one size larger.\n",
    );
    let harness = grounded_harness(
        data.path(),
        kb_dir.path(),
        "default_reply = \"女款 S 码胸围 90-96 厘米。\"\n",
    );
    run_messages(
        &harness,
        vec![
            message("li", "女款S码的胸围是多少？"),
            message("li", "运费是多少？"),
        ],
    )
    .await;
    let texts = harness.channel.texts("li");
    assert!(
        texts[0].starts_with("这个问题我们只有英文版") && texts[0].contains("S fits 82-88 cm"),
        "{}",
        texts[0]
    );
    assert!(texts[0].contains("来源：Size guide > Tops"), "{}", texts[0]);
    assert!(!texts[0].contains("90-96"), "{}", texts[0]);
    // Where the shop wrote in Chinese, the Chinese page answers as before.
    assert!(texts[1].contains("来源：配送 > 运费"), "{}", texts[1]);
    assert_eq!(
        harness.engine.requests().len(),
        1,
        "the quote needs no model; the Chinese page's answer does"
    );
    let history = concierge::history::history(&harness.store, "test", "li").unwrap();
    assert_eq!(history[1].sources[0].doc, "en/sizes.md");
}

/// The reply to one Chinese `question`, with the sample pages and `pages`
/// (path, text) in the knowledge base and an engine that always writes
/// `model_reply`; it must be the frame of a page written only in English.
async fn english_only_answer(pages: &[(&str, &str)], model_reply: &str, question: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    for (name, text) in pages {
        write(kb_dir.path(), name, text);
    }
    let harness = grounded_harness(
        data.path(),
        kb_dir.path(),
        &format!("default_reply = {model_reply:?}\n"),
    );
    run_messages(&harness, vec![message("li", question)]).await;
    let reply = harness.channel.texts("li").remove(0);
    assert!(reply.starts_with("这个问题我们只有英文版"), "{reply}");
    reply
}

/// A Chinese page that names the topic in passing (the club's points, on a
/// page about closing an account) does not stand in for the English page
/// that answers: the page holding more of the question wins.
#[tokio::test]
async fn a_page_in_the_customers_language_that_only_names_the_topic_gives_way() {
    let reply = english_only_answer(
        &[
            (
                "en/club.md",
                "# Trail Club\n\n## Points\nYou earn 1 point per euro. Points expire 24 months after your last purchase.\n",
            ),
            (
                "zh/account.md",
                "# 账户\n\n## 注销账户\n注销账户后，数据会在 30 天内删除，未使用的 Trail Club 积分也会作废。\n",
            ),
        ],
        "积分永不过期。",
        "Trail Club 的积分多久会过期？",
    )
    .await;
    assert!(reply.contains("24 months"), "{reply}");
    assert!(!reply.contains("永不过期"), "{reply}");
}

/// A Chinese sentence that shares one word with the question (how long a
/// student status is valid) does not answer how long a gift card is valid,
/// when an English sentence holds both.
#[tokio::test]
async fn a_sentence_sharing_one_word_gives_way_to_one_holding_the_whole_question() {
    let reply = english_only_answer(
        &[
            (
                "en/gift-cards.md",
                "# Gift cards\n\n## Validity\nA gift card is valid for 3 years from the date of purchase.\n",
            ),
            (
                "zh/students.md",
                "# 学生优惠\n\n## 使用条件\n学生身份认证有效期为12个月，到期后可以重新认证。学生优惠不能用于购买礼品卡。\n",
            ),
        ],
        "有效期为12个月。",
        "礼品卡有效期多久",
    )
    .await;
    assert!(reply.contains("3 years"), "{reply}");
    assert!(!reply.contains("12个月"), "{reply}");
}

/// A name Chinese writes in its own words (微信 for WeChat) finds the
/// English page that names it.
#[tokio::test]
async fn a_brand_named_in_chinese_finds_the_english_page_naming_it() {
    let reply = english_only_answer(
        &[(
            "en/payment.md",
            "# Payment\n\n## Wallets\nWe accept PayPal and Alipay at checkout. WeChat Pay is not available yet.\n",
        )],
        "可以。",
        "支持微信吗？",
    )
    .await;
    assert!(reply.contains("WeChat Pay is not available"), "{reply}");
}

/// The CI floor for the adversarial engine on the held-out half of the demo
/// evaluation: whatever it writes (negated facts, changed figures, foreign
/// links, the question echoed), every sentence a customer sees is the shop's
/// own, and the answer rates stay above the floor.
#[test]
fn on_the_demo_evaluation_no_lie_of_the_adversarial_engine_reaches_a_customer() {
    let (report, outcomes) = support::eval_demo_answers(
        "even",
        &[
            ("CONCIERGE_ENGINE_BACKEND", "scripted"),
            (
                "CONCIERGE_ENGINE_SCRIPT_FILE",
                "config/demo/eval/adversary.toml",
            ),
        ],
    );
    assert_eq!(
        outcomes.len(),
        report["questions"].as_u64().unwrap() as usize
    );
    // The shop's own sentences: the demo's passages and titles.
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let kb = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo/kb");
    knowledge::import(&store, &[kb]).unwrap();
    let squeeze = |text: &str| -> String { text.split_whitespace().collect() };
    let shop: Vec<String> = store
        .kb_docs()
        .unwrap()
        .iter()
        .flat_map(|doc| &doc.passages)
        .flat_map(|passage| [squeeze(&passage.title), squeeze(&passage.text)])
        .collect();
    let prompts =
        concierge::prompts::Prompts::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts"))
            .unwrap();
    for outcome in &outcomes {
        let reply = outcome["reply"].as_str().unwrap();
        let said = reply
            .rsplit_once("\n\n")
            .map_or(reply, |(answer, _source)| answer);
        let is_template = concierge::prompts::Locale::ALL.iter().any(|&locale| {
            [
                concierge::prompts::Template::NotFound,
                concierge::prompts::Template::Greeting,
                concierge::prompts::Template::Thanks,
            ]
            .iter()
            .any(|&template| prompts.text(locale, template).trim() == reply.trim())
        });
        if is_template {
            continue;
        }
        // A page only the other language has is quoted after an
        // introduction in the customer's language: the quote is checked.
        let said = concierge::prompts::Locale::ALL
            .iter()
            .find_map(|&locale| {
                let template =
                    prompts.text(locale, concierge::prompts::Template::OtherLanguageAnswer);
                let introduction = template.split("{answer}").next().unwrap_or("").trim();
                said.trim().strip_prefix(introduction)
            })
            .unwrap_or(said);
        // The customer's language where the shop wrote in it: never the
        // same fact again in the other language beside it.
        let han = |text: &str| {
            text.chars()
                .any(|ch| ('\u{4E00}'..='\u{9FFF}').contains(&ch))
        };
        let parts = concierge::knowledge::answer::sentences(said);
        assert!(
            !(parts.iter().any(|part| han(part)) && parts.iter().any(|part| !han(part))),
            "a reply in two languages: {outcome}"
        );
        let mut shown = std::collections::HashSet::new();
        for sentence in concierge::knowledge::answer::sentences(said) {
            let sentence = squeeze(sentence);
            assert!(
                shop.iter().any(|text| text.contains(&sentence)),
                "not the shop's words: {sentence:?} in {outcome}"
            );
            // The model's restatement and the quote after it never say
            // the same sentence twice.
            assert!(
                shown.insert(sentence.clone()),
                "said twice: {sentence:?} in {outcome}"
            );
        }
    }
    let share = |key: &str| report[key].as_f64().unwrap();
    // Measured 0.911 correct, 0.05 invented on these rows (README); the
    // floor leaves room for the timing of the first-text deadline.
    assert!(share("correct") >= 0.89, "{report}");
    assert!(share("invented") <= 0.15, "{report}");
}

/// The CI floor on a shop the tuning never saw whose help centre is in
/// English only (tests/data/shops/harbor-bank, held out): its Chinese
/// questions are answered by meaning, quoting the English pages.
#[test]
fn chinese_questions_to_an_english_only_shop_are_answered_by_meaning() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .current_dir(repo)
        .args(["tests/data/shops/eval", "harbor-bank", "english-only"])
        .env("CONCIERGE_BIN", support::binary())
        .env("CONCIERGE_ENGINE_BACKEND", "scripted")
        .env(
            "CONCIERGE_ENGINE_SCRIPT_FILE",
            "config/demo/eval/adversary.toml",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "eval failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let chinese = |key: &str| report["zh"][key].as_f64().unwrap();
    // Measured 0.292 correct, 0.063 wrong and no invented answer (README);
    // without answering by meaning, 0.083 correct.
    assert!(chinese("correct") >= 0.25, "{report}");
    assert!(chinese("wrong") <= 0.15, "{report}");
    assert!(chinese("invented") <= 0.1, "{report}");
}

#[tokio::test]
async fn praise_is_thanked_for_in_both_languages_and_questions_still_get_not_found() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    let mut harness = grounded_harness(data.path(), kb_dir.path(), "default_reply = \"x\"\n");
    let classifier = concierge::intent::load_or_train(
        data.path(),
        Path::new(concierge::intent::DEFAULT_DATA_DIR),
    )
    .unwrap();
    Arc::get_mut(&mut harness.pipeline).unwrap().classifier = Some(Arc::new(classifier));
    run_messages(
        &harness,
        vec![
            message("ann", "The rider was lovely and the pizza was delicious!"),
            message(
                "ann",
                "Delivery was quick, the costs were fair, great service",
            ),
            message("ann", "Can you recommend a good pizza recipe?"),
            message("li", "送餐小哥很贴心，菜也很好吃，超级赞！"),
        ],
    )
    .await;
    let english = harness.channel.texts("ann");
    assert!(english[0].contains("kind words"), "{}", english[0]);
    // Praise that names what the documents cover gets no passage either.
    assert!(english[1].contains("kind words"), "{}", english[1]);
    assert!(english[2].contains("/human"), "{}", english[2]);
    let chinese = harness.channel.texts("li");
    assert!(chinese[0].contains("好评"), "{}", chinese[0]);
    assert!(
        harness.engine.requests().is_empty(),
        "no model call for praise"
    );
}

#[tokio::test]
async fn greetings_and_thanks_of_any_wording_get_the_templates_and_no_passage() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    let harness = grounded_harness(data.path(), kb_dir.path(), "default_reply = \"x\"\n");
    run_messages(
        &harness,
        vec![
            message("ann", "hello again"),
            message("ann", "Good morning!"),
            message("ann", "thanks a lot!"),
            message("li", "早上好"),
            message("li", "非常感谢，辛苦了"),
        ],
    )
    .await;
    let prompts = concierge::prompts::Prompts::built_in();
    let text = |locale, template| prompts.text(locale, template).trim().to_string();
    use concierge::prompts::{Locale, Template};
    assert_eq!(
        harness.channel.texts("ann"),
        [
            text(Locale::En, Template::Greeting),
            text(Locale::En, Template::Greeting),
            text(Locale::En, Template::Thanks),
        ]
    );
    assert_eq!(
        harness.channel.texts("li"),
        [
            text(Locale::Zh, Template::Greeting),
            text(Locale::Zh, Template::Thanks),
        ]
    );
    assert!(harness.engine.requests().is_empty(), "no model call");
}

#[tokio::test]
async fn asking_whether_the_shop_has_a_thing_it_never_writes_about_is_not_answered_with_its_neighbours(
) {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    write(
        kb_dir.path(),
        "en/payment.md",
        "# Payment\n\n## Cards\nWe accept Visa, Mastercard and American Express credit cards. The card is charged when the order ships.\n",
    );
    write(
        kb_dir.path(),
        "zh/payment.md",
        "# 支付\n\n## 信用卡\n我们接受 Visa、Mastercard 和美国运通信用卡。订单发货时扣款。\n",
    );
    let harness = grounded_harness(
        data.path(),
        kb_dir.path(),
        "default_reply = \"We accept Visa, Mastercard and American Express credit cards.\"\n",
    );
    run_messages(
        &harness,
        vec![
            message("lee", "Is there a store credit card with cashback?"),
            message("lee", "Do you take credit cards?"),
            message("mei", "有没有返现的联名信用卡？"),
        ],
    )
    .await;
    let english = harness.channel.texts("lee");
    assert!(english[0].contains("don't know"), "{}", english[0]);
    assert!(english[1].contains("American Express"), "{}", english[1]);
    let chinese = harness.channel.texts("mei");
    assert!(chinese[0].contains("不知道"), "{}", chinese[0]);
}

#[tokio::test]
async fn asking_where_an_order_is_gets_how_to_track_it_in_either_language() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    write(
        kb_dir.path(),
        "en/tracking.md",
        "# Your order\n\n## Tracking\nOnce your order ships, we email you a tracking link for the carrier's site.\n\n\
         ## Orders in several parcels\nLarge orders sometimes come in two parcels, each with its own box. You never pay extra for a split order.\n",
    );
    write(
        kb_dir.path(),
        "zh/tracking.md",
        "# 您的订单\n\n## 追踪\n订单发货后，我们会发邮件给您，附上承运商的追踪链接。\n\n\
         ## 分开寄送\n大订单有时分成两个包裹寄出，不另收运费。\n",
    );
    let harness = grounded_harness(data.path(), kb_dir.path(), "default_reply = \"-\"\n");
    run_messages(
        &harness,
        vec![
            message("lee", "where is my order?"),
            message("mei", "我的包裹到哪了？"),
        ],
    )
    .await;
    let english = harness.channel.texts("lee");
    assert!(english[0].contains("tracking link"), "{}", english[0]);
    let chinese = harness.channel.texts("mei");
    assert!(chinese[0].contains("追踪链接"), "{}", chinese[0]);
}

/// A question about a shop in the street finds the answer saying the shop
/// sells online (the sample's English FAQ), rather than "not found".
#[tokio::test]
async fn asking_for_a_physical_store_finds_that_the_shop_sells_online() {
    let data = tempfile::tempdir().unwrap();
    let kb_dir = tempfile::tempdir().unwrap();
    let harness = grounded_harness(data.path(), kb_dir.path(), "default_reply = \"有的。\"\n");
    run_messages(&harness, vec![message("li", "你们有门店吗？")]).await;
    let reply = harness.channel.texts("li").remove(0);
    assert!(reply.contains("online only"), "{reply}");
}
