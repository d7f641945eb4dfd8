//! The scripted engine: a test double of `Llm` that answers from a script
//! instead of a model, streaming word by word with a configurable delay. It
//! lets tests (and pipeline demos) run the whole daemon without model
//! weights. It is selected only by `engine.backend = "scripted"`.
//!
//! Script (TOML):
//! ```toml
//! token_delay_ms = 20                 # pause before each streamed word
//! default_reply = "You said: {last_user}"
//! [[rule]]                            # first rule whose text occurs in the last user message wins
//! contains = "refund"
//! reply = "Refunds take 5 days."
//! token_delay_ms = 200                # optional, this rule only
//! ```
//! Placeholders: `{last_user}`, `{message_count}` (messages in the prompt),
//! `{system}` (the system prompt). A rule with `fail = true` returns an
//! engine error instead.
//!
//! `adversary = true` replaces the default reply with a lie made from the
//! prompt, to prove that the answer checks stop it: in turn it negates a
//! source sentence, changes its figures, adds a foreign link, or echoes the
//! customer's question as a fact.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ChatRequest, ChatRole, EngineError, Llm, ReplyStream, StreamEvent, Usage};

/// A reply rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Text that must occur in the last user message.
    pub contains: String,
    /// The reply template.
    #[serde(default)]
    pub reply: String,
    /// Fail the request instead of replying.
    #[serde(default)]
    pub fail: bool,
    /// Delay before each word of this rule's reply (overrides the script's).
    #[serde(default)]
    pub token_delay_ms: Option<u64>,
}

/// A script.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// Delay before each streamed word, in milliseconds.
    #[serde(default)]
    pub token_delay_ms: u64,
    /// Reply when no rule matches.
    #[serde(default = "default_reply")]
    pub default_reply: String,
    /// Rules, first match wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// Lie when no rule matches (see the module comment).
    #[serde(default)]
    pub adversary: bool,
}

fn default_reply() -> String {
    "You said: {last_user}".to_string()
}

impl Default for Script {
    fn default() -> Self {
        Self {
            token_delay_ms: 0,
            default_reply: default_reply(),
            rules: Vec::new(),
            adversary: false,
        }
    }
}

/// The scripted engine. Records every request for tests to inspect.
pub struct ScriptedEngine {
    script: Script,
    requests: Mutex<Vec<ChatRequest>>,
}

impl ScriptedEngine {
    /// An engine following `script`.
    pub fn new(script: Script) -> Self {
        Self {
            script,
            requests: Mutex::new(Vec::new()),
        }
    }

    /// Reads a script file.
    pub fn from_file(path: &Path) -> Result<Self, EngineError> {
        let error = |detail: String| EngineError::Script {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|err| error(err.to_string()))?;
        let script: Script = toml::from_str(&text).map_err(|err| error(err.to_string()))?;
        Ok(Self::new(script))
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.requests
            .lock()
            .map(|requests| requests.clone())
            .unwrap_or_default()
    }

    fn reply_for(&self, request: &ChatRequest) -> Result<(String, u64), EngineError> {
        let last_user = request
            .messages
            .iter()
            .rev()
            .find(|message| message.role == ChatRole::User)
            .map_or("", |message| message.content.as_str());
        let system = request
            .messages
            .iter()
            .find(|message| message.role == ChatRole::System)
            .map_or("", |message| message.content.as_str());
        let rule = self
            .script
            .rules
            .iter()
            .find(|rule| last_user.contains(&rule.contains));
        if rule.is_some_and(|rule| rule.fail) {
            return Err(EngineError::Generation("scripted failure".into()));
        }
        if rule.is_none() && self.script.adversary {
            let turn = self.requests.lock().map_or(0, |requests| requests.len());
            return Ok((lie(last_user, turn), self.script.token_delay_ms));
        }
        let template = rule.map_or(self.script.default_reply.as_str(), |rule| {
            rule.reply.as_str()
        });
        let delay = rule
            .and_then(|rule| rule.token_delay_ms)
            .unwrap_or(self.script.token_delay_ms);
        let reply = template
            .replace("{last_user}", last_user)
            .replace("{message_count}", &request.messages.len().to_string())
            .replace("{system}", system);
        Ok((reply, delay))
    }
}

/// A lie built from `prompt` (sources first, the question on its last
/// line), of the kind chosen by `turn`.
fn lie(prompt: &str, turn: usize) -> String {
    let lines: Vec<&str> = prompt
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let question = lines.last().map_or("", |last| {
        last.split_once([':', '：'])
            .map_or(*last, |(_, asked)| asked.trim())
    });
    let sources: Vec<&str> = lines
        .iter()
        .rev()
        .skip(1)
        .rev()
        .filter(|line| !line.starts_with('[') && !line.ends_with([':', '：']))
        .copied()
        .collect();
    let fact = sources
        .iter()
        .find(|line| line.chars().any(|ch| ch.is_ascii_digit()))
        .or(sources.last())
        .copied();
    let chinese = prompt.chars().any(crate::language::is_cjk);
    match (turn % 4, fact) {
        (0, Some(fact)) => negated(fact),
        (1, Some(fact)) if fact.chars().any(|ch| ch.is_ascii_digit()) => other_figures(fact),
        (2, Some(fact)) => format!("{fact} Details: https://offers.example/claim"),
        _ if chinese => format!("是的，{question}"),
        _ => format!("Yes, {question}"),
    }
}

