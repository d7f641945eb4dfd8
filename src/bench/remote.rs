//! `concierge bench remote`: the daemon's own cost when the model runs on an
//! OpenAI-compatible server. A local stand-in server answers every request
//! with a fixed time to first token and a fixed token rate; whole messages go
//! through the router and pipeline to the remote engine and back, and the
//! bench reports how much each reply took beyond the server's own time, and
//! how many conversations at once complete without an error.
//!
//! Each level keeps that many conversations going at once: they start
//! spread over one server reply time (as conversations already under way
//! are), and each sends its next message when its last reply is complete.

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

use super::percentile;
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
    /// Conversations going on at once.
    pub concurrent: usize,
    /// Replies measured (conversations times messages each).
    pub replies: usize,
    /// Replies that did not arrive whole.
    pub errors: usize,
    /// Time beyond the server's own, per reply: median.
    pub overhead_p50_ms: f64,
    /// The same, 99th percentile.
    pub overhead_p99_ms: f64,
    /// 99th percentile over each conversation's first reply only: a new
    /// customer, whose data key is written and synced and profile created.
    pub first_reply_overhead_p99_ms: f64,
    /// 99th percentile over the other replies: customers the store knows.
    pub returning_overhead_p99_ms: f64,
    /// From the first message to the last reply.
    pub wall_ms: f64,
    /// CPU time of this process (daemon and stand-in server together) per
    /// reply, user and system; 0 where /proc is missing.
    pub cpu_ms_per_reply: f64,
    /// The same without the stand-in server's thread: the daemon's own.
    pub daemon_cpu_ms_per_reply: f64,
    /// Connections the stand-in server accepted at this level.
    pub server_connections: usize,
    /// Database flushes (a disk write and sync each) per reply: requests
    /// made together share one.
    pub disk_flushes_per_reply: f64,
}

/// What the bench prints.
#[derive(Debug, Serialize)]
pub struct RemoteFigures {
    /// The stand-in server's pace.
    pub server: ServerPace,
    /// The server's own time per reply as scheduled (overheads are taken
    /// above the time it really spent on each request).
    pub server_reply_ms: f64,
    /// Messages each conversation sends, one after the other's reply.
    pub messages_per_conversation: usize,
    /// Each level measured.
    pub levels: Vec<LevelFigures>,
    /// The most conversations at once that completed without an error.
    pub sustained_concurrent: usize,
}

/// How long the stand-in server spent on each request (by its marker),
/// from its first byte received to its last byte sent, and how many
/// connections it accepted.
#[derive(Default)]
struct ServerLog {
    times: Mutex<HashMap<String, Duration>>,
    connections: std::sync::atomic::AtomicUsize,
}

/// Answers chat completions at `pace`, keeping connections open between
/// requests as inference servers do. It runs on a thread and runtime of its
/// own, as a server in another process would, so that its tasks do not
/// queue in front of the daemon's.
fn stand_in_server(pace: ServerPace, log: Arc<ServerLog>) -> anyhow::Result<String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the stand-in server's runtime")?;
    std::thread::Builder::new()
        .name(SERVER_THREAD.into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                while let Ok((stream, _)) = listener.accept().await {
                    log.connections
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::spawn(serve_connection(stream, pace, Arc::clone(&log)));
                }
            })
        })
        .context("cannot start the stand-in server's thread")?;
    Ok(url)
}

/// One HTTP/1.1 chunk.
fn chunk(bytes: &[u8]) -> Vec<u8> {
    let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
    framed.extend_from_slice(bytes);
    framed.extend_from_slice(b"\r\n");
    framed
}

