//! Which language a message is in (`en` or `zh`), by script: Han characters
//! mean Chinese. Two locales need no statistical detector; a message without
//! letters gives no clue and the caller falls back to what it knew.

use crate::prompts::Locale;

/// Whether `ch` is a CJK ideograph or CJK punctuation.
pub fn is_cjk(ch: char) -> bool {
    matches!(ch,
        '\u{4E00}'..='\u{9FFF}'
        | '\u{3400}'..='\u{4DBF}'
        | '\u{20000}'..='\u{2A6DF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{3000}'..='\u{303F}'
        | '\u{FF00}'..='\u{FFEF}')
}

fn is_han(ch: char) -> bool {
    matches!(ch,
        '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}' | '\u{20000}'..='\u{2A6DF}' | '\u{F900}'..='\u{FAFF}')
}

/// The language of `text`, or `None` when it has no letters to judge by.
/// Chinese wins when Han characters make up at least a fifth of the letters,
/// since one Han character carries as much as a whole Latin word.
pub fn detect(text: &str) -> Option<Locale> {
    let mut han = 0usize;
    let mut latin = 0usize;
    for ch in text.chars() {
        if is_han(ch) {
            han += 1;
        } else if ch.is_alphabetic() {
            latin += 1;
        }
    }
    if han == 0 && latin == 0 {
        return None;
    }
    if han * 5 >= han + latin {
        Some(Locale::Zh)
    } else if latin > 0 {
        Some(Locale::En)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_both_languages_and_mixtures() {
        assert_eq!(detect("Where is my order?"), Some(Locale::En));
        assert_eq!(detect("我的订单在哪里？"), Some(Locale::Zh));
        assert_eq!(detect("我想退货 iPhone 15 Pro"), Some(Locale::Zh));
        assert_eq!(detect("Please ship to 北京"), Some(Locale::En));
        assert_eq!(detect("12345 !!!"), None);
        assert_eq!(detect(""), None);
    }
}
