//! The context window of a reply: the system prompt, as much recent history
//! as fits the token budget, and the new message, counted with the model's
//! own tokenizer.
//!
//! Architecture invariants: the system prompt comes first and byte-identical
//! in every request of a locale, so the engine's prefix cache can reuse it;
//! no history or customer text carries a chat-template control token
//! (`sanitize::neutralise_control_tokens`).

use crate::engine::{ChatMessage, ChatRole, Llm};
use crate::sanitize::neutralise_control_tokens;
use crate::store::{Role, StoredMessage};

/// Tokens reserved per message for the chat template's role markers.
const TEMPLATE_OVERHEAD_TOKENS: usize = 4;

/// How the prompt was built, for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The messages to send.
    pub messages: Vec<ChatMessage>,
    /// Tokens the messages take (with template overhead).
    pub prompt_tokens: usize,
    /// History messages left out for lack of room.
    pub dropped_history: usize,
}

/// Builds the prompt: the system prompt, the newest history that fits, and
/// the new message. `budget` is the prompt's share of the context (context
/// minus the reply's `max_tokens`). A new message longer than the budget is
/// cut from its start, keeping its end.
pub fn build_window(
    llm: &dyn Llm,
    system_prompt: &str,
    history: &[StoredMessage],
    new_message: &str,
    budget: usize,
) -> Window {
    let cost = |text: &str| llm.count_tokens(text) + TEMPLATE_OVERHEAD_TOKENS;
    let neutral = |text: &str| neutralise_control_tokens(text, llm.special_tokens());
    let system_cost = cost(system_prompt);
    let mut new_text = neutral(new_message);
    let mut new_cost = cost(&new_text);
    let room_for_new = budget
        .saturating_sub(system_cost)
        .max(TEMPLATE_OVERHEAD_TOKENS + 1);
    while new_cost > room_for_new && !new_text.is_empty() {
        // Cut about the excess share of characters from the start.
        let chars = new_text.chars().count();
        let excess = new_cost - room_for_new;
        let drop = (chars * excess / new_cost).max(1);
        new_text = new_text.chars().skip(drop).collect();
        new_cost = cost(&new_text);
    }
    let mut remaining = budget.saturating_sub(system_cost + new_cost);
    let mut kept: Vec<ChatMessage> = Vec::new();
    let mut used = system_cost + new_cost;
    let mut dropped = 0;
    for (index, message) in history.iter().enumerate().rev() {
        let text = neutral(&message.text);
        let message_cost = cost(&text);
        if message_cost > remaining {
            dropped = index + 1;
            break;
        }
        remaining -= message_cost;
        used += message_cost;
        let role = match message.role {
            Role::User => ChatRole::User,
            Role::Assistant => ChatRole::Assistant,
        };
        kept.push(ChatMessage::new(role, text));
    }
    // Chat templates expect the history to start with the customer.
    while kept
        .last()
        .is_some_and(|message| message.role == ChatRole::Assistant)
    {
        if let Some(message) = kept.pop() {
            used -= cost(&message.content);
            dropped += 1;
        }
    }
    kept.reverse();
    let mut messages = Vec::with_capacity(kept.len() + 2);
    messages.push(ChatMessage::new(ChatRole::System, system_prompt));
    messages.extend(kept);
    messages.push(ChatMessage::new(ChatRole::User, new_text));
    Window {
        messages,
        prompt_tokens: used,
        dropped_history: dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::scripted::{Script, ScriptedEngine};

    fn message(role: Role, text: &str) -> StoredMessage {
        StoredMessage {
            v: 1,
            ts_ms: 0,
            role,
            text: text.to_string(),
            sources: Vec::new(),
        }
    }

    #[test]
    fn keeps_the_newest_history_that_fits() {
        let llm = ScriptedEngine::new(Script::default());
        let history: Vec<StoredMessage> = (0..20)
            .map(|i| {
                let role = if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                message(role, &format!("message number {i} with some padding text"))
            })
            .collect();
        let all = build_window(&llm, "system", &history, "new", 10_000);
        assert_eq!(all.messages.len(), 22);
        assert_eq!(all.dropped_history, 0);

        let tight = build_window(&llm, "system", &history, "new", 60);
        assert!(tight.prompt_tokens <= 60, "{}", tight.prompt_tokens);
        assert!(tight.dropped_history > 0);
        assert_eq!(tight.messages[0].content, "system");
        assert_eq!(tight.messages.last().unwrap().content, "new");
        assert_eq!(tight.messages[1].role, ChatRole::User);
        // The kept history is the newest part, in order.
        let kept: Vec<&str> = tight.messages[1..tight.messages.len() - 1]
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        assert!(kept.last().unwrap().contains("number 19"));
    }

    #[test]
    fn an_oversized_message_is_cut_to_fit() {
        let llm = ScriptedEngine::new(Script::default());
        let huge = "word ".repeat(5_000) + "THE END";
        let window = build_window(&llm, "system", &[], &huge, 200);
        assert!(window.prompt_tokens <= 200, "{}", window.prompt_tokens);
        assert!(window.messages.last().unwrap().content.ends_with("THE END"));
    }
}