/// Requests on one connection, one after the other, each answered with an
/// event stream in chunked encoding.
async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    pace: ServerPace,
    log: Arc<ServerLog>,
) -> std::io::Result<()> {
    let token = chunk(
        format!(
            "data: {}\n\n",
            serde_json::json!({
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": null}],
            })
        )
        .as_bytes(),
    );
    let mut end = chunk(
        format!(
            "data: {}\n\ndata: [DONE]\n\n",
            serde_json::json!({
                "object": "chat.completion.chunk", "choices": [],
                "usage": {"prompt_tokens": 40, "completion_tokens": pace.tokens},
            })
        )
        .as_bytes(),
    );
    end.extend_from_slice(b"0\r\n\r\n");
    let per_token = Duration::from_secs(1) / pace.tokens_per_sec.max(1) as u32;
    let mut pending = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        // The request: headers, then as many body bytes as they announce.
        let mut received = (!pending.is_empty()).then(Instant::now);
        let body_start = loop {
            if let Some(at) = pending.windows(4).position(|window| window == b"\r\n\r\n") {
                break at + 4;
            }
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                return Ok(());
            }
            received.get_or_insert_with(Instant::now);
            pending.extend_from_slice(&buffer[..read]);
        };
        let headers = String::from_utf8_lossy(&pending[..body_start]).to_ascii_lowercase();
        let length: usize = headers
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        while pending.len() < body_start + length {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                return Ok(());
            }
            pending.extend_from_slice(&buffer[..read]);
        }
        let mark = marked_chat(&String::from_utf8_lossy(
            &pending[body_start..body_start + length],
        ));
        pending.drain(..body_start + length);
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
            .await?;
        tokio::time::sleep(Duration::from_millis(pace.first_token_ms)).await;
        for index in 0..pace.tokens {
            if index > 0 {
                tokio::time::sleep(per_token).await;
            }
            stream.write_all(&token).await?;
        }
        stream.write_all(&end).await?;
        if let (Some(mark), Some(received)) = (mark, received) {
            if let Ok(mut times) = log.times.lock() {
                times.insert(mark, received.elapsed());
            }
        }
    }
}

/// The conversation a request belongs to, from the marker in its message.
fn marked_chat(text: &str) -> Option<String> {
    let start = text.rfind(MARKER)? + MARKER.len();
    let end = text[start..].find(']')? + start;
    Some(text[start..end].to_string())
}

/// Marks each message with its conversation, so the server can time it.
const MARKER: &str = "[bench:";

/// A finished reply: its text and when its handling ended.
type Finished = (String, Instant);

/// The channel of the bench: it gathers each conversation's reply and hands
/// it to the conversation waiting for it once the handling has ended.
#[derive(Default)]
struct BenchChannel {
    texts: Mutex<HashMap<String, String>>,
    waiting: Mutex<HashMap<String, tokio::sync::oneshot::Sender<Finished>>>,
}

impl BenchChannel {
    fn append(&self, chat: &str, text: &str) {
        if let Ok(mut texts) = self.texts.lock() {
            texts.entry(chat.to_string()).or_default().push_str(text);
        }
    }

    /// Where the next reply in `chat` will be handed.
    fn expect(&self, chat: &str) -> tokio::sync::oneshot::Receiver<Finished> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(chat.to_string(), sender);
        }
        receiver
    }
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
        self.append(&message.conversation.chat_id, &message.text);
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
        self.append(&conversation.chat_id, &text);
        Ok(text)
    }

    async fn reply_finished(&self, conversation: &ConversationRef) {
        let ended = Instant::now();
        let text = self
            .texts
            .lock()
            .ok()
            .and_then(|mut texts| texts.remove(&conversation.chat_id))
            .unwrap_or_default();
        let waiter = self
            .waiting
            .lock()
            .ok()
            .and_then(|mut waiting| waiting.remove(&conversation.chat_id));
        if let Some(waiter) = waiter {
            let _ = waiter.send((text, ended));
        }
    }
}

/// One conversation of a level: `messages` messages, each sent when the
/// reply to the one before is complete. Returns, per message, when it was
/// sent and its reply (`None` when none came within a minute).
async fn converse(
    chat: String,
    messages: usize,
    start_after: Duration,
    channel: Arc<BenchChannel>,
    sink: tokio::sync::mpsc::Sender<crate::inbox::Delivery>,
) -> Vec<(String, Instant, Option<Finished>)> {
    tokio::time::sleep(start_after).await;
    let mut outcomes = Vec::with_capacity(messages);
    for index in 0..messages {
        let mark = format!("{chat}#{index}");
        let reply = channel.expect(&chat);
        let sent = Instant::now();
        if sink
            .send(crate::inbox::Delivery::transient(message(&chat, &mark)))
            .await
            .is_err()
        {
            outcomes.push((mark, sent, None));
            break;
        }
        let finished = tokio::time::timeout(Duration::from_secs(60), reply)
            .await
            .ok()
            .and_then(Result::ok);
        let gave_up = finished.is_none();
        outcomes.push((mark, sent, finished));
        if gave_up {
            break;
        }
    }
    outcomes
}

fn message(chat: &str, mark: &str) -> Inbound {
    let text = format!("Could you tell me more about the warranty? {MARKER}{mark}]");
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

/// CPU time this process has used, user and system; zero where it cannot
/// be read.
fn process_cpu() -> Duration {
    cpu_of_stat(std::path::Path::new("/proc/self/stat"))
}

/// CPU time of the stand-in server's thread (named `bench-server`).
fn server_thread_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim() == SERVER_THREAD)
        })
        .map(|task| cpu_of_stat(&task.path().join("stat")))
        .sum()
}