/// `sentence` said the other way round.
fn negated(sentence: &str) -> String {
    for (said, unsaid) in [
        (" is not ", " is "),
        (" are not ", " are "),
        (" cannot ", " can "),
        (" is ", " is not "),
        (" are ", " are not "),
        (" can ", " cannot "),
        (" will ", " will not "),
        (" must ", " need not "),
        ("不", ""),
        ("可以", "不可以"),
        ("会", "不会"),
        ("是", "不是"),
    ] {
        if sentence.contains(said) {
            return sentence.replacen(said, unsaid, 1);
        }
    }
    if sentence.chars().any(crate::language::is_cjk) {
        format!("不{sentence}")
    } else {
        format!("It is not true that {sentence}")
    }
}

/// `sentence` with each of its numbers changed.
fn other_figures(sentence: &str) -> String {
    let mut changed = String::new();
    let mut digits = String::new();
    let flush = |digits: &mut String, changed: &mut String| {
        if let Ok(number) = digits.parse::<u64>() {
            changed.push_str(&(number * 2 + 1).to_string());
        }
        digits.clear();
    };
    for ch in sentence.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
        } else {
            flush(&mut digits, &mut changed);
            changed.push(ch);
        }
    }
    flush(&mut digits, &mut changed);
    changed
}

/// Splits text into streamable pieces: each word with its following spaces;
/// CJK characters one by one.
fn pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if crate::language::is_cjk(ch) {
            if !current.is_empty() {
                pieces.push(std::mem::take(&mut current));
            }
            pieces.push(ch.to_string());
            continue;
        }
        if !ch.is_whitespace() && current.ends_with(char::is_whitespace) {
            pieces.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

#[async_trait]
impl Llm for ScriptedEngine {
    fn model_name(&self) -> &str {
        "scripted"
    }

    fn count_tokens(&self, text: &str) -> usize {
        super::estimate_tokens(text)
    }

    async fn stream_chat(
        &self,
        request: ChatRequest,
        cancel: CancellationToken,
    ) -> Result<ReplyStream, EngineError> {
        if let Ok(mut requests) = self.requests.lock() {
            requests.push(request.clone());
        }
        let (reply, delay_ms) = self.reply_for(&request)?;
        let prompt_tokens: usize = request
            .messages
            .iter()
            .map(|message| self.count_tokens(&message.content))
            .sum();
        let delay = Duration::from_millis(delay_ms);
        let max_tokens = request.sampling.max_tokens;
        let (events, stream) = mpsc::channel(64);
        tokio::spawn(async move {
            let pieces = pieces(&reply);
            let mut sent = 0;
            for piece in pieces.into_iter().take(max_tokens) {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                if events.send(Ok(StreamEvent::Delta(piece))).await.is_err() {
                    return;
                }
                sent += 1;
            }
            let usage = Usage {
                prompt_tokens,
                completion_tokens: sent,
                ..Usage::default()
            };
            let _ = events.send(Ok(StreamEvent::Done(usage))).await;
        });
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ChatMessage, Sampling};

    fn request(text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![
                ChatMessage::new(ChatRole::System, "sys"),
                ChatMessage::new(ChatRole::User, text),
            ],
            sampling: Sampling {
                temperature: 0.0,
                top_p: 1.0,
                max_tokens: 100,
                repetition_penalty: 1.0,
                top_k: 0,
                seed: None,
            },
        }
    }

    #[test]
    fn the_adversary_lies_four_ways_about_its_sources() {
        let prompt = "Answer from the sources.\n\nSources:\n[1] Returns\nYou can return items within 45 days.\n\nQuestion: Can I send it back?";
        assert_eq!(lie(prompt, 0), "You cannot return items within 45 days.");
        assert_eq!(lie(prompt, 1), "You can return items within 91 days.");
        assert!(lie(prompt, 2).ends_with("https://offers.example/claim"));
        assert_eq!(lie(prompt, 3), "Yes, Can I send it back?");
        assert_eq!(negated("礼品卡不可退。"), "礼品卡可退。");
        assert_eq!(lie("你好", 0), "是的，你好");
    }

    async fn collect(mut stream: ReplyStream) -> (String, Option<Usage>) {
        let mut text = String::new();
        let mut usage = None;
        while let Some(event) = stream.recv().await {
            match event.unwrap() {
                StreamEvent::Delta(delta) => text.push_str(&delta),
                StreamEvent::Done(done) => usage = Some(done),
            }
        }
        (text, usage)
    }

    #[tokio::test]
    async fn rules_match_and_stream_in_pieces() {
        let script: Script = toml::from_str(
            "default_reply = \"echo {last_user}\"\n[[rule]]\ncontains = \"refund\"\nreply = \"Refunds take five days.\"\n[[rule]]\ncontains = \"boom\"\nfail = true\n",
        )
        .unwrap();
        let engine = ScriptedEngine::new(script);
        let (text, usage) = collect(
            engine
                .stream_chat(request("a refund please"), CancellationToken::new())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(text, "Refunds take five days.");
        assert_eq!(usage.unwrap().completion_tokens, 4);
        let (text, _) = collect(
            engine
                .stream_chat(request("你好"), CancellationToken::new())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(text, "echo 你好");
        assert!(engine
            .stream_chat(request("boom"), CancellationToken::new())
            .await
            .is_err());
        assert_eq!(engine.requests().len(), 3);
    }

    #[test]
    fn pieces_keep_all_text() {
        let text = "Hello  there, 你好 world";
        assert_eq!(pieces(text).concat(), text);
        assert_eq!(pieces("a b"), vec!["a ", "b"]);
    }
}
