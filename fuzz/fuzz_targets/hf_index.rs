//! Bytes as `model.safetensors.index.json` beside two valid shards
//! (`model-00001-of-00002.safetensors`: `enc.0.weight`, `enc.0.bias`;
//! `model-00002-of-00002.safetensors`: `head.weight`).
#![no_main]

#[path = "../../crates/headstart/tests/fuzzing/mod.rs"]
mod fuzzing;

use std::sync::OnceLock;

struct Setup {
    scratch: fuzzing::Scratch,
    shards: Vec<(&'static str, Vec<u8>)>,
}

static SETUP: OnceLock<Setup> = OnceLock::new();

/// A safetensors file of `u8` tensors, written by hand (`names` with their shapes).
fn shard(tensors: &[(&str, &[usize])]) -> Vec<u8> {
    let (mut header, mut offset) = (vec![], 0usize);
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        header.push(format!("\"{name}\":{{\"dtype\":\"U8\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}", offset + n));
        offset += n;
    }
    let header = format!("{{{}}}", header.join(","));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend((0..offset).map(|i| i as u8));
    out
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let setup = SETUP.get_or_init(|| Setup {
        scratch: fuzzing::Scratch::new(),
        shards: vec![
            ("model-00001-of-00002.safetensors", shard(&[("enc.0.weight", &[2, 3]), ("enc.0.bias", &[2])])),
            ("model-00002-of-00002.safetensors", shard(&[("head.weight", &[2, 2])])),
        ],
    });
    let shards: Vec<(&str, &[u8])> = setup.shards.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    if let Err(e) = fuzzing::hf_folder(&setup.scratch, data, &shards) {
        panic!("{e}");
    }
});
