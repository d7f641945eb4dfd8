//! Repairs typos in a question against the shop's own words, before it is
//! searched. A Latin word that no passage holds becomes the passage word
//! one typo away: two letters swapped ("retrun"), one left out ("adress"),
//! or, in a long word, one mistyped ("warrenty"). A Chinese word typed by
//! sound with one wrong character ("积份", "付宽") becomes the shop's word
//! that reads the same and keeps the other character.
//!
//! Only typos that cannot be a real inflection are repaired: an extra
//! letter ("timed", "guided") and a short word's changed letter ("sending")
//! are left alone, since they are usually real words the shop never wrote.

use std::collections::{HashMap, HashSet};

use pinyin::ToPinyin;
use tantivy::tokenizer::TextAnalyzer;

use super::text::{self, Run};

/// Latin words shorter than this are never repaired: too many real words
/// lie one letter apart.
const MIN_LATIN_LETTERS: usize = 5;
/// From this length a changed letter counts as a typo too.
const MIN_LETTERS_FOR_CHANGED: usize = 8;

/// The shop's vocabulary, as the repair needs it.
#[derive(Default)]
pub struct Spelling {
    /// Lowercase Latin words with how often the passages use them, by first letter.
    latin: HashMap<char, Vec<(String, usize)>>,
    known_latin: HashSet<String>,
    /// Stems of the passages' words: an inflection of one is no typo.
    known_stems: HashSet<String>,
    /// Every two-character sequence of the passages' Han text.
    han_pairs: HashSet<String>,
    /// Two-character pieces of the passages' Chinese words, by how they read.
    han_by_sound: HashMap<String, Vec<String>>,
}

impl Spelling {
    /// Learns the vocabulary of `texts` (titles and passages).
    pub fn learn<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut spelling = Spelling::default();
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut analyzer = text::word_analyzer();
        for passage in texts {
            for run in text::runs(passage) {
                match run {
                    Run::Word(piece, _) => {
                        for word in latin_words(piece) {
                            *counts.entry(word).or_default() += 1;
                        }
                    }
                    Run::Han(piece, _) => spelling.learn_han(piece),
                }
            }
        }
        for (word, count) in counts {
            spelling
                .known_stems
                .extend(text::analyze(&mut analyzer, &word));
            if let Some(first) = word.chars().next() {
                spelling
                    .latin
                    .entry(first)
                    .or_default()
                    .push((word.clone(), count));
            }
            spelling.known_latin.insert(word);
        }
        // The same order whatever the hash map's.
        for words in spelling.latin.values_mut() {
            words.sort();
        }
        spelling
    }

    fn learn_han(&mut self, piece: &str) {
        let chars: Vec<char> = piece.chars().collect();
        for pair in chars.windows(2) {
            self.han_pairs.insert(pair.iter().collect());
        }
        // Pairs inside the dictionary's words, never across two of them.
        for word in text::han_words(piece) {
            let chars: Vec<char> = word.chars().collect();
            for pair in chars.windows(2) {
                let pair: String = pair.iter().collect();
                if let Some(reading) = reading(&pair) {
                    let pairs = self.han_by_sound.entry(reading).or_default();
                    if !pairs.contains(&pair) {
                        pairs.push(pair);
                    }
                }
            }
        }
    }

    /// `question` with its typos repaired; unchanged when it has none.
    pub fn repair(&self, question: &str) -> String {
        let mut repaired = String::with_capacity(question.len());
        let mut copied = 0;
        let mut analyzer = None;
        for run in text::runs(question) {
            let (piece, from) = match run {
                Run::Han(piece, from) | Run::Word(piece, from) => (piece, from),
            };
            repaired.push_str(&question[copied..from]);
            match run {
                Run::Han(..) => repaired.push_str(&self.repair_han(piece)),
                Run::Word(..) => {
                    let analyzer = analyzer.get_or_insert_with(text::word_analyzer);
                    self.repair_latin(piece, analyzer, &mut repaired);
                }
            }
            copied = from + piece.len();
        }
        repaired.push_str(&question[copied..]);
        repaired
    }

    fn repair_latin(&self, piece: &str, analyzer: &mut TextAnalyzer, out: &mut String) {
        let mut rest = piece;
        while let Some(ch) = rest.chars().next() {
            let letters = rest
                .find(|ch: char| !ch.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            if letters == 0 {
                out.push(ch);
                rest = &rest[ch.len_utf8()..];
                continue;
            }
            let word = &rest[..letters];
            match self.latin_repair(word, analyzer) {
                Some(fixed) => out.push_str(&fixed),
                None => out.push_str(word),
            }
            rest = &rest[letters..];
        }
    }

    fn latin_repair(&self, word: &str, analyzer: &mut TextAnalyzer) -> Option<String> {
        let lower = word.to_ascii_lowercase();
        if lower.len() < MIN_LATIN_LETTERS || self.known_latin.contains(&lower) {
            return None;
        }
        let stems = text::analyze(analyzer, &lower);
        if stems.is_empty() || stems.iter().all(|stem| self.known_stems.contains(stem)) {
            return None;
        }
        let first = lower.chars().next()?;
        let mut best: Option<(&str, usize)> = None;
        let mut tied = false;
        for (candidate, count) in self.latin.get(&first).into_iter().flatten() {
            if !is_typo_of(&lower, candidate) {
                continue;
            }
            match best {
                Some((_, best_count)) if *count < best_count => {}
                Some((_, best_count)) if *count == best_count => tied = true,
                _ => {
                    best = Some((candidate, *count));
                    tied = false;
                }
            }
        }
        best.filter(|_| !tied)
            .map(|(candidate, _)| candidate.to_string())
    }

    fn repair_han(&self, piece: &str) -> String {
        // A typo breaks a word into characters the dictionary cannot join:
        // only two neighbouring single characters are a candidate, never
        // a piece of a real word.
        let mut single = Vec::new();
        for word in text::han_words(piece) {
            let length = word.chars().count();
            single.extend(std::iter::repeat_n(length == 1, length));
        }
        let mut chars: Vec<char> = piece.chars().collect();
        let mut at = 0;
        while at + 1 < chars.len() {
            let pair: String = chars[at..at + 2].iter().collect();
            if single[at] && single[at + 1] && !self.han_pairs.contains(&pair) {
                if let Some(word) = self.homophone_of(&pair) {
                    let replacement: Vec<char> = word.chars().collect();
                    chars[at..at + 2].copy_from_slice(&replacement);
                    at += 2;
                    continue;
                }
            }
            at += 1;
        }
        chars.into_iter().collect()
    }

    /// The one shop word that reads like `pair` and shares a character at
    /// the same place.
    fn homophone_of(&self, pair: &str) -> Option<String> {
        let mut found: Option<&String> = None;
        if let Some(reading) = reading(pair) {
            for word in self.han_by_sound.get(&reading).into_iter().flatten() {
                let shares = word.chars().zip(pair.chars()).any(|(a, b)| a == b);
                if !shares || found.is_some_and(|seen| seen == word) {
                    continue;
                }
                if found.is_some() {
                    return None;
                }
                found = Some(word);
            }
        }
        found.cloned()
    }
}

