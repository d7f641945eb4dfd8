//! Finding and masking payment data (card numbers, IBANs) and contact data
//! (email addresses, phone numbers) in text. Cards need 13–19 digits that
//! pass the Luhn check and start like a card (2–6), so ids and order numbers
//! mostly survive; IBANs need a valid mod-97 checksum.

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

/// What can be masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A payment card number.
    Card,
    /// An international bank account number.
    Iban,
    /// An email address.
    Email,
    /// A phone number.
    Phone,
}

impl Kind {
    /// The name used in `[privacy] redact`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::Iban => "iban",
            Self::Email => "email",
            Self::Phone => "phone",
        }
    }

    /// Parses a name of `[privacy] redact`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Card, Self::Iban, Self::Email, Self::Phone]
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

/// Digits with single spaces or dashes between them.
static DIGIT_RUN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\d(?:[ \-]?\d)*").expect("valid pattern"));
static IBAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^A-Za-z0-9])([A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,32})")
        .expect("valid pattern")
});
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
        .expect("valid pattern")
});
static PHONE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\+?\(?\d[\d \-()]{5,}\d").expect("valid pattern"));

/// One finding: where, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Byte range in the text.
    pub range: Range<usize>,
    /// What was found.
    pub kind: Kind,
    /// Its last four digits or characters, kept in the mask.
    pub last_four: String,
}

fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (index, digit) in digits.iter().rev().enumerate() {
        let mut value = u32::from(*digit);
        if index % 2 == 1 {
            value *= 2;
            if value > 9 {
                value -= 9;
            }
        }
        sum += value;
    }
    sum.is_multiple_of(10)
}

/// Card numbers: within each run of digit groups, the longest span of whole
/// groups with 13–19 digits that passes Luhn and starts with 2–6.
fn cards(text: &str, found: &mut Vec<Finding>) {
    for run in DIGIT_RUN.find_iter(text) {
        // Groups: (byte start, byte end, digits).
        let mut groups: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        for (offset, ch) in run.as_str().char_indices() {
            let at = run.start() + offset;
            match ch.to_digit(10) {
                Some(digit) => match groups.last_mut() {
                    Some(group) if group.1 == at => {
                        group.1 = at + 1;
                        group.2.push(digit as u8);
                    }
                    _ => groups.push((at, at + 1, vec![digit as u8])),
                },
                None => continue,
            }
        }
        let total: usize = groups.iter().map(|group| group.2.len()).sum();
        if total < 13 {
            continue;
        }
        let mut first = 0;
        while first < groups.len() {
            let mut best = None;
            let mut digits = Vec::new();
            for (last, group) in groups.iter().enumerate().skip(first) {
                digits.extend_from_slice(&group.2);
                if digits.len() > 19 {
                    break;
                }
                if digits.len() >= 13 && (2..=6).contains(&digits[0]) && luhn_valid(&digits) {
                    best = Some((last, digits.clone()));
                }
            }
            match best {
                Some((last, digits)) => {
                    found.push(Finding {
                        range: groups[first].0..groups[last].1,
                        kind: Kind::Card,
                        last_four: digits[digits.len() - 4..]
                            .iter()
                            .map(|digit| char::from(b'0' + digit))
                            .collect(),
                    });
                    first = last + 1;
                }
                None => first += 1,
            }
        }
    }
}

