//! The CPU engine against mistral.rs on tiny random-weight GGUF files that
//! the tests write (llama and qwen2, GQA, biases, odd block counts), and its
//! serving behaviour: batched decoding equals one-at-a-time decoding, prefix
//! reuse, cancellation, refusal of what it cannot run.

mod support;

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use concierge::config::{Config, EngineBackend};
use concierge::engine::cpu::CpuEngine;
use concierge::engine::mistral::MistralEngine;
use concierge::engine::{
    ChatMessage, ChatRequest, ChatRole, EngineError, Llm, Sampling, StreamEvent, Usage,
};
use support::tiny_gguf::{self, TinyShape};
use tokio_util::sync::CancellationToken;

fn tiny(dir: &Path, shape: TinyShape, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.gguf"));
    tiny_gguf::write(&path, shape);
    path
}

fn token_sequences(vocab: usize) -> Vec<Vec<u32>> {
    let mut state = 12345u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize % vocab) as u32
    };
    [5usize, 17, 40, 90]
        .iter()
        .map(|&len| (0..len).map(|_| next()).collect())
        .collect()
}

/// Largest |a - b| over all logits, and the share of positions whose argmax agrees.
fn compare(ours: &[Vec<f32>], reference: &[Vec<f32>]) -> (f32, f64, f32) {
    assert_eq!(ours.len(), reference.len());
    let mut max_diff = 0.0f32;
    let mut agree = 0;
    let mut spread = 0.0f32;
    for (a, b) in ours.iter().zip(reference) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
        }
        let (min, max) = b
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        spread = spread.max(max - min);
        if concierge::engine::cpu::sampler::argmax(a) == concierge::engine::cpu::sampler::argmax(b)
        {
            agree += 1;
        }
    }
    (max_diff, agree as f64 / ours.len() as f64, spread)
}

fn engine_config() -> concierge::config::EngineConfig {
    let mut config = Config::defaults().engine;
    config.max_num_seqs = 4;
    config
}

#[tokio::test]
async fn tiny_llama_and_qwen2_match_mistral_rs_under_teacher_forcing() {
    let dir = tempfile::tempdir().unwrap();
    let mut shapes = vec![
        ("llama-q8", TinyShape::llama()),
        ("qwen2-q8", TinyShape::qwen2()),
    ];
    shapes.insert(
        0,
        (
            "qwen2-f32",
            TinyShape {
                weights: GgmlDType::F32,
                seed: 4,
                ..TinyShape::qwen2()
            },
        ),
    );
    shapes.push((
        "llama-q4",
        TinyShape {
            weights: GgmlDType::Q4_0,
            tied_output: false,
            seed: 3,
            ..TinyShape::llama()
        },
    ));
    // F16 and BF16 are expanded to f32 at load.
    shapes.push((
        "llama-f16",
        TinyShape {
            weights: GgmlDType::F16,
            seed: 7,
            ..TinyShape::llama()
        },
    ));
    shapes.push((
        "qwen2-bf16",
        TinyShape {
            weights: GgmlDType::BF16,
            seed: 8,
            ..TinyShape::qwen2()
        },
    ));
    // Types without native kernels are converted to Q8_0 at load.
    shapes.push((
        "llama-q4_1",
        TinyShape {
            weights: GgmlDType::Q4_1,
            seed: 5,
            ..TinyShape::llama()
        },
    ));
    shapes.push((
        "qwen2-q4k",
        TinyShape {
            weights: GgmlDType::Q4K,
            embedding: 256,
            feed_forward: 512,
            seed: 6,
            ..TinyShape::qwen2()
        },
    ));
    // A Mistral-class file: SentencePiece vocabulary, no system role.
    shapes.push(("mistral-q8", TinyShape::mistral()));
    for (name, shape) in shapes {
        let path = tiny(dir.path(), shape, name);
        let ours = CpuEngine::load(&path, &engine_config()).unwrap();
        let reference = MistralEngine::load(&path, &engine_config()).await.unwrap();
        let vocab = shape.vocab_size();
        let mut positions = 0;
        let mut agreeing = 0.0;
        for tokens in token_sequences(vocab) {
            let a = ours.logits(&tokens).unwrap();
            let b = reference.logits(&tokens).await.unwrap();
            let (max_diff, agreement, spread) = compare(&a, &b);
            eprintln!("{name}: {} tokens, max |diff| {max_diff:.5}, spread {spread:.2}, argmax agreement {agreement:.3}", tokens.len());
            // With f32 weights both engines compute in f32, and only the
            // summation order differs. With quantised weights mistral.rs 0.8.1
            // keeps activations between operations in its automatic dtype for
            // GGUF files, bf16 on this CPU (8 significant bits: up to 0.4%
            // per rounding), so its logits carry that noise; it stays below
            // 1% of the logit spread here, and 2% leaves room for other data.
            let tolerance = if name.ends_with("f32") { 0.001 } else { 0.02 };
            assert!(
                max_diff <= tolerance * spread.max(1.0),
                "{name}: max diff {max_diff} (spread {spread})"
            );
            positions += tokens.len();
            agreeing += agreement * tokens.len() as f64;
        }
        assert!(
            agreeing / positions as f64 >= 0.98,
            "{name}: argmax agreement {}",
            agreeing / positions as f64
        );
    }
}

