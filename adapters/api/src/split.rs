//! Splitting a long reply into platform-sized parts at natural boundaries.

/// Splits `text` into parts of at most `limit` characters (Unicode scalar
/// values). Each cut prefers, in order: a paragraph break, a line break, the end
/// of a sentence (Latin or CJK punctuation), a space; only a text with none of
/// these is cut between two characters. Parts never split a character, and no
/// part is empty. Whitespace at a cut is dropped.
pub fn split_message(text: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(1);
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((window_end, _)) = rest.char_indices().nth(limit) else {
            parts.push(rest.to_string());
            break;
        };
        let window = &rest[..window_end];
        let cut = best_cut(window).unwrap_or(window_end);
        let (head, tail) = rest.split_at(cut);
        let head = head.trim_end();
        if !head.is_empty() {
            parts.push(head.to_string());
        }
        rest = tail.trim_start();
    }
    parts
}

/// Byte offset just after the best boundary inside `window`, if any boundary
/// lies in its second half (cutting earlier would make many tiny parts).
fn best_cut(window: &str) -> Option<usize> {
    let min = window.len() / 2;
    let after_last = |pattern: &dyn Fn(char) -> bool| {
        window
            .char_indices()
            .filter(|&(at, ch)| at >= min && pattern(ch))
            .map(|(at, ch)| at + ch.len_utf8())
            .last()
    };
    if let Some(at) = window.rfind("\n\n").filter(|&at| at >= min) {
        return Some(at + 2);
    }
    after_last(&|ch| ch == '\n')
        .or_else(|| sentence_end(window, min))
        .or_else(|| after_last(&|ch| ch.is_whitespace()))
}

fn sentence_end(window: &str, min: usize) -> Option<usize> {
    let mut best = None;
    let mut chars = window.char_indices().peekable();
    while let Some((at, ch)) = chars.next() {
        let end = at + ch.len_utf8();
        let is_end = match ch {
            '。' | '！' | '？' | '；' => true,
            '.' | '!' | '?' => chars.peek().is_some_and(|&(_, next)| next.is_whitespace()),
            _ => false,
        };
        if is_end && at >= min {
            best = Some(end);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths_ok(parts: &[String], limit: usize) {
        for part in parts {
            assert!(
                part.chars().count() <= limit,
                "part too long: {}",
                part.chars().count()
            );
            assert!(!part.is_empty());
        }
    }

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split_message("hello", 10), vec!["hello"]);
        assert!(split_message("   ", 10).is_empty());
    }

    #[test]
    fn prefers_paragraph_breaks() {
        let text = format!("{}\n\n{}", "a".repeat(60), "b".repeat(30));
        let parts = split_message(&text, 80);
        assert_eq!(parts, vec!["a".repeat(60), "b".repeat(30)]);
    }

    #[test]
    fn prefers_sentence_end_over_space() {
        let text =
            "The first sentence is here now. Another one follows and it is long enough to cut";
        let parts = split_message(text, 40);
        lengths_ok(&parts, 40);
        assert_eq!(parts[0], "The first sentence is here now.");
    }

    #[test]
    fn chinese_sentences_split_after_punctuation() {
        let sentence = "退货需要在三十天内提出申请。";
        let text = sentence.repeat(10);
        let parts = split_message(&text, 50);
        lengths_ok(&parts, 50);
        for part in &parts {
            assert!(part.ends_with('。'), "{part}");
        }
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn six_thousand_characters_split_for_both_platform_limits() {
        let paragraph =
            "Our returns policy lets you send items back within thirty days. ".repeat(10);
        let text = [paragraph.as_str(); 10].join("\n\n");
        assert!(text.chars().count() > 6000);
        for limit in [4096, 2000] {
            let parts = split_message(&text, limit);
            lengths_ok(&parts, limit);
            let rejoined: String = parts.join(" ").split_whitespace().collect();
            let original: String = text.split_whitespace().collect();
            assert_eq!(rejoined, original, "no text lost at limit {limit}");
        }
    }

    #[test]
    fn text_without_boundaries_is_cut_on_char_boundaries() {
        let text = "字".repeat(25);
        let parts = split_message(&text, 10);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.concat(), text);
    }
}
