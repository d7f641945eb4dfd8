//! Reply-delivery helpers: collecting a stream, and streaming by paced edits
//! for channels that can edit a sent message.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::{
    split_message, AdapterError, ConversationRef, DeltaStream, Outbound, Outbox, SentMessage,
};

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
pub async fn deliver_by_editing<A: Outbox + ?Sized>(
    adapter: &A,
    conversation: &ConversationRef,
    mut deltas: DeltaStream,
    pacing: EditPacing,
) -> Result<String, AdapterError> {
    let mut reply = EditedReply {
        adapter,
        conversation,
        limit: adapter.capabilities().max_message_chars,
        finished_chars: 0,
        current: None,
    };
    let mut full = String::new();
    let mut last_edit = Instant::now() - pacing.min_interval;
    let mut dirty = false;
    while let Some(delta) = deltas.next().await {
        full.push_str(&delta);
        dirty = true;
        if last_edit.elapsed() >= pacing.min_interval {
            reply.show(&full).await?;
            last_edit = Instant::now();
            dirty = false;
        }
    }
    if dirty || reply.current.is_none() {
        tokio::time::sleep(pacing.min_interval.saturating_sub(last_edit.elapsed())).await;
        reply.show(&full).await?;
    }
    Ok(full)
}

/// The messages showing one growing reply.
struct EditedReply<'a, A: Outbox + ?Sized> {
    adapter: &'a A,
    conversation: &'a ConversationRef,
    limit: usize,
    /// Characters of the reply already in finished (full) messages.
    finished_chars: usize,
    /// The message being edited and the text it shows.
    current: Option<(SentMessage, String)>,
}

impl<A: Outbox + ?Sized> EditedReply<'_, A> {
    /// Makes the messages show `full`: finishes parts that reached the limit
    /// and sends or edits the last one.
    async fn show(&mut self, full: &str) -> Result<(), AdapterError> {
        let pending: String = full.chars().skip(self.finished_chars).collect();
        let parts = split_message(&pending, self.limit);
        let Some((last, complete)) = parts.split_last() else {
            return Ok(());
        };
        let mut consumed = 0;
        for part in complete {
            self.show_part(part).await?;
            self.current = None;
            let at = pending[consumed..]
                .find(part.as_str())
                .map_or(consumed, |offset| consumed + offset);
            consumed = at + part.len();
        }
        self.finished_chars += pending[..consumed].chars().count();
        self.show_part(last).await
    }

    async fn show_part(&mut self, text: &str) -> Result<(), AdapterError> {
        match &mut self.current {
            Some((_, shown)) if shown.as_str() == text => Ok(()),
            Some((sent, shown)) => {
                self.adapter.edit(sent, text).await?;
                *shown = text.to_string();
                Ok(())
            }
            None => {
                let sent = self
                    .adapter
                    .send(Outbound::text(self.conversation.clone(), text))
                    .await?;
                self.current = Some((sent, text.to_string()));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::Capabilities;

    #[derive(Default)]
    struct RecordingAdapter {
        calls: Mutex<Vec<(String, String, Instant)>>,
    }

    #[async_trait]
    impl Outbox for RecordingAdapter {
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
