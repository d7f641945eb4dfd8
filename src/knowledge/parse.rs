//! Turning source files into knowledge-base documents: Markdown split at its
//! headings, plain text split at paragraphs, and FAQ files (CSV with
//! `question,answer`) one document per row. Long sections are cut into
//! passages of a readable size at paragraph boundaries.

use std::path::Path;

use crate::store::{KbDoc, KbKind, KbPassage, RECORD_VERSION};

/// Passages longer than this (characters) are split at paragraphs.
const MAX_PASSAGE_CHARS: usize = 900;

/// A problem with one source.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceError {
    /// The file.
    pub path: String,
    /// The line, where one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// What is wrong.
    pub error: String,
}

/// FNV-1a: a hash that stays the same across builds, for change detection.
pub fn content_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn doc(
    id: &str,
    root: &str,
    title: String,
    kind: KbKind,
    hash: u64,
    passages: Vec<KbPassage>,
) -> KbDoc {
    let sample: String = passages
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    KbDoc {
        v: RECORD_VERSION,
        id: id.to_string(),
        root: root.to_string(),
        locale: crate::language::detect(&format!("{title} {sample}")),
        title,
        kind,
        content_hash: hash,
        passages,
    }
}

/// Splits text into chunks of at most `MAX_PASSAGE_CHARS` at blank lines.
fn chunks(text: &str) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        if !current.is_empty()
            && current.chars().count() + paragraph.chars().count() > MAX_PASSAGE_CHARS
        {
            chunks.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push_str("\n\n");
        }
        current.push_str(paragraph);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Removes Markdown emphasis and code marks that only add noise to search.
fn plain(line: &str) -> String {
    line.replace("**", "").replace("__", "").replace('`', "")
}

/// Parses a Markdown document: the first `#` heading is the title; every
/// heading below starts a passage titled "Title > Heading".
pub fn markdown(id: &str, root: &str, fallback_title: &str, text: &str) -> KbDoc {
    let mut title: Option<String> = None;
    let mut sections: Vec<(Option<String>, String)> = vec![(None, String::new())];
    for line in text.lines() {
        let trimmed = line.trim_start();
        let level = trimmed.chars().take_while(|&ch| ch == '#').count();
        let is_heading = (1..=6).contains(&level) && trimmed[level..].starts_with(' ');
        if is_heading {
            let heading = plain(trimmed[level..].trim());
            if level == 1 && title.is_none() {
                title = Some(heading);
            } else {
                sections.push((Some(heading), String::new()));
            }
            continue;
        }
        if let Some((_, body)) = sections.last_mut() {
            body.push_str(&plain(line));
            body.push('\n');
        }
    }
    let title = title.unwrap_or_else(|| fallback_title.to_string());
    let mut passages = Vec::new();
    for (heading, body) in sections {
        let passage_title = match heading {
            Some(heading) => format!("{title} > {heading}"),
            None => title.clone(),
        };
        for chunk in chunks(&body) {
            passages.push(KbPassage {
                title: passage_title.clone(),
                text: chunk,
            });
        }
    }
    doc(
        id,
        root,
        title,
        KbKind::Markdown,
        content_hash(text.as_bytes()),
        passages,
    )
}

/// Parses plain text: a short first line is the title; paragraphs make passages.
pub fn plain_text(id: &str, root: &str, fallback_title: &str, text: &str) -> KbDoc {
    let trimmed = text.trim();
    let first_line = trimmed.lines().next().unwrap_or_default().trim();
    let (title, body) =
        if !first_line.is_empty() && first_line.chars().count() <= 100 && trimmed.contains('\n') {
            (
                first_line.to_string(),
                trimmed[first_line.len()..].to_string(),
            )
        } else {
            (fallback_title.to_string(), trimmed.to_string())
        };
    let passages = chunks(&body)
        .into_iter()
        .map(|chunk| KbPassage {
            title: title.clone(),
            text: chunk,
        })
        .collect();
    doc(
        id,
        root,
        title,
        KbKind::Text,
        content_hash(text.as_bytes()),
        passages,
    )
}

