//! Keeping generated answers faithful to the documents: a check that every
//! figure in an answer (amounts, days, percentages, phone numbers) occurs in
//! the passages it was grounded in, and an extractive answer (the passage's
//! sentences that best match the question) to fall back on when it does not.

use std::collections::HashSet;

use super::text::{analyze, query_units, unit_covered, word_analyzer};
use super::Hit;

/// The figures in `text`: runs of digits, with decimal separators kept
/// between digits ("4.95", "1,000").
fn figures(text: &str) -> HashSet<String> {
    let mut found = HashSet::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (at, &ch) in chars.iter().enumerate() {
        let separator = (ch == '.' || ch == ',')
            && !current.is_empty()
            && chars.get(at + 1).is_some_and(char::is_ascii_digit);
        if ch.is_ascii_digit() || separator {
            current.push(if ch == ',' { '.' } else { ch });
        } else if !current.is_empty() {
            found.insert(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        found.insert(current);
    }
    found
}

/// Share of an answer's words that must come from its passages.
const MIN_ANSWER_SUPPORT: f32 = 0.5;

/// Whether an answer keeps to its passages: it says something, every figure
/// it states occurs in them, and most of its words do. Wording is the
/// model's; facts must not be.
pub fn faithful(answer: &str, passages: &[Hit]) -> bool {
    if answer.trim().is_empty() {
        return false;
    }
    let mut known = HashSet::new();
    let mut text = String::new();
    for hit in passages {
        known.extend(figures(&hit.passage));
        known.extend(figures(&hit.title));
        text.push_str(&hit.title);
        text.push('\n');
        text.push_str(&hit.passage);
        text.push('\n');
    }
    if !figures(answer).iter().all(|figure| known.contains(figure)) {
        return false;
    }
    let units = query_units(answer);
    if units.is_empty() {
        return true;
    }
    let tokens: HashSet<String> = analyze(&mut word_analyzer(), &text).into_iter().collect();
    let lowered = text.to_lowercase();
    let supported = units
        .iter()
        .filter(|unit| unit_covered(unit, &tokens, &lowered))
        .count();
    supported as f32 / units.len() as f32 >= MIN_ANSWER_SUPPORT
}

/// Splits text into sentences at Latin and CJK sentence ends and line breaks.
pub(crate) fn sentences(text: &str) -> Vec<&str> {
    let mut sentences = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((at, ch)) = chars.next() {
        let end = match ch {
            '。' | '！' | '？' | '\n' => true,
            '.' | '!' | '?' => chars.peek().is_none_or(|&(_, next)| next.is_whitespace()),
            _ => false,
        };
        if end {
            let mut stop = at + ch.len_utf8();
            // A closing quote or bracket belongs to the sentence it ends.
            while let Some(&(next_at, next)) = chars.peek() {
                if !matches!(next, '"' | '\'' | '”' | '’' | '」' | '』' | ')' | '）') {
                    break;
                }
                stop = next_at + next.len_utf8();
                chars.next();
            }
            // "点击“忘记密码？”，然后": a quoted question inside a sentence.
            if chars
                .peek()
                .is_some_and(|&(_, next)| matches!(next, '，' | ',' | '、'))
            {
                continue;
            }
            let sentence = text[start..stop].trim();
            if !sentence.is_empty() {
                sentences.push(sentence);
            }
            start = stop;
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        sentences.push(rest);
    }
    sentences
}

/// The sentence of the best passage that matches the question best (two
/// when they tie), in their original order.
pub fn extract(question: &str, best: &Hit) -> String {
    let units = query_units(question);
    let mut analyzer = word_analyzer();
    let candidates = sentences(&best.passage);
    let mut scored: Vec<(usize, usize)> = candidates
        .iter()
        .enumerate()
        .map(|(index, sentence)| {
            let tokens: HashSet<String> = analyze(&mut analyzer, sentence).into_iter().collect();
            let lowered = sentence.to_lowercase();
            let score = units
                .iter()
                .filter(|unit| unit_covered(unit, &tokens, &lowered))
                .count();
            (index, score)
        })
        .collect();
    // Best first; ties keep document order.
    scored.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    // The best sentence, and a second one only if it matches as well.
    let best_score = scored.first().map_or(0, |(_, score)| *score);
    let mut chosen: Vec<usize> = scored
        .iter()
        .take(2)
        .filter(|(_, score)| *score > 0 && *score == best_score)
        .map(|(index, _)| *index)
        .collect();
    if chosen.is_empty() {
        chosen.push(0);
    }
    chosen.sort_unstable();
    let separator = if best.passage.chars().any(super::text::is_han) {
        ""
    } else {
        " "
    };
    chosen
        .into_iter()
        .filter_map(|index| candidates.get(index).copied())
        .collect::<Vec<_>>()
        .join(separator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(passage: &str) -> Hit {
        Hit {
            doc: "en/returns.md".into(),
            title: "Returns > Time limit".into(),
            passage: passage.into(),
            score: 1.0,
            passage_index: 0,
            is_faq: false,
        }
    }

    #[test]
    fn invented_figures_and_unrelated_text_are_caught() {
        let passages = [hit(
            "You can return items within 30 days. Refunds cost €4.95 from abroad.",
        )];
        assert!(faithful("You can return items within 30 days.", &passages));
        assert!(faithful("Returns from abroad cost 4,95.", &passages));
        assert!(!faithful("You can return items within 45 days.", &passages));
        assert!(!faithful("Call 876 for help.", &passages));
        assert!(!faithful("   ", &passages));
        assert!(!faithful(
            "Our conference network analytics improve your personal growth.",
            &passages
        ));
        let chinese = [hit("收货后 30 天内可以退货，退款在 5 个工作日内完成。")];
        assert!(faithful("30 天内可以退货。", &chinese));
        assert!(!faithful(
            "这些方式对我们的判断更加强大，网络数据集成图表。",
            &chinese
        ));
    }

    #[test]
    fn extraction_picks_the_matching_sentences() {
        let best = hit("Items must be unused. You can return items within 30 days of delivery. Gift cards cannot be returned.");
        let answer = extract("how many days do I have to return something", &best);
        assert_eq!(answer, "You can return items within 30 days of delivery.");
        let chinese = hit("商品需未使用。收货后 30 天内可以退货。礼品卡不可退。");
        assert!(extract("多少天内可以退货", &chinese).contains("30 天内可以退货"));
        let quoted = hit("在登录页面点击“忘记密码？”，然后输入邮箱。链接 1 小时内有效。");
        assert!(extract("忘记密码怎么办", &quoted)
            .starts_with("在登录页面点击“忘记密码？”，然后输入邮箱。"));
    }
}
