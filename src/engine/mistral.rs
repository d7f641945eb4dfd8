//! The in-process mistral.rs engine: loads a local GGUF file (checked first by
//! `gguf::read_header`) and streams chat replies. The only importer of
//! `mistralrs`.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use mistralrs::{
    GgufModelBuilder, Model, RequestBuilder, Response, SamplingParams, TextMessageRole, TokenSource,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{gguf, ChatRequest, ChatRole, EngineError, Llm, ReplyStream, StreamEvent, Usage};
use crate::config::EngineConfig;

/// A GGUF model running in this process.
pub struct MistralEngine {
    model: Arc<Model>,
    tokenizer: Option<tokenizers::Tokenizer>,
    special_tokens: Vec<String>,
    name: String,
}

impl MistralEngine {
    /// Checks and loads the GGUF file at `path`.
    pub async fn load(path: &Path, config: &EngineConfig) -> Result<Self, EngineError> {
        Self::load_with(path, config, Activations::Automatic).await
    }

    /// The same engine with its activations in f32 instead of the automatic
    /// dtype (bf16 on CPUs): quantised matmuls still round their inputs to
    /// Q8_0, as the CPU engine does, but nothing else is rounded. Slower;
    /// the reference that accuracy tests compare the CPU engine with.
    pub async fn load_f32(path: &Path, config: &EngineConfig) -> Result<Self, EngineError> {
        Self::load_with(path, config, Activations::F32).await
    }

    async fn load_with(
        path: &Path,
        config: &EngineConfig,
        activations: Activations,
    ) -> Result<Self, EngineError> {
        let header = gguf::read_header(path)?;
        gguf::check_supported(path, &header)?;
        let tokenizer = gguf::tokenizer_from_header(&header);
        let special_tokens = gguf::special_token_strings(&header);
        if tokenizer.is_none() {
            tracing::warn!(
                path = %path.display(),
                "tokenizer kind not supported for counting; history budget uses an estimate"
            );
        }
        let absolute = std::path::absolute(path).map_err(|err| EngineError::ModelUnreadable {
            path: path.to_path_buf(),
            detail: err.to_string(),
        })?;
        let (Some(dir), Some(file)) = (absolute.parent(), absolute.file_name()) else {
            return Err(EngineError::ModelUnreadable {
                path: path.to_path_buf(),
                detail: "not a file path".into(),
            });
        };
        let dir = dir.to_string_lossy().into_owned();
        let file = file.to_string_lossy().into_owned();
        // The loader may panic on inputs the header check cannot foresee;
        // a panic must become an error, not take the daemon down.
        let loaded = match activations {
            Activations::Automatic => {
                let builder = GgufModelBuilder::new(dir, vec![file])
                    .with_token_source(TokenSource::None)
                    .with_max_num_seqs(config.max_num_seqs)
                    .with_prefix_cache_n((config.prefix_cache > 0).then_some(config.prefix_cache));
                std::panic::AssertUnwindSafe(builder.build())
                    .catch_unwind()
                    .await
            }
            Activations::F32 => {
                std::panic::AssertUnwindSafe(build_f32(dir, file, config))
                    .catch_unwind()
                    .await
            }
        };
        let model = match loaded {
            Ok(Ok(model)) => model,
            Ok(Err(err)) => return Err(EngineError::Load(format!("{err:#}"))),
            Err(panic) => return Err(EngineError::Load(panic_message(&panic))),
        };
        let name = absolute.file_stem().map_or_else(
            || "model".to_string(),
            |stem| stem.to_string_lossy().into_owned(),
        );
        Ok(Self {
            model: Arc::new(model),
            tokenizer,
            special_tokens,
            name,
        })
    }
}

/// The dtype mistral.rs computes activations in.
#[derive(Clone, Copy)]
enum Activations {
    /// mistral.rs's choice for the device (bf16 on CPUs).
    Automatic,
    /// f32 everywhere.
    F32,
}

