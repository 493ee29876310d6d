//! Data-parallel fine-tuning on loopback (Gloo, one thread per rank): two ranks end with the
//! weights of one process at the same global batch, each having featurised only its half of the
//! data for the head phase; a rank killed mid-epoch makes the other exit with an error naming
//! it, within a timeout; the run then resumes with two ranks and ends where an uninterrupted
//! two-rank run does.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{bundle_tensors, sample_set};

fn command(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_headstart"));
    c.args(args).env("OMP_NUM_THREADS", "1").env_remove("HEADSTART_FAULT");
    for v in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"] {
        c.env_remove(v);
    }
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `world` ranks of the same command on loopback.
fn launch(args: &[String], world: usize) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|r| {
            let mut c = command(args);
            c.env("WORLD_SIZE", world.to_string()).env("RANK", r.to_string()).env("LOCAL_RANK", r.to_string());
            c.env("MASTER_ADDR", "127.0.0.1").env("MASTER_PORT", &port).env("HEADSTART_DIST_TIMEOUT", "120");
            c.spawn().unwrap()
        })
        .collect()
}

/// Waits for a child at most `limit`; None if it was still running (then it is killed).
fn wait_for(mut child: Child, limit: Duration) -> Option<Output> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    None
}

/// Waits for every rank to succeed; their standard error, in rank order.
fn finish_all(children: Vec<Child>) -> Vec<String> {
    let mut errs = vec![];
    for (r, c) in children.into_iter().enumerate() {
        let o = wait_for(c, Duration::from_secs(600)).unwrap_or_else(|| panic!("rank {r} did not finish"));
        assert!(o.status.success(), "rank {r}: {}", String::from_utf8_lossy(&o.stderr));
        errs.push(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    errs
}

/// What a rank says it featurised: (rank, world, start, end, total, computed, reused).
fn featurised_share(stderr: &str) -> (usize, usize, usize, usize, usize, usize, usize) {
    let line = stderr.lines().find(|l| l.contains(" featurised examples ")).unwrap_or_else(|| panic!("no featurisation line in: {stderr}"));
    let nums: Vec<usize> = line.split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect();
    assert_eq!(nums.len(), 7, "{line}");
    (nums[0], nums[1], nums[2], nums[3], nums[4], nums[5], nums[6])
}

fn train_args(data: &Path, out: &Path, cache: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--mode", "finetune", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()].map(String::from).to_vec();
    a.extend(["--cache-dir", cache.to_str().unwrap(), "--epochs", "2", "--batch-size", "6", "--unfreeze", "last:2", "--head-epochs", "1"].map(String::from));
    // BatchNorm frozen: local batch statistics would differ from one process's by design.
    a.extend(["--bn", "frozen", "--checkpoint-every", "1", "--augment", "--seed", "5", "--progress", "none"].map(String::from));
    a
}

fn resume_args(out: &Path) -> Vec<String> {
    vec!["train".into(), "--resume".into(), out.to_str().unwrap().into(), "--progress".into(), "none".into()]
}

fn step_of(out: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(out.join("checkpoint/state.json")) else { return 0 };
    serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["global_step"].as_u64()).unwrap_or(0) as usize
}

/// Largest absolute difference between two bundles' tensors (same names required).
fn max_diff(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> f64 {
    assert_eq!(a.iter().map(|x| &x.0).collect::<Vec<_>>(), b.iter().map(|x| &x.0).collect::<Vec<_>>());
    a.iter().zip(b).map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[])).fold(0.0, f64::max)
}

/// Starts two ranks, SIGKILLs rank `victim` once the run has checkpointed step 2, and checks
/// the other rank exits within a minute with an error naming the victim.
fn kill_one(args: &[String], out: &Path, victim: usize) {
    let mut ranks = launch(args, 2);
    let deadline = Instant::now() + Duration::from_secs(300);
    while step_of(out) < 2 {
        assert!(Instant::now() < deadline, "the run did not reach step 2");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut v = ranks.remove(victim);
    v.kill().unwrap();
    v.wait().unwrap();
    let killed_at = Instant::now();
    let survivor = 1 - victim;
    let o = wait_for(ranks.pop().unwrap(), Duration::from_secs(60)).unwrap_or_else(|| panic!("rank {survivor} hung after rank {victim} was killed"));
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("rank {survivor} exited {:?} {:?} after rank {victim} was killed: {err}", o.status.code(), killed_at.elapsed());
    assert!(!o.status.success());
    assert!(err.contains(&format!("lost rank {victim}")), "{err}");
    assert!(!out.join("bundle").exists(), "the run finished before rank {victim} was killed");
}

#[test]
fn two_ranks_match_one_and_a_lost_rank_is_named_then_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    sample_set(&data);
    let cache = tmp.path().join("cache");

    let single = tmp.path().join("single");
    let o = command(&train_args(&data, &single, &cache)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let one = bundle_tensors(&single);

    // A cache of its own: each rank must compute its half, no more, and none from the cache.
    let pair = tmp.path().join("pair");
    let errs = finish_all(launch(&train_args(&data, &pair, &tmp.path().join("cache-pair")), 2));
    let shares: Vec<_> = errs.iter().map(|e| featurised_share(e)).collect();
    eprintln!("featurised per rank (rank, world, start, end, total, computed, reused): {shares:?}");
    assert_eq!(shares, [(0, 2, 0, 12, 24, 12, 0), (1, 2, 12, 24, 24, 12, 0)]);
    let two = bundle_tensors(&pair);
    let d = max_diff(&one, &two);
    eprintln!("largest difference, 2 ranks vs 1: {d:e}");
    assert!(d <= 1e-5, "2 ranks differ from 1 by {d}");
    assert!(d > 0.0 || one.iter().any(|(n, _)| n.starts_with("backbone")), "nothing was fine-tuned");

    // Rank 1 killed after the second step: rank 0 stops with an error naming it.
    let killed = tmp.path().join("killed");
    kill_one(&train_args(&data, &killed, &cache), &killed, 1);
    // Rank 0, which also serves the store, killed: rank 1 names it.
    let lost_master = tmp.path().join("lost-master");
    kill_one(&train_args(&data, &lost_master, &cache), &lost_master, 0);

    // Resumed with two ranks, it ends where the uninterrupted two-rank run did.
    finish_all(launch(&resume_args(&killed), 2));
    let d = max_diff(&bundle_tensors(&killed), &two);
    eprintln!("largest difference, resumed vs uninterrupted (2 ranks): {d:e}");
    assert!(d <= 1e-5, "the resumed run differs by {d}");
}

/// End to end, `--bn sync` reaches the models' BatchNorm: two ranks with it end elsewhere than
/// two ranks with local BatchNorm (same seeds, same rows; dropout keeps either from matching one
/// process). The arithmetic itself is checked against one process in the library's `sync_bn`
/// test.
#[test]
fn synchronised_batchnorm_runs_on_two_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    sample_set(&data);
    let cache = tmp.path().join("cache");
    let args = |out: &Path, bn: &str| {
        let mut a = train_args(&data, out, &cache);
        let i = a.iter().position(|x| x == "frozen").unwrap();
        a[i] = bn.into();
        a
    };
    let local = tmp.path().join("local");
    finish_all(launch(&args(&local, "train"), 2));
    let synced = tmp.path().join("synced");
    finish_all(launch(&args(&synced, "sync"), 2));
    let d = max_diff(&bundle_tensors(&local), &bundle_tensors(&synced));
    eprintln!("largest difference, local vs synchronised BatchNorm on two ranks: {d:e}");
    assert!(d > 1e-4, "synchronised BatchNorm changed nothing");
}
