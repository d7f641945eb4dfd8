//! Text to hashed features: character 1-4-grams within each word (padded with
//! spaces, so prefixes and suffixes count) and over runs of Han characters,
//! plus word unigrams and bigrams. Hashing keeps the model a fixed size for
//! any vocabulary, in any language.

/// Number of hash buckets (a power of two).
pub const DIMENSIONS: usize = 1 << 18;

/// FNV-1a: fast, stable across runs and platforms (models are saved).
fn hash(kind: u8, text: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in std::iter::once(kind).chain(text.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash as usize) & (DIMENSIONS - 1)
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
    let words = words(text);
    let mut features = Vec::with_capacity(text.len() * 4);
    features.push(hash(0, "<bias>"));
    for (index, word) in words.iter().enumerate() {
        features.push(hash(1, word));
        if let Some(next) = words.get(index + 1) {
            features.push(hash(2, &format!("{word} {next}")));
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
                let gram: String = gram.iter().collect();
                features.push(hash(3, &gram));
            }
        }
    }
    features
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
    fn features_are_stable_and_bounded() {
        let first = extract("Where is my parcel?");
        assert_eq!(first, extract("where is my PARCEL"));
        assert!(first.iter().all(|feature| *feature < DIMENSIONS));
        assert!(extract("包裹").len() > 2);
    }
}
