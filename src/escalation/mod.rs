//! Hand-offs to people: opening a ticket for a conversation, moving it
//! through its states with every transition recorded (time and actor), the
//! transcript, ratings, and the SLA clock. Every change is stored and flushed
//! before it is reported, so no transition is lost on restart.
//!
//! Architecture invariant: speaks to customers and agents only through the
//! pipeline's `Outbound` messages; knows no adapter crate.

pub mod ticket;
pub mod tiebreak;

use std::time::Duration;

use crate::intent::Intent;
use crate::prompts::Locale;
use crate::store::{
    now_ms, Store, StoreError, Ticket, TranscriptLine, TranscriptRole, Transition, RECORD_VERSION,
};
use ticket::{priority_for, Priority, TicketState};

/// Deadlines for an agent's first answer, per priority.
#[derive(Clone, Copy, Debug)]
pub struct SlaPolicy {
    /// For urgent tickets.
    pub urgent: Duration,
    /// For high-priority tickets.
    pub high: Duration,
    /// For normal tickets.
    pub normal: Duration,
    /// Remind the agents when this share of the time has passed.
    pub remind_at: f64,
}

impl Default for SlaPolicy {
    fn default() -> Self {
        Self {
            urgent: Duration::from_secs(15 * 60),
            high: Duration::from_secs(60 * 60),
            normal: Duration::from_secs(4 * 60 * 60),
            remind_at: 0.75,
        }
    }
}

impl SlaPolicy {
    /// The deadline for `priority`.
    pub fn deadline(&self, priority: Priority) -> Duration {
        match priority {
            Priority::Urgent => self.urgent,
            Priority::High => self.high,
            Priority::Normal => self.normal,
        }
    }
}