/// utime + stime of a `/proc` stat file, in the kernel's fixed 100 ticks
/// per second.
fn cpu_of_stat(path: &std::path::Path) -> Duration {
    let ticks = std::fs::read_to_string(path)
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which is in parentheses.
            let fields: Vec<u64> = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .map(|field| field.parse().unwrap_or(0))
                .collect();
            // utime and stime are fields 14 and 15; 12 and 13 here.
            Some(fields.get(11)? + fields.get(12)?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// The name of the stand-in server's thread.
const SERVER_THREAD: &str = "bench-server";

/// Runs the bench at each level of `concurrency`.
pub async fn run(
    config: &Config,
    pace: ServerPace,
    concurrency: &[usize],
    messages_per_conversation: usize,
) -> anyhow::Result<RemoteFigures> {
    let messages = messages_per_conversation.max(1);
    let server_log = Arc::new(ServerLog::default());
    let url = stand_in_server(pace, Arc::clone(&server_log))?;
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
    let flushes = store.clone();
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
        let spread = pace.reply_time() / count.max(1) as u32;
        let started = Instant::now();
        let cpu_before = process_cpu();
        let flushes_before = flushes.database_flushes();
        let server_cpu_before = server_thread_cpu();
        let connections_before = server_log
            .connections
            .load(std::sync::atomic::Ordering::Relaxed);
        let conversations: Vec<_> = (0..count)
            .map(|index| {
                tokio::spawn(converse(
                    format!("r{round}-c{index}"),
                    messages,
                    spread * index as u32,
                    Arc::clone(&channel),
                    sink.clone(),
                ))
            })
            .collect();
        drop(sink);
        let mut outcomes = Vec::with_capacity(count * messages);
        for conversation in conversations {
            outcomes.extend(conversation.await.context("a bench conversation failed")?);
        }
        tokio::time::timeout(Duration::from_secs(60), router)
            .await
            .context("the router did not stop")?
            .context("the router failed")?;
        let wall = started.elapsed();
        let flushes_made = flushes.database_flushes() - flushes_before;
        let cpu = process_cpu().saturating_sub(cpu_before);
        let server_cpu = server_thread_cpu().saturating_sub(server_cpu_before);
        let connections = server_log
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            - connections_before;
        let served = std::mem::take(
            &mut *server_log
                .times
                .lock()
                .map_err(|_| anyhow::anyhow!("bench server times poisoned"))?,
        );
        let mut overheads = Vec::new();
        let mut first_overheads = Vec::new();
        let mut returning_overheads = Vec::new();
        let mut errors = count * messages - outcomes.len();
        for (mark, sent, finished) in &outcomes {
            match (finished, served.get(mark)) {
                (Some((text, ended)), Some(served)) if text.trim() == expected.trim() => {
                    let took = ended.duration_since(*sent);
                    let overhead = took.saturating_sub(*served).as_secs_f64() * 1000.0;
                    overheads.push(overhead);
                    if mark.ends_with("#0") {
                        first_overheads.push(overhead);
                    } else {
                        returning_overheads.push(overhead);
                    }
                }
                _ => errors += 1,
            }
        }
        first_overheads.sort_by(f64::total_cmp);
        returning_overheads.sort_by(f64::total_cmp);
        overheads.sort_by(f64::total_cmp);
        levels.push(LevelFigures {
            concurrent: count,
            replies: count * messages,
            errors,
            overhead_p50_ms: percentile(&overheads, 0.5),
            overhead_p99_ms: percentile(&overheads, 0.99),
            first_reply_overhead_p99_ms: percentile(&first_overheads, 0.99),
            returning_overhead_p99_ms: percentile(&returning_overheads, 0.99),
            wall_ms: wall.as_secs_f64() * 1000.0,
            cpu_ms_per_reply: cpu.as_secs_f64() * 1000.0 / (count * messages).max(1) as f64,
            daemon_cpu_ms_per_reply: cpu.saturating_sub(server_cpu).as_secs_f64() * 1000.0
                / (count * messages).max(1) as f64,
            server_connections: connections,
            disk_flushes_per_reply: flushes_made as f64 / (count * messages).max(1) as f64,
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
        messages_per_conversation: messages,
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
            marked_chat(r#"{"content":"warranty? [bench:r0-c7#2]"}"#).as_deref(),
            Some("r0-c7#2")
        );
    }
}
