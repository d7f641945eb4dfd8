//! `concierge bench remote`: the daemon's own cost when the model runs on an
//! OpenAI-compatible server. A local stand-in server answers every request
//! with a fixed time to first token and a fixed token rate; whole messages go
//! through the router and pipeline to the remote engine and back, and the
//! bench reports how much each reply took beyond the server's own time, and
//! how many conversations at once complete without an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use async_trait::async_trait;
use concierge_adapter::{
    collect_stream, AdapterError, Capabilities, ChatKind, ConversationRef, DeltaStream, Inbound,
    InboundContent, Outbound, Outbox, SenderRef, SentMessage,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EngineBackend};

const PLATFORM: &str = "bench";

/// How the stand-in server answers.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ServerPace {
    /// Time to the first token.
    pub first_token_ms: u64,
    /// Tokens per second of each stream.
    pub tokens_per_sec: u64,
    /// Tokens per reply.
    pub tokens: usize,
}

impl ServerPace {
    /// The server's own time for one reply.
    fn reply_time(&self) -> Duration {
        let per_token = Duration::from_secs(1) / self.tokens_per_sec.max(1) as u32;
        Duration::from_millis(self.first_token_ms) + per_token * (self.tokens as u32 - 1)
    }
}

/// Figures at one level of concurrency.
#[derive(Debug, Serialize)]
pub struct LevelFigures {
    /// Conversations sending one message each at the same moment.
    pub concurrent: usize,
    /// Replies that did not arrive whole.
    pub errors: usize,
    /// Time beyond the server's own, per reply: median.
    pub overhead_p50_ms: f64,
    /// The same, 99th percentile.
    pub overhead_p99_ms: f64,
    /// From the first message to the last reply.
    pub wall_ms: f64,
}

/// What the bench prints.
#[derive(Debug, Serialize)]
pub struct RemoteFigures {
    /// The stand-in server's pace.
    pub server: ServerPace,
    /// The server's own time per reply as scheduled (overheads are taken
    /// above the time it really spent on each request).
    pub server_reply_ms: f64,
    /// Each level measured.
    pub levels: Vec<LevelFigures>,
    /// The most conversations at once that completed without an error.
    pub sustained_concurrent: usize,
}

/// How long the stand-in server spent on each conversation's request, from
/// its first byte received to its last byte sent.
type ServerTimes = Arc<Mutex<HashMap<String, Duration>>>;

/// Answers chat completions at `pace`, one connection per request.
async fn stand_in_server(pace: ServerPace, times: ServerTimes) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, pace, Arc::clone(&times)));
        }
    });
    Ok(url)
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    pace: ServerPace,
    times: ServerTimes,
) -> std::io::Result<()> {
    // The request: headers, then as many body bytes as they announce.
    let mut request = Vec::new();
    let mut buffer = [0u8; 8192];
    let mut received = None;
    let body_start = loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        received.get_or_insert_with(Instant::now);
        request.extend_from_slice(&buffer[..read]);
        if let Some(at) = request.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let headers = String::from_utf8_lossy(&request[..body_start]).to_ascii_lowercase();
    let length: usize = headers
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < body_start + length {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buffer[..read]);
    }
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n")
        .await?;
    let per_token = Duration::from_secs(1) / pace.tokens_per_sec.max(1) as u32;
    tokio::time::sleep(Duration::from_millis(pace.first_token_ms)).await;
    for index in 0..pace.tokens {
        if index > 0 {
            tokio::time::sleep(per_token).await;
        }
        let event = serde_json::json!({
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": null}],
        });
        stream
            .write_all(format!("data: {event}\n\n").as_bytes())
            .await?;
    }
    let usage = serde_json::json!({
        "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": 40, "completion_tokens": pace.tokens},
    });
    stream
        .write_all(format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes())
        .await?;
    let body = String::from_utf8_lossy(&request[body_start..]);
    if let (Some(chat), Some(received)) = (marked_chat(&body), received) {
        if let Ok(mut times) = times.lock() {
            times.insert(chat, received.elapsed());
        }
    }
    stream.shutdown().await
}

/// The conversation a request belongs to, from the marker in its message.
fn marked_chat(text: &str) -> Option<String> {
    let start = text.rfind(MARKER)? + MARKER.len();
    let end = text[start..].find(']')? + start;
    Some(text[start..end].to_string())
}

/// Marks each message with its conversation, so the server can time it.
const MARKER: &str = "[bench:";

/// The channel of the bench: it keeps each conversation's reply and when
/// its handling ended.
#[derive(Default)]
struct BenchChannel {
    replies: Mutex<HashMap<String, (String, Option<Instant>)>>,
    done: tokio::sync::Notify,
}

#[async_trait]
impl Outbox for BenchChannel {
    fn platform(&self) -> &str {
        PLATFORM
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_message_chars: 1 << 20,
            appends_stream: true,
            can_edit: false,
            buttons: false,
            threads: false,
            typing: false,
        }
    }

    async fn send(&self, message: Outbound) -> Result<SentMessage, AdapterError> {
        if let Ok(mut replies) = self.replies.lock() {
            replies
                .entry(message.conversation.chat_id.clone())
                .or_default()
                .0
                .push_str(&message.text);
        }
        Ok(SentMessage {
            conversation: message.conversation,
            message_id: String::new(),
        })
    }

    async fn deliver_stream(
        &self,
        conversation: &ConversationRef,
        deltas: DeltaStream,
    ) -> Result<String, AdapterError> {
        let text = collect_stream(deltas).await;
        if let Ok(mut replies) = self.replies.lock() {
            replies
                .entry(conversation.chat_id.clone())
                .or_default()
                .0
                .push_str(&text);
        }
        Ok(text)
    }

    async fn reply_finished(&self, conversation: &ConversationRef) {
        if let Ok(mut replies) = self.replies.lock() {
            replies.entry(conversation.chat_id.clone()).or_default().1 = Some(Instant::now());
        }
        self.done.notify_one();
    }
}

