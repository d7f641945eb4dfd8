//! Concierge's own CPU inference path behind the `Llm` trait: GGUF weights
//! read in place (`weights`), int8 kernels chosen at run time and the thread
//! pool (`kernels`), the llama/qwen2 transformer (`model`), the sampler, the
//! model's chat template, and the scheduler (`scheduler`) that decodes all
//! running requests together in one batch per step and reuses cached
//! prompt prefixes.
//!
//! Architecture invariant: only `kernels` contains `unsafe`. The scheduler
//! thread owns the model, the caches and the pool; callers talk to it
//! through a channel, so `CpuEngine` is cheap to share.

pub mod kernels;
pub mod model;
pub mod sampler;
mod scheduler;
pub mod template;
pub mod weights;

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::kernels::{Isa, ThreadPool};
use self::model::{LoadOptions, Model};
use self::sampler::SamplerSettings;
use self::scheduler::{Job, Request, SchedulerSettings};
use self::template::ChatTemplate;
use super::{gguf, ChatRequest, EngineError, Llm, ReplyStream};
use crate::config::EngineConfig;

/// Whether the file at `path` can run on the CPU engine: its architecture,
/// metadata, tensors, tokenizer and chat template are all supported. The
/// error names what is not.
pub fn check_file(path: &Path) -> Result<(), EngineError> {
    let header = gguf::read_header(path)?;
    check_header(path, &header)
}

fn check_header(path: &Path, header: &gguf::GgufHeader) -> Result<(), EngineError> {
    model::ModelConfig::from_header(path, header)?;
    tokenizer_for(path, header)?;
    ChatTemplate::from_header(path, header)?;
    Ok(())
}

fn tokenizer_for(
    path: &Path,
    header: &gguf::GgufHeader,
) -> Result<tokenizers::Tokenizer, EngineError> {
    gguf::tokenizer_from_header(header).ok_or_else(|| {
        let kind = header
            .metadata
            .get("tokenizer.ggml.model")
            .and_then(gguf::MetaValue::as_str)
            .unwrap_or("none");
        EngineError::Unsupported {
            path: path.to_path_buf(),
            detail: format!(
                "tokenizer.ggml.model = {kind:?} (the cpu backend reads gpt2-style BPE and SentencePiece (llama) vocabularies)"
            ),
        }
    })
}

/// A GGUF model running on Concierge's own CPU kernels.
pub struct CpuEngine {
    name: String,
    tokenizer: Arc<tokenizers::Tokenizer>,
    special_tokens: Vec<String>,
    template: ChatTemplate,
    bos: Option<u32>,
    context_length: usize,
    isa: Isa,
    threads: usize,
    jobs: Mutex<Option<std_mpsc::Sender<Job>>>,
    scheduler: Mutex<Option<JoinHandle<()>>>,
    /// The vocabulary's tokens that begin each label scored so far.
    label_tokens: Mutex<std::collections::HashMap<String, Arc<Vec<u32>>>>,
}

impl CpuEngine {
    /// Checks and loads the GGUF file at `path`, and starts the scheduler.
    pub fn load(path: &Path, config: &EngineConfig) -> Result<Self, EngineError> {
        Self::load_with(path, config, false)
    }

    /// The same engine with every weight expanded to f32 and no activation
    /// quantisation: slow, the exact reference that accuracy tests measure
    /// both engines against.
    pub fn load_exact(path: &Path, config: &EngineConfig) -> Result<Self, EngineError> {
        Self::load_with(path, config, true)
    }

