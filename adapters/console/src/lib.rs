//! The console channel: one customer at a terminal or behind a pipe. Reads
//! stdin line by line and streams replies to stdout; prompts and diagnostics
//! go to stderr so stdout carries only the conversation's replies. Buttons
//! are printed numbered; typing a number presses one.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use concierge_adapter::{
    AdapterError, Capabilities, ChatKind, ConversationRef, DeltaStream, Inbound, InboundContent,
    InboundSink, Intake, Outbound, Outbox, SenderRef, SentMessage,
};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

/// Platform name of this channel.
pub const PLATFORM: &str = "console";

/// Longest line accepted from stdin, in bytes; longer input is cut there with
/// a warning on stderr instead of growing memory without bound.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// The console adapter. One process is one customer (`user_id`).
pub struct ConsoleAdapter {
    /// Stable id of the customer at this console.
    user_id: String,
    /// Serialises writes so replies never interleave.
    stdout: Mutex<tokio::io::Stdout>,
    /// Signalled when a reply is complete, so the next prompt can be shown.
    reply_done: Arc<Notify>,
    /// Whether stdin is a terminal (then prompts are shown).
    interactive: bool,
    /// The ids of the buttons printed since the last line was read, by number.
    offered: std::sync::Mutex<Vec<String>>,
}

impl ConsoleAdapter {
    /// A console for the customer `user_id`.
    pub fn new(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            stdout: Mutex::new(tokio::io::stdout()),
            reply_done: Arc::new(Notify::new()),
            interactive: std::io::stdin().is_terminal(),
            offered: Default::default(),
        }
    }

    /// The conversation this console represents.
    pub fn conversation(&self) -> ConversationRef {
        ConversationRef {
            platform: PLATFORM.to_string(),
            chat_id: self.user_id.clone(),
        }
    }

    /// A line as the customer meant it: the number of a button printed
    /// since their last line presses it; anything else is text.
    fn content(&self, text: String) -> InboundContent {
        let offered = std::mem::take(
            &mut *self
                .offered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let pressed = text
            .trim()
            .parse::<usize>()
            .ok()
            .and_then(|number| number.checked_sub(1))
            .and_then(|index| offered.get(index));
        match pressed {
            Some(id) => InboundContent::Choice { id: id.clone() },
            None => InboundContent::Text(text),
        }
    }

    fn inbound(&self, text: String) -> Inbound {
        let content = self.content(text);
        Inbound {
            conversation: self.conversation(),
            chat: ChatKind::Private,
            sender: SenderRef {
                platform: PLATFORM.to_string(),
                user_id: self.user_id.clone(),
                display_name: None,
                language_hint: None,
            },
            content,
            message_id: None,
            delivery_id: None,
            in_reply_to: None,
            thread_parent: None,
            received_at: SystemTime::now(),
        }
    }

    async fn write_stdout(&self, text: &str) -> Result<(), AdapterError> {
        let mut out = self.stdout.lock().await;
        out.write_all(text.as_bytes()).await?;
        out.flush().await?;
        Ok(())
    }
}

/// Reads one line of at most `MAX_LINE_BYTES`, discarding the rest of an
/// over-long line. Returns `None` at EOF. Invalid UTF-8 is replaced.
async fn read_bounded_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<(String, bool)>> {
    let mut line = Vec::new();
    let mut truncated = false;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            if line.is_empty() && !truncated {
                return Ok(None);
            }
            break;
        }
        let (chunk, found_newline) = match buffer.iter().position(|&byte| byte == b'\n') {
            Some(at) => (&buffer[..at], true),
            None => (buffer, false),
        };
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        if chunk.len() > room {
            truncated = true;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let consumed = chunk.len() + usize::from(found_newline);
        reader.consume(consumed);
        if found_newline {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some((
        String::from_utf8_lossy(&line).into_owned(),
        truncated,
    )))
}

#[async_trait]
impl Intake for ConsoleAdapter {
    async fn run(
        &self,
        inbound: InboundSink,
        shutdown: CancellationToken,
    ) -> Result<(), AdapterError> {
        let mut stdin = BufReader::new(tokio::io::stdin());
        let mut stderr = tokio::io::stderr();
        loop {
            if self.interactive {
                stderr.write_all(b"> ").await?;
                stderr.flush().await?;
            }
            let line = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                line = read_bounded_line(&mut stdin) => line?,
            };
            let Some((text, truncated)) = line else {
                return Ok(());
            };
            if truncated {
                let warning = format!("(input longer than {MAX_LINE_BYTES} bytes was cut)\n");
                stderr.write_all(warning.as_bytes()).await?;
            }
            if text.trim().is_empty() {
                continue;
            }
            let notified = self.reply_done.notified();
            if inbound.send(self.inbound(text)).await.is_err() {
                return Ok(());
            }
            // Piped input waits too, so a number answers the buttons of the
            // reply before it.
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = notified => {}
            }
        }
    }
}

#[async_trait]
impl Outbox for ConsoleAdapter {
    fn platform(&self) -> &str {
        PLATFORM
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_message_chars: usize::MAX,
            appends_stream: true,
            can_edit: false,
            buttons: false,
            threads: false,
            typing: false,
        }
    }

    async fn send(&self, message: Outbound) -> Result<SentMessage, AdapterError> {
        let mut text = message.text;
        {
            let mut offered = self
                .offered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for choice in &message.choices {
                offered.push(choice.id.clone());
                text.push_str(&format!("\n  [{}] {}", offered.len(), choice.label));
            }
        }
        text.push('\n');
        self.write_stdout(&text).await?;
        Ok(SentMessage {
            conversation: message.conversation,
            message_id: String::new(),
        })
    }

    async fn reply_finished(&self, _conversation: &ConversationRef) {
        self.reply_done.notify_one();
    }

    async fn deliver_stream(
        &self,
        _conversation: &ConversationRef,
        mut deltas: DeltaStream,
    ) -> Result<String, AdapterError> {
        let mut full = String::new();
        while let Some(delta) = deltas.next().await {
            self.write_stdout(&delta).await?;
            full.push_str(&delta);
        }
        self.write_stdout("\n").await?;
        Ok(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_lossy() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let mut bytes = format!("hello\r\n{long}\n\u{4f60}\u{597d}\n").into_bytes();
        bytes.extend_from_slice(&[0xFF, b'b', b'a', b'd']);
        let mut reader = BufReader::new(&bytes[..]);
        let first = read_bounded_line(&mut reader).await.unwrap().unwrap();
        assert_eq!(first, ("hello".to_string(), false));
        let (second, truncated) = read_bounded_line(&mut reader).await.unwrap().unwrap();
        assert!(truncated);
        assert_eq!(second.len(), MAX_LINE_BYTES);
        let third = read_bounded_line(&mut reader).await.unwrap().unwrap();
        assert_eq!(third.0, "你好");
        let fourth = read_bounded_line(&mut reader).await.unwrap().unwrap();
        assert!(fourth.0.contains('\u{FFFD}'));
        assert!(read_bounded_line(&mut reader).await.unwrap().is_none());
    }
}
