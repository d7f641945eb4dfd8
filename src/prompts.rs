//! Everything the bot says that is not generated: templates under
//! `prompts/<locale>/<name>.txt`, read at start-up so operators can edit them
//! without a rebuild. A missing file falls back to the copy built into the
//! binary, so an installed binary without the directory still speaks.
//!
//! Architecture invariant: user-facing text lives here, in every locale;
//! no other module hard-codes a sentence for customers.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// A language the bot speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Locale {
    /// English.
    En,
    /// Chinese (simplified).
    Zh,
}

impl Locale {
    /// Every locale.
    pub const ALL: [Locale; 2] = [Locale::En, Locale::Zh];

    /// Parses `en`, `zh` and regional tags like `en-GB` or `zh-Hans`.
    pub fn parse(text: &str) -> Option<Self> {
        let primary = text.split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "en" => Some(Self::En),
            "zh" => Some(Self::Zh),
            _ => None,
        }
    }

    /// The locale's directory name.
    pub fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Zh => "zh",
        }
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The templates the core uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Template {
    /// The system prompt; kept byte-stable for the prefix cache.
    System,
    /// `/start`: welcome and privacy note.
    Start,
    /// `/help`.
    Help,
    /// `/reset`.
    Reset,
    /// An unknown `/command`; `{command}`.
    UnknownCommand,
    /// The engine failed; the customer is asked to retry.
    EngineError,
    /// The message was cut to `{limit}` characters.
    MessageCut,
    /// The customer's question with retrieved `{sources}`; `{question}`.
    GroundedQuestion,
    /// Names the passage an answer used; `{title}`.
    SourceLine,
    /// An FAQ entry answered verbatim; `{answer}`, `{title}`.
    FaqAnswer,
    /// The documents do not answer; offers a person.
    NotFound,
    /// Sentences of a page written only in the other language, quoted as
    /// written; `{answer}`, `{title}`.
    OtherLanguageAnswer,
    /// A reply to a greeting or other small talk: who the bot is and what
    /// it can do.
    Greeting,
    /// A reply to thanks.
    Thanks,
    /// A reply to praise the knowledge base has nothing to add to.
    Praise,
    /// Introduces recommended items.
    RecommendIntro,
    /// No catalog item fits the request.
    RecommendNone,
    /// Reason: customers who liked `{item}` chose it.
    ReasonAlsoBought,
    /// Reason: the item's attributes the request named, `{matched}`.
    ReasonMatches,
    /// Reason: similar to the customer's history.
    ReasonSimilar,
    /// Reason: popular.
    ReasonPopular,
    /// Asks the model for a one-line reason; `{title}`, `{description}`, `{category}`, `{history}`, `{request}`.
    RecommendReason,
    /// After 👍; `{title}`.
    FeedbackLike,
    /// After 👎; `{title}`.
    FeedbackDislike,
    /// An item's details; `{title}`, `{description}`, `{price}`, `{url}`.
    ItemDetails,
    /// `/link`: a one-time `{code}`, valid `{minutes}`.
    LinkCode,
    /// A link code joined two identities.
    LinkDone,
    /// A link code from the same customer.
    LinkAlready,
    /// An unknown, used or expired link code.
    LinkInvalid,
    /// A person takes over; `{ticket}`.
    TicketOpened,
    /// The ticket is resolved; asks for a rating; `{ticket}`.
    TicketResolved,
    /// After a rating.
    RatingThanks,
    /// Asks the model for a one-sentence summary for agents; `{transcript}`.
    TicketSummary,
    /// Asks the model whether a message needs a person (yes or no); `{message}`.
    EscalationCheck,
    /// A new ticket posted to the agents' spaces; `{ticket}`, `{category}`, `{priority}`, `{customer}`, `{platform}`, `{minutes}`, `{summary}`, `{transcript}`.
    AgentTicket,
    /// The customer wrote in a handed-off chat; `{ticket}`, `{text}`.
    AgentCustomerSaid,
    /// An agent's answer, shown in the other agents' spaces; `{ticket}`, `{agent}`, `{text}`.
    AgentAnswered,
    /// An internal note; `{ticket}`, `{agent}`, `{text}`.
    AgentNote,
    /// `{ticket}` was assigned to `{agent}`.
    AgentAssigned,
    /// `{ticket}` was resolved by `{agent}`.
    AgentResolved,
    /// `{ticket}` was reopened by `{agent}`.
    AgentReopened,
    /// The customer rated `{ticket}` `{rating}`/5.
    AgentRated,
    /// A deadline is near; `{ticket}`, `{priority}`, `{minutes}` left.
    AgentSlaReminder,
    /// A deadline passed; `{ticket}`, `{priority}`.
    AgentSlaBreached,
    /// Someone who is not an agent used an agent `{command}`.
    AgentOnly,
    /// An agent `{command}` without a ticket to act on.
    AgentWhichTicket,
    /// An agent's action on `{ticket}` failed; `{error}`.
    AgentFailed,
    /// The agent commands.
    AgentHelp,
    /// The customer sends faster than the moderation limits; once per window.
    RateLimited,
    /// Too many wrong link codes from this sender or for this code.
    LinkLimited,
    /// Told to the customer who asked for a code when another identity on `{platform}` used it.
    LinkJoined,
    /// In a group: a person takes over in the customer's private chat; `{ticket}`.
    TicketOpenedPrivately,
    /// In a group: the `/link` code went to the customer's private chat.
    LinkCodeSentPrivately,
    /// In a group: the bot cannot write to the customer privately yet.
    PrivateChatNeeded,
    /// Sent with a customer's data export as a file.
    ExportReady,
    /// At the console, where the export was written; `{path}`.
    ExportWritten,
    /// In a group: the export went to the customer's private chat.
    ExportSentPrivately,
    /// `/forget`: what erasure removes, asks to confirm with the buttons.
    ForgetConfirm,
    /// Button: confirm the erasure.
    ForgetYes,
    /// Button: keep the data.
    ForgetNo,
    /// After an erasure; `{messages}`, `{conversations}`, `{events}`, `{accounts}`, `{tickets}`.
    Forgotten,
    /// The customer chose to keep their data.
    ForgetCancelled,
    /// Once per customer, after card or bank details were masked out of a message.
    PaymentDataWarning,
    /// With `privacy.require_start`: nothing is stored before `/start`.
    StartRequired,
    /// Told to the agents' spaces of `{ticket}` when its customer erased their data.
    AgentTicketErased,
}