fn greedy(max_tokens: usize) -> Sampling {
    Sampling {
        temperature: 0.0,
        top_p: 1.0,
        max_tokens,
        repetition_penalty: 1.0,
        top_k: 0,
        seed: None,
    }
}

fn chat(text: &str, sampling: Sampling) -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::new(
                ChatRole::System,
                "You are the tiny test assistant of a shop that sells everything.",
            ),
            ChatMessage::new(ChatRole::User, text),
        ],
        sampling,
    }
}

async fn collect(engine: &dyn Llm, request: ChatRequest) -> (String, Usage) {
    let mut stream = engine
        .stream_chat(request, CancellationToken::new())
        .await
        .unwrap();
    let mut text = String::new();
    while let Some(event) = stream.recv().await {
        match event.unwrap() {
            StreamEvent::Delta(delta) => text.push_str(&delta),
            StreamEvent::Done(usage) => return (text, usage),
        }
    }
    panic!("stream ended without Done");
}

#[tokio::test]
async fn concurrent_requests_decode_together_and_equal_sequential_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), TinyShape::qwen2(), "qwen2");
    let engine = CpuEngine::load(&path, &engine_config()).unwrap();
    let questions = ["the hen", "in the inn", "tea then?", "他们"];
    let mut sequential = Vec::new();
    for question in questions {
        sequential.push(collect(&engine, chat(question, greedy(24))).await.0);
    }
    let together = futures::future::join_all(
        questions
            .iter()
            .map(|question| collect(&engine, chat(question, greedy(24)))),
    )
    .await;
    for ((alone, (batched, usage)), question) in sequential.iter().zip(&together).zip(questions) {
        assert_eq!(alone, batched, "{question}");
        assert!(usage.completion_tokens > 0);
    }
}

#[tokio::test]
async fn a_shared_system_prompt_is_reused_and_gives_the_same_reply() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), TinyShape::llama(), "llama");
    let engine = CpuEngine::load(&path, &engine_config()).unwrap();
    let (first, first_usage) = collect(&engine, chat("the hen", greedy(16))).await;
    assert_eq!(first_usage.cached_prompt_tokens, 0);
    let (_, other) = collect(&engine, chat("in the inn", greedy(16))).await;
    // The system prompt and the user marker are shared with the first request.
    assert!(other.cached_prompt_tokens > 60, "{other:?}");
    let (again, again_usage) = collect(&engine, chat("the hen", greedy(16))).await;
    assert!(again_usage.cached_prompt_tokens >= again_usage.prompt_tokens - 1);
    assert_eq!(first, again);

    let mut config = engine_config();
    config.prefix_cache = 0;
    let uncached = CpuEngine::load(&path, &config).unwrap();
    collect(&uncached, chat("the hen", greedy(4))).await;
    let (text, usage) = collect(&uncached, chat("the hen", greedy(16))).await;
    assert_eq!(usage.cached_prompt_tokens, 0);
    assert_eq!(text, first);
}

