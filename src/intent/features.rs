//! Text to hashed features: character 1-4-grams within each word (padded with
//! spaces, so prefixes and suffixes count) and over runs of Han characters,
//! word unigrams and bigrams, and the sentiment cues of the lexicon (how much
//! displeasure, praise, negated praise, small wishes). Hashing keeps the model
//! a fixed size for any vocabulary, in any language.

use super::sentiment;

/// Times each sentiment cue is counted: a cue stands for many words the
/// training data may never have shown, so it weighs more than one n-gram.
const CUE_WEIGHT: usize = 4;
/// Cues of one kind counted at most this many times.
const MAX_CUES: usize = 3;

/// Number of hash buckets (a power of two).
pub const DIMENSIONS: usize = 1 << 18;

use crate::fingerprint::{fnv, FNV_OFFSET};

/// Raised when the code below changes which features a text gets.
const FEATURES_VERSION: u64 = 3;

/// What a saved model's weights depend on: this code and the lexicon.
pub fn fingerprint() -> u64 {
    crate::fingerprint::of(FEATURES_VERSION, &sentiment::LEXICON_FILES)
}

fn bucket(hash: u64) -> usize {
    (hash as usize) & (DIMENSIONS - 1)
}

/// FNV-1a: fast, stable across runs and platforms (models are saved).
fn hash(kind: u8, text: &str) -> usize {
    bucket(fnv(fnv(FNV_OFFSET, &[kind]), text.as_bytes()))
}

/// The same hash as `hash(kind, a + " " + b)`, without building the string.
fn hash_pair(kind: u8, first: &str, second: &str) -> usize {
    let hash = fnv(fnv(FNV_OFFSET, &[kind]), first.as_bytes());
    bucket(fnv(fnv(hash, b" "), second.as_bytes()))
}

/// The same hash as `hash(kind, chars as a string)`.
fn hash_chars(kind: u8, chars: &[char]) -> usize {
    let mut hash = fnv(FNV_OFFSET, &[kind]);
    let mut buffer = [0u8; 4];
    for ch in chars {
        hash = fnv(hash, ch.encode_utf8(&mut buffer).as_bytes());
    }
    bucket(hash)
}

fn is_han(ch: char) -> bool {
    matches!(ch, '\u{4e00}'..='\u{9fff}' | '\u{3400}'..='\u{4dbf}' | '\u{f900}'..='\u{faff}')
}

/// Words: runs of letters and digits (digits collapse to `0`, so order
/// numbers do not spread over the vocabulary), and runs of Han characters.
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut current_han = false;
    for ch in text.chars().flat_map(char::to_lowercase) {
        let han = is_han(ch);
        let word_char = han || ch.is_alphanumeric() || ch == '\'';
        if (!word_char || han != current_han) && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        if word_char {
            current.push(if ch.is_ascii_digit() { '0' } else { ch });
            current_han = han;
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// The hashed features of `text`, each with weight 1, L2-normalised weights
/// are applied by the caller. Duplicates are kept (counts).
pub fn extract(text: &str) -> Vec<usize> {
    extract_with(text, sentiment::cues(text))
}

/// `extract`, with the sentiment cues of `text` already found.
pub fn extract_with(text: &str, cues: sentiment::Cues) -> Vec<usize> {
    let words = words(text);
    let mut features = Vec::with_capacity(text.len() * 4);
    features.push(hash(0, "<bias>"));
    for (index, word) in words.iter().enumerate() {
        features.push(hash(1, word));
        if let Some(next) = words.get(index + 1) {
            features.push(hash_pair(2, word, next));
        }
        let chars: Vec<char> = if word.chars().next().is_some_and(is_han) {
            word.chars().collect()
        } else {
            std::iter::once(' ')
                .chain(word.chars())
                .chain(std::iter::once(' '))
                .collect()
        };
        for n in 1..=4 {
            for gram in chars.windows(n) {
                if n == 1 && gram[0] == ' ' {
                    continue;
                }
                features.push(hash_chars(3, gram));
            }
        }
    }
    push_cues(&mut features, cues);
    features
}

fn push_cues(features: &mut Vec<usize>, cues: sentiment::Cues) {
    let mut push = |name: &str, count: usize| {
        for _ in 0..count.min(MAX_CUES) * CUE_WEIGHT {
            features.push(hash(4, name));
        }
    };
    push("negative", cues.negative);
    push("positive", cues.positive);
    push("negated positive", cues.negated_positive);
    push("negated negative", cues.negated_negative);
    push("wish", cues.wish);
    push("intensifier", cues.intensifier);
    let (negative, positive) = (cues.negative > 0, cues.positive > 0);
    push("only negative", usize::from(negative && !positive));
    push("only positive", usize::from(positive && !negative));
    push("mixed", usize::from(positive && negative));
    push("praise with a wish", usize::from(positive && cues.wish > 0));
    push(
        "intense displeasure",
        usize::from(negative && cues.intensifier > 0),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_scripts_and_collapse_digits() {
        assert_eq!(
            words("Order #12345 我要投诉!"),
            ["order", "00000", "我要投诉"]
        );
        assert_eq!(words("don't"), ["don't"]);
    }

    #[test]
    fn hashes_without_strings_equal_those_with() {
        assert_eq!(hash_pair(2, "my", "parcel"), hash(2, "my parcel"));
        let chars: Vec<char> = " 包裹x".chars().collect();
        assert_eq!(hash_chars(3, &chars), hash(3, " 包裹x"));
    }

    #[test]
    fn features_are_stable_and_bounded() {
        let first = extract("Where is my parcel?");
        assert_eq!(first, extract("where is my PARCEL"));
        assert!(first.iter().all(|feature| *feature < DIMENSIONS));
        assert!(extract("包裹").len() > 2);
    }
}
