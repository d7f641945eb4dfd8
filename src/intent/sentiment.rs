//! Sentiment cues from a lexicon of our own (`sentiment-en.txt`,
//! `sentiment-zh.txt`, compiled in): words of displeasure and of praise,
//! markers of a small wish inside praise, negators and intensifiers. They give
//! the classifier features that reach past its training vocabulary: a
//! "pathetic" or a "垃圾" counts as displeasure even when no training message
//! used that word, and "不太好吃" as a negated praise.

use std::collections::HashMap;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, MatchKind};

/// What a lexicon entry signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Negative,
    Positive,
    Wish,
    Negator,
    Intensifier,
    /// Matched so that a cue inside it does not count ("不好意思", "good morning").
    Neutral,
}

impl Kind {
    fn of_section(name: &str) -> Option<Self> {
        match name {
            "negative" => Some(Self::Negative),
            "positive" => Some(Self::Positive),
            "wish" => Some(Self::Wish),
            "negator" => Some(Self::Negator),
            "intensifier" => Some(Self::Intensifier),
            "neutral" => Some(Self::Neutral),
            _ => None,
        }
    }
}

/// How many cues of each kind a message holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cues {
    /// Words of displeasure, negated praise included.
    pub negative: usize,
    /// Words of praise, not negated.
    pub positive: usize,
    /// Praise under a negator ("not great", "不太好吃").
    pub negated_positive: usize,
    /// Displeasure under a negator ("never late", "一点都不油腻"): often
    /// praise, yet also "no refund" or "不是骗人吗", so it is a cue of its
    /// own rather than displeasure or praise.
    pub negated_negative: usize,
    /// Markers of a small wish ("a bit", "就是有点").
    pub wish: usize,
    /// Intensifiers ("so", "太").
    pub intensifier: usize,
}

/// English words within this many words before praise negate it.
const NEGATION_REACH_WORDS: usize = 3;
/// English words within this many words before displeasure negate it
/// ("never been late"); shorter, so "can't believe how bad" stays displeasure.
const NEGATION_REACH_WORDS_DISPLEASURE: usize = 2;
/// Chinese characters between a negator and the praise it negates.
const NEGATION_REACH_CHARS: usize = 1;

struct English {
    /// Whole words and phrases (words joined by one space).
    phrases: HashMap<String, Kind>,
    /// Stems that match any ending (`disappoint*`), longest first.
    stems: Vec<(String, Kind)>,
    /// Entries without letters, matched as they are (`!!`).
    marks: Vec<(String, Kind)>,
    /// First words of the phrases of two words or more.
    phrase_starts: std::collections::HashSet<String>,
    longest_phrase: usize,
}

struct Chinese {
    matcher: AhoCorasick,
    kinds: Vec<Kind>,
}

struct Lexicon {
    english: English,
    chinese: Chinese,
}

/// Entries of a lexicon file, by section; unknown sections are a build-time
/// mistake caught by the tests.
fn entries(text: &str) -> Vec<(String, Kind)> {
    let mut kind = None;
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            kind = Kind::of_section(section.trim());
            continue;
        }
        if let Some(kind) = kind {
            entries.push((line.to_lowercase(), kind));
        }
    }
    entries
}

/// Lowercased runs of letters, digits and apostrophes (curly ones too).
fn english_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace('\u{2019}', "'")
        .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '\''))
        .filter(|word| !word.is_empty())
        .map(str::to_string)
        .collect()
}

/// The lexicon files as compiled in (English, Chinese).
pub const LEXICON_FILES: [&str; 2] = [
    include_str!("sentiment-en.txt"),
    include_str!("sentiment-zh.txt"),
];

fn build() -> Lexicon {
    let mut english = English {
        phrases: HashMap::new(),
        stems: Vec::new(),
        marks: Vec::new(),
        phrase_starts: std::collections::HashSet::new(),
        longest_phrase: 1,
    };
    for (entry, kind) in entries(LEXICON_FILES[0]) {
        if let Some(stem) = entry.strip_suffix('*') {
            english.stems.push((stem.to_string(), kind));
            continue;
        }
        let words = english_words(&entry);
        if words.is_empty() {
            english.marks.push((entry, kind));
        } else {
            english.longest_phrase = english.longest_phrase.max(words.len());
            if words.len() > 1 {
                english.phrase_starts.insert(words[0].clone());
            }
            english.phrases.insert(words.join(" "), kind);
        }
    }
    english
        .stems
        .sort_by_key(|(stem, _)| std::cmp::Reverse(stem.len()));
    let (patterns, kinds): (Vec<String>, Vec<Kind>) = entries(LEXICON_FILES[1]).into_iter().unzip();
    let matcher = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(&patterns)
        .expect("the Chinese lexicon builds");
    Lexicon {
        english,
        chinese: Chinese { matcher, kinds },
    }
}

static LEXICON: LazyLock<Lexicon> = LazyLock::new(build);

impl Cues {
    fn count(&mut self, kind: Kind, negated: bool) {
        match kind {
            Kind::Positive if negated => {
                self.negated_positive += 1;
                self.negative += 1;
            }
            Kind::Positive => self.positive += 1,
            Kind::Negative if negated => self.negated_negative += 1,
            Kind::Negative => self.negative += 1,
            Kind::Wish => self.wish += 1,
            Kind::Intensifier => self.intensifier += 1,
            Kind::Negator | Kind::Neutral => {}
        }
    }
}

