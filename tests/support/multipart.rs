//! `multipart/form-data` bodies as the real client libraries send them
//! (teloxide's `sendDocument`, serenity's attachments), read by the fakes.

/// One part of a form.
#[derive(Clone, Debug)]
pub struct Part {
    /// The form field's name.
    pub name: String,
    /// The file name, for file parts.
    pub file_name: Option<String>,
    /// The content.
    pub bytes: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|at| at + from)
}

fn parameter(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|piece| {
        let (key, value) = piece.trim().split_once('=')?;
        (key.trim().eq_ignore_ascii_case(name)).then(|| value.trim().trim_matches('"').to_string())
    })
}

/// The parts of a body whose `Content-Type` is `content_type`; `None` when it
/// is not a well-formed multipart form.
pub fn parse(content_type: &str, body: &[u8]) -> Option<Vec<Part>> {
    if !content_type.starts_with("multipart/form-data") {
        return None;
    }
    let boundary = parameter(content_type, "boundary")?;
    let delimiter = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    let mut at = find(body, &delimiter, 0)? + delimiter.len();
    loop {
        if body.get(at..at + 2) == Some(b"--") {
            return Some(parts);
        }
        at += 2; // CRLF after the delimiter
        let headers_end = find(body, b"\r\n\r\n", at)?;
        let headers = String::from_utf8_lossy(&body[at..headers_end]).into_owned();
        let content_start = headers_end + 4;
        let next = find(body, &delimiter, content_start)?;
        let content = &body[content_start..next.checked_sub(2)?];
        let disposition = headers
            .lines()
            .find(|line| line.to_ascii_lowercase().starts_with("content-disposition"))?;
        parts.push(Part {
            name: parameter(disposition, "name")?,
            file_name: parameter(disposition, "filename"),
            bytes: content.to_vec(),
        });
        at = next + delimiter.len();
    }
}