impl Template {
    /// Every template.
    pub const ALL: [Template; 65] = [
        Template::System,
        Template::Start,
        Template::Help,
        Template::Reset,
        Template::UnknownCommand,
        Template::EngineError,
        Template::MessageCut,
        Template::GroundedQuestion,
        Template::SourceLine,
        Template::FaqAnswer,
        Template::NotFound,
        Template::OtherLanguageAnswer,
        Template::Greeting,
        Template::Thanks,
        Template::Praise,
        Template::RecommendIntro,
        Template::RecommendNone,
        Template::ReasonAlsoBought,
        Template::ReasonMatches,
        Template::ReasonSimilar,
        Template::ReasonPopular,
        Template::RecommendReason,
        Template::FeedbackLike,
        Template::FeedbackDislike,
        Template::ItemDetails,
        Template::LinkCode,
        Template::LinkDone,
        Template::LinkAlready,
        Template::LinkInvalid,
        Template::TicketOpened,
        Template::TicketResolved,
        Template::RatingThanks,
        Template::TicketSummary,
        Template::EscalationCheck,
        Template::AgentTicket,
        Template::AgentCustomerSaid,
        Template::AgentAnswered,
        Template::AgentNote,
        Template::AgentAssigned,
        Template::AgentResolved,
        Template::AgentReopened,
        Template::AgentRated,
        Template::AgentSlaReminder,
        Template::AgentSlaBreached,
        Template::AgentOnly,
        Template::AgentWhichTicket,
        Template::AgentFailed,
        Template::AgentHelp,
        Template::RateLimited,
        Template::LinkLimited,
        Template::LinkJoined,
        Template::TicketOpenedPrivately,
        Template::LinkCodeSentPrivately,
        Template::PrivateChatNeeded,
        Template::ExportReady,
        Template::ExportWritten,
        Template::ExportSentPrivately,
        Template::ForgetConfirm,
        Template::ForgetYes,
        Template::ForgetNo,
        Template::Forgotten,
        Template::ForgetCancelled,
        Template::PaymentDataWarning,
        Template::StartRequired,
        Template::AgentTicketErased,
    ];