impl English {
    fn kind_of_word(&self, word: &str) -> Option<Kind> {
        if let Some(kind) = self.phrases.get(word) {
            return Some(*kind);
        }
        // The longest stem that starts the word.
        self.stems
            .iter()
            .find(|(stem, _)| word.starts_with(stem.as_str()))
            .map(|(_, kind)| *kind)
    }

    fn add_cues(&self, text: &str, cues: &mut Cues) {
        let words = english_words(text);
        let mut last_negator: Option<usize> = None;
        let mut at = 0;
        while at < words.len() {
            let longest = if self.phrase_starts.contains(&words[at]) {
                self.longest_phrase.min(words.len() - at)
            } else {
                1
            };
            let found = (2..=longest).rev().find_map(|length| {
                let phrase = words[at..at + length].join(" ");
                self.phrases.get(&phrase).map(|kind| (*kind, length))
            });
            let (kind, length) = match found {
                Some(found) => (Some(found.0), found.1),
                None => (self.kind_of_word(&words[at]), 1),
            };
            if let Some(kind) = kind {
                let reach = if kind == Kind::Negative {
                    NEGATION_REACH_WORDS_DISPLEASURE
                } else {
                    NEGATION_REACH_WORDS
                };
                let negated = last_negator.is_some_and(|n| at - n <= reach);
                if kind == Kind::Negator {
                    last_negator = Some(at);
                }
                cues.count(kind, negated);
            }
            at += length;
        }
        for (mark, kind) in &self.marks {
            if text.contains(mark.as_str()) {
                cues.count(*kind, false);
            }
        }
    }
}

impl Chinese {
    fn add_cues(&self, text: &str, cues: &mut Cues) {
        let lowered;
        let text = if text.chars().any(char::is_uppercase) {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let mut negator_end: Option<usize> = None;
        for found in self.matcher.find_iter(text) {
            let kind = self.kinds[found.pattern().as_usize()];
            let negated = negator_end.is_some_and(|end| {
                end <= found.start()
                    && text[end..found.start()].chars().count() <= NEGATION_REACH_CHARS
            });
            if kind == Kind::Negator {
                negator_end = Some(found.end());
            }
            cues.count(kind, negated);
        }
    }
}

/// The sentiment cues of `text`, in either language or both.
pub fn cues(text: &str) -> Cues {
    let lexicon = &*LEXICON;
    let mut cues = Cues::default();
    if text.is_ascii() {
        lexicon.english.add_cues(text, &mut cues);
        return cues;
    }
    lexicon.english.add_cues(text, &mut cues);
    lexicon.chinese.add_cues(text, &mut cues);
    cues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lexicon_line_is_in_a_known_section() {
        for text in [
            include_str!("sentiment-en.txt"),
            include_str!("sentiment-zh.txt"),
        ] {
            let mut section = None;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    section = Kind::of_section(name.trim());
                    assert!(section.is_some(), "unknown section {line}");
                    continue;
                }
                assert!(section.is_some(), "{line} is outside any section");
            }
        }
    }

    #[test]
    fn english_cues_follow_words_stems_and_negation() {
        let pathetic = cues("Pathetic.");
        assert_eq!(pathetic.negative, 1, "{pathetic:?}");
        let negated = cues("the food was not great");
        assert_eq!(negated.negated_positive, 1, "{negated:?}");
        assert_eq!(negated.positive, 0);
        let praise = cues("Loved it, delicious, just a bit salty");
        assert!(praise.positive >= 2 && praise.wish >= 1, "{praise:?}");
        assert!(cues("so disappointed").negative >= 1);
        assert_eq!(cues("where is my order?"), Cues::default());
    }

    #[test]
    fn denied_displeasure_is_a_cue_of_its_own() {
        let greasy = cues("一点都不油腻，很健康");
        assert_eq!(
            (greasy.negated_negative, greasy.negative),
            (1, 0),
            "{greasy:?}"
        );
        let late = cues("the parcel was not late at all");
        assert_eq!((late.negated_negative, late.negative), (1, 0), "{late:?}");
        // Three words on, the negator no longer reaches the displeasure.
        let bad = cues("I can't believe how bad it was");
        assert_eq!((bad.negated_negative, bad.negative), (0, 1), "{bad:?}");
    }

    #[test]
    fn chinese_cues_follow_the_longest_entry_and_negation() {
        let bad = cues("难吃，不给发票");
        assert!(bad.negative >= 1, "{bad:?}");
        let negated = cues("这次不太好吃");
        assert!(
            negated.negative >= 1 && negated.positive == 0,
            "{negated:?}"
        );
        for plain in [
            "你们赞助马拉松比赛吗",
            "有棒球帽吗",
            "出差的时候能寄到酒店吗",
        ] {
            let found = cues(plain);
            assert!(
                found.positive == 0 && found.negative == 0,
                "{plain}: {found:?}"
            );
        }
        let mixed = cues("太好吃了，就是有点咸");
        assert!(mixed.positive >= 1 && mixed.wish >= 1, "{mixed:?}");
        assert_eq!(cues("请问运费多少？").negative, 0);
    }
}
