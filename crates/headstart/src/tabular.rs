//! CSV reading helpers shared by image manifests and text tables: line numbers of records, and
//! quoted fields that never close.

use std::path::Path;

use crate::error::Error;

/// The line (1-based) where a quoted field opens that is never closed, reading `text` as the
/// `csv` crate does with RFC 4180 quoting: a `"` opens a quoted field only at the start of a
/// field, `""` inside one is a literal quote. The `csv` crate reads such a field to the end of
/// the file without complaint, swallowing every later row, so callers check first.
pub(crate) fn unterminated_quote(text: &str, delimiter: u8) -> Option<usize> {
    #[derive(PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let (mut state, mut line, mut opened) = (State::FieldStart, 1usize, 0usize);
    for &b in text.as_bytes() {
        let ends_field = b == delimiter || b == b'\n' || b == b'\r';
        state = match state {
            State::FieldStart if b == b'"' => {
                opened = line;
                State::Quoted
            }
            State::FieldStart | State::Unquoted if ends_field => State::FieldStart,
            State::FieldStart | State::Unquoted => State::Unquoted,
            State::Quoted if b == b'"' => State::QuoteInQuoted,
            State::Quoted => State::Quoted,
            State::QuoteInQuoted if b == b'"' => State::Quoted,
            State::QuoteInQuoted if ends_field => State::FieldStart,
            State::QuoteInQuoted => State::Unquoted,
        };
        if b == b'\n' {
            line += 1;
        }
    }
    (state == State::Quoted).then_some(opened)
}

/// Line numbers of the records the `csv` crate reads. Its record positions point just past
/// the previous record, before the line breaks and blank lines in between (it ends a record
/// at the `\r` of a CRLF), so after CRLF endings or blank lines they name an earlier line.
/// This finds each record's first byte instead and counts line breaks up to it.
pub(crate) struct CsvLines<'a> {
    text: &'a [u8],
    at: usize,
    line: usize,
}

impl<'a> CsvLines<'a> {
    pub(crate) fn new(text: &'a str) -> CsvLines<'a> {
        CsvLines { text: text.as_bytes(), at: 0, line: 1 }
    }

    /// The 1-based line of the record whose `csv` position is `byte`; records must be asked
    /// for in order.
    pub(crate) fn line(&mut self, byte: u64) -> usize {
        let mut start = usize::try_from(byte).unwrap_or(usize::MAX).min(self.text.len());
        while start < self.text.len() && matches!(self.text[start], b'\r' | b'\n') {
            start += 1;
        }
        if start < self.at {
            (self.at, self.line) = (0, 1);
        }
        self.line += self.text[self.at..start].iter().filter(|&&b| b == b'\n').count();
        self.at = start;
        self.line
    }
}

/// The error for [`unterminated_quote`], as `file:line`.
pub(crate) fn unterminated_quote_error(path: &Path, line: usize) -> Error {
    Error::input(
        Path::new(&format!("{}:{line}", path.display())),
        "unterminated quoted field: the `\"` that opens it is never closed, so every later row would be read into it \
         (close it, or double a literal quote inside a quoted field: \"\")",
    )
}
