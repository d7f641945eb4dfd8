//! Reply-delivery helpers: collecting a stream, and streaming by paced edits
//! for channels that can edit a sent message.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::{split_message, Adapter, AdapterError, ConversationRef, DeltaStream, Outbound};

/// Collects every delta of a stream into one text.
pub async fn collect_stream(mut deltas: DeltaStream) -> String {
    let mut text = String::new();
    while let Some(delta) = deltas.next().await {
        text.push_str(&delta);
    }
    text
}

/// How often a growing reply may be edited.
#[derive(Clone, Copy, Debug)]
pub struct EditPacing {
    /// Minimum time between two edits of the same conversation.
    pub min_interval: Duration,
}

impl Default for EditPacing {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(1),
        }
    }
}

/// Streams a reply by sending its first text and then editing that message as
/// it grows, at most once per `pacing.min_interval`. When the text outgrows
/// the platform limit, the full part stays and a new message continues it.
/// Returns the full text.
pub async fn deliver_by_editing<A: Adapter + ?Sized>(
    adapter: &A,
    conversation: &ConversationRef,
    mut deltas: DeltaStream,
    pacing: EditPacing,
) -> Result<String, AdapterError> {
    let limit = adapter.capabilities().max_message_chars;
    let mut full = String::new();
    // Text of the parts already finished, in characters.
    let mut finished_chars = 0usize;
    let mut current: Option<(crate::SentMessage, String)> = None;
    let mut last_edit = Instant::now() - pacing.min_interval;
    let mut dirty = false;

    while let Some(delta) = deltas.next().await {
        full.push_str(&delta);
        dirty = true;
        if last_edit.elapsed() < pacing.min_interval {
            continue;
        }
        flush_visible(
            adapter,
            conversation,
            &full,
            limit,
            &mut finished_chars,
            &mut current,
        )
        .await?;
        last_edit = Instant::now();
        dirty = false;
    }
    if dirty || current.is_none() {
        let wait = pacing.min_interval.saturating_sub(last_edit.elapsed());
        tokio::time::sleep(wait).await;
        flush_visible(
            adapter,
            conversation,
            &full,
            limit,
            &mut finished_chars,
            &mut current,
        )
        .await?;
    }
    Ok(full)
}

async fn flush_visible<A: Adapter + ?Sized>(
    adapter: &A,
    conversation: &ConversationRef,
    full: &str,
    limit: usize,
    finished_chars: &mut usize,
    current: &mut Option<(crate::SentMessage, String)>,
) -> Result<(), AdapterError> {
    let pending: String = full.chars().skip(*finished_chars).collect();
    let parts = split_message(&pending, limit);
    let Some((last, complete)) = parts.split_last() else {
        return Ok(());
    };
    let mut consumed = 0;
    for part in complete {
        show(adapter, conversation, part, current).await?;
        *current = None;
        let at = pending[consumed..]
            .find(part.as_str())
            .map_or(consumed, |offset| consumed + offset);
        consumed = at + part.len();
    }
    *finished_chars += pending[..consumed].chars().count();
    show(adapter, conversation, last, current).await
}

async fn show<A: Adapter + ?Sized>(
    adapter: &A,
    conversation: &ConversationRef,
    text: &str,
    current: &mut Option<(crate::SentMessage, String)>,
) -> Result<(), AdapterError> {
    match current {
        Some((_, shown)) if shown.as_str() == text => Ok(()),
        Some((sent, shown)) => {
            adapter.edit(sent, text).await?;
            *shown = text.to_string();
            Ok(())
        }
        None => {
            let sent = adapter
                .send(Outbound::text(conversation.clone(), text))
                .await?;
            *current = Some((sent, text.to_string()));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{Capabilities, InboundSink, SentMessage};

    #[derive(Default)]
    struct RecordingAdapter {
        calls: Mutex<Vec<(String, String, Instant)>>,
    }

    #[async_trait]
    impl Adapter for RecordingAdapter {
        fn platform(&self) -> &str {
            "recording"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                max_message_chars: 20,
                appends_stream: false,
                can_edit: true,
                buttons: false,
                threads: false,
                typing: false,
            }
        }
        async fn run(&self, _: InboundSink, _: CancellationToken) -> Result<(), AdapterError> {
            Ok(())
        }
        async fn send(&self, message: Outbound) -> Result<SentMessage, AdapterError> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(("send".into(), message.text, Instant::now()));
            Ok(SentMessage {
                conversation: message.conversation,
                message_id: calls.len().to_string(),
            })
        }
        async fn edit(&self, message: &SentMessage, text: &str) -> Result<(), AdapterError> {
            let mut calls = self.calls.lock().unwrap();
            calls.push((
                format!("edit {}", message.message_id),
                text.to_string(),
                Instant::now(),
            ));
            Ok(())
        }
    }

    #[tokio::test]
    async fn edits_are_paced_and_long_text_continues_in_a_new_message() {
        let adapter = RecordingAdapter::default();
        let conversation = ConversationRef {
            platform: "recording".into(),
            chat_id: "1".into(),
        };
        let words = ["one ", "two ", "three ", "four ", "five ", "six ", "seven"];
        let deltas = futures::stream::iter(words)
            .then(|word| async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                word.to_string()
            })
            .boxed();
        let pacing = EditPacing {
            min_interval: Duration::from_millis(100),
        };
        let full = deliver_by_editing(&adapter, &conversation, deltas, pacing)
            .await
            .unwrap();
        assert_eq!(full, words.concat());
        let calls = adapter.calls.lock().unwrap().clone();
        // An edit never follows the previous call sooner than the interval.
        for pair in calls.windows(2) {
            if pair[1].0.starts_with("edit") {
                assert!(pair[1].2 - pair[0].2 >= pacing.min_interval, "{calls:?}");
            }
        }
        for (_, text, _) in &calls {
            assert!(text.chars().count() <= 20, "{text}");
        }
        // The text outgrew one message: a second one continues it.
        assert!(calls.iter().filter(|(kind, _, _)| kind == "send").count() >= 2);
        assert!(calls.last().unwrap().1.ends_with("seven"));
    }
}