    /// File name under the locale directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::System => "system.txt",
            Self::Start => "start.txt",
            Self::Help => "help.txt",
            Self::Reset => "reset.txt",
            Self::UnknownCommand => "unknown_command.txt",
            Self::EngineError => "engine_error.txt",
            Self::MessageCut => "message_cut.txt",
            Self::GroundedQuestion => "grounded_question.txt",
            Self::SourceLine => "source_line.txt",
            Self::FaqAnswer => "faq_answer.txt",
            Self::NotFound => "not_found.txt",
            Self::OtherLanguageAnswer => "other_language_answer.txt",
            Self::Greeting => "greeting.txt",
            Self::Thanks => "thanks.txt",
            Self::Praise => "praise.txt",
            Self::RecommendIntro => "recommend_intro.txt",
            Self::RecommendNone => "recommend_none.txt",
            Self::ReasonAlsoBought => "reason_also_bought.txt",
            Self::ReasonMatches => "reason_matches.txt",
            Self::ReasonSimilar => "reason_similar.txt",
            Self::ReasonPopular => "reason_popular.txt",
            Self::RecommendReason => "recommend_reason.txt",
            Self::FeedbackLike => "feedback_like.txt",
            Self::FeedbackDislike => "feedback_dislike.txt",
            Self::ItemDetails => "item_details.txt",
            Self::LinkCode => "link_code.txt",
            Self::LinkDone => "link_done.txt",
            Self::LinkAlready => "link_already.txt",
            Self::LinkInvalid => "link_invalid.txt",
            Self::TicketOpened => "ticket_opened.txt",
            Self::TicketResolved => "ticket_resolved.txt",
            Self::RatingThanks => "rating_thanks.txt",
            Self::TicketSummary => "ticket_summary.txt",
            Self::EscalationCheck => "escalation_check.txt",
            Self::AgentTicket => "agent_ticket.txt",
            Self::AgentCustomerSaid => "agent_customer_said.txt",
            Self::AgentAnswered => "agent_answered.txt",
            Self::AgentNote => "agent_note.txt",
            Self::AgentAssigned => "agent_assigned.txt",
            Self::AgentResolved => "agent_resolved.txt",
            Self::AgentReopened => "agent_reopened.txt",
            Self::AgentRated => "agent_rated.txt",
            Self::AgentSlaReminder => "agent_sla_reminder.txt",
            Self::AgentSlaBreached => "agent_sla_breached.txt",
            Self::AgentOnly => "agent_only.txt",
            Self::AgentWhichTicket => "agent_which_ticket.txt",
            Self::AgentFailed => "agent_failed.txt",
            Self::AgentHelp => "agent_help.txt",
            Self::RateLimited => "rate_limited.txt",
            Self::LinkLimited => "link_limited.txt",
            Self::LinkJoined => "link_joined.txt",
            Self::TicketOpenedPrivately => "ticket_opened_private.txt",
            Self::LinkCodeSentPrivately => "link_code_private.txt",
            Self::PrivateChatNeeded => "private_chat_needed.txt",
            Self::ExportReady => "export_ready.txt",
            Self::ExportWritten => "export_written.txt",
            Self::ExportSentPrivately => "export_private.txt",
            Self::ForgetConfirm => "forget_confirm.txt",
            Self::ForgetYes => "forget_yes.txt",
            Self::ForgetNo => "forget_no.txt",
            Self::Forgotten => "forgotten.txt",
            Self::ForgetCancelled => "forget_cancelled.txt",
            Self::PaymentDataWarning => "payment_data_warning.txt",
            Self::StartRequired => "start_required.txt",
            Self::AgentTicketErased => "agent_ticket_erased.txt",
        }
    }

    fn built_in(self, locale: Locale) -> &'static str {
        macro_rules! both {
            ($file:literal) => {
                match locale {
                    Locale::En => include_str!(concat!("../prompts/en/", $file)),
                    Locale::Zh => include_str!(concat!("../prompts/zh/", $file)),
                }
            };
        }
        match self {
            Self::System => both!("system.txt"),
            Self::Start => both!("start.txt"),
            Self::Help => both!("help.txt"),
            Self::Reset => both!("reset.txt"),
            Self::UnknownCommand => both!("unknown_command.txt"),
            Self::EngineError => both!("engine_error.txt"),
            Self::MessageCut => both!("message_cut.txt"),
            Self::GroundedQuestion => both!("grounded_question.txt"),
            Self::SourceLine => both!("source_line.txt"),
            Self::FaqAnswer => both!("faq_answer.txt"),
            Self::NotFound => both!("not_found.txt"),
            Self::OtherLanguageAnswer => both!("other_language_answer.txt"),
            Self::Greeting => both!("greeting.txt"),
            Self::Thanks => both!("thanks.txt"),
            Self::Praise => both!("praise.txt"),
            Self::RecommendIntro => both!("recommend_intro.txt"),
            Self::RecommendNone => both!("recommend_none.txt"),
            Self::ReasonAlsoBought => both!("reason_also_bought.txt"),
            Self::ReasonMatches => both!("reason_matches.txt"),
            Self::ReasonSimilar => both!("reason_similar.txt"),
            Self::ReasonPopular => both!("reason_popular.txt"),
            Self::RecommendReason => both!("recommend_reason.txt"),
            Self::FeedbackLike => both!("feedback_like.txt"),
            Self::FeedbackDislike => both!("feedback_dislike.txt"),
            Self::ItemDetails => both!("item_details.txt"),
            Self::LinkCode => both!("link_code.txt"),
            Self::LinkDone => both!("link_done.txt"),
            Self::LinkAlready => both!("link_already.txt"),
            Self::LinkInvalid => both!("link_invalid.txt"),
            Self::TicketOpened => both!("ticket_opened.txt"),
            Self::TicketResolved => both!("ticket_resolved.txt"),
            Self::RatingThanks => both!("rating_thanks.txt"),
            Self::TicketSummary => both!("ticket_summary.txt"),
            Self::EscalationCheck => both!("escalation_check.txt"),
            Self::AgentTicket => both!("agent_ticket.txt"),
            Self::AgentCustomerSaid => both!("agent_customer_said.txt"),
            Self::AgentAnswered => both!("agent_answered.txt"),
            Self::AgentNote => both!("agent_note.txt"),
            Self::AgentAssigned => both!("agent_assigned.txt"),
            Self::AgentResolved => both!("agent_resolved.txt"),
            Self::AgentReopened => both!("agent_reopened.txt"),
            Self::AgentRated => both!("agent_rated.txt"),
            Self::AgentSlaReminder => both!("agent_sla_reminder.txt"),
            Self::AgentSlaBreached => both!("agent_sla_breached.txt"),
            Self::AgentOnly => both!("agent_only.txt"),
            Self::AgentWhichTicket => both!("agent_which_ticket.txt"),
            Self::AgentFailed => both!("agent_failed.txt"),
            Self::AgentHelp => both!("agent_help.txt"),
            Self::RateLimited => both!("rate_limited.txt"),
            Self::LinkLimited => both!("link_limited.txt"),
            Self::LinkJoined => both!("link_joined.txt"),
            Self::TicketOpenedPrivately => both!("ticket_opened_private.txt"),
            Self::LinkCodeSentPrivately => both!("link_code_private.txt"),
            Self::PrivateChatNeeded => both!("private_chat_needed.txt"),
            Self::ExportReady => both!("export_ready.txt"),
            Self::ExportWritten => both!("export_written.txt"),
            Self::ExportSentPrivately => both!("export_private.txt"),
            Self::ForgetConfirm => both!("forget_confirm.txt"),
            Self::ForgetYes => both!("forget_yes.txt"),
            Self::ForgetNo => both!("forget_no.txt"),
            Self::Forgotten => both!("forgotten.txt"),
            Self::ForgetCancelled => both!("forget_cancelled.txt"),
            Self::PaymentDataWarning => both!("payment_data_warning.txt"),
            Self::StartRequired => both!("start_required.txt"),
            Self::AgentTicketErased => both!("agent_ticket_erased.txt"),
        }
    }
}