    fn load_with(path: &Path, config: &EngineConfig, exact: bool) -> Result<Self, EngineError> {
        let header = gguf::read_header(path)?;
        check_header(path, &header)?;
        let tokenizer = Arc::new(tokenizer_for(path, &header)?);
        let template = ChatTemplate::from_header(path, &header)?;
        let stops = template::stop_tokens(&header);
        // Without the key, SentencePiece vocabularies start with BOS and
        // byte-level ones do not (llama.cpp's defaults).
        let add_bos = match header.metadata.get("tokenizer.ggml.add_bos_token") {
            Some(gguf::MetaValue::Bool(add)) => *add,
            _ => {
                header
                    .metadata
                    .get("tokenizer.ggml.model")
                    .and_then(gguf::MetaValue::as_str)
                    == Some("llama")
            }
        };
        let bos = header
            .metadata
            .get("tokenizer.ggml.bos_token_id")
            .and_then(gguf::MetaValue::as_u64)
            .filter(|_| add_bos)
            .map(|id| id as u32);
        let isa = Isa::detect();
        let options = LoadOptions {
            exact,
            pack: isa.reads_packed_weights(),
            precise_activations: config.precise_activations,
        };
        let model = Model::load(path, &header, options)?;
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pool = ThreadPool::new(threads)
            .map_err(|err| EngineError::Load(format!("cannot start engine threads: {err}")))?;
        let context_length = model.config.context_length;
        tracing::info!(
            path = %path.display(),
            architecture = %model.config.architecture,
            layers = model.config.layers,
            isa = isa.name(),
            threads,
            "cpu engine loaded"
        );
        let settings = SchedulerSettings {
            max_sequences: config.max_num_seqs.max(1),
            retained_prefixes: config.prefix_cache,
            cache_bytes: config.kv_cache_mb.saturating_mul(1 << 20),
            stops,
        };
        let (jobs, receiver) = std_mpsc::channel();
        let scheduler_tokenizer = Arc::clone(&tokenizer);
        let handle = std::thread::Builder::new()
            .name("concierge-engine".into())
            .spawn(move || {
                scheduler::run(model, pool, isa, scheduler_tokenizer, settings, receiver)
            })
            .map_err(|err| EngineError::Load(format!("cannot start the engine thread: {err}")))?;
        let name = path.file_stem().map_or_else(
            || "model".to_string(),
            |stem| stem.to_string_lossy().into_owned(),
        );
        Ok(Self {
            name,
            tokenizer,
            special_tokens: gguf::special_token_strings(&header),
            template,
            bos,
            context_length,
            isa,
            threads,
            jobs: Mutex::new(Some(jobs)),
            scheduler: Mutex::new(Some(handle)),
            label_tokens: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The instruction set the kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Compute threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Token ids of plain `text` (special tokens written in it are matched).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        self.tokenizer
            .encode(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|err| EngineError::Generation(format!("tokenizing: {err}")))
    }

    /// The prompt tokens of `messages` after the chat template.
    pub fn prompt_tokens(&self, messages: &[super::ChatMessage]) -> Result<Vec<u32>, EngineError> {
        let text = self.template.render(messages)?;
        let encoding = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|err| EngineError::Generation(format!("tokenizing the prompt: {err}")))?;
        let mut tokens = encoding.get_ids().to_vec();
        if let Some(bos) = self.bos {
            if tokens.first() != Some(&bos) {
                tokens.insert(0, bos);
            }
        }
        Ok(tokens)
    }

    /// `prompt_tokens`, refused when they leave no room in the context.
    fn prompt_in_context(&self, messages: &[super::ChatMessage]) -> Result<Vec<u32>, EngineError> {
        let prompt = self.prompt_tokens(messages)?;
        if prompt.len() >= self.context_length {
            return Err(EngineError::Generation(format!(
                "the prompt has {} tokens; the model's context holds {}",
                prompt.len(),
                self.context_length
            )));
        }
        Ok(prompt)
    }

    fn submit(&self, job: Job) -> Result<(), EngineError> {
        let jobs = self
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        jobs.as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| EngineError::Generation("the engine thread has stopped".into()))
    }