/// Parses an FAQ file: a header with `question` and `answer` columns (any
/// order, other columns ignored); every good row becomes a document
/// `<id>#<row>`; bad rows are reported with their line. A file without the
/// columns is an error as a whole (its earlier import is kept).
pub fn faq(
    id: &str,
    root: &str,
    path: &Path,
    text: &str,
) -> Result<(Vec<KbDoc>, Vec<SourceError>), SourceError> {
    let error = |line: Option<u64>, message: String| SourceError {
        path: path.display().to_string(),
        line,
        error: message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(err) => return Err(error(Some(1), format!("unreadable header: {err}"))),
    };
    let column = |name: &str| {
        headers
            .iter()
            .position(|header| header.eq_ignore_ascii_case(name))
    };
    let (Some(question_at), Some(answer_at)) = (column("question"), column("answer")) else {
        return Err(error(
            Some(1),
            "an FAQ file needs the columns question,answer".into(),
        ));
    };
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let line = row as u64 + 2;
        let record = match record {
            Ok(record) => record,
            Err(err) => {
                errors.push(error(Some(line), format!("unreadable row: {err}")));
                continue;
            }
        };
        let question = record.get(question_at).unwrap_or_default();
        let answer = record.get(answer_at).unwrap_or_default();
        if question.is_empty() || answer.is_empty() {
            errors.push(error(Some(line), "empty question or answer".into()));
            continue;
        }
        let row_id = format!("{id}#{}", row + 1);
        let hash = content_hash(format!("{question}\u{0}{answer}").as_bytes());
        let passages = vec![KbPassage {
            title: question.to_string(),
            text: answer.to_string(),
        }];
        docs.push(doc(
            &row_id,
            root,
            question.to_string(),
            KbKind::Faq,
            hash,
            passages,
        ));
    }
    Ok((docs, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_splits_at_headings_with_titles() {
        let text = "# Returns\n\nIntro text.\n\n## Time limit\nYou have **30 days**.\n\n## Refunds\nRefunds take 5 days.\n";
        let doc = markdown("en/returns.md", "/kb", "returns", text);
        assert_eq!(doc.title, "Returns");
        let titles: Vec<&str> = doc.passages.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(
            titles,
            ["Returns", "Returns > Time limit", "Returns > Refunds"]
        );
        assert_eq!(doc.passages[1].text, "You have 30 days.");
        assert_eq!(doc.locale, Some(crate::prompts::Locale::En));
    }

    #[test]
    fn long_sections_are_cut_at_paragraphs() {
        let paragraph = "word ".repeat(100);
        let text = format!("# T\n\n{}", [paragraph.as_str(); 5].join("\n\n"));
        let doc = markdown("t.md", "/", "t", &text);
        assert!(doc.passages.len() >= 3);
        assert!(doc
            .passages
            .iter()
            .all(|p| p.text.chars().count() <= MAX_PASSAGE_CHARS));
    }

    #[test]
    fn faq_rows_become_documents_and_bad_rows_are_reported() {
        let text = "question,answer\nHow long is delivery?,\"3-5 days, usually\"\n,missing question\n运费多少？,满99元包邮\n";
        let (docs, errors) = faq("faq.csv", "/kb", Path::new("faq.csv"), text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id, "faq.csv#1");
        assert_eq!(docs[0].passages[0].text, "3-5 days, usually");
        assert_eq!(docs[1].id, "faq.csv#3");
        assert_eq!(docs[1].locale, Some(crate::prompts::Locale::Zh));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(3));
        let error = faq("x.csv", "/", Path::new("x.csv"), "q,a\n1,2\n").unwrap_err();
        assert!(error.error.contains("question,answer"));
    }

    #[test]
    fn plain_text_uses_a_short_first_line_as_title() {
        let doc = plain_text(
            "contact.txt",
            "/",
            "contact",
            "Contact us\n\nCall 123.\n\nOr write.",
        );
        assert_eq!(doc.title, "Contact us");
        assert_eq!(doc.passages.len(), 1);
        assert!(doc.passages[0].text.contains("Or write."));
    }
}