/// Why a ticket operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EscalationError {
    /// No ticket with that number.
    #[error("no ticket {0}")]
    NotFound(String),
    /// The workflow does not allow this move.
    #[error("ticket {id} is {from}; it cannot become {to}")]
    Transition {
        /// The ticket.
        id: String,
        /// Its state.
        from: &'static str,
        /// The refused state.
        to: &'static str,
    },
    /// A rating outside 1-5.
    #[error("a rating is 1 to 5, not {0}")]
    Rating(u8),
    /// Reopening would give the chat two tickets in people's hands.
    #[error("ticket {id} cannot be reopened while {other} of the same chat is with agents")]
    ChatBusy {
        /// The ticket to reopen.
        id: String,
        /// The chat's ticket that agents have now.
        other: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a new ticket starts from.
#[derive(Clone, Debug)]
pub struct NewTicket {
    /// The customer.
    pub customer_id: u64,
    /// Their platform and chat.
    pub platform: String,
    /// Their chat.
    pub chat_id: String,
    /// Their language.
    pub locale: Locale,
    /// `Complaint` or `HumanRequest`.
    pub intent: Intent,
    /// The message that escalated.
    pub text: String,
    /// The recent conversation, oldest first, as (role, text).
    pub recent: Vec<(TranscriptRole, String)>,
    /// A short summary for agents.
    pub summary: String,
}

/// Tickets over the store. Every change holds the store's ticket lock from
/// read to write, so changes made at the same time (a customer's message,
/// an agent's answer, the SLA clock, a `/link`) never overwrite each other.
#[derive(Clone)]
pub struct Escalation {
    store: Store,
    sla: SlaPolicy,
}

impl Escalation {
    /// The service over `store` with deadlines from `sla`.
    pub fn new(store: Store, sla: SlaPolicy) -> Self {
        Self { store, sla }
    }

    /// Reads ticket `id`, lets `change` modify it and stores it, under the
    /// ticket lock; then flushes.
    async fn update(
        &self,
        id: u64,
        change: impl FnOnce(&mut Ticket) -> Result<(), EscalationError>,
    ) -> Result<Ticket, EscalationError> {
        let ticket = {
            let _guard = self.store.lock_tickets();
            let mut ticket = self.get(id)?;
            change(&mut ticket)?;
            self.store.put_ticket(&ticket)?;
            ticket
        };
        self.store.flush().await?;
        Ok(ticket)
    }

    /// Refuses when the customer already has a ticket with agents in the
    /// chat other than `except`: one per customer and chat in people's
    /// hands, so their messages have one place to go. Call with the ticket
    /// lock held.
    fn check_chat_free(
        &self,
        platform: &str,
        chat_id: &str,
        customer_id: u64,
        except: Option<u64>,
        wanted: &str,
    ) -> Result<(), EscalationError> {
        match self
            .store
            .active_ticket_for(platform, chat_id, customer_id)?
        {
            Some(other) if Some(other.id) != except => Err(EscalationError::ChatBusy {
                id: wanted.to_string(),
                other: ticket::display_id(other.id),
            }),
            _ => Ok(()),
        }
    }

    /// Moves a ticket to another chat of its customer on the same platform.
    pub async fn move_to_chat(&self, id: u64, chat_id: &str) -> Result<Ticket, EscalationError> {
        self.update(id, |ticket| {
            ticket.chat_id = chat_id.to_string();
            Ok(())
        })
        .await
    }

    /// Opens a ticket and stores it durably.
    pub async fn open(&self, new: NewTicket) -> Result<Ticket, EscalationError> {
        let guard = self.store.lock_tickets();
        self.check_chat_free(
            &new.platform,
            &new.chat_id,
            new.customer_id,
            None,
            "a new ticket",
        )?;
        let earlier = self.store.customer_ticket_count(new.customer_id)?;
        let priority = priority_for(new.intent, &new.text, earlier);
        let now = now_ms();
        let mut transcript: Vec<TranscriptLine> = new
            .recent
            .iter()
            .map(|(role, text)| TranscriptLine {
                ts_ms: now,
                role: *role,
                author: None,
                text: text.clone(),
            })
            .collect();
        if transcript.last().is_none_or(|line| line.text != new.text) {
            transcript.push(TranscriptLine {
                ts_ms: now,
                role: TranscriptRole::Customer,
                author: None,
                text: new.text.clone(),
            });
        }
        let ticket = Ticket {
            v: RECORD_VERSION,
            id: self.store.next_ticket_number()?,
            customer_id: new.customer_id,
            platform: new.platform,
            chat_id: new.chat_id,
            locale: new.locale,
            category: new.intent,
            priority,
            summary: new.summary,
            transcript,
            state: TicketState::Open,
            transitions: vec![Transition {
                from: None,
                to: TicketState::Open,
                at_ms: now,
                actor: "bot".into(),
            }],
            assignee: None,
            created_ms: now,
            due_ms: now + self.sla.deadline(priority).as_millis() as u64,
            reminded: false,
            breached: false,
            agent_posts: Vec::new(),
            rating: None,
        };
        self.store.put_ticket(&ticket)?;
        drop(guard);
        self.store.flush().await?;
        Ok(ticket)
    }

    /// A ticket by number.
    pub fn get(&self, id: u64) -> Result<Ticket, EscalationError> {
        self.store
            .ticket(id)?
            .ok_or_else(|| EscalationError::NotFound(ticket::display_id(id)))
    }

    /// Moves a ticket to `to`, recording who did it and when.
    pub async fn transition(
        &self,
        id: u64,
        to: TicketState,
        actor: &str,
    ) -> Result<Ticket, EscalationError> {
        let sla = self.sla;
        self.update(id, |ticket| {
            if !ticket.state.can_move_to(to) {
                return Err(EscalationError::Transition {
                    id: ticket::display_id(id),
                    from: ticket.state.label(),
                    to: to.label(),
                });
            }
            if to == TicketState::Assigned {
                ticket.assignee = Some(actor.to_string());
            }
            if to == TicketState::Open {
                self.check_chat_free(
                    &ticket.platform,
                    &ticket.chat_id,
                    ticket.customer_id,
                    Some(id),
                    &ticket::display_id(id),
                )?;
                // A reopened ticket gets a fresh deadline.
                ticket.due_ms = now_ms() + sla.deadline(ticket.priority).as_millis() as u64;
                ticket.reminded = false;
                ticket.breached = false;
                // Rated again after the next resolution (the transitions keep
                // the history).
                ticket.rating = None;
            }
            record_move(ticket, to, actor, now_ms());
            Ok(())
        })
        .await
    }

    /// Adds a line to the transcript (an agent's answer marks the SLA met).
    pub async fn add_line(
        &self,
        id: u64,
        role: TranscriptRole,
        author: Option<&str>,
        text: &str,
    ) -> Result<Ticket, EscalationError> {
        self.update(id, |ticket| {
            push_line(ticket, role, author, text, now_ms());
            Ok(())
        })
        .await
    }

    /// Replaces the ticket's summary.
    pub async fn set_summary(&self, id: u64, summary: &str) -> Result<Ticket, EscalationError> {
        self.update(id, |ticket| {
            ticket.summary = summary.to_string();
            Ok(())
        })
        .await
    }

    /// Remembers where the agents see the ticket.
    pub async fn add_agent_post(
        &self,
        id: u64,
        post: crate::store::AgentPost,
    ) -> Result<Ticket, EscalationError> {
        self.update(id, |ticket| {
            ticket.agent_posts.push(post);
            Ok(())
        })
        .await
    }

    /// Stores the customer's 1-5 rating of a resolved ticket, which closes
    /// it. A ticket is rated once, and only while resolved.
    pub async fn rate(&self, id: u64, rating: u8) -> Result<Ticket, EscalationError> {
        if !(1..=5).contains(&rating) {
            return Err(EscalationError::Rating(rating));
        }
        self.update(id, |ticket| {
            if ticket.state != TicketState::Resolved || ticket.rating.is_some() {
                return Err(EscalationError::Transition {
                    id: ticket::display_id(id),
                    from: ticket.state.label(),
                    to: "rated",
                });
            }
            ticket.rating = Some(rating);
            record_move(ticket, TicketState::Closed, "customer", now_ms());
            Ok(())
        })
        .await
    }

    /// The customer's message, in the transcript of a ticket still with
    /// agents (one waiting on the customer goes back to its agent); `None`
    /// when the ticket has left the agents meanwhile, checked under the lock.
    pub async fn add_customer_line(
        &self,
        id: u64,
        text: &str,
    ) -> Result<Option<Ticket>, EscalationError> {
        let result = self
            .update(id, |ticket| {
                if !ticket.state.with_agents() {
                    return Err(EscalationError::Transition {
                        id: ticket::display_id(id),
                        from: ticket.state.label(),
                        to: "relayed",
                    });
                }
                let now = now_ms();
                push_line(ticket, TranscriptRole::Customer, None, text, now);
                if ticket.state == TicketState::WaitingOnCustomer {
                    record_move(ticket, TicketState::Assigned, "customer", now);
                }
                Ok(())
            })
            .await;
        match result {
            Ok(ticket) => Ok(Some(ticket)),
            Err(EscalationError::Transition { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// An agent's answer to the customer, in the transcript; the first one
    /// takes an open ticket. Refused once the ticket has left the agents,
    /// checked under the same lock as the change.
    pub async fn add_agent_answer(
        &self,
        id: u64,
        agent: &str,
        text: &str,
    ) -> Result<Ticket, EscalationError> {
        self.update(id, |ticket| {
            if !ticket.state.with_agents() {
                return Err(EscalationError::Transition {
                    id: ticket::display_id(id),
                    from: ticket.state.label(),
                    to: "answered",
                });
            }
            let now = now_ms();
            if ticket.state == TicketState::Open {
                record_move(ticket, TicketState::Assigned, agent, now);
                ticket.assignee = Some(agent.to_string());
            }
            push_line(ticket, TranscriptRole::Agent, Some(agent), text, now);
            Ok(())
        })
        .await
    }

    /// Tickets waiting for an agent's first answer whose deadline is near
    /// (to remind) or past (breached), marked so each is reported once.
    pub async fn check_deadlines(&self, now: u64) -> Result<SlaReport, EscalationError> {
        let guard = self.store.lock_tickets();
        let mut report = SlaReport::default();
        for mut ticket in self.store.active_tickets()? {
            if answered_since_opened(&ticket) {
                continue;
            }
            // Counted back from the deadline, which a reopen renews.
            let total = self.sla.deadline(ticket.priority).as_millis() as f64;
            let remind_from = ticket
                .due_ms
                .saturating_sub((total * (1.0 - self.sla.remind_at)) as u64);
            let mut changed = false;
            if now >= ticket.due_ms && !ticket.breached {
                ticket.breached = true;
                changed = true;
                report.breached.push(ticket.clone());
            } else if now >= remind_from && !ticket.reminded && !ticket.breached {
                ticket.reminded = true;
                changed = true;
                report.reminders.push(ticket.clone());
            }
            if changed {
                self.store.put_ticket(&ticket)?;
            }
        }
        drop(guard);
        if !report.reminders.is_empty() || !report.breached.is_empty() {
            self.store.flush().await?;
        }
        Ok(report)
    }
}

/// Records a change of state: who moved the ticket to `to`, and when.
fn record_move(ticket: &mut Ticket, to: TicketState, actor: &str, at_ms: u64) {
    ticket.transitions.push(Transition {
        from: Some(ticket.state),
        to,
        at_ms,
        actor: actor.to_string(),
    });
    ticket.state = to;
}

/// Adds a line to the transcript.
fn push_line(
    ticket: &mut Ticket,
    role: TranscriptRole,
    author: Option<&str>,
    text: &str,
    ts_ms: u64,
) {
    ticket.transcript.push(TranscriptLine {
        ts_ms,
        role,
        author: author.map(str::to_string),
        text: text.to_string(),
    });
}

/// Whether an agent has written to the customer since the ticket was last
/// opened (or reopened): that first answer is what the deadline is for.
fn answered_since_opened(ticket: &Ticket) -> bool {
    let opened = ticket
        .transitions
        .iter()
        .rev()
        .find(|transition| transition.to == TicketState::Open)
        .map_or(ticket.created_ms, |transition| transition.at_ms);
    ticket
        .transcript
        .iter()
        .any(|line| line.role == TranscriptRole::Agent && line.ts_ms >= opened)
}

/// What a deadline check found.
#[derive(Debug, Default)]
pub struct SlaReport {
    /// Tickets whose deadline is near.
    pub reminders: Vec<Ticket>,
    /// Tickets whose deadline passed.
    pub breached: Vec<Ticket>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_ticket(intent: Intent, text: &str) -> NewTicket {
        NewTicket {
            customer_id: 7,
            platform: "telegram".into(),
            chat_id: "555".into(),
            locale: Locale::En,
            intent,
            text: text.into(),
            recent: vec![
                (TranscriptRole::Customer, "hello".into()),
                (TranscriptRole::Bot, "hi".into()),
            ],
            summary: "Parcel arrived broken.".into(),
        }
    }

    #[tokio::test]
    async fn tickets_survive_a_restart_in_every_state_with_their_transitions() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Vec::new();
        {
            let store = Store::open(dir.path()).unwrap();
            let escalation = Escalation::new(store, SlaPolicy::default());
            let states = [
                vec![],
                vec![TicketState::Assigned],
                vec![TicketState::Assigned, TicketState::WaitingOnCustomer],
                vec![TicketState::Assigned, TicketState::Resolved],
                vec![
                    TicketState::Assigned,
                    TicketState::Resolved,
                    TicketState::Closed,
                ],
                vec![TicketState::Resolved, TicketState::Open],
            ];
            for (chat, path) in states.into_iter().enumerate() {
                // One chat each: a chat has one ticket with agents at a time.
                let ticket = escalation
                    .open(NewTicket {
                        chat_id: format!("55{chat}"),
                        ..new_ticket(Intent::Complaint, "it broke")
                    })
                    .await
                    .unwrap();
                for state in &path {
                    escalation
                        .transition(ticket.id, *state, "ann")
                        .await
                        .unwrap();
                }
                ids.push((ticket.id, path));
            }
        }
        let store = crate::store::tests::reopen(dir.path()).unwrap();
        let escalation = Escalation::new(store.clone(), SlaPolicy::default());
        for (id, path) in ids {
            let ticket = escalation.get(id).unwrap();
            assert_eq!(ticket.state, *path.last().unwrap_or(&TicketState::Open));
            assert_eq!(ticket.transitions.len(), path.len() + 1);
            assert!(ticket
                .transitions
                .iter()
                .skip(1)
                .all(|t| t.actor == "ann" && t.at_ms > 0));
        }
        assert_eq!(ticket::display_id(1), "T-000001");
        // The chat with a ticket in people's hands is found by the index.
        let active = store
            .active_ticket_for("telegram", "551", 7)
            .unwrap()
            .unwrap();
        assert!(active.state.with_agents());
        assert!(store
            .active_ticket_for("telegram", "554", 7)
            .unwrap()
            .is_none());
        assert_eq!(store.active_tickets().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn two_customers_of_one_group_each_have_their_own_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let escalation = Escalation::new(Store::open(dir.path()).unwrap(), SlaPolicy::default());
        let group = |customer_id| NewTicket {
            customer_id,
            chat_id: "-100".into(),
            ..new_ticket(Intent::Complaint, "it broke")
        };
        let first = escalation.open(group(7)).await.unwrap();
        let second = escalation.open(group(8)).await.unwrap();
        let store = &escalation.store;
        assert_eq!(
            store
                .active_ticket_for("telegram", "-100", 7)
                .unwrap()
                .unwrap()
                .id,
            first.id
        );
        assert_eq!(
            store
                .active_ticket_for("telegram", "-100", 8)
                .unwrap()
                .unwrap()
                .id,
            second.id
        );
        assert!(store
            .active_ticket_for("telegram", "-100", 9)
            .unwrap()
            .is_none());
        // A link moves a ticket to another customer: the old key goes.
        let mut moved = escalation.get(first.id).unwrap();
        moved.customer_id = 9;
        store.put_ticket(&moved).unwrap();
        assert!(store
            .active_ticket_for("telegram", "-100", 7)
            .unwrap()
            .is_none());
        assert_eq!(
            store
                .active_ticket_for("telegram", "-100", 9)
                .unwrap()
                .unwrap()
                .id,
            first.id
        );
        assert_eq!(store.active_tickets().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_ticket_is_not_reopened_while_its_chat_has_another_with_agents() {
        let dir = tempfile::tempdir().unwrap();
        let escalation = Escalation::new(Store::open(dir.path()).unwrap(), SlaPolicy::default());
        let old = escalation
            .open(new_ticket(Intent::Complaint, "it broke"))
            .await
            .unwrap();
        escalation
            .transition(old.id, TicketState::Resolved, "ann")
            .await
            .unwrap();
        let newer = escalation
            .open(new_ticket(Intent::Complaint, "broke again"))
            .await
            .unwrap();
        let refused = escalation
            .transition(old.id, TicketState::Open, "ann")
            .await;
        assert!(
            matches!(refused, Err(EscalationError::ChatBusy { .. })),
            "{refused:?}"
        );
        escalation
            .transition(newer.id, TicketState::Resolved, "ann")
            .await
            .unwrap();
        let reopened = escalation
            .transition(old.id, TicketState::Open, "ann")
            .await
            .unwrap();
        assert_eq!(reopened.state, TicketState::Open);
        assert_eq!(
            escalation
                .store
                .active_ticket_for("telegram", "555", 7)
                .unwrap()
                .unwrap()
                .id,
            old.id
        );
    }

    #[tokio::test]
    async fn the_workflow_refuses_a_wrong_move_and_a_rating_closes_a_resolved_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let escalation = Escalation::new(Store::open(dir.path()).unwrap(), SlaPolicy::default());
        let ticket = escalation
            .open(new_ticket(Intent::HumanRequest, "a person please"))
            .await
            .unwrap();
        assert_eq!(ticket.priority, Priority::Normal);
        assert_eq!(ticket.transcript.len(), 3);
        let refused = escalation
            .transition(ticket.id, TicketState::WaitingOnCustomer, "ann")
            .await;
        assert!(matches!(refused, Err(EscalationError::Transition { .. })));
        escalation
            .transition(ticket.id, TicketState::Resolved, "ann")
            .await
            .unwrap();
        assert!(escalation.rate(ticket.id, 6).await.is_err());
        let rated = escalation.rate(ticket.id, 5).await.unwrap();
        assert_eq!(rated.rating, Some(5));
        assert_eq!(rated.state, TicketState::Closed);
        // A resolved ticket takes no more customer lines: the bot is back.
        assert!(escalation
            .add_customer_line(ticket.id, "thanks!")
            .await
            .unwrap()
            .is_none());
        // Rated once: an old button pressed again changes nothing.
        assert!(escalation.rate(ticket.id, 1).await.is_err());
        assert_eq!(escalation.get(ticket.id).unwrap().rating, Some(5));
        // A repeat contact ranks higher.
        let again = escalation
            .open(new_ticket(Intent::HumanRequest, "me again"))
            .await
            .unwrap();
        assert_eq!(again.priority, Priority::High);
    }

    #[tokio::test]
    async fn deadlines_remind_once_then_breach_once() {
        let dir = tempfile::tempdir().unwrap();
        let sla = SlaPolicy {
            urgent: Duration::from_secs(100),
            high: Duration::from_secs(100),
            normal: Duration::from_secs(100),
            remind_at: 0.5,
        };
        let escalation = Escalation::new(Store::open(dir.path()).unwrap(), sla);
        let ticket = escalation
            .open(new_ticket(Intent::Complaint, "late"))
            .await
            .unwrap();
        let start = ticket.created_ms;
        // (reminders, breaches) found by a check at `now`.
        let check = |now: u64| {
            let escalation = escalation.clone();
            async move {
                let report = escalation.check_deadlines(now).await.unwrap();
                (report.reminders.len(), report.breached.len())
            }
        };
        assert_eq!(check(start + 10_000).await, (0, 0));
        assert_eq!(check(start + 60_000).await, (1, 0));
        assert_eq!(check(start + 70_000).await, (0, 0));
        assert_eq!(check(start + 101_000).await, (0, 1));
        assert_eq!(check(start + 200_000).await, (0, 0));
        assert!(escalation.get(ticket.id).unwrap().breached);
        // The chat has a ticket with agents: no second one opens beside it.
        let busy = escalation
            .open(new_ticket(Intent::Complaint, "again"))
            .await;
        assert!(
            matches!(busy, Err(EscalationError::ChatBusy { .. })),
            "{busy:?}"
        );

        // Reopened: a fresh deadline, reminded and breached again in time.
        escalation
            .transition(ticket.id, TicketState::Resolved, "ann")
            .await
            .unwrap();
        let reopened = escalation
            .transition(ticket.id, TicketState::Open, "ann")
            .await
            .unwrap();
        assert!(!reopened.breached && !reopened.reminded);
        let renewed = reopened.due_ms - 100_000;
        assert_eq!(check(renewed + 10_000).await, (0, 0));
        assert_eq!(check(renewed + 60_000).await, (1, 0));
        // Taking the ticket does not stop the clock; answering does.
        escalation
            .transition(ticket.id, TicketState::Assigned, "ann")
            .await
            .unwrap();
        assert_eq!(check(renewed + 101_000).await, (0, 1));
        escalation
            .transition(ticket.id, TicketState::Resolved, "ann")
            .await
            .unwrap();
        let again = escalation
            .transition(ticket.id, TicketState::Open, "ann")
            .await
            .unwrap();
        escalation
            .add_agent_answer(ticket.id, "ann", "On it.")
            .await
            .unwrap();
        assert_eq!(check(again.due_ms + 1).await, (0, 0));
    }
}
