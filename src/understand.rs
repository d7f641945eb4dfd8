//! The understand stage: what a customer's text says before anything is
//! decided — the command it gives (`/help`, a bare link code), its language
//! and its intent. Pure functions over the sanitised text.

use crate::intent::{Classification, Classifier};
use crate::language;
use crate::prompts::Locale;

/// A customer command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `/start`
    Start,
    /// `/help`
    Help,
    /// `/reset`: a fresh conversation.
    Reset,
    /// `/recommend [what]`
    Recommend(String),
    /// `/link` alone asks for a code; `/link CODE` (or the code on its own)
    /// enters one.
    Link(Option<String>),
    /// `/human`: hand the conversation to a person.
    Human,
    /// `/export`: everything stored about the customer, as a file.
    Export,
    /// `/forget`: erase the customer, once they confirm.
    Forget,
    /// Any other `/word`.
    Unknown(String),
}

/// Link codes read `LINK-` and six characters without look-alikes (0/O, 1/I).
pub const LINK_CODE_PREFIX: &str = "LINK-";
/// The characters of a link code after its prefix.
pub const LINK_CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// How many of them.
pub const LINK_CODE_LENGTH: usize = 6;

/// A customer's text as the route stage sees it.
#[derive(Clone, Debug)]
pub struct Understood {
    /// The text, sanitised and cut to the length limit.
    pub text: String,
    /// It was cut.
    pub was_cut: bool,
    /// The command it gives, if any.
    pub command: Option<Command>,
    /// The language of its words (`None` for commands and bare codes).
    pub language: Option<Locale>,
    /// Its intent and whether a person should take over (not for commands).
    pub classification: Option<Classification>,
    /// Free text asking for product suggestions ("recommend me …", "推荐").
    pub asks_for_recommendation: bool,
    /// Free text the classifier takes for shopping ("I'm looking for a warm
    /// jacket"); recommended from only when it names something the catalog
    /// holds.
    pub shopping: bool,
}

/// Understands `text` (already sanitised); `classifier` is asked only when
/// the text is no command.
pub fn understand(text: String, was_cut: bool, classifier: Option<&Classifier>) -> Understood {
    // A code from `/link` on another platform may be sent on its own.
    let command =
        parse_command(&text).or_else(|| as_link_code(&text).map(|code| Command::Link(Some(code))));
    // A command's name says nothing of the customer's language.
    let (language, classification) = match (&command, classifier) {
        (Some(_), _) => (None, None),
        (None, classifier) => (
            language::detect(&text),
            classifier.map(|classifier| classifier.classify(&text)),
        ),
    };
    // "I'm looking for a warm jacket" asks for products without saying
    // "recommend": the classifier knows it.
    let classified_as_shopping = classification.as_ref().is_some_and(|result| {
        result.intent == crate::intent::Intent::Recommendation
            && result.confidence >= MIN_SHOPPING_CONFIDENCE
    });
    let asks_for_recommendation = command.is_none() && asks_for_recommendation(&text);
    let shopping = command.is_none() && classified_as_shopping;
    Understood {
        text,
        was_cut,
        command,
        language,
        classification,
        asks_for_recommendation,
        shopping,
    }
}

/// The text as a link code, when it is one (any case, surrounding space).
pub fn as_link_code(text: &str) -> Option<String> {
    let code = text.trim().to_uppercase();
    let body = code.strip_prefix(LINK_CODE_PREFIX)?;
    (body.len() == LINK_CODE_LENGTH && body.bytes().all(|b| LINK_CODE_ALPHABET.contains(&b)))
        .then_some(code)
}

/// `/name@bot rest` as `(name, rest)`, the name lowercased without the
/// bot's name (Telegram appends it in groups: /help@shop_bot); `None` for
/// plain text.
pub fn split_command(text: &str) -> Option<(String, &str)> {
    let text = text.trim_start();
    let word = text.split_whitespace().next()?;
    let name = word.strip_prefix('/')?;
    let name = name.split('@').next().unwrap_or(name).to_lowercase();
    Some((name, text[word.len()..].trim()))
}

/// The command `text` gives, when it starts with `/`.
pub fn parse_command(text: &str) -> Option<Command> {
    let (name, rest) = split_command(text)?;
    Some(match name.as_str() {
        "start" => Command::Start,
        "help" => Command::Help,
        "reset" => Command::Reset,
        "recommend" => Command::Recommend(rest.to_string()),
        "human" => Command::Human,
        "export" => Command::Export,
        "forget" => Command::Forget,
        "link" => Command::Link(Some(rest.to_string()).filter(|rest| !rest.is_empty())),
        _ => Command::Unknown(text.split_whitespace().next().unwrap_or(text).to_string()),
    })
}

/// Confidence of the "recommendation" intent at which a message is taken
/// as asking for products.
const MIN_SHOPPING_CONFIDENCE: f32 = 0.6;

/// Whether free text asks for recommendations ("recommend me …", "推荐",
/// "I want to buy …", "我想买…").
fn asks_for_recommendation(text: &str) -> bool {
    let lowered = text.to_lowercase();
    [
        "recommend",
        "suggest",
        "want to buy",
        "wanna buy",
        "like to buy",
        "推荐",
        "建议买",
        "想买",
        "要买",
    ]
    .iter()
    .any(|marker| {
        lowered.match_indices(marker).any(|(at, _)| {
            // "最低要买多少钱" asks about an amount, not for products.
            let after = lowered[at + marker.len()..].trim_start();
            let asks_amount = ["多少", "几", "满", "够"]
                .iter()
                .any(|amount| after.starts_with(amount));
            !asks_amount && !refers_for_reward(marker, after, &lowered) && !negated(&lowered[..at])
        })
    })
}

