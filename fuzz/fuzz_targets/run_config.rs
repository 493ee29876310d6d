//! Bytes as `train --config run.toml`, through the CLI's own reader (its source file is
//! compiled in here; merging into the flags is covered by the CLI's unit test).
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/headstart-cli/src/config.rs"]
mod config;

static SCRATCH: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = SCRATCH.get_or_init(|| tempfile::tempdir().expect("temporary folder"));
    let path = dir.path().join("run.toml");
    std::fs::write(&path, data).expect("writing a case");
    if let Ok(cfg) = config::RunConfig::read(&path) {
        let _ = cfg.epochs();
    }
});
