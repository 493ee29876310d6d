//! Bytes as an image CSV manifest (`path,label` rows).
#![no_main]

#[path = "../../crates/headstart/tests/fuzzing/mod.rs"]
mod fuzzing;

static SCRATCH: std::sync::OnceLock<fuzzing::Scratch> = std::sync::OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let scratch = SCRATCH.get_or_init(fuzzing::Scratch::new);
    if let Err(e) = fuzzing::image_manifest(scratch, data) {
        panic!("{e}");
    }
});