/// What `GgufModelBuilder::build` does, with the dtype set to f32 (the
/// builder always asks for the automatic one).
async fn build_f32(dir: String, file: String, config: &EngineConfig) -> anyhow::Result<Model> {
    use mistralrs::core::{
        AddModelConfig, AutoDeviceMapParams, DefaultSchedulerMethod, DeviceMapSetting,
        GGUFLoaderBuilder, GGUFSpecificConfig, ModelDType, SchedulerConfig,
    };
    let loader = GGUFLoaderBuilder::new(
        None,
        None,
        dir,
        vec![file],
        GGUFSpecificConfig::default(),
        false,
        None,
    )
    .build();
    let pipeline = loader.load_model_from_hf(
        None,
        TokenSource::None,
        &ModelDType::F32,
        &mistralrs::Device::Cpu,
        true,
        DeviceMapSetting::Auto(AutoDeviceMapParams::default_text()),
        None,
        None,
    )?;
    let scheduler = SchedulerConfig::DefaultScheduler {
        method: DefaultSchedulerMethod::Fixed(config.max_num_seqs.max(1).try_into()?),
    };
    let engine = mistralrs::core::EngineConfig {
        throughput_logging_enabled: false,
        no_prefix_cache: config.prefix_cache == 0,
        prefix_cache_n: config.prefix_cache.max(1),
        ..Default::default()
    };
    Ok(mistralrs::model_builder_trait::build_model_from_pipeline(
        pipeline,
        scheduler,
        AddModelConfig::new(engine),
    )
    .await)
}

impl MistralEngine {
    /// Counts tokens through the engine's own tokenizer (it queues behind
    /// generation, so the hot path uses `count_tokens`; this checks it).
    pub async fn engine_token_count(&self, text: &str) -> Result<usize, EngineError> {
        self.model
            .tokenize(
                either::Either::Right(text.to_string()),
                None,
                false,
                false,
                None,
            )
            .await
            .map(|tokens| tokens.len())
            .map_err(|err| EngineError::Generation(err.to_string()))
    }
}

impl MistralEngine {
    /// Next-token logits at every position of `tokens` (teacher forcing), as
    /// mistral.rs computes them: the reference the CPU engine is tested
    /// against.
    pub async fn logits(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        let failed =
            |what: &str, detail: String| EngineError::Generation(format!("{what}: {detail}"));
        let (response, mut answers) = mpsc::channel(1);
        let mut request = mistralrs::NormalRequest::new_simple(
            mistralrs::core::RequestMessage::CompletionTokens(tokens.to_vec()),
            SamplingParams {
                max_len: Some(1),
                ..SamplingParams::deterministic()
            },
            response,
            0,
            None,
            None,
        );
        request.return_raw_logits = true;
        let sender = self
            .model
            .inner()
            .get_sender(None)
            .map_err(|err| failed("no model", err.to_string()))?;
        sender
            .send(mistralrs::Request::Normal(Box::new(request)))
            .await
            .map_err(|err| failed("send", err.to_string()))?;
        let chunks = match answers.recv().await {
            Some(Response::Raw { logits_chunks, .. }) => logits_chunks,
            Some(Response::ModelError(message, _)) => return Err(failed("model", message)),
            Some(Response::InternalError(err)) | Some(Response::ValidationError(err)) => {
                return Err(failed("request", err.to_string()))
            }
            _ => return Err(failed("request", "no raw logits in the answer".into())),
        };
        let mut rows = Vec::with_capacity(tokens.len());
        for chunk in chunks {
            let chunk = chunk
                .to_dtype(mistralrs::DType::F32)
                .and_then(|chunk| chunk.to_vec2::<f32>())
                .map_err(|err| failed("logits", err.to_string()))?;
            rows.extend(chunk);
        }
        Ok(rows)
    }