#[tokio::test]
async fn dropping_or_cancelling_a_stream_stops_it_and_the_engine_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), TinyShape::llama(), "llama");
    let engine = CpuEngine::load(&path, &engine_config()).unwrap();
    let mut sampling = greedy(400);
    sampling.repetition_penalty = 1.3;
    let dropped = engine
        .stream_chat(chat("the hen", sampling), CancellationToken::new())
        .await
        .unwrap();
    drop(dropped);
    let cancel = CancellationToken::new();
    let mut cancelled = engine
        .stream_chat(chat("in the inn", sampling), cancel.clone())
        .await
        .unwrap();
    cancelled.recv().await;
    cancel.cancel();
    // A cancelled stream ends without Done.
    let mut done = false;
    while let Some(event) = cancelled.recv().await {
        done |= matches!(event, Ok(StreamEvent::Done(_)));
    }
    assert!(!done);
    let (_, usage) = collect(&engine, chat("tea", greedy(8))).await;
    assert!(usage.completion_tokens > 0);
}

#[tokio::test]
async fn seeded_sampling_repeats_and_temperature_zero_is_greedy() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), TinyShape::qwen2(), "qwen2");
    let engine = CpuEngine::load(&path, &engine_config()).unwrap();
    let sampled = |seed| Sampling {
        temperature: 1.0,
        top_p: 0.95,
        max_tokens: 24,
        repetition_penalty: 1.1,
        top_k: 50,
        seed: Some(seed),
    };
    let a = collect(&engine, chat("the hen", sampled(7))).await.0;
    let b = collect(&engine, chat("the hen", sampled(7))).await.0;
    let c = collect(&engine, chat("the hen", sampled(8))).await.0;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[tokio::test]
async fn precise_activations_bring_a_q8_0_file_to_the_exact_computation() {
    let dir = tempfile::tempdir().unwrap();
    let shape = TinyShape::llama();
    let path = tiny(dir.path(), shape, "llama");
    let exact = CpuEngine::load_exact(&path, &engine_config()).unwrap();
    let precise = CpuEngine::load(&path, &engine_config()).unwrap();
    let mut one_term = engine_config();
    one_term.precise_activations = false;
    let fast = CpuEngine::load(&path, &one_term).unwrap();
    for tokens in token_sequences(shape.vocab_size()) {
        let truth = exact.logits(&tokens).unwrap();
        let (precise_diff, precise_agreement, spread) =
            compare(&precise.logits(&tokens).unwrap(), &truth);
        let (fast_diff, _, _) = compare(&fast.logits(&tokens).unwrap(), &truth);
        eprintln!(
            "{} tokens: two terms {precise_diff:.5}, one term {fast_diff:.5}, spread {spread:.1}",
            tokens.len()
        );
        assert!(precise_diff <= 0.002 * spread, "{precise_diff} of {spread}");
        assert_eq!(precise_agreement, 1.0);
        assert!(
            precise_diff * 10.0 < fast_diff,
            "{precise_diff} vs {fast_diff}"
        );
    }
}

#[tokio::test]
async fn a_mistral_class_file_chats_with_its_sentencepiece_vocabulary_and_strict_template() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), TinyShape::mistral(), "mistral");
    assert_eq!(
        concierge::app::choose_engine(EngineBackend::Auto, &path),
        if concierge::app::GPU_BUILD {
            concierge::app::EngineChoice::Mistralrs
        } else {
            concierge::app::EngineChoice::Cpu
        }
    );
    let engine = CpuEngine::load(&path, &engine_config()).unwrap();
    let (tokens, _, _) = tiny_gguf::sentencepiece_vocabulary();
    let id = |piece: &str| {
        let piece = piece.replace('_', &tiny_gguf::SPACE_MARK.to_string());
        tokens.iter().position(|token| *token == piece).unwrap() as u32
    };
    // The template refuses a system role; the instructions go ahead of the
    // user's turn. BOS comes from the template, once; "[INST]" is plain
    // text here, spelled with byte pieces and letters.
    let prompt = engine
        .prompt_tokens(&[
            ChatMessage::new(ChatRole::System, "hi"),
            ChatMessage::new(ChatRole::User, "the hell"),
        ])
        .unwrap();
    assert_eq!(prompt[0], 1, "{prompt:?}");
    assert_eq!(prompt.iter().filter(|&&token| token == 1).count(), 1);
    let inst = engine.encode("[INST] hi").unwrap();
    assert_eq!(&prompt[1..1 + inst.len()], inst.as_slice());
    assert_eq!(
        engine.encode("the hell").unwrap(),
        [id("_the"), id("_hell")]
    );
    // A whole reply streams, and decodes back to text with spaces.
    let (text, usage) = collect(&engine, chat("the hen", greedy(12))).await;
    assert!((1..=12).contains(&usage.completion_tokens), "{text:?}");
    assert!(!text.contains(tiny_gguf::SPACE_MARK), "{text:?}");
    let reencoded = engine.encode(&text).unwrap();
    assert!(!reencoded.is_empty());
}

