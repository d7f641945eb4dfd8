//! Ticket rules: how urgent a new ticket is, and ticket numbers as people
//! write them. The states and priorities are ticket records, kept with them
//! in `store::tickets` and re-exported here; the escalation service drives
//! them.

use crate::intent::Intent;

pub use crate::store::{Priority, TicketState};

/// Words that mark strong feelings, in English and Chinese.
const STRONG_LANGUAGE: &[&str] = &[
    "furious",
    "outrageous",
    "disgusting",
    "disgusted",
    "scam",
    "fraud",
    "lawyer",
    "sue ",
    "unacceptable",
    "worst",
    "never again",
    "ridiculous",
    "!!!",
    "骗子",
    "诈骗",
    "律师",
    "气死",
    "太过分",
    "无法接受",
    "垃圾",
];

/// The priority of a new ticket: a complaint outranks a plain request;
/// strong language or an earlier ticket of the same customer raises it.
pub fn priority_for(intent: Intent, text: &str, earlier_tickets: usize) -> Priority {
    let mut priority = if intent == Intent::Complaint {
        Priority::High
    } else {
        Priority::Normal
    };
    let lowered = text.to_lowercase();
    if STRONG_LANGUAGE.iter().any(|word| lowered.contains(word)) {
        priority = priority.raised();
    }
    if earlier_tickets > 0 {
        priority = priority.raised();
    }
    priority
}

/// A ticket id people can read aloud: `T-000123`.
pub fn display_id(id: u64) -> String {
    format!("T-{id:06}")
}

/// The number in `T-000123` (or `123`).
pub fn parse_id(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .strip_prefix("T-")
        .or_else(|| text.strip_prefix("t-"))
        .unwrap_or(text);
    digits.parse().ok().filter(|id| *id > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workflow_allows_only_its_transitions() {
        use TicketState::*;
        assert!(Open.can_move_to(Assigned));
        assert!(Assigned.can_move_to(WaitingOnCustomer));
        assert!(WaitingOnCustomer.can_move_to(Assigned));
        assert!(Assigned.can_move_to(Resolved));
        assert!(Resolved.can_move_to(Closed));
        assert!(Resolved.can_move_to(Open), "reopen");
        assert!(Closed.can_move_to(Open), "reopen");
        assert!(!Closed.can_move_to(Resolved));
        assert!(!Open.can_move_to(WaitingOnCustomer));
        assert!(!Resolved.can_move_to(Assigned));
    }

    #[test]
    fn complaints_outrank_requests_and_strong_language_or_repeats_raise_it() {
        assert_eq!(
            priority_for(Intent::HumanRequest, "a person please", 0),
            Priority::Normal
        );
        assert_eq!(
            priority_for(Intent::Complaint, "it broke", 0),
            Priority::High
        );
        assert_eq!(
            priority_for(Intent::Complaint, "this is a SCAM", 0),
            Priority::Urgent
        );
        assert_eq!(
            priority_for(Intent::HumanRequest, "again", 2),
            Priority::High
        );
        assert_eq!(
            priority_for(Intent::Complaint, "你们是骗子", 0),
            Priority::Urgent
        );
    }

    #[test]
    fn ids_read_aloud_and_parse_back() {
        assert_eq!(display_id(123), "T-000123");
        assert_eq!(parse_id("T-000123"), Some(123));
        assert_eq!(parse_id("123"), Some(123));
        assert_eq!(parse_id("T-0"), None);
        assert_eq!(parse_id("ticket"), None);
    }
}
