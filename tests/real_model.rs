//! Smoke tests on the real default model (SmolLM2-135M-Instruct through
//! mistral.rs, converted to Q8_0). The model is fetched by `models/fetch` on
//! first use, as `concierge chat` does for a new user.

// The chat tests need the console channel; builds without it skip them.
#![cfg_attr(not(feature = "console"), allow(unused_imports))]

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use concierge::config::Config;
use concierge::engine::mistral::MistralEngine;
use concierge::engine::Llm;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fetches and converts once per test process.
fn prepared_model() -> PathBuf {
    static PREPARED: OnceLock<PathBuf> = OnceLock::new();
    PREPARED
        .get_or_init(|| {
            let mut config = Config::defaults().engine;
            config.model_path = repo().join(&config.model_path);
            std::env::set_current_dir(repo()).unwrap();
            concierge::models::prepare(&config).expect("the default model is fetched and converted")
        })
        .clone()
}

#[test]
#[cfg(feature = "console")]
fn piped_chat_streams_answers_in_english_and_chinese_and_history_has_both_turns() {
    prepared_model();
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(support::binary())
        .current_dir(repo())
        .args(["--data-dir"])
        .arg(data.path())
        .args(["chat", "--user", "smoke"])
        // Without a knowledge base every reply streams from the model;
        // grounded answers are checked before they are shown (tested below).
        .env("CONCIERGE_KNOWLEDGE_DEMO", "false")
        .env("CONCIERGE_ENGINE_MAX_TOKENS", "48")
        .env("CONCIERGE_ENGINE_TEMPERATURE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("How long does delivery usually take?\n你好，请问怎么退货？\n".as_bytes())
        .unwrap();
    // Count the separate reads: a streamed reply arrives in many pieces.
    let mut stdout = child.stdout.take().unwrap();
    let mut output = Vec::new();
    let mut reads = 0;
    let mut buffer = [0u8; 4096];
    loop {
        let read = stdout.read(&mut buffer).unwrap();
        if read == 0 {
            break;
        }
        reads += 1;
        output.extend_from_slice(&buffer[..read]);
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    let text = String::from_utf8_lossy(&output);
    assert!(!text.trim().is_empty(), "no answer; stderr: {stderr}");
    assert!(
        reads >= 4,
        "the reply was not streamed ({reads} reads): {text}"
    );

    let output = Command::new(support::binary())
        .current_dir(repo())
        .arg("--data-dir")
        .arg(data.path())
        .args(["history", "--user", "smoke"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["text"], "How long does delivery usually take?");
    assert_eq!(lines[2]["text"], "你好，请问怎么退货？");
    for reply in [&lines[1], &lines[3]] {
        assert_eq!(reply["role"], "assistant");
        assert!(!reply["text"].as_str().unwrap().trim().is_empty());
    }
}

#[test]
#[cfg(feature = "console")]
fn a_demo_shop_question_is_answered_with_the_fact_from_its_document() {
    prepared_model();
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(support::binary());
    command
        .current_dir(repo())
        .arg("--data-dir")
        .arg(data.path())
        .args(["chat", "--user", "facts"])
        .env("CONCIERGE_ENGINE_MAX_TOKENS", "64");
    let output = support::run_with_stdin(command, "How many days do I have to return an item?\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer = String::from_utf8_lossy(&output.stdout);
    // config/demo/kb/en/returns.md and the FAQ: "30 days from the delivery date".
    assert!(answer.contains("30 days"), "{answer}");
    let source = answer.split("Source: ").nth(1).unwrap_or_default();
    assert!(source.to_lowercase().contains("return"), "{answer}");
}

/// The model as the escalation tie-breaker: on the CPU engine its reply is
/// held to yes or no, so every message in the uncertain band gets a verdict.
#[test]
fn the_tie_breaking_model_answers_every_message_in_the_band() {
    prepared_model();
    let data = tempfile::tempdir().unwrap();
    let messages = data.path().join("messages.csv");
    std::fs::write(
        &messages,
        "text,intent\n\
         \"The parcel came a day late, not the end of the world\",other\n\
         \"Honestly, not great\",complaint\n\
         the box was dented but the shoes are fine,other\n\
         why is my refund taking so long,complaint\n\
         This is the second time my order is late,complaint\n\
         \"Nice jacket, wish it came in green\",other\n\
         你们的快递有点慢,complaint\n\
         东西还行吧，就是有点贵,other\n\
         客服能不能快点回复,complaint\n",
    )
    .unwrap();
    let report = support::json_report(
        Command::new(support::binary())
            .current_dir(repo())
            .arg("--data-dir")
            .arg(data.path())
            .args(["eval", "intents", "--folds", "0", "--tiebreak", "--data"])
            .arg(&messages)
            // The engine that scores labels (a GPU build's default is mistral.rs).
            .env("CONCIERGE_ENGINE_BACKEND", "cpu"),
    );
    let tiebreak = &report["tiebreak"];
    let asked = tiebreak["asked"].as_u64().unwrap();
    assert!(asked > 0, "{tiebreak}");
    assert_eq!(tiebreak["answered"].as_u64(), Some(asked), "{tiebreak}");
}

#[tokio::test]
async fn our_tokenizer_counts_like_the_engine() {
    let path = prepared_model();
    let engine = MistralEngine::load(&path, &Config::defaults().engine)
        .await
        .unwrap();
    for text in [
        "Hello, world!",
        "Where is my order #12345? It was due on Monday.",
        "我想退货，请问需要多长时间？",
        "  spaces\tand\nnewlines  ",
    ] {
        let ours = engine.count_tokens(text);
        let engines = engine.engine_token_count(text).await.unwrap();
        assert_eq!(ours, engines, "token count of {text:?}");
    }
}

/// A top-2 margin of the exact logits below which a position is always
/// taken for a tie that rounding may decide either way.
const TIE_MARGIN: f32 = 0.05;

/// Eight customer messages in English and Chinese, each with a plausible
/// reply to teacher-force after the prompt.
const TEACHER_FORCED: [(&str, &str); 8] = [
    (
        "How long does delivery usually take?",
        "Delivery usually takes three to five working days.",
    ),
    (
        "Can I return a jacket I bought last week?",
        "Yes, you can return it within 30 days of delivery.",
    ),
    (
        "My parcel arrived damaged. What should I do?",
        "I'm sorry to hear that. Please send us a photo of the damage.",
    ),
    (
        "Do you ship to Canada?",
        "Yes, we ship to Canada; customs fees may apply.",
    ),
    (
        "你好，请问怎么退货？",
        "您好！您可以在收到商品后30天内申请退货。",
    ),
    (
        "我的订单什么时候发货？",
        "您的订单通常会在两个工作日内发货。",
    ),
    ("这件衣服有大号吗？", "有的，这件衣服有大号和特大号。"),
    ("我想和人工客服说话。", "好的，我会为您转接人工客服。"),
];

/// The logits of four computations of one model on the same token
/// sequences: the CPU engine, its exact f32 twin, and mistral.rs with its
/// default activations (bf16 on CPUs) and with f32 activations.
struct TeacherForced {
    ours: Vec<Vec<f32>>,
    exact: Vec<Vec<f32>>,
    mistral: Vec<Vec<f32>>,
    mistral_f32: Vec<Vec<f32>>,
    /// The largest logit spread (max - min) of any exact position.
    spread: f32,
    isa: &'static str,
}

impl TeacherForced {
    async fn measure(path: &Path) -> Self {
        use concierge::engine::cpu::CpuEngine;
        use concierge::engine::{ChatMessage, ChatRole};

        let config = Config::defaults().engine;
        let system = "You are the assistant of an online shop. Answer briefly and politely.";
        let ours = CpuEngine::load(path, &config).unwrap();
        let reference = MistralEngine::load(path, &config).await.unwrap();
        let mut sequences = Vec::new();
        for (question, answer) in TEACHER_FORCED {
            let messages = [
                ChatMessage::new(ChatRole::System, system),
                ChatMessage::new(ChatRole::User, question),
            ];
            let mut tokens = ours.prompt_tokens(&messages).unwrap();
            // Both engines build the same prompt from the file's template.
            assert_eq!(
                tokens,
                reference.prompt_tokens(&messages).await.unwrap(),
                "{question}"
            );
            tokens.extend(ours.encode(answer).unwrap());
            sequences.push(tokens);
        }
        let mut result = Self {
            ours: Vec::new(),
            exact: Vec::new(),
            mistral: Vec::new(),
            mistral_f32: Vec::new(),
            spread: 0.0,
            isa: ours.isa().name(),
        };
        for tokens in &sequences {
            result.ours.extend(ours.logits(tokens).unwrap());
            result
                .mistral
                .extend(reference.logits(tokens).await.unwrap());
        }
        drop((ours, reference));
        let exact = CpuEngine::load_exact(path, &config).unwrap();
        for tokens in &sequences {
            result.exact.extend(exact.logits(tokens).unwrap());
        }
        drop(exact);
        let reference = MistralEngine::load_f32(path, &config).await.unwrap();
        for tokens in &sequences {
            result
                .mistral_f32
                .extend(reference.logits(tokens).await.unwrap());
        }
        result.spread = result
            .exact
            .iter()
            .map(|row| {
                let (lo, hi) = row
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                hi - lo
            })
            .fold(0.0, f32::max);
        result
    }

    fn positions(&self) -> usize {
        self.exact.len()
    }

    /// Positions whose argmax agrees.
    fn agreeing(x: &[Vec<f32>], y: &[Vec<f32>]) -> usize {
        use concierge::engine::cpu::sampler::argmax;
        x.iter()
            .zip(y)
            .filter(|(p, q)| argmax(p) == argmax(q))
            .count()
    }

    fn largest_difference(x: &[Vec<f32>], y: &[Vec<f32>]) -> f32 {
        x.iter()
            .zip(y)
            .flat_map(|(p, q)| p.iter().zip(q).map(|(u, v)| (u - v).abs()))
            .fold(0.0f32, f32::max)
    }

    /// The exact top-2 margin at `position`.
    fn margin(&self, position: usize) -> f32 {
        let mut sorted = self.exact[position].clone();
        sorted.sort_by(|p, q| q.total_cmp(p));
        sorted[0] - sorted[1]
    }

    fn report(&self) {
        let n = self.positions();
        let pairs = [
            ("ours vs exact", &self.ours, &self.exact),
            ("ours vs mistral.rs", &self.ours, &self.mistral),
            ("ours vs mistral.rs f32", &self.ours, &self.mistral_f32),
            ("mistral.rs vs exact", &self.mistral, &self.exact),
            ("mistral.rs f32 vs exact", &self.mistral_f32, &self.exact),
            (
                "mistral.rs vs mistral.rs f32",
                &self.mistral,
                &self.mistral_f32,
            ),
        ];
        for (name, x, y) in pairs {
            eprintln!(
                "{name} ({}): argmax {}/{n}, max |diff| {:.4} of spread {:.2}",
                self.isa,
                Self::agreeing(x, y),
                Self::largest_difference(x, y),
                self.spread
            );
        }
    }

    /// Positions where the CPU engine and `reference` disagree although the
    /// exact computation agrees with the reference and its top-2 margin is
    /// at least `tie`: the disagreements that are the CPU engine's fault.
    fn our_faults(&self, reference: &[Vec<f32>], tie: f32) -> Vec<usize> {
        use concierge::engine::cpu::sampler::argmax;
        (0..self.positions())
            .filter(|&i| {
                argmax(&self.ours[i]) != argmax(&reference[i])
                    && argmax(&self.exact[i]) == argmax(&reference[i])
                    && self.margin(i) >= tie
            })
            .collect()
    }
}

#[tokio::test]
async fn the_cpu_engine_matches_mistral_rs_on_the_default_model() {
    let measured = TeacherForced::measure(&prepared_model()).await;
    measured.report();
    // The CPU engine multiplies Q8_0 weights with activations in two int8
    // terms (a value and its residual, about 15 bits), so on this all-Q8_0
    // file it differs from the f32 computation on the same weights only by
    // rounding: 0.0072 on a spread of 61.65 measured, bounded at 0.2%.
    assert_teacher_forced_agreement(&measured, 0.002);
}

/// The same comparison on the GGUF file named by `CONCIERGE_TEST_MODEL`
/// (any llama-family or qwen2 model an operator wants to check):
/// `CONCIERGE_TEST_MODEL=/path/model.gguf cargo test --release --test
/// real_model -- --ignored`.
#[tokio::test]
#[ignore = "needs CONCIERGE_TEST_MODEL"]
async fn the_cpu_engine_matches_mistral_rs_on_the_model_in_concierge_test_model() {
    let path = std::env::var_os("CONCIERGE_TEST_MODEL").expect("CONCIERGE_TEST_MODEL is set");
    let measured = TeacherForced::measure(Path::new(&path)).await;
    measured.report();
    // Tensors of types without native kernels (Q5_0, the K-quants) are
    // re-quantised to Q8_0 at load and multiplied with one activation term,
    // which moves the logits further from the f32 computation on the file's
    // own weights: 0.54 of 61.6 (0.9%) on Qwen2.5-Coder 0.5B Q4_K_M.
    assert_teacher_forced_agreement(&measured, 0.02);
}

/// Checks `measured` with the CPU engine allowed `exact_bound` × the logit
/// spread away from the exact computation.
fn assert_teacher_forced_agreement(measured: &TeacherForced, exact_bound: f32) {
    let n = measured.positions() as f64;
    let spread = measured.spread;
    let ours_vs_exact = TeacherForced::largest_difference(&measured.ours, &measured.exact);
    assert!(
        ours_vs_exact <= exact_bound * spread,
        "ours vs exact: {ours_vs_exact} of spread {spread}"
    );
    // A tie closer than twice the engine's own error may fall either way.
    let tie = TIE_MARGIN.max(2.0 * ours_vs_exact);
    let clear_flips: Vec<usize> = (0..measured.positions())
        .filter(|&i| {
            measured.margin(i) >= tie
                && concierge::engine::cpu::sampler::argmax(&measured.ours[i])
                    != concierge::engine::cpu::sampler::argmax(&measured.exact[i])
        })
        .collect();
    assert!(clear_flips.is_empty(), "ours vs exact at {clear_flips:?}");
    // mistral.rs rounds activations to Q8_0 in one int8 term before every
    // quantised matmul (candle's kernels), and with its default dtype each
    // other step to bf16: it differs from the exact computation by up to
    // 2.7% of the spread (1.64 of 60 measured), and it is that error that
    // separates it from the CPU engine; 4% bounds it.
    for (name, reference) in [
        ("mistral.rs", &measured.mistral),
        ("mistral.rs f32", &measured.mistral_f32),
    ] {
        let difference = TeacherForced::largest_difference(&measured.ours, reference);
        assert!(
            difference <= 0.04 * spread,
            "ours vs {name}: {difference} of spread {spread}"
        );
        // Every position where the engines disagree is one where mistral.rs
        // also departs from the exact computation, or an exact tie.
        let faults = measured.our_faults(reference, tie);
        assert!(faults.is_empty(), "ours vs {name} at {faults:?}");
    }
    let with_f32 = TeacherForced::agreeing(&measured.ours, &measured.mistral_f32) as f64 / n;
    assert!(
        with_f32 >= 0.98,
        "argmax agreement with mistral.rs f32: {with_f32}"
    );
    // With bf16 activations mistral.rs agrees with itself in f32 at only
    // 97.3% of the default model's positions, and with the exact
    // computation at 98.2%; the CPU engine, itself within ties of exact,
    // can do no better than the latter and lands on 98.2% or 97.9% as one
    // tie falls.
    let with_default = TeacherForced::agreeing(&measured.ours, &measured.mistral) as f64 / n;
    assert!(
        with_default >= 0.975,
        "argmax agreement with mistral.rs: {with_default}"
    );
}

/// The CI floor for the default model on the held-out half of the demo
/// evaluation (`concierge eval answers`, the figures in README.md).
#[test]
fn the_default_model_keeps_the_answer_floor_on_the_demo_evaluation() {
    prepared_model();
    let (report, outcomes) = support::eval_demo_answers("even", &[]);
    assert_eq!(
        outcomes.len(),
        report["questions"].as_u64().unwrap() as usize
    );
    let share = |key: &str| report[key].as_f64().unwrap();
    assert!(share("correct") >= CORRECT_FLOOR, "{report}");
    assert!(share("wrong") <= WRONG_CEILING, "{report}");
    assert!(share("invented") <= INVENTED_CEILING, "{report}");
    for language in ["en", "zh"] {
        assert!(
            report[language]["correct"].as_f64().unwrap() >= CORRECT_FLOOR - 0.1,
            "{language}: {report}"
        );
    }
}

// Measured on these rows with the default model (README.md): correct 0.911,
// wrong 0.038, invented 0.05. The floors leave room for a slower machine,
// where more replies reach the first-text deadline and are quoted.
const CORRECT_FLOOR: f64 = 0.86;
const WRONG_CEILING: f64 = 0.08;
const INVENTED_CEILING: f64 = 0.15;

/// A Telegram customer's question goes through `concierge serve` (the fake
/// Bot API, the demo shop, the default model on the default engine) and is
/// answered with the shop's fact. Prints how long the customer waited for
/// the first text and for the whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg(feature = "telegram")]
async fn a_telegram_customer_gets_the_shops_answer_from_the_default_model() {
    use std::time::{Duration, Instant};
    use support::fake_telegram::{FakeTelegram, TOKEN};

    let model = prepared_model();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let config = format!(
        "[store]\ndata_dir = {data:?}\n[engine]\nmodel_path = {model:?}\n[operator]\nenabled = false\n\
         [chat]\nprompts_dir = {prompts:?}\n[telegram]\nenabled = true\ntoken = {TOKEN:?}\n\
         api_url = {url:?}\npoll_timeout_secs = 1\n",
        data = dir.path().join("data").display().to_string(),
        model = model.display().to_string(),
        prompts = repo().join("prompts").display().to_string(),
        url = fake.url,
    );
    std::env::set_current_dir(repo()).unwrap();
    let daemon = support::InProcessDaemon::start_with_config(&config, &[]);
    // Wait until the daemon polls, so the clock measures the answer only.
    assert!(
        support::eventually(Duration::from_secs(120), || !fake
            .calls_of("getUpdates")
            .is_empty())
        .await
    );
    let asked = Instant::now();
    fake.push_message(
        901,
        "private",
        901,
        "How many days do I have to return an item?",
    );
    let mut first_text = None;
    let answered = support::eventually(Duration::from_secs(120), || {
        let texts: Vec<String> = fake
            .messages_in(901)
            .into_iter()
            .map(|(_, text)| text)
            .collect();
        if first_text.is_none() && !texts.is_empty() {
            first_text = Some(asked.elapsed());
        }
        texts.iter().any(|text| text.contains("Source:"))
    })
    .await;
    let whole = asked.elapsed();
    let texts: Vec<String> = fake
        .messages_in(901)
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    daemon.stop().await;
    assert!(answered, "{texts:?}");
    eprintln!(
        "telegram: first text after {:?}, the whole answer after {whole:?}",
        first_text.unwrap_or(whole)
    );
    // config/demo/kb/en/returns.md: "within 30 days of the delivery date".
    assert!(
        texts.iter().any(|text| text.contains("30 days")),
        "{texts:?}"
    );
}