#[tokio::test]
async fn unsupported_files_are_refused_with_what_is_missing_and_auto_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    // Same tensors, another architecture name.
    let path = dir.path().join("other.gguf");
    tiny_gguf::write(
        &path,
        TinyShape {
            architecture: "qwen3",
            ..TinyShape::qwen2()
        },
    );
    let err = match CpuEngine::load(&path, &engine_config()) {
        Err(err) => err,
        Ok(_) => panic!("a qwen3 file loaded on the cpu engine"),
    };
    assert!(matches!(err, EngineError::Unsupported { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("qwen3") && message.contains("mistralrs"),
        "{message}"
    );
    assert_eq!(
        concierge::app::choose_engine(EngineBackend::Auto, &path),
        concierge::app::EngineChoice::Mistralrs
    );
    let supported = tiny(dir.path(), TinyShape::llama(), "llama");
    let expected = if concierge::app::GPU_BUILD {
        concierge::app::EngineChoice::Mistralrs
    } else {
        concierge::app::EngineChoice::Cpu
    };
    assert_eq!(
        concierge::app::choose_engine(EngineBackend::Auto, &supported),
        expected
    );
    assert_eq!(
        concierge::app::choose_engine(EngineBackend::Cpu, &path),
        concierge::app::EngineChoice::Cpu
    );
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), TinyShape::llama(), "llama");
    let engine = CpuEngine::load(&path, &engine_config()).unwrap();
    let long = "x ".repeat(2000);
    let err = engine
        .stream_chat(chat(&long, greedy(4)), CancellationToken::new())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("context"), "{err}");
}

/// Replies held to given labels: each label is scored by the probability
/// that the reply's first token begins it, added up over every token of the
/// vocabulary that does (in any case and spacing), from the engine's own
/// next-token logits.
#[tokio::test]
async fn labels_are_scored_by_the_first_tokens_that_begin_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), TinyShape::llama(), "llama");
    let engine = CpuEngine::load(&path, &engine_config()).unwrap();
    let messages = chat("the hen", greedy(4)).messages;
    let prompt = engine.prompt_tokens(&messages).unwrap();
    let next = engine.logits(&prompt).unwrap().pop().unwrap();
    let max = next.iter().copied().fold(f32::MIN, f32::max);
    let weights: Vec<f64> = next
        .iter()
        .map(|&logit| f64::from(logit - max).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let header = concierge::engine::gguf::read_header(&path).unwrap();
    let tokenizer = concierge::engine::gguf::tokenizer_from_header(&header).unwrap();
    let texts: Vec<String> = (0..next.len() as u32)
        .map(|id| tokenizer.decode(&[id], false).unwrap_or_default())
        .collect();
    let expected = |label: &str| -> f32 {
        let beginning: f64 = texts
            .iter()
            .zip(&weights)
            .filter(|(text, _)| {
                let text = text.trim().to_lowercase();
                !text.is_empty() && label.starts_with(&text)
            })
            .map(|(_, weight)| weight)
            .sum();
        (beginning / total).ln() as f32
    };

    let labels = ["the", "hen", "inn"];
    let scores = engine
        .label_log_probs(&messages, &labels)
        .await
        .unwrap()
        .expect("the CPU engine scores labels");
    for (label, score) in labels.iter().zip(&scores) {
        assert!(score.is_finite() && *score <= 0.0, "{label}: {score}");
        assert!(
            (score - expected(label)).abs() < 1e-3,
            "{label}: {score} against {}",
            expected(label)
        );
    }
    // "The" and " the" count for "the" as "the" does: case and spacing aside,
    // a label weighs at least its own first token.
    let own = engine.encode("the").unwrap()[0] as usize;
    assert!(f64::from(scores[0]) >= (weights[own] / total).ln() - 1e-3);

    // Past the context, an error rather than a truncated score.
    let long = "x ".repeat(2000);
    let err = engine
        .label_log_probs(&chat(&long, greedy(4)).messages, &labels)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("context"), "{err}");
}