/// Errors reading the prompts directory.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// A template file exists but cannot be read or is not UTF-8.
    #[error("cannot read prompt template {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Loaded templates for every locale.
#[derive(Clone, Debug)]
pub struct Prompts {
    texts: HashMap<(Locale, Template), String>,
}

impl Prompts {
    /// Reads `dir/<locale>/<template>`; files that do not exist fall back to
    /// the built-in text.
    pub fn load(dir: &Path) -> Result<Self, PromptError> {
        let mut texts = HashMap::new();
        for locale in Locale::ALL {
            for template in Template::ALL {
                let path = dir.join(locale.code()).join(template.file_name());
                let text = match std::fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        template.built_in(locale).to_string()
                    }
                    Err(source) => {
                        return Err(PromptError::Read {
                            path: path.display().to_string(),
                            source,
                        })
                    }
                };
                texts.insert((locale, template), text.trim_end().to_string());
            }
        }
        Ok(Self { texts })
    }

    /// The built-in templates only.
    pub fn built_in() -> Self {
        let texts = Locale::ALL
            .into_iter()
            .flat_map(|locale| {
                Template::ALL.into_iter().map(move |template| {
                    let text = template.built_in(locale).trim_end().to_string();
                    ((locale, template), text)
                })
            })
            .collect();
        Self { texts }
    }

    /// The raw template text.
    pub fn text(&self, locale: Locale, template: Template) -> &str {
        self.texts
            .get(&(locale, template))
            .map_or("", String::as_str)
    }

    /// The template with each `{name}` replaced by its value.
    /// Values are inserted in one pass, so a value containing `{name}`
    /// (a passage quoting a template) is never substituted again.
    pub fn render(&self, locale: Locale, template: Template, values: &[(&str, &str)]) -> String {
        let mut rest = self.text(locale, template);
        let mut text = String::with_capacity(rest.len());
        while let Some(open) = rest.find('{') {
            text.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let value = after.find('}').and_then(|close| {
                let name = &after[..close];
                values
                    .iter()
                    .find(|(candidate, _)| *candidate == name)
                    .map(|(_, value)| (*value, close))
            });
            match value {
                Some((value, close)) => {
                    text.push_str(value);
                    rest = &after[close + 1..];
                }
                None => {
                    text.push('{');
                    rest = after;
                }
            }
        }
        text.push_str(rest);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_exists_in_every_locale() {
        let prompts = Prompts::built_in();
        for locale in Locale::ALL {
            for template in Template::ALL {
                assert!(
                    !prompts.text(locale, template).is_empty(),
                    "{locale} {template:?}"
                );
            }
        }
        assert!(prompts.text(Locale::Zh, Template::Help).contains("命令"));
    }

    #[test]
    fn files_override_built_ins_and_render_placeholders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("en")).unwrap();
        std::fs::write(
            dir.path().join("en/unknown_command.txt"),
            "No {command} here\n",
        )
        .unwrap();
        let prompts = Prompts::load(dir.path()).unwrap();
        assert_eq!(
            prompts.render(Locale::En, Template::UnknownCommand, &[("command", "/x")]),
            "No /x here"
        );
        assert_eq!(
            prompts.render(
                Locale::En,
                Template::UnknownCommand,
                &[("command", "{command} {x")]
            ),
            "No {command} {x here"
        );
        assert_eq!(
            prompts.text(Locale::Zh, Template::Reset),
            Prompts::built_in().text(Locale::Zh, Template::Reset)
        );
    }

    #[test]
    fn locale_tags_parse() {
        assert_eq!(Locale::parse("zh-Hans"), Some(Locale::Zh));
        assert_eq!(Locale::parse("en_GB"), Some(Locale::En));
        assert_eq!(Locale::parse("fr"), None);
    }
}