    /// The prompt tokens mistral.rs builds for `messages` (its own chat
    /// template and tokenizer).
    pub async fn prompt_tokens(
        &self,
        messages: &[super::ChatMessage],
    ) -> Result<Vec<u32>, EngineError> {
        let mut builder = mistralrs::TextMessages::new();
        for message in messages {
            builder = builder.add_message(role_of(message.role), &message.content);
        }
        self.model
            .tokenize(either::Either::Left(builder), None, false, true, None)
            .await
            .map_err(|err| EngineError::Generation(err.to_string()))
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    format!("the model loader panicked: {text}")
}

fn role_of(role: ChatRole) -> TextMessageRole {
    match role {
        ChatRole::System => TextMessageRole::System,
        ChatRole::User => TextMessageRole::User,
        ChatRole::Assistant => TextMessageRole::Assistant,
    }
}

fn build_request(request: &ChatRequest) -> RequestBuilder {
    let mut builder = RequestBuilder::new();
    for message in &request.messages {
        builder = builder.add_message(role_of(message.role), &message.content);
    }
    let sampling = request.sampling;
    // RequestBuilder starts greedy (top_k = 1); state every parameter.
    let params = if sampling.temperature <= 0.0 {
        SamplingParams {
            max_len: Some(sampling.max_tokens),
            repetition_penalty: Some(sampling.repetition_penalty),
            ..SamplingParams::deterministic()
        }
    } else {
        SamplingParams {
            temperature: Some(sampling.temperature),
            top_p: Some(sampling.top_p),
            max_len: Some(sampling.max_tokens),
            repetition_penalty: Some(sampling.repetition_penalty),
            ..SamplingParams::neutral()
        }
    };
    builder.set_sampling(params)
}

fn usage_of(usage: &mistralrs::Usage) -> Usage {
    Usage {
        prompt_tokens: usage.prompt_tokens,
        cached_prompt_tokens: 0,
        completion_tokens: usage.completion_tokens,
        prompt_tokens_per_sec: f64::from(usage.avg_prompt_tok_per_sec),
        decode_tokens_per_sec: f64::from(usage.avg_compl_tok_per_sec),
    }
}

#[async_trait]
impl Llm for MistralEngine {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn special_tokens(&self) -> &[String] {
        &self.special_tokens
    }

    fn count_tokens(&self, text: &str) -> usize {
        match &self.tokenizer {
            Some(tokenizer) => tokenizer
                .encode(text, false)
                .map_or_else(|_| super::estimate_tokens(text), |encoding| encoding.len()),
            None => super::estimate_tokens(text),
        }
    }

    async fn stream_chat(
        &self,
        request: ChatRequest,
        cancel: CancellationToken,
    ) -> Result<ReplyStream, EngineError> {
        let (events, reply) = mpsc::channel(64);
        let model = Arc::clone(&self.model);
        let builder = build_request(&request);
        tokio::spawn(async move {
            let mut stream = match model.stream_chat_request(builder).await {
                Ok(stream) => stream,
                Err(err) => {
                    let _ = events
                        .send(Err(EngineError::Generation(err.to_string())))
                        .await;
                    return;
                }
            };
            loop {
                // Dropping `stream` on cancel or a closed receiver cancels the sequence.
                let response = tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = events.closed() => return,
                    response = stream.next() => response,
                };
                let event = match response {
                    None => Err(EngineError::Generation(
                        "the engine ended the stream early".into(),
                    )),
                    Some(Response::Chunk(chunk)) => {
                        let mut finished = None;
                        for choice in &chunk.choices {
                            if let Some(text) = choice
                                .delta
                                .content
                                .as_ref()
                                .filter(|text| !text.is_empty())
                            {
                                if events
                                    .send(Ok(StreamEvent::Delta(text.clone())))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                            if choice.finish_reason.is_some() {
                                finished =
                                    Some(chunk.usage.as_ref().map(usage_of).unwrap_or_default());
                            }
                        }
                        match finished {
                            Some(usage) => Ok(StreamEvent::Done(usage)),
                            None => continue,
                        }
                    }
                    Some(Response::Done(done)) => Ok(StreamEvent::Done(usage_of(&done.usage))),
                    Some(Response::ModelError(message, _)) => Err(EngineError::Generation(message)),
                    Some(Response::InternalError(err)) | Some(Response::ValidationError(err)) => {
                        Err(EngineError::Generation(err.to_string()))
                    }
                    Some(_) => Err(EngineError::Generation("unexpected response kind".into())),
                };
                let _ = events.send(event).await;
                return;
            }
        });
        Ok(reply)
    }
}
