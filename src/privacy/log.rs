//! The log writer: every line is masked (cards, IBANs, email addresses,
//! phone numbers) before it reaches stderr, at every level, whatever a
//! module or library put in it.

use std::io::Write;

use super::redact::{mask_text, Kind};

const LOGGED_NEVER: [Kind; 4] = [Kind::Card, Kind::Iban, Kind::Email, Kind::Phone];

/// Masks what it writes, then passes it on. The log formatter writes one
/// whole event per call, so nothing is split between two calls.
pub struct MaskingWriter<W: Write>(pub W);

impl<W: Write> Write for MaskingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(bytes);
        let (masked, _) = mask_text(&text, &LOGGED_NEVER);
        self.0.write_all(masked.as_bytes())?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Standard error behind the mask, for `tracing_subscriber`'s `with_writer`.
pub fn masked_stderr() -> MaskingWriter<std::io::Stderr> {
    MaskingWriter(std::io::stderr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_loses_payment_and_contact_data() {
        let mut out = MaskingWriter(Vec::new());
        let line =
            b"DEBUG text=\"card 4111 1111 1111 1111, mail a@b.io, tel +44 20 7946 0958\" chat=42\n";
        assert_eq!(out.write(line).unwrap(), line.len());
        let written = String::from_utf8(out.0).unwrap();
        assert_eq!(
            written,
            "DEBUG text=\"card •••• 1111, mail [email], tel [phone]\" chat=42\n"
        );
    }
}
