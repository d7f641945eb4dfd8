//! Tickets: what a hand-off to a person is, its states and the rules for
//! moving between them. Pure data and rules; the store keeps tickets and the
//! escalation service drives them.

use serde::{Deserialize, Serialize};

use crate::intent::Intent;

/// Where a ticket stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    /// Waiting for an agent.
    Open,
    /// An agent has it.
    Assigned,
    /// The agent asked the customer something.
    WaitingOnCustomer,
    /// The agent solved it; the bot is back and asks for a rating.
    Resolved,
    /// Done for good.
    Closed,
}

impl TicketState {
    /// The state as written in output and commands.
    pub fn label(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Assigned => "assigned",
            Self::WaitingOnCustomer => "waiting_on_customer",
            Self::Resolved => "resolved",
            Self::Closed => "closed",
        }
    }

    /// Whether a person handles the conversation (the bot stays silent).
    pub fn with_agents(self) -> bool {
        matches!(self, Self::Open | Self::Assigned | Self::WaitingOnCustomer)
    }

    /// Whether moving to `next` is allowed: forward through the workflow,
    /// back from waiting, and reopening a resolved or closed ticket.
    pub fn can_move_to(self, next: TicketState) -> bool {
        use TicketState::*;
        matches!(
            (self, next),
            (Open, Assigned)
                | (Open, Resolved)
                | (Assigned, Assigned)
                | (Assigned, WaitingOnCustomer)
                | (Assigned, Resolved)
                | (WaitingOnCustomer, Assigned)
                | (WaitingOnCustomer, Resolved)
                | (Resolved, Closed)
                | (Resolved, Open)
                | (Closed, Open)
        )
    }
}

/// How urgent a ticket is; higher is more urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// A plain request for a person.
    Normal,
    /// A complaint.
    High,
    /// A complaint with strong language or from a customer who came back.
    Urgent,
}

impl Priority {
    /// The priority as written in output.
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::High => "high",
            Self::Urgent => "urgent",
        }
    }

    /// One step more urgent.
    pub fn raised(self) -> Self {
        match self {
            Self::Normal => Self::High,
            Self::High | Self::Urgent => Self::Urgent,
        }
    }
}

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
