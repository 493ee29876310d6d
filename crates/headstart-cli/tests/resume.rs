//! A fine-tuning run killed part-way (SIGKILL between steps, and an abort in the middle of a
//! checkpoint write), then resumed, ends with weights bitwise equal to an uninterrupted run.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;

use common::{assert_same, bundle_tensors, sample_set};

fn command(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_headstart"));
    c.args(args).env("OMP_NUM_THREADS", "1").env_remove("HEADSTART_FAULT");
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    c
}

fn train_args(data: &Path, out: &Path, cache: &Path) -> Vec<String> {
    [
        "train",
        "--mode",
        "finetune",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--unfreeze",
        "last:2",
        "--head-epochs",
        "1",
        "--checkpoint-every",
        "1",
        "--augment",
        "--seed",
        "3",
        "--progress",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn resume_args(out: &Path) -> Vec<String> {
    vec!["train".into(), "--resume".into(), out.to_str().unwrap().into(), "--progress".into(), "none".into()]
}

fn step_of(out: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(out.join("checkpoint/state.json")) else { return 0 };
    serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["global_step"].as_u64()).unwrap_or(0) as usize
}

/// Waits until the run's checkpoint reaches `step`, then SIGKILLs it. Returns whether it was
/// still running when killed.
fn kill_at(mut child: Child, out: &Path, step: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if step_of(out) >= step {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("run did not reach step {step}");
}

fn finish(args: &[String]) {
    let o = command(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn killed_and_resumed_runs_end_bitwise_equal_to_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    sample_set(&data);
    let cache = tmp.path().join("cache");

    let straight = tmp.path().join("straight");
    finish(&train_args(&data, &straight, &cache));
    let want = bundle_tensors(&straight);
    assert!(want.iter().any(|(n, _)| n.starts_with("backbone.safetensors:")));

    // SIGKILL at two points, resuming after each.
    let killed = tmp.path().join("killed");
    let first = kill_at(command(&train_args(&data, &killed, &cache)).spawn().unwrap(), &killed, 2);
    let second = kill_at(command(&resume_args(&killed)).spawn().unwrap(), &killed, 6);
    assert!(first && second, "the runs finished before they could be killed");
    finish(&resume_args(&killed));
    assert_same(&bundle_tensors(&killed), &want);

    // Abort in the middle of the third checkpoint write: the staging directory is left
    // incomplete, the previous checkpoint is intact, and the resumed run still matches.
    let torn = tmp.path().join("torn");
    let o = command(&train_args(&data, &torn, &cache)).env("HEADSTART_FAULT", "checkpoint-write:3").output().unwrap();
    assert!(!o.status.success());
    assert!(torn.join("checkpoint.staging/model.safetensors").is_file());
    assert!(!torn.join("checkpoint.staging/COMPLETE").exists());
    assert_eq!(step_of(&torn), 2);
    finish(&resume_args(&torn));
    assert_same(&bundle_tensors(&torn), &want);
}
