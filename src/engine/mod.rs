//! The language-model engine behind one trait, `Llm`: streaming chat with
//! cancellation, and token counting with the model's own tokenizer. `cpu` is
//! Concierge's own quantised CPU path (llama family, qwen2); `mistral` runs
//! everything else and the GPU builds, and is the only importer of
//! `mistralrs`; `remote` talks to a pool of OpenAI-compatible servers; the
//! scripted implementation is a test double driven by a script file.
//!
//! Architecture invariant: callers see `Llm` only, never a mistral.rs type, so
//! a remote OpenAI-compatible engine can replace the in-process one.

pub mod convert;
pub mod cpu;
pub mod gguf;
pub mod mistral;
pub mod remote;
pub mod scripted;

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Who speaks in a chat message given to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatRole {
    /// Instructions.
    System,
    /// The customer.
    User,
    /// The bot.
    Assistant,
}

/// One message of a prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: ChatRole,
    /// What they say.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// Sampling settings of one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 decodes greedily.
    pub temperature: f64,
    /// Nucleus sampling mass.
    pub top_p: f64,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Penalty on tokens already in the context; 1.0 is none. Small models
    /// loop without it.
    pub repetition_penalty: f32,
    /// Most likely tokens kept before nucleus sampling; 0 keeps all.
    pub top_k: usize,
    /// Seed of the sampler, for reproducible replies; `None` draws one.
    pub seed: Option<u64>,
}

/// A chat request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// System prompt, history and the new message, oldest first.
    pub messages: Vec<ChatMessage>,
    /// How to sample.
    pub sampling: Sampling,
}

/// Token counts and speeds of a finished reply.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens taken from the prefix cache instead of computed (0 when
    /// the engine does not report it).
    pub cached_prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt processing speed, tokens per second.
    pub prompt_tokens_per_sec: f64,
    /// Generation speed, tokens per second.
    pub decode_tokens_per_sec: f64,
}

/// One event of a streamed reply.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// More text.
    Delta(String),
    /// The reply is complete.
    Done(Usage),
}

/// A streamed reply. Dropping it cancels generation.
pub type ReplyStream = mpsc::Receiver<Result<StreamEvent, EngineError>>;

/// Errors of the engine, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file does not exist.
    #[error("model file {path} not found: run `models/fetch` (or `concierge models fetch`), or set engine.model_path")]
    ModelMissing {
        /// Expected location.
        path: PathBuf,
    },
    /// The model file cannot be read.
    #[error("cannot read model file {path}: {detail}")]
    ModelUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The model file is damaged or not GGUF.
    #[error("model file {path} is corrupt: {detail}; delete it and run `models/fetch` again")]
    ModelCorrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The architecture is not one mistral.rs can run.
    #[error("model file {path} has architecture {architecture:?}, which this engine cannot run; supported: {supported}", supported = gguf::SUPPORTED_ARCHITECTURES.join(", "))]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// `general.architecture`.
        architecture: String,
    },
    /// The file is valid but uses something the CPU engine does not implement.
    #[error("model file {path} cannot run on the cpu backend: {detail}; use engine.backend = \"auto\" or \"mistralrs\" to run it on mistral.rs")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported, naming the key, tensor or type.
        detail: String,
    },
    /// Loading failed inside the engine.
    #[error("loading the model failed: {0}")]
    Load(String),
    /// Converting the model failed.
    #[error("converting the model failed: {0}")]
    Convert(String),
    /// A request failed.
    #[error("generation failed: {0}")]
    Generation(String),
    /// The scripted engine's script is unusable.
    #[error("engine script {path}: {detail}")]
    Script {
        /// The script file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// A chat model.
#[async_trait]
pub trait Llm: Send + Sync + 'static {
    /// A short name of the loaded model, for logs and `/healthz`.
    fn model_name(&self) -> &str;

    /// Tokens that `text` takes in this model's vocabulary.
    fn count_tokens(&self, text: &str) -> usize;

    /// The vocabulary's special tokens as text (`<|im_start|>`, …), which
    /// customer text is cleared of before it reaches the model.
    fn special_tokens(&self) -> &[String] {
        &[]
    }

    /// The state of each inference endpoint, for engines that call servers
    /// (`None` for engines in process).
    fn remote_endpoints(&self) -> Option<Vec<remote::EndpointHealth>> {
        None
    }

    /// For a choice held to `labels`: the log-probability that the reply
    /// to `messages` begins with each label, from its first token (every
    /// token that begins the label counts, in any case and spacing). `None`
    /// where the engine cannot score (the default); callers then generate
    /// and read the reply.
    async fn label_log_probs(
        &self,
        _messages: &[ChatMessage],
        _labels: &[&str],
    ) -> Result<Option<Vec<f32>>, EngineError> {
        Ok(None)
    }

    /// Starts generating a reply. Events arrive on the returned stream until
    /// `Done` or an error; `cancel` (or dropping the stream) stops generation.
    async fn stream_chat(
        &self,
        request: ChatRequest,
        cancel: CancellationToken,
    ) -> Result<ReplyStream, EngineError>;
}

/// Whether a token whose text is `token` may begin a reply `label` (given
/// lowercased, without surrounding spaces): how both engines that score
/// labels count "Yes" and " yes" for "yes".
pub fn begins_label(token: &str, label: &str) -> bool {
    let token = token.trim().to_lowercase();
    !token.is_empty() && label.starts_with(&token)
}

/// A token estimate for models whose tokenizer is not available: one token
/// per CJK character, and about one per four bytes of other text.
pub fn estimate_tokens(text: &str) -> usize {
    let cjk = text
        .chars()
        .filter(|&ch| crate::language::is_cjk(ch))
        .count();
    let other_bytes: usize = text
        .chars()
        .filter(|&ch| !crate::language::is_cjk(ch))
        .map(char::len_utf8)
        .sum();
    cjk + other_bytes.div_ceil(4)
}
