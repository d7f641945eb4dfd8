//! `concierge bench engine`: measures the engine's prompt and decode speed
//! on a fixed prompt and prints the figures as JSON (medians of several runs).

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::EngineConfig;
use crate::engine::mistral::MistralEngine;
use crate::engine::{ChatMessage, ChatRequest, ChatRole, Llm, Sampling, StreamEvent};

/// The benchmark prompt: a short system prompt and question, as in chat.
const SYSTEM: &str = "You are a helpful shop assistant. Answer briefly.";
const QUESTION: &str = "What is the best way to keep running shoes clean after a muddy trail run?";

/// Figures of one benchmark.
#[derive(Debug, Serialize)]
pub struct EngineFigures {
    /// The file measured.
    pub model: String,
    /// Runs measured (after one warm-up).
    pub runs: usize,
    /// Prompt tokens per run.
    pub prompt_tokens: usize,
    /// Median generated tokens per run.
    pub completion_tokens: usize,
    /// Median prompt-processing speed, tokens per second.
    pub prompt_tok_per_sec: f64,
    /// Median decode speed, tokens per second.
    pub decode_tok_per_sec: f64,
    /// Median time to the first token, milliseconds.
    pub first_token_ms: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Loads `path` and measures `runs` greedy generations of `max_tokens`.
pub async fn engine(
    path: &Path,
    config: &EngineConfig,
    runs: usize,
    max_tokens: usize,
) -> anyhow::Result<EngineFigures> {
    // Each run must process its whole prompt, as llama.cpp's does in the
    // comparison script: no prefix cache.
    let config = EngineConfig {
        prefix_cache: 0,
        ..config.clone()
    };
    let engine = MistralEngine::load(path, &config).await?;
    let request = ChatRequest {
        messages: vec![
            ChatMessage::new(ChatRole::System, SYSTEM),
            ChatMessage::new(ChatRole::User, QUESTION),
        ],
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens,
            repetition_penalty: 1.0,
        },
    };
    let (mut prompt_speed, mut decode_speed, mut first_token, mut completion) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut prompt_tokens = 0;
    // One warm-up run, then the measured ones.
    for run in 0..=runs {
        let started = Instant::now();
        let mut stream = engine
            .stream_chat(request.clone(), CancellationToken::new())
            .await?;
        let mut first = None;
        let mut usage = None;
        while let Some(event) = stream.recv().await {
            match event? {
                StreamEvent::Delta(_) => {
                    first.get_or_insert_with(|| started.elapsed());
                }
                StreamEvent::Done(done) => usage = Some(done),
            }
        }
        let usage = usage.ok_or_else(|| anyhow::anyhow!("the engine reported no usage"))?;
        if run == 0 {
            continue;
        }
        prompt_tokens = usage.prompt_tokens;
        prompt_speed.push(usage.prompt_tokens_per_sec);
        decode_speed.push(usage.decode_tokens_per_sec);
        completion.push(usage.completion_tokens as f64);
        first_token.push(first.unwrap_or_default().as_secs_f64() * 1000.0);
    }
    Ok(EngineFigures {
        model: path.display().to_string(),
        runs,
        prompt_tokens,
        completion_tokens: median(&mut completion) as usize,
        prompt_tok_per_sec: median(&mut prompt_speed),
        decode_tok_per_sec: median(&mut decode_speed),
        first_token_ms: median(&mut first_token),
    })
}
