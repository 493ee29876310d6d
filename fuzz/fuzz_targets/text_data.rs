//! Labelled text: the first byte picks the format (CSV, TSV, JSONL), whether a pair column
//! is read and whether invalid UTF-8 is replaced; the rest is the file.
#![no_main]

#[path = "../../crates/headstart/tests/fuzzing/mod.rs"]
mod fuzzing;

use headstart::text::data::Columns;

static SCRATCH: std::sync::OnceLock<fuzzing::Scratch> = std::sync::OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let scratch = SCRATCH.get_or_init(fuzzing::Scratch::new);
    let ext = ["csv", "tsv", "jsonl"][mode as usize % 3];
    let pair = (mode & 0x10 != 0).then(|| "other".to_string());
    let cols = Columns { pair, ..Columns::default() };
    if let Err(e) = fuzzing::text_dataset(scratch, ext, body, &cols, mode & 0x20 != 0) {
        panic!("{e}");
    }
});