/// "推荐朋友开户有奖励吗", "do I get anything if I recommend a friend": a
/// person after 推荐 or "recommend", in a message about a reward, is a
/// referral, not a request for products ("推荐家人露营用的帐篷" asks).
fn refers_for_reward(marker: &str, after: &str, lowered: &str) -> bool {
    let refers = match marker {
        "推荐" => [
            "朋友",
            "好友",
            "亲友",
            "家人",
            "同事",
            "别人",
            "他人",
            "新用户",
            "新客户",
        ]
        .iter()
        .any(|person| after.starts_with(person) && !after.starts_with("朋友圈")),
        "recommend" => ["a friend", "friends", "my friend", "someone"]
            .iter()
            .any(|person| after.starts_with(person)),
        _ => false,
    };
    refers
        && [
            "奖励",
            "返现",
            "好处",
            "积分",
            "邀请",
            "reward",
            "bonus",
            "referral",
            "get anything",
            "earn",
            "points",
        ]
        .iter()
        .any(|reward| lowered.contains(reward))
}

/// Whether the words just before a marker deny it ("can I rent one? 不想买",
/// "I don't want to buy", "please don't recommend"), within its clause.
fn negated(before: &str) -> bool {
    let clause = before
        .rsplit([
            '.', '?', '!', ',', ';', ':', '。', '？', '！', '，', '；', '：',
        ])
        .next()
        .unwrap_or(before);
    // 不想买, 不要买, 不用推荐, 没想买; not 有没 (有没推荐 asks) or 特别,
    // 分别 (别 that is no "don't").
    let chinese = clause.ends_with('不')
        || clause.ends_with("不用")
        || (clause.ends_with('没') && !clause.ends_with("有没"))
        || (clause.ends_with('别')
            && ![
                "特别", "分别", "区别", "类别", "级别", "性别", "个别", "告别",
            ]
            .iter()
            .any(|word| clause.ends_with(word)));
    if chinese {
        return true;
    }
    // The word right before: "not sure which, recommend one" still asks.
    clause
        .split(|ch: char| !ch.is_alphanumeric() && ch != '\'' && ch != '’')
        .rfind(|word| !word.is_empty())
        .is_some_and(|word| {
            matches!(
                word.replace('’', "'").as_str(),
                "not" | "don't" | "dont" | "never" | "wouldn't" | "won't" | "didn't" | "doesn't"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_wish_to_buy_asks_for_no_products() {
        assert!(asks_for_recommendation("我想买一个适合徒步的背包"));
        assert!(asks_for_recommendation("I want to buy a tent"));
        assert!(!asks_for_recommendation("帐篷可以租吗？不想买"));
        assert!(!asks_for_recommendation(
            "I don't want to buy one, can I rent a tent?"
        ));
        assert!(!asks_for_recommendation("please do not recommend anything"));
        assert!(!asks_for_recommendation("别推荐了，我只想问运费"));
        assert!(asks_for_recommendation("not sure which, recommend one"));
        assert!(asks_for_recommendation("我特别想买一个帐篷"));
        assert!(asks_for_recommendation("分别推荐一款帐篷和睡袋"));
        assert!(asks_for_recommendation("有没推荐的防水鞋"));
        assert!(!asks_for_recommendation("推荐朋友开户有奖励吗？"));
        assert!(!asks_for_recommendation(
            "Do I get anything if I recommend a friend?"
        ));
        assert!(asks_for_recommendation("推荐一款适合朋友的礼物"));
        assert!(asks_for_recommendation("推荐家人露营用的帐篷"));
        assert!(asks_for_recommendation("推荐朋友圈很火的那款"));
        assert!(asks_for_recommendation("要买家人用的睡袋"));
        assert!(asks_for_recommendation("No, recommend a cheaper one"));
        assert!(asks_for_recommendation(
            "Is it waterproof? If not, suggest something similar"
        ));
    }

    #[test]
    fn commands_parse_with_bot_suffix_and_case() {
        assert_eq!(parse_command("/start"), Some(Command::Start));
        assert_eq!(parse_command("/HELP@shop_bot now"), Some(Command::Help));
        assert_eq!(parse_command(" /reset"), Some(Command::Reset));
        assert_eq!(
            parse_command("/frobnicate"),
            Some(Command::Unknown("/frobnicate".into()))
        );
        assert_eq!(parse_command("hello /start"), None);
        assert_eq!(
            parse_command("/link link-abcdef"),
            Some(Command::Link(Some("link-abcdef".into())))
        );
    }

    #[test]
    fn a_bare_link_code_is_a_command_and_words_have_a_language() {
        let code = understand(" link-abc234 ".into(), false, None);
        assert_eq!(
            code.command,
            Some(Command::Link(Some("LINK-ABC234".into())))
        );
        assert_eq!(code.language, None);
        let words = understand("推荐一个背包".into(), false, None);
        assert_eq!(words.command, None);
        assert_eq!(words.language, Some(Locale::Zh));
        assert!(words.asks_for_recommendation);
        for buying in [
            "I want to buy a hiking backpack",
            "我想买一个适合徒步的背包",
        ] {
            assert!(understand(buying.into(), false, None).asks_for_recommendation);
        }
        for not_buying in [
            "I want to return my backpack",
            "首单优惠券最低要买多少钱才能用",
        ] {
            assert!(!understand(not_buying.into(), false, None).asks_for_recommendation);
        }
        // Look-alike characters are no code.
        assert_eq!(as_link_code("LINK-ABC0I1"), None);
    }
}