fn iban_valid(candidate: &str) -> bool {
    let compact: Vec<u8> = candidate
        .bytes()
        .filter(|byte| *byte != b' ')
        .map(|byte| byte.to_ascii_uppercase())
        .collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut remainder = 0u32;
    for byte in rearranged {
        let value = match byte {
            b'0'..=b'9' => u32::from(byte - b'0'),
            b'A'..=b'Z' => u32::from(byte - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

fn ibans(text: &str, found: &mut Vec<Finding>) {
    for captures in IBAN.captures_iter(text) {
        let Some(candidate) = captures.get(1) else {
            continue;
        };
        // The pattern runs into following words; the longest valid prefix wins.
        let body = candidate.as_str();
        let ends = body
            .char_indices()
            .map(|(index, ch)| index + ch.len_utf8())
            .rev();
        for end in ends {
            let prefix = &body[..end];
            if prefix.ends_with(' ') || !iban_valid(prefix) {
                continue;
            }
            let compact: String = prefix.chars().filter(|ch| *ch != ' ').collect();
            found.push(Finding {
                range: candidate.start()..candidate.start() + end,
                kind: Kind::Iban,
                last_four: format!("{}|{}", &compact[..2], &compact[compact.len() - 4..]),
            });
            break;
        }
    }
}

fn emails(text: &str, found: &mut Vec<Finding>) {
    for email in EMAIL.find_iter(text) {
        found.push(Finding {
            range: email.range(),
            kind: Kind::Email,
            last_four: String::new(),
        });
    }
}

fn is_date_like(candidate: &str) -> bool {
    let parts: Vec<&str> = candidate.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|part| part.bytes().all(|b| b.is_ascii_digit()))
        && (parts[0].len() == 4 || parts[2].len() == 4)
}

/// Phone numbers: 7–15 digits that start with `+` or `(`, or are written in
/// groups (9 digits or more), or look like a mobile or trunk number
/// (`1[3-9]` and 11 digits, or `0` and 10–11 digits).
fn phones(text: &str, found: &mut Vec<Finding>) {
    for candidate in PHONE.find_iter(text) {
        let raw = candidate.as_str().trim_end_matches([' ', '-', '(']);
        let digits: Vec<u8> = raw
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|byte| byte - b'0')
            .collect();
        if !(7..=15).contains(&digits.len()) {
            continue;
        }
        let before = text[..candidate.start()].chars().next_back();
        let after = text[candidate.start() + raw.len()..].chars().next();
        if before.is_some_and(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.')
            || after.is_some_and(|ch| ch.is_ascii_alphanumeric() || ch == '.' || ch == ':')
        {
            continue;
        }
        let grouped = raw.contains([' ', '-', '(']);
        let phone = raw.starts_with('+')
            || raw.starts_with('(')
            || (grouped && digits.len() >= 9 && !is_date_like(raw))
            || (!grouped && digits.len() == 11 && digits[0] == 1 && (3..=9).contains(&digits[1]))
            || (!grouped && digits[0] == 0 && (10..=11).contains(&digits.len()));
        if phone {
            found.push(Finding {
                range: candidate.start()..candidate.start() + raw.len(),
                kind: Kind::Phone,
                last_four: String::new(),
            });
        }
    }
}

/// Every finding of the kinds asked for, in order, none overlapping (a card
/// or IBAN wins over a phone number on the same digits).
pub fn find(text: &str, kinds: &[Kind]) -> Vec<Finding> {
    let mut found = Vec::new();
    for kind in [Kind::Card, Kind::Iban, Kind::Email, Kind::Phone] {
        if !kinds.contains(&kind) {
            continue;
        }
        let mut more = Vec::new();
        match kind {
            Kind::Card => cards(text, &mut more),
            Kind::Iban => ibans(text, &mut more),
            Kind::Email => emails(text, &mut more),
            Kind::Phone => phones(text, &mut more),
        }
        for finding in more {
            let overlaps = found.iter().any(|earlier: &Finding| {
                earlier.range.start < finding.range.end && finding.range.start < earlier.range.end
            });
            if !overlaps {
                found.push(finding);
            }
        }
    }
    found.sort_by_key(|finding| finding.range.start);
    found
}

/// The mask shown instead of a finding.
fn mask(finding: &Finding) -> String {
    match finding.kind {
        Kind::Card => format!("•••• {}", finding.last_four),
        Kind::Iban => {
            let (country, last) = finding
                .last_four
                .split_once('|')
                .unwrap_or(("", &finding.last_four));
            format!("{country}•• •••• {last}")
        }
        Kind::Email => "[email]".to_string(),
        Kind::Phone => "[phone]".to_string(),
    }
}

/// `text` with every finding of `kinds` masked, and what was masked.
pub fn mask_text(text: &str, kinds: &[Kind]) -> (String, Vec<Kind>) {
    let found = find(text, kinds);
    if found.is_empty() {
        return (text.to_string(), Vec::new());
    }
    let mut masked = String::with_capacity(text.len());
    let mut at = 0;
    for finding in &found {
        masked.push_str(&text[at..finding.range.start]);
        masked.push_str(&mask(finding));
        at = finding.range.end;
    }
    masked.push_str(&text[at..]);
    (
        masked,
        found.into_iter().map(|finding| finding.kind).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Kind; 4] = [Kind::Card, Kind::Iban, Kind::Email, Kind::Phone];

    fn masked(text: &str) -> String {
        mask_text(text, &ALL).0
    }

    #[test]
    fn luhn_valid_card_numbers_are_masked_in_any_grouping() {
        assert_eq!(
            masked("my card is 4111 1111 1111 1111 thanks"),
            "my card is •••• 1111 thanks"
        );
        assert_eq!(masked("4111-1111-1111-1111"), "•••• 1111");
        assert_eq!(
            masked("卡号4111111111111111，有效期12/27"),
            "卡号•••• 1111，有效期12/27"
        );
        assert_eq!(masked("amex 3782 822463 10005"), "amex •••• 0005");
        // Followed by the expiry: the card's own groups are found.
        assert_eq!(masked("5555 5555 5555 4444 12 27"), "•••• 4444 12 27");
    }

    #[test]
    fn numbers_that_are_not_cards_stay() {
        // Fails Luhn.
        assert_eq!(
            masked("order 4111 1111 1111 1112"),
            "order 4111 1111 1111 1112"
        );
        // A Discord id that passes Luhn, but starts with 1.
        let (text, kinds) = mask_text("channel 1188457298172698623", &[Kind::Card]);
        assert_eq!(
            (text.as_str(), kinds.len()),
            ("channel 1188457298172698623", 0)
        );
        assert_eq!(masked("12 items for 30 EUR"), "12 items for 30 EUR");
    }

    #[test]
    fn ibans_need_a_valid_checksum() {
        assert_eq!(
            masked("pay to DE89 3704 0044 0532 0130 00 please"),
            "pay to DE•• •••• 3000 please"
        );
        assert_eq!(masked("GB82WEST12345698765432"), "GB•• •••• 5432");
        assert_eq!(
            masked("账户GB82WEST12345698765432谢谢"),
            "账户GB•• •••• 5432谢谢"
        );
        assert_eq!(
            masked("DE89 3704 0044 0532 0130 02"),
            "DE89 3704 0044 0532 0130 02"
        );
    }

    #[test]
    fn emails_and_phone_numbers_are_found_but_dates_and_ids_are_not() {
        assert_eq!(
            masked("write to anna.k+shop@example.co.uk now"),
            "write to [email] now"
        );
        assert_eq!(masked("call +49 30 1234567"), "call [phone]");
        assert_eq!(masked("call (030) 123-4567"), "call [phone]");
        assert_eq!(masked("手机13812345678"), "手机[phone]");
        assert_eq!(
            masked("on 2026-12-06 at 127.0.0.1:8080"),
            "on 2026-12-06 at 127.0.0.1:8080"
        );
        assert_eq!(
            masked("chat=-1001234567890 user=5012345678"),
            "chat=-1001234567890 user=5012345678"
        );
        assert_eq!(masked("ticket T-000012"), "ticket T-000012");
    }

    #[test]
    fn only_the_kinds_asked_for_are_masked() {
        let text = "4111 1111 1111 1111 and a@b.io";
        assert_eq!(
            mask_text(text, &[Kind::Email]).0,
            "4111 1111 1111 1111 and [email]"
        );
        assert_eq!(mask_text(text, &[Kind::Card]).1, vec![Kind::Card]);
    }
}