fn message(chat: &str) -> Inbound {
    let text = format!("Could you tell me more about the warranty? {MARKER}{chat}]");
    Inbound {
        conversation: ConversationRef {
            platform: PLATFORM.into(),
            chat_id: chat.into(),
        },
        chat: ChatKind::Private,
        sender: SenderRef {
            platform: PLATFORM.into(),
            user_id: chat.into(),
            display_name: None,
            language_hint: None,
        },
        content: InboundContent::Text(text),
        message_id: None,
        delivery_id: None,
        in_reply_to: None,
        thread_parent: None,
        received_at: SystemTime::now(),
    }
}

fn percentile(sorted: &[f64], share: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * share).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Runs the bench at each level of `concurrency`.
pub async fn run(
    config: &Config,
    pace: ServerPace,
    concurrency: &[usize],
) -> anyhow::Result<RemoteFigures> {
    let server_times = ServerTimes::default();
    let url = stand_in_server(pace, Arc::clone(&server_times)).await?;
    let scratch = tempfile::tempdir().context("cannot create a scratch data directory")?;
    let mut config = config.clone();
    config.store.data_dir = scratch.path().to_path_buf();
    config.engine.backend = EngineBackend::Openai;
    config.engine.base_urls = vec![url::Url::parse(&url)?];
    config.engine.model = "bench".into();
    config.engine.api_key = None;
    config.engine.tokenizer = None;
    config.engine.max_tokens = pace.tokens.max(1) * 2;
    config.knowledge.demo = false;
    config.knowledge.paths.clear();
    let store = crate::app::open_store(&config).await?;
    let llm = crate::app::build_engine(&config).await?;
    let channel = Arc::new(BenchChannel::default());
    let pipeline = crate::app::pipeline_for(
        &config,
        crate::app::Parts {
            store,
            llm,
            prompts: crate::prompts::Prompts::built_in(),
            knowledge: None,
            recommender: None,
            classifier: None,
            escalation: None,
        },
        vec![Arc::clone(&channel) as Arc<dyn Outbox>],
        CancellationToken::new(),
    );
    let expected = "word ".repeat(pace.tokens);
    let mut levels = Vec::new();
    for (round, &count) in concurrency.iter().enumerate() {
        let (sink, delivered) = tokio::sync::mpsc::channel(count.max(1) * 2);
        let limits = crate::config::ModerationConfig {
            enabled: false,
            queue_per_conversation: count.max(1),
            ..config.moderation.clone()
        };
        let router = tokio::spawn(crate::router::run(
            delivered,
            crate::inbox::Inbox::transient(),
            Arc::clone(&pipeline) as Arc<dyn crate::router::Handler>,
            Default::default(),
            limits,
        ));
        let chats: Vec<String> = (0..count)
            .map(|index| format!("r{round}-c{index}"))
            .collect();
        let started = Instant::now();
        let mut sent_at = HashMap::new();
        for chat in &chats {
            sent_at.insert(chat.clone(), Instant::now());
            sink.send(crate::inbox::Delivery::transient(message(chat)))
                .await
                .map_err(|_| anyhow::anyhow!("the router stopped"))?;
        }
        drop(sink);
        tokio::time::timeout(Duration::from_secs(600), router)
            .await
            .context("replies took longer than 10 minutes")?
            .context("the router failed")?;
        let wall = started.elapsed();
        let replies = std::mem::take(
            &mut *channel
                .replies
                .lock()
                .map_err(|_| anyhow::anyhow!("bench channel poisoned"))?,
        );
        let served = std::mem::take(
            &mut *server_times
                .lock()
                .map_err(|_| anyhow::anyhow!("bench server times poisoned"))?,
        );
        let mut overheads = Vec::new();
        let mut errors = 0;
        for chat in &chats {
            match (replies.get(chat), served.get(chat)) {
                (Some((text, Some(finished))), Some(served)) if text.trim() == expected.trim() => {
                    let took = finished.duration_since(sent_at[chat]);
                    overheads.push(took.saturating_sub(*served).as_secs_f64() * 1000.0);
                }
                _ => errors += 1,
            }
        }
        overheads.sort_by(f64::total_cmp);
        levels.push(LevelFigures {
            concurrent: count,
            errors,
            overhead_p50_ms: percentile(&overheads, 0.5),
            overhead_p99_ms: percentile(&overheads, 0.99),
            wall_ms: wall.as_secs_f64() * 1000.0,
        });
    }
    let sustained_concurrent = levels
        .iter()
        .filter(|level| level.errors == 0)
        .map(|level| level.concurrent)
        .max()
        .unwrap_or(0);
    Ok(RemoteFigures {
        server: pace,
        server_reply_ms: pace.reply_time().as_secs_f64() * 1000.0,
        levels,
        sustained_concurrent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_time_counts_the_first_token_and_the_gaps() {
        let pace = ServerPace {
            first_token_ms: 50,
            tokens_per_sec: 100,
            tokens: 21,
        };
        assert_eq!(pace.reply_time(), Duration::from_millis(250));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
        assert_eq!(
            marked_chat(r#"{"content":"warranty? [bench:r0-c7]"}"#).as_deref(),
            Some("r0-c7")
        );
    }
}
