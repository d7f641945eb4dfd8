//! Phrases that leave no doubt: a customer who writes "let me talk to a
//! human" or "转人工" gets a person whatever the model thinks. Kept short and
//! unambiguous; everything subtler is the model's job.

use super::Intent;

/// Lowercased English phrases asking for a person.
const HUMAN_EN: &[&str] = &[
    "real person",
    "real human",
    "a human",
    "human agent",
    "live agent",
    "live person",
    "speak to someone",
    "talk to someone",
    "speak with someone",
    "talk with someone",
    "speak to an agent",
    "talk to an agent",
    "speak with an agent",
    "talk with an agent",
    "speak to a representative",
    "talk to a representative",
    "not a bot",
    "stop the bot",
];

/// Chinese phrases asking for a person.
const HUMAN_ZH: &[&str] = &["转人工", "人工客服", "人工服务", "真人", "找人工", "接人工"];

/// Chinese phrases of a formal complaint.
const COMPLAINT_ZH: &[&str] = &["我要投诉", "我要举报"];

/// The intent an unmistakable phrase forces, if any.
pub fn forced_intent(text: &str) -> Option<Intent> {
    let lowered = text.to_lowercase();
    if HUMAN_EN.iter().any(|phrase| lowered.contains(phrase))
        || HUMAN_ZH.iter().any(|phrase| text.contains(phrase))
    {
        return Some(Intent::HumanRequest);
    }
    if COMPLAINT_ZH.iter().any(|phrase| text.contains(phrase)) {
        return Some(Intent::Complaint);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clear_phrases_force_an_intent() {
        assert_eq!(
            forced_intent("Can I talk to a REAL PERSON?"),
            Some(Intent::HumanRequest)
        );
        assert_eq!(forced_intent("请帮我转人工"), Some(Intent::HumanRequest));
        assert_eq!(forced_intent("我要投诉你们"), Some(Intent::Complaint));
        assert_eq!(forced_intent("where is my order"), None);
        assert_eq!(
            forced_intent("is this jacket good for humans and dogs"),
            None
        );
    }
}