fn latin_words(piece: &str) -> impl Iterator<Item = String> + '_ {
    piece
        .split(|ch: char| !ch.is_ascii_alphabetic())
        .filter(|word| word.len() >= 2)
        .map(str::to_ascii_lowercase)
}

/// Whether `typed` is `intended` with two neighbouring letters swapped, one
/// letter before the last left out, or (in a long word) one letter changed.
fn is_typo_of(typed: &str, intended: &str) -> bool {
    let (typed, intended) = (typed.as_bytes(), intended.as_bytes());
    if intended.len() == typed.len() + 1 {
        // One letter left out, not the last: "large" is no typo of "larger".
        let prefix = common_prefix(typed, intended);
        return prefix < typed.len() && typed[prefix..] == intended[prefix + 1..];
    }
    if intended.len() != typed.len() {
        return false;
    }
    let differing: Vec<usize> = (0..typed.len())
        .filter(|&at| typed[at] != intended[at])
        .collect();
    match differing.as_slice() {
        [a, b] => *b == a + 1 && typed[*a] == intended[*b] && typed[*b] == intended[*a],
        [_] => typed.len() >= MIN_LETTERS_FOR_CHANGED,
        _ => false,
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// How a Han string usually reads, without tones: each character's
/// common reading, since rarer ones join words no one confuses.
fn reading(word: &str) -> Option<String> {
    let sounds: Option<Vec<&str>> = word
        .to_pinyin()
        .map(|pinyin| pinyin.map(|pinyin| pinyin.plain()))
        .collect();
    Some(sounds?.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> Spelling {
        Spelling::learn([
            "Returns: send your return within 30 days to our address.",
            "The warranty covers your jacket for two years.",
            "Pending orders are sent on Saturdays. Larger sizes are in stock.",
            "会员积分可以兑换代金券。",
            "我们支持货到付款。",
        ])
    }

    #[test]
    fn swapped_and_missing_letters_become_the_shops_word() {
        let spelling = shop();
        assert_eq!(
            spelling.repair("whats the deadline to retrun my jaket?"),
            "whats the deadline to return my jacket?"
        );
        assert_eq!(spelling.repair("your postal adress"), "your postal address");
        assert_eq!(
            spelling.repair("how long is the warrenty"),
            "how long is the warranty"
        );
    }

    #[test]
    fn real_words_and_inflections_stay() {
        let spelling = shop();
        // An extra letter, a short word's changed letter, an inflection.
        for question in [
            "the payment timed out",
            "sending it back",
            "open on a saturday?",
            "do you sell skis",
            "a men's large",
        ] {
            assert_eq!(spelling.repair(question), question);
        }
    }

    #[test]
    fn a_chinese_character_typed_by_sound_becomes_the_shops_word() {
        let spelling = shop();
        assert_eq!(spelling.repair("会员积份攒多少"), "会员积分攒多少");
        assert_eq!(spelling.repair("可以先收货再付宽吗"), "可以先收货再付款吗");
        // A word the shop never wrote that shares no sound stays.
        assert_eq!(spelling.repair("你们卖帐篷吗"), "你们卖帐篷吗");
    }
}
