//! The route stage: which one handler a customer's message goes to. A pure
//! function of the understood message and the customer's state, so each
//! case is a row of the table test below.
//!
//! Stage invariant: every message gets exactly one route; the handlers do not
//! decide among themselves.

use crate::buttons::Button;
use crate::intent::Intent;
use crate::understand::{Command, Understood};

/// What arrived, as far as routing cares.
#[derive(Clone, Copy, Debug)]
pub enum Message<'a> {
    /// Text, understood.
    Text(&'a Understood),
    /// A pressed button, by its id.
    Pressed(&'a str),
}

/// What is known of the sender and of the daemon when routing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct State {
    /// The message comes from an agents' space (a group, topic or thread).
    pub agents_space: bool,
    /// The customer's ticket with people in this chat, by number.
    pub ticket_with_agents: Option<u64>,
    /// Hand-off to people is enabled (`[escalation]`).
    pub handoff: bool,
    /// A recommender is loaded.
    pub recommender: bool,
    /// Classifier confidence at or above which an escalation hands off.
    pub auto_handoff_confidence: f32,
}

/// The one handler a message goes to.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    /// From the agents: an answer to a customer or an agent command.
    Agents,
    /// A button the bot offered.
    Choice(Button),
    /// A button id the bot never makes: ignored.
    UnknownChoice,
    /// The chat is in people's hands: stored in this ticket, relayed.
    Relay(u64),
    /// A person takes over, for this reason.
    HandOff(Intent),
    /// Product suggestions for the request.
    Recommend(String),
    /// A command answered with a template or a link code.
    Command(Command),
    /// A question or small talk: the knowledge base or the model answers.
    Answer,
}

/// Decides the route.
pub fn route(message: Message<'_>, state: &State) -> Route {
    if state.agents_space {
        return Route::Agents;
    }
    let understood = match message {
        Message::Pressed(id) => {
            return Button::parse(id).map_or(Route::UnknownChoice, Route::Choice)
        }
        Message::Text(understood) => understood,
    };
    // Data rights work whoever has the chat.
    if let Some(command @ (Command::Export | Command::Forget)) = &understood.command {
        return Route::Command(command.clone());
    }
    if let Some(ticket) = state.ticket_with_agents {
        return Route::Relay(ticket);
    }
    if state.handoff {
        if understood.command == Some(Command::Human) {
            return Route::HandOff(Intent::HumanRequest);
        }
        if let Some(result) = understood.classification.as_ref().filter(|result| {
            result.escalate && result.evident && result.confidence >= state.auto_handoff_confidence
        }) {
            return Route::HandOff(result.intent);
        }
    }
    match &understood.command {
        Some(Command::Recommend(request)) => Route::Recommend(request.clone()),
        Some(command) => Route::Command(command.clone()),
        None if state.recommender
            && (understood.asks_for_recommendation || understood.shopping) =>
        {
            Route::Recommend(understood.text.clone())
        }
        None => Route::Answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buttons::ItemAction;
    use crate::intent::Classification;
    use crate::prompts::Locale;

    fn text(command: Option<Command>, escalation: Option<(Intent, f32)>, asks: bool) -> Understood {
        Understood {
            text: "the words".into(),
            was_cut: false,
            command,
            language: Some(Locale::En),
            classification: escalation.map(|(intent, confidence)| Classification {
                text: "the words".into(),
                lang: Locale::En,
                intent,
                escalate: matches!(intent, Intent::Complaint | Intent::HumanRequest),
                confidence,
                evident: true,
                praise: false,
            }),
            asks_for_recommendation: asks,
            shopping: false,
        }
    }

    const CUSTOMER: State = State {
        agents_space: false,
        ticket_with_agents: None,
        handoff: true,
        recommender: true,
        auto_handoff_confidence: 0.8,
    };

    #[test]
    fn every_kind_of_message_has_one_route() {
        let relay = State {
            ticket_with_agents: Some(7),
            ..CUSTOMER
        };
        let no_handoff = State {
            handoff: false,
            ..CUSTOMER
        };
        let no_recommender = State {
            recommender: false,
            ..CUSTOMER
        };
        let agents = State {
            agents_space: true,
            ..CUSTOMER
        };
        let help = text(Some(Command::Help), None, false);
        let human = text(Some(Command::Human), None, false);
        let angry = text(None, Some((Intent::Complaint, 0.95)), false);
        let unsure = text(None, Some((Intent::Complaint, 0.6)), false);
        let mut without_evidence = text(None, Some((Intent::Complaint, 0.95)), false);
        if let Some(result) = without_evidence.classification.as_mut() {
            result.evident = false;
        }
        let question = text(None, Some((Intent::Question, 0.9)), false);
        let wants_items = text(None, Some((Intent::Recommendation, 0.9)), true);
        let recommend = text(Some(Command::Recommend("tents".into())), None, false);
        let link = text(Some(Command::Link(None)), None, false);
        let rows: Vec<(&str, Message, State, Route)> = vec![
            ("agents' space", Message::Text(&help), agents, Route::Agents),
            (
                "agents' button",
                Message::Pressed("rate:T-000001:5"),
                agents,
                Route::Agents,
            ),
            (
                "rating",
                Message::Pressed("rate:T-000001:5"),
                CUSTOMER,
                Route::Choice(Button::Rate {
                    ticket: 1,
                    stars: 5,
                }),
            ),
            (
                "item button while with people",
                Message::Pressed("rec:like:tent"),
                relay,
                Route::Choice(Button::Item {
                    action: ItemAction::Like,
                    item: "tent".into(),
                }),
            ),
            (
                "forged button",
                Message::Pressed("rec:buy:tent"),
                CUSTOMER,
                Route::UnknownChoice,
            ),
            (
                "with people: text",
                Message::Text(&question),
                relay,
                Route::Relay(7),
            ),
            (
                "with people: command",
                Message::Text(&help),
                relay,
                Route::Relay(7),
            ),
            (
                "/human",
                Message::Text(&human),
                CUSTOMER,
                Route::HandOff(Intent::HumanRequest),
            ),
            (
                "/human without hand-off",
                Message::Text(&human),
                no_handoff,
                Route::Command(Command::Human),
            ),
            (
                "sure complaint",
                Message::Text(&angry),
                CUSTOMER,
                Route::HandOff(Intent::Complaint),
            ),
            (
                "complaint without hand-off",
                Message::Text(&angry),
                no_handoff,
                Route::Answer,
            ),
            (
                "unsure complaint",
                Message::Text(&unsure),
                CUSTOMER,
                Route::Answer,
            ),
            (
                "sure, but no displeasure in the words",
                Message::Text(&without_evidence),
                CUSTOMER,
                Route::Answer,
            ),
            (
                "question",
                Message::Text(&question),
                CUSTOMER,
                Route::Answer,
            ),
            (
                "asks for items",
                Message::Text(&wants_items),
                CUSTOMER,
                Route::Recommend("the words".into()),
            ),
            (
                "asks for items, no recommender",
                Message::Text(&wants_items),
                no_recommender,
                Route::Answer,
            ),
            (
                "/recommend",
                Message::Text(&recommend),
                no_recommender,
                Route::Recommend("tents".into()),
            ),
            (
                "/help",
                Message::Text(&help),
                CUSTOMER,
                Route::Command(Command::Help),
            ),
            (
                "/link",
                Message::Text(&link),
                CUSTOMER,
                Route::Command(Command::Link(None)),
            ),
        ];
        for (case, message, state, expected) in rows {
            assert_eq!(route(message, &state), expected, "{case}");
        }
    }
}