    /// Next-token logits at every position of `tokens` (teacher forcing),
    /// computed in a fresh cache.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.submit_logits(tokens, false)?
            .recv()
            .map_err(|_| EngineError::Generation("the engine thread has stopped".into()))?
    }

    fn submit_logits(&self, tokens: &[u32], last_only: bool) -> Result<LogitsAnswer, EngineError> {
        let (reply, answer) = std_mpsc::channel();
        self.submit(Job::Logits {
            tokens: tokens.to_vec(),
            last_only,
            reply,
        })?;
        Ok(answer)
    }

    /// The tokens whose text begins `label`, and the first token of the
    /// label's own encoding (a piece of a character, for some scripts);
    /// found once per label by decoding the vocabulary.
    fn tokens_beginning(&self, label: &str) -> Result<Arc<Vec<u32>>, EngineError> {
        let mut cache = self
            .label_tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tokens) = cache.get(label) {
            return Ok(Arc::clone(tokens));
        }
        let lowered = label.trim().to_lowercase();
        let mut tokens: Vec<u32> = (0..self.tokenizer.get_vocab_size(true) as u32)
            .filter(|&id| {
                self.tokenizer
                    .decode(&[id], false)
                    .is_ok_and(|text| super::begins_label(&text, &lowered))
            })
            .collect();
        if let Some(&first) = self.encode(label)?.first() {
            if !tokens.contains(&first) {
                tokens.push(first);
            }
        }
        let tokens = Arc::new(tokens);
        cache.insert(label.to_string(), Arc::clone(&tokens));
        Ok(tokens)
    }

    /// The logits after the last of `tokens`, without holding a runtime
    /// thread while the engine works.
    async fn next_token_logits(&self, tokens: &[u32]) -> Result<Option<Vec<f32>>, EngineError> {
        let answer = self.submit_logits(tokens, true)?;
        let rows = tokio::task::spawn_blocking(move || answer.recv())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| EngineError::Generation("the engine thread has stopped".into()))??;
        Ok(rows.into_iter().last())
    }
}

type LogitsAnswer = std_mpsc::Receiver<Result<Vec<Vec<f32>>, EngineError>>;

/// `ln` of the softmax probability of `logits` summed over `tokens`.
fn log_probability_of_any(logits: &[f32], tokens: &[u32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = logits.iter().map(|logit| (logit - max).exp()).sum();
    let chosen: f32 = tokens
        .iter()
        .filter_map(|&token| logits.get(token as usize))
        .map(|logit| (logit - max).exp())
        .sum();
    (chosen / total).ln()
}

impl Drop for CpuEngine {
    fn drop(&mut self) {
        // Closing the job channel ends the scheduler after its running work.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = self
            .scheduler
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            let _ = handle.join();
        }
    }
}

#[async_trait]
impl Llm for CpuEngine {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn special_tokens(&self) -> &[String] {
        &self.special_tokens
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.tokenizer
            .encode(text, false)
            .map_or_else(|_| super::estimate_tokens(text), |encoding| encoding.len())
    }

    /// Each label scored as the remote engine scores it: the probability
    /// of the reply's first token, added up over the tokens that begin the
    /// label in any case and spacing ("Yes", " yes", "yes" for "yes").
    async fn label_log_probs(
        &self,
        messages: &[super::ChatMessage],
        labels: &[&str],
    ) -> Result<Option<Vec<f32>>, EngineError> {
        let prompt = self.prompt_in_context(messages)?;
        if prompt.is_empty() || labels.is_empty() {
            return Ok(None);
        }
        let beginnings = labels
            .iter()
            .map(|label| self.tokens_beginning(label))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(next) = self.next_token_logits(&prompt).await? else {
            return Ok(None);
        };
        Ok(Some(
            beginnings
                .iter()
                .map(|tokens| log_probability_of_any(&next, tokens))
                .collect(),
        ))
    }

    async fn stream_chat(
        &self,
        request: ChatRequest,
        cancel: CancellationToken,
    ) -> Result<ReplyStream, EngineError> {
        let prompt = self.prompt_in_context(&request.messages)?;
        let sampling = request.sampling;
        let (events, reply) = mpsc::channel(64);
        self.submit(Job::Generate(Request {
            prompt,
            settings: SamplerSettings {
                temperature: sampling.temperature as f32,
                top_p: sampling.top_p as f32,
                top_k: sampling.top_k,
                repetition_penalty: sampling.repetition_penalty,
                seed: sampling.seed,
            },
            max_tokens: sampling.max_tokens.min(self.context_length),
            events,
            cancel,
        }))?;
        Ok(reply)
    }
}
