//! The ids of the buttons the bot puts under its messages, written and read
//! back in one place: `rate:<ticket>:<stars>` under a resolved ticket, and
//! `rec:<like|dislike|details>:<item>` under a recommended item, and
//! `forget:<yes|no>:<customer>` under the question `/forget` asks.

use crate::escalation::ticket::{display_id, parse_id};

/// A button the bot offered, as pressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Button {
    /// A rating of a resolved ticket, 1-5 stars.
    Rate {
        /// The ticket's number.
        ticket: u64,
        /// 1-5.
        stars: u8,
    },
    /// The answer to `/forget`'s question, for one customer.
    Forget {
        /// The customer who asked (only they may answer).
        customer: u64,
        /// Erase (`yes`) or keep (`no`).
        erase: bool,
    },
    /// A reaction to a recommended catalog item.
    Item {
        /// What the customer did.
        action: ItemAction,
        /// The catalog item's id.
        item: String,
    },
}

/// What a recommendation button does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemAction {
    /// 👍
    Like,
    /// 👎
    Dislike,
    /// Show the item's details.
    Details,
}

impl ItemAction {
    fn name(self) -> &'static str {
        match self {
            Self::Like => "like",
            Self::Dislike => "dislike",
            Self::Details => "details",
        }
    }
}

impl Button {
    /// The id to send with the button.
    pub fn id(&self) -> String {
        match self {
            Self::Rate { ticket, stars } => format!("rate:{}:{stars}", display_id(*ticket)),
            Self::Item { action, item } => format!("rec:{}:{item}", action.name()),
            Self::Forget { customer, erase } => {
                format!("forget:{}:{customer}", if *erase { "yes" } else { "no" })
            }
        }
    }

    /// The button behind a pressed id; `None` for an id the bot never
    /// makes (an old or forged press).
    pub fn parse(id: &str) -> Option<Self> {
        let (kind, rest) = id.split_once(':')?;
        match kind {
            "rate" => {
                let (ticket, stars) = rest.split_once(':')?;
                let stars: u8 = stars.parse().ok().filter(|stars| (1..=5).contains(stars))?;
                Some(Self::Rate {
                    ticket: parse_id(ticket)?,
                    stars,
                })
            }
            "forget" => {
                let (answer, customer) = rest.split_once(':')?;
                let erase = match answer {
                    "yes" => true,
                    "no" => false,
                    _ => return None,
                };
                Some(Self::Forget {
                    customer: customer.parse().ok()?,
                    erase,
                })
            }
            "rec" => {
                let (action, item) = rest.split_once(':')?;
                let action = match action {
                    "like" => ItemAction::Like,
                    "dislike" => ItemAction::Dislike,
                    "details" => ItemAction::Details,
                    _ => return None,
                };
                (!item.is_empty()).then(|| Self::Item {
                    action,
                    item: item.to_string(),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ones_are_refused() {
        let buttons = [
            Button::Rate {
                ticket: 12,
                stars: 5,
            },
            Button::Item {
                action: ItemAction::Like,
                item: "tent-2p".into(),
            },
            Button::Item {
                action: ItemAction::Details,
                item: "a:b".into(),
            },
            Button::Forget {
                customer: 7,
                erase: true,
            },
            Button::Forget {
                customer: 7,
                erase: false,
            },
        ];
        for button in buttons {
            assert_eq!(
                Button::parse(&button.id()),
                Some(button.clone()),
                "{}",
                button.id()
            );
        }
        assert_eq!(
            Button::Rate {
                ticket: 12,
                stars: 5
            }
            .id(),
            "rate:T-000012:5"
        );
        for forged in [
            "rate:T-000012:6",
            "rate:T-000012:0",
            "rate:nonsense:3",
            "rec:buy:tent",
            "rec:like:",
            "forget:maybe:7",
            "forget:yes:x",
            "other:x",
            "",
        ] {
            assert_eq!(Button::parse(forged), None, "{forged}");
        }
    }
}
