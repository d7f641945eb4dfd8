//! Recognises messages that are only social: greetings at any time of day,
//! thanks, "how are you", goodbyes, in English and Chinese. They get the
//! shop's templates; searching the help pages for "morning" or "again"
//! only finds a passage that happens to share the word.

/// English words that carry no request: greetings, courtesy, fillers.
const ENGLISH: &[&str] = &[
    "a",
    "again",
    "afternoon",
    "all",
    "am",
    "and",
    "are",
    "bye",
    "cheers",
    "day",
    "dear",
    "doing",
    "evening",
    "everybody",
    "everyone",
    "fine",
    "folks",
    "for",
    "good",
    "goodbye",
    "greetings",
    "guys",
    "hello",
    "help",
    "helping",
    "hey",
    "hi",
    "hiya",
    "how",
    "i",
    "i'm",
    "im",
    "is",
    "it",
    "it's",
    "later",
    "lot",
    "many",
    "morning",
    "much",
    "night",
    "ok",
    "okay",
    "oh",
    "so",
    "see",
    "sup",
    "team",
    "thank",
    "thanks",
    "thx",
    "ty",
    "that's",
    "the",
    "there",
    "to",
    "today",
    "very",
    "well",
    "what's",
    "whats",
    "up",
    "you",
    "your",
    "yo",
    "be",
    "bot",
    "concierge",
    "everything",
];

/// Chinese greetings and courtesies, longest first where one holds another.
const CHINESE: &[&str] = &[
    "非常感谢",
    "十分感谢",
    "谢谢你们",
    "谢谢您",
    "谢谢你",
    "辛苦了",
    "早上好",
    "上午好",
    "中午好",
    "下午好",
    "晚上好",
    "晚安",
    "大家好",
    "你们好",
    "您好",
    "你好",
    "哈喽",
    "哈啰",
    "在吗",
    "在不在",
    "有人吗",
    "谢谢",
    "多谢",
    "感谢",
    "再见",
    "拜拜",
    "好的",
    "没事",
    "没问题",
    "早安",
    "早",
    "嗨",
    "喂",
    "呀",
    "啊",
    "哦",
    "嗯",
    "呢",
    "吗",
    "啦",
    "了",
    "的",
    "很",
    "非常",
    "太",
    "又",
    "再次",
    "今天",
    "客服",
    "亲",
];

/// Words of thanks in English, and phrases of thanks in Chinese.
const THANKS_WORDS: &[&str] = &["thank", "thanks", "thx", "ty", "cheers"];
const THANKS_PHRASES: &[&str] = &["谢谢", "感谢", "多谢", "谢了", "辛苦了"];

/// What kind of social message a text is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SmallTalk {
    Thanks,
    Greeting,
}

/// Whether `text` is only social words (and punctuation or emoji), and
/// which kind. `None` for anything that asks or tells something.
pub(crate) fn recognise(text: &str) -> Option<SmallTalk> {
    use crate::knowledge::text::{runs, Run};
    let lowered = text.to_lowercase();
    let runs = runs(&lowered);
    if runs.is_empty() {
        return None;
    }
    let social = |run: &Run| match run {
        Run::Word(word, _) => ENGLISH.contains(word),
        Run::Han(piece, _) => CHINESE
            .iter()
            .fold(piece.to_string(), |rest, phrase| rest.replace(phrase, ""))
            .is_empty(),
    };
    if !runs.iter().all(social) {
        return None;
    }
    Some(kind_of(text))
}

/// `text` without the greeting before its request and the thanks after it
/// ("Good morning, where is my parcel? Thanks!" -> "where is my parcel?"):
/// a passage that happens to say "morning" is no answer. Clauses end at
/// punctuation; only whole social clauses at either end go.
pub(crate) fn without_social_clauses(text: &str) -> &str {
    let is_break = |ch: char| ",.!?;~，。！？；、～…".contains(ch);
    let mut clauses = Vec::new();
    let mut start = 0;
    for (at, ch) in text.char_indices() {
        if is_break(ch) {
            clauses.push(start..at + ch.len_utf8());
            start = at + ch.len_utf8();
        }
    }
    if start < text.len() {
        clauses.push(start..text.len());
    }
    let social = |range: &std::ops::Range<usize>| recognise(&text[range.clone()]).is_some();
    let Some(first) = clauses.iter().position(|clause| !social(clause)) else {
        return text;
    };
    let last = clauses
        .iter()
        .rposition(|clause| !social(clause))
        .unwrap_or(first);
    text[clauses[first].start..clauses[last].end].trim()
}

/// Thanks when a word of thanks is in `text`, else a greeting.
pub(crate) fn kind_of(text: &str) -> SmallTalk {
    let lowered = text.to_lowercase();
    let thanked = lowered
        .split(|ch: char| !ch.is_alphanumeric())
        .any(|word| THANKS_WORDS.contains(&word))
        || THANKS_PHRASES.iter().any(|phrase| lowered.contains(phrase));
    if thanked {
        SmallTalk::Thanks
    } else {
        SmallTalk::Greeting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_and_thanks_in_both_languages_are_small_talk() {
        for greeting in [
            "hello again",
            "Hi there!",
            "good morning",
            "Good evening everyone",
            "hey, how are you?",
            "早上好",
            "你好呀",
            "在吗？",
            "hello 👋",
        ] {
            assert_eq!(recognise(greeting), Some(SmallTalk::Greeting), "{greeting}");
        }
        for thanks in [
            "thanks a lot!",
            "Thank you so much",
            "谢谢你！",
            "非常感谢，辛苦了",
        ] {
            assert_eq!(recognise(thanks), Some(SmallTalk::Thanks), "{thanks}");
        }
        // "ty" is a word of thanks, not a part of one.
        assert_eq!(kind_of("pretty city"), SmallTalk::Greeting);
    }

    #[test]
    fn greetings_and_thanks_around_a_request_are_left_out() {
        for (message, request) in [
            (
                "Good morning, where is my parcel? Thanks!",
                "where is my parcel?",
            ),
            ("早上好，我的包裹到哪里了？谢谢", "我的包裹到哪里了？"),
            ("hello again! can I pay with Amex", "can I pay with Amex"),
            ("where is my parcel", "where is my parcel"),
            // Only whole clauses at the ends: this "good" is part of the request.
            (
                "is the jacket good for hiking?",
                "is the jacket good for hiking?",
            ),
            ("hi, good day", "hi, good day"),
        ] {
            assert_eq!(without_social_clauses(message), request, "{message}");
        }
    }

    #[test]
    fn anything_that_asks_or_tells_is_not() {
        for message in [
            "hello, I want to return my shoes",
            "good morning, where is my order?",
            "thanks, but the parcel never arrived",
            "你好，我的快递到哪了",
            "谢谢，不过我想退货",
            "how much is shipping?",
            "ok",
            "",
            "👋",
            "12345",
        ] {
            let expected = matches!(message, "ok").then_some(SmallTalk::Greeting);
            assert_eq!(recognise(message), expected, "{message:?}");
        }
    }
}
