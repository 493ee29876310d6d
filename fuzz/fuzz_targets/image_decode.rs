//! Image bytes (any format) through the library's decoder.
#![no_main]

#[path = "../../crates/headstart/tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = fuzzing::decode_image(data) {
        panic!("{e}");
    }
});
