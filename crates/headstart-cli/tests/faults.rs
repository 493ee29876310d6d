//! Faults around `headstart train` (feature extraction), on the real binary: SIGKILL at twenty
//! seeded points on one feature cache and one run directory, two runs at once on one cache, a
//! full disk under `--out`, and a read-only `--out`.
//!
//! Results are compared bitwise: head tensors, cached feature vectors and the reported scores
//! of a faulted run must equal those of an uninterrupted run on a fresh cache.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod common;

/// The tests time kills against the binary's progress and report run times: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Twelve Fashion-MNIST images of each of four classes from `data/sample` (48 in all).
fn data_set(dir: &Path) -> usize {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/sample");
    let mut n = 0;
    for c in ["Bag", "Trouser", "Sandal", "Sneaker"] {
        std::fs::create_dir_all(dir.join(c)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(sample.join(c)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.iter().take(12) {
            std::fs::copy(f, dir.join(c).join(f.file_name().unwrap())).unwrap();
            n += 1;
        }
    }
    n
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `train` with a logistic head, a fixed seed, small extraction batches (many points to kill
/// at), JSON progress on stderr and the outcome as JSON on stdout.
fn train_args(data: &Path, out: &Path, cache: Option<&Path>, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> =
        ["train", "--data", &s(data), "--out", &s(out), "--head", "logistic", "--seed", "7", "--eval-batch-size", "4"].iter().map(|x| x.to_string()).collect();
    a.extend(["--progress", "json", "--json"].map(String::from));
    match cache {
        Some(c) => a.extend(["--cache-dir".into(), s(c)]),
        None => a.push("--no-cache".into()),
    }
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn command(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_headstart"));
    c.args(args).env("OMP_NUM_THREADS", "1").env_remove("HEADSTART_FAULT");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs to the end; must succeed. Returns the outcome JSON and the wall time.
fn finish(args: &[String]) -> (serde_json::Value, f64) {
    let t = Instant::now();
    let o = command(args).output().unwrap();
    assert!(o.status.success(), "train failed: {}", stderr(&o));
    (serde_json::from_slice(&o.stdout).unwrap(), t.elapsed().as_secs_f64())
}

/// The scores and choices of an outcome that must not depend on faults (not the cache counts).
fn scores(v: &serde_json::Value) -> serde_json::Value {
    let keys = ["classes", "n_train", "n_val", "skipped", "head", "best_epoch", "l2", "train_accuracy", "val"];
    serde_json::Value::Object(keys.iter().map(|k| (k.to_string(), v[k].clone())).collect())
}

/// Every file of a bundle directory, by name.
fn bundle_files(run: &Path) -> BTreeMap<String, Vec<u8>> {
    let dir = run.join("bundle");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

/// Head tensors, bitwise: the same names, shapes and values.
fn assert_same_head(got: &Path, want: &Path) {
    let read = |run: &Path| {
        let w = headstart::weights::Weights::open(run.join("bundle/head.safetensors")).unwrap();
        w.names().iter().map(|n| (n.clone(), w.tensor(n).unwrap())).collect::<Vec<_>>()
    };
    let (a, b) = (read(got), read(want));
    assert_eq!(a.iter().map(|x| &x.0).collect::<Vec<_>>(), b.iter().map(|x| &x.0).collect::<Vec<_>>());
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        let diff = if x.size() == y.size() { (x - y).abs().max().double_value(&[]) } else { f64::INFINITY };
        assert!(x.equal(y), "head tensor `{n}` differs from the uninterrupted run's (max |diff| {diff:e})");
    }
}

/// The cache's feature vectors by image hash, and the number of stray temporary files.
fn cache_entries(root: &Path) -> (BTreeMap<String, Vec<u8>>, usize) {
    let (mut entries, mut stray) = (BTreeMap::new(), 0);
    let Ok(keys) = std::fs::read_dir(root.join("features")) else { return (entries, 0) };
    for key in keys {
        for sub in std::fs::read_dir(key.unwrap().path()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()) {
            for f in std::fs::read_dir(&sub).unwrap().map(|e| e.unwrap().path()) {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    stray += 1;
                } else if let Some(hash) = name.strip_suffix(".f32") {
                    entries.insert(hash.to_string(), std::fs::read(&f).unwrap());
                }
            }
        }
    }
    (entries, stray)
}

/// Every entry of `got` is whole and bitwise equal to the fresh extraction's, and none is
/// missing. Returns the number of stray temporary files.
fn assert_cache_matches(got: &Path, fresh: &Path, n_images: usize) -> usize {
    let (a, stray) = cache_entries(got);
    let (b, _) = cache_entries(fresh);
    assert_eq!(b.len(), n_images, "the fresh cache should hold every image");
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "cached images differ from a fresh extraction's");
    for (hash, bytes) in &a {
        let want = &b[hash];
        assert_eq!(bytes.len(), want.len(), "cache entry {hash} is damaged ({} bytes, want {})", bytes.len(), want.len());
        let diff = bytes.chunks_exact(4).zip(want.chunks_exact(4)).map(|(x, y)| (f32_of(x) - f32_of(y)).abs()).fold(0f32, f32::max);
        assert!(bytes == want, "cache entry {hash} differs from a fresh extraction (max |diff| {diff:e})");
    }
    stray
}

fn f32_of(b: &[u8]) -> f32 {
    f32::from_le_bytes(b.try_into().unwrap())
}

/// Leftovers of interrupted writes in a run directory (bundle staging, temporary files).
fn leftovers(run: &Path) -> Vec<String> {
    let mut found = vec![];
    for e in std::fs::read_dir(run).into_iter().flatten() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            found.push(name);
        }
    }
    found
}

/// SplitMix64: a small seeded generator for kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// Where to kill a run.
#[derive(Debug, Clone, Copy)]
enum Point {
    /// This long after the start.
    StartUp(Duration),
    /// Once the cache holds this many vectors (during extraction), and this long after.
    Extract(usize, Duration),
    /// This long after feature extraction finished (the head is being fitted).
    Fit(Duration),
    /// This long after the last fitting epoch was reported (the bundle is being written).
    Bundle(Duration),
    /// Never: run to the end.
    Never,
}

/// What a watched run had reported when it was killed (or ended).
#[derive(Debug, Default, Clone)]
struct Seen {
    features_at: Option<Duration>,
    features_done_at: Option<Duration>,
    epochs: usize,
    last_epoch_at: Option<Duration>,
    staging_seen: bool,
    end: Option<Duration>,
    killed: bool,
    stderr: String,
    stdout: Vec<u8>,
    started: Option<Instant>,
}

impl Seen {
    fn phase(&self) -> &'static str {
        match () {
            _ if !self.killed => "finished",
            _ if self.features_at.is_none() => "start-up",
            _ if self.features_done_at.is_none() => "extraction",
            _ if self.staging_seen => "bundle",
            _ if self.last_epoch_at.is_some() && self.epochs >= 8 => "after fitting",
            _ => "fitting",
        }
    }
}

fn count_entries(cache: &Path) -> usize {
    cache_entries(cache).0.len()
}

/// Runs `args`, watching its JSON progress, the cache and the run directory, and SIGKILLs it at
/// `point`. `epochs` is the number of fitting epochs a run reports.
fn run_until(args: &[String], cache: &Path, out: &Path, point: Point, epochs: usize) -> Seen {
    let start = Instant::now();
    let mut child: Child = command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let collect = std::thread::spawn(move || {
        let mut v = vec![];
        std::io::Read::read_to_end(&mut stdout, &mut v).map(|_| v).unwrap_or_default()
    });
    let (tx, rx) = mpsc::channel::<(Duration, String)>();
    let pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send((start.elapsed(), line));
        }
    });
    let staging = format!(".bundle.staging-{}", child.id());
    let mut seen = Seen { started: Some(start), ..Seen::default() };
    let mut extract_met: Option<Duration> = None;
    loop {
        for (t, line) in rx.try_iter() {
            if line.contains("\"stage\":\"features\"") {
                seen.features_at.get_or_insert(t);
                if line.contains("\"finished\":true") {
                    seen.features_done_at = Some(t);
                }
            } else if line.contains("\"message\":\"epoch") {
                seen.epochs += 1;
                seen.last_epoch_at = Some(t);
            }
            seen.stderr += &line;
            seen.stderr.push('\n');
        }
        if !seen.staging_seen && out.join(&staging).exists() {
            seen.staging_seen = true;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let now = start.elapsed();
        let fire = match point {
            Point::StartUp(d) => Some(d),
            Point::Extract(n, d) => {
                if extract_met.is_none() && seen.features_at.is_some() && count_entries(cache) >= n {
                    extract_met = Some(now);
                }
                extract_met.map(|t| t + d)
            }
            Point::Fit(d) => seen.features_done_at.map(|t| t + d),
            Point::Bundle(d) => seen.last_epoch_at.filter(|_| seen.epochs >= epochs).map(|t| t + d),
            Point::Never => None,
        };
        if fire.is_some_and(|f| now >= f) {
            child.kill().unwrap();
            seen.killed = true;
            break;
        }
        if now > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("train ran for five minutes:\n{}", seen.stderr);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let status = child.wait().unwrap();
    seen.end = Some(start.elapsed());
    reader.join().unwrap();
    seen.stdout = collect.join().unwrap();
    for (_, line) in rx.try_iter() {
        seen.stderr += &line;
        seen.stderr.push('\n');
    }
    if !seen.killed {
        assert!(status.success(), "train failed before its kill point {point:?}:\n{}", seen.stderr);
    }
    seen
}

/// Twenty seeded kill points: three in start-up and seven in extraction (shuffled), then five
/// while fitting and five around the bundle write (shuffled), timed from `reference`.
fn kill_plan(seed: u64, reference: &Seen, n_images: usize) -> Vec<Point> {
    let mut rng = Rng(seed);
    let ms = |d: Duration| d.as_millis().max(1) as u64;
    let startup = ms(reference.features_at.unwrap());
    let fitting = ms(reference.last_epoch_at.unwrap() - reference.features_done_at.unwrap());
    // The bundle is written early in the time between the last epoch and the exit.
    let writing = (reference.end.unwrap() - reference.last_epoch_at.unwrap()).as_micros().max(2) as u64 / 2;
    // Increasing cache fill levels, so every extraction kill interrupts fresh backbone work.
    let mut levels: Vec<usize> = (1..=7).map(|i| i * n_images / 8 + rng.below(3) as usize).collect();
    levels.sort();
    let mut levels = levels.into_iter();
    // Start-up kills in the first, second and third quarter of the reference's start-up.
    let mut quarters = 0..3;
    let mut first = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1];
    rng.shuffle(&mut first);
    let mut second = [2, 2, 2, 2, 2, 3, 3, 3, 3, 3];
    rng.shuffle(&mut second);
    first
        .iter()
        .chain(&second)
        .map(|&tag| match tag {
            0 => Point::StartUp(Duration::from_millis(quarters.next().unwrap() * startup / 4 + rng.below(startup / 4))),
            1 => Point::Extract(levels.next().unwrap(), Duration::from_millis(rng.below(60))),
            2 => Point::Fit(Duration::from_millis(rng.below(fitting))),
            _ => Point::Bundle(Duration::from_micros(rng.below(writing))),
        })
        .collect()
}

#[test]
fn twenty_kills_on_one_cache_then_a_clean_finish_equal_an_uninterrupted_run() {
    let _one = serial();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let n = data_set(&data);

    // The uninterrupted run on a fresh cache, watched for its phase timings.
    let (fresh_cache, fresh) = (tmp.path().join("fresh-cache"), tmp.path().join("fresh"));
    let reference = run_until(&train_args(&data, &fresh, Some(&fresh_cache), &[]), &fresh_cache, &fresh, Point::Never, 0);
    let epochs = reference.epochs;
    assert!(epochs > 0 && reference.features_done_at.is_some(), "no progress seen:\n{}", reference.stderr);
    let (want, _) = finish(&train_args(&data, &tmp.path().join("fresh-again"), Some(&fresh_cache), &[]));

    // The killed runs share a cache and a run directory that already holds another bundle
    // (another L2 strength, from the fresh cache): after every kill, `bundle/` must be that
    // bundle or the finished one, whole.
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("out"));
    finish(&train_args(&data, &out, Some(&fresh_cache), &["--l2", "0.5"]));
    let old = bundle_files(&out);
    let new = bundle_files(&fresh);
    assert_ne!(old, new);

    let plan = kill_plan(0x5eed_0001, &reference, n);
    let args = train_args(&data, &out, Some(&cache), &[]);
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, point) in plan.iter().enumerate() {
        let seen = run_until(&args, &cache, &out, *point, epochs);
        *phases.entry(seen.phase()).or_default() += 1;
        let now = bundle_files(&out);
        assert!(now == old || now == new, "after kill {i} ({point:?}, {}) the bundle is neither the old one nor the finished one", seen.phase());
        eprintln!("kill {i:>2}: {point:?} -> {} at {:?}, cache {} entries", seen.phase(), seen.end.unwrap(), count_entries(&cache));
    }
    // A torn entry (as a crash of the machine could leave) must be found and recomputed.
    let (entries, _) = cache_entries(&cache);
    let torn = entries.keys().nth(Rng(0x5eed_0002).below(entries.len() as u64) as usize).unwrap().clone();
    let torn_path = std::fs::read_dir(cache.join("features")).unwrap().next().unwrap().unwrap().path().join(&torn[..2]).join(format!("{torn}.f32"));
    let len = std::fs::metadata(&torn_path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&torn_path).unwrap().set_len(len / 2).unwrap();
    let (got, _) = finish(&args);
    assert_eq!(got["backbone_computed"], 1, "the torn cache entry was not recomputed (alone)");

    assert_same_head(&out, &fresh);
    assert_eq!(bundle_files(&out), new, "the bundle's files differ from the uninterrupted run's");
    assert_eq!(scores(&got), scores(&want));
    let stray = assert_cache_matches(&cache, &fresh_cache, n);
    let left = leftovers(&out);
    eprintln!("phases {phases:?}; {stray} stray temporary cache files; run dir leftovers {left:?}; {:.1} s", t0.elapsed().as_secs_f64());
    assert!(left.is_empty(), "interrupted writes left {left:?} in the run directory");
    for phase in ["start-up", "extraction", "fitting"] {
        assert!(phases.get(phase).copied().unwrap_or(0) > 0, "no kill landed in {phase}: {phases:?}");
    }
    assert!(phases.get("finished").copied().unwrap_or(0) <= 2, "too many runs finished before their kill: {phases:?}");
}

/// Two runs on one cache, each watched for its progress: started together, or the second once
/// the first has cached `stagger` vectors. Returns both outcomes and whether their extractions
/// overlapped (on a loaded machine a late start can miss the other's extraction entirely).
fn two_at_once(data: &Path, cache: &Path, a: &Path, b: &Path, stagger: usize) -> (serde_json::Value, serde_json::Value, bool) {
    let (sa, sb) = std::thread::scope(|sc| {
        let ha = sc.spawn(|| run_until(&train_args(data, a, Some(cache), &[]), cache, a, Point::Never, 0));
        let t = Instant::now();
        while count_entries(cache) < stagger && t.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let hb = sc.spawn(|| run_until(&train_args(data, b, Some(cache), &[]), cache, b, Point::Never, 0));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let window = |s: &Seen| (s.started.unwrap() + s.features_at.unwrap(), s.started.unwrap() + s.features_done_at.unwrap());
    let ((a0, a1), (b0, b1)) = (window(&sa), window(&sb));
    let parse = |s: &Seen| serde_json::from_slice::<serde_json::Value>(&s.stdout).unwrap_or_else(|e| panic!("{e}: {}", s.stderr));
    (parse(&sa), parse(&sb), a0 < b1 && b0 < a1)
}

#[test]
fn two_runs_at_once_on_one_cache_agree() {
    let _one = serial();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let n = data_set(&data);

    // The uninterrupted run on a fresh cache of its own.
    let (fresh_cache, fresh) = (tmp.path().join("fresh-cache"), tmp.path().join("fresh"));
    let (want, _) = finish(&train_args(&data, &fresh, Some(&fresh_cache), &[]));

    // Started together (both compute every vector and write the same entries), then the
    // second a third of the way into the first's extraction (it reads entries as they land).
    for (round, stagger) in [0, n / 3].into_iter().enumerate() {
        // Only overlapping extractions test anything: a pair that did not overlap is tried
        // again (three tries), and never counts as a pass.
        let mut tried = None;
        for attempt in 0..3 {
            let cache = tmp.path().join(format!("cache-{round}-{attempt}"));
            let (a, b) = (tmp.path().join(format!("a-{round}-{attempt}")), tmp.path().join(format!("b-{round}-{attempt}")));
            let (va, vb, overlapped) = two_at_once(&data, &cache, &a, &b, stagger);
            if overlapped {
                tried = Some((cache, a, b, va, vb));
                break;
            }
            eprintln!("stagger {stagger}, try {}: the two extractions did not overlap; trying again", attempt + 1);
        }
        let (cache, a, b, va, vb) = tried.expect("in three tries the two extractions never overlapped");
        assert_eq!(scores(&va), scores(&vb));
        assert_same_head(&a, &b);
        assert_eq!(bundle_files(&a), bundle_files(&b));
        assert_same_head(&a, &fresh);
        assert_eq!(bundle_files(&a), bundle_files(&fresh));
        assert_eq!(scores(&va), scores(&want));
        let stray = assert_cache_matches(&cache, &fresh_cache, n);
        assert_eq!(stray, 0, "finished runs left temporary files in the cache");
        let computed = |v: &serde_json::Value| v["backbone_computed"].as_u64().unwrap();
        eprintln!("stagger {stagger}: backbone runs {} and {} (of {n} each)", computed(&va), computed(&vb));
        if stagger > 0 {
            assert!(computed(&vb) < n as u64, "the later run read no entry the first one wrote");
        }
    }
    eprintln!("{:.1} s", t0.elapsed().as_secs_f64());
}

/// A tmpfs mounted for the test's lifetime (unmounted on drop), if this process may mount one.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs", &s(dir)]).output().map_err(|e| format!("cannot run mount: {e}"))?;
        if !o.status.success() {
            return Err(format!("`mount -t tmpfs` failed: {}", stderr(&o).trim()));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    fn remount(&self, options: &str) {
        let o = Command::new("mount").args(["-o", &format!("remount,{options}"), &s(&self.0)]).output().unwrap();
        assert!(o.status.success(), "remount: {}", stderr(&o));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

const PAGE: u64 = 4096;

/// Fills the file system holding `dir` with one file, then frees `pages` pages of it.
fn fill_leaving(dir: &Path, pages: u64) {
    let path = dir.join("filler");
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => len += k as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "filling {}: {e}", dir.display());
                break;
            }
        }
    }
    f.set_len((len / PAGE).saturating_sub(pages) * PAGE).unwrap();
}

/// The error line does not repeat its cause (`path: reason: reason`).
fn assert_said_once(line: &str) {
    let parts: Vec<&str> = line.split(": ").collect();
    assert!(parts.windows(2).all(|w| w[0] != w[1]), "the error repeats itself: {line}");
}

/// A failed `train` under `out`: exit status 7 (I/O), an error naming a path under `out` and a full
/// disk, no panic, the previous bundle byte for byte, no leftovers. Returns the error line.
fn assert_clean_failure(o: &Output, out: &Path, old: &BTreeMap<String, Vec<u8>>) -> String {
    let err = stderr(o);
    assert!(!err.contains("panicked"), "train panicked:\n{err}");
    assert_eq!(o.status.code(), Some(7), "an I/O error: {err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line:\n{err}")).to_string();
    assert!(line.contains(&s(out)), "the error does not name the run directory {}: {line}", out.display());
    assert!(line.to_lowercase().contains("no space left on device"), "the error does not say the disk is full: {line}");
    assert_said_once(&line);
    assert!(bundle_files(out) == *old, "the previous bundle changed after: {line}");
    let left = leftovers(out);
    assert!(left.is_empty(), "the failed run left {left:?} after: {line}");
    line
}

/// Runs `train` with writes failing at each successive point (`fail(k)` sets up the k-th)
/// until one succeeds. Every failure must be clean; the success must replace the old bundle.
fn fail_at_every_write(args: &[String], out: &Path, want: &BTreeMap<String, Vec<u8>>, mut fail: impl FnMut(u64, &mut Command)) -> Vec<String> {
    let old = bundle_files(out);
    let mut errors = vec![];
    for k in 0..64 {
        let mut c = command(args);
        fail(k, &mut c);
        let t = Instant::now();
        let o = c.output().unwrap();
        if o.status.success() {
            assert!(!errors.is_empty(), "the first run did not fail");
            assert_eq!(bundle_files(out), *want, "the bundle written after the failures is not the expected one");
            return errors;
        }
        let line = assert_clean_failure(&o, out, &old);
        eprintln!("  {k:>2}: {line} ({:.1} s)", t.elapsed().as_secs_f64());
        errors.push(line);
    }
    panic!("train never succeeded: {errors:?}");
}

#[test]
fn a_full_disk_under_out_fails_cleanly_and_keeps_the_previous_bundle() {
    let _one = serial();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    data_set(&data);
    let cache = tmp.path().join("cache");
    let warm = tmp.path().join("warm");
    finish(&train_args(&data, &warm, Some(&cache), &[]));
    let want = bundle_files(&warm);

    // A real full disk: a small tmpfs holding the run directory.
    let small = tmp.path().join("small");
    match Tmpfs::mount(&small, "size=1m") {
        Err(why) => eprintln!("full tmpfs: skipped ({why}); the injected failures below still run"),
        Ok(_mounted) => {
            let out = small.join("run");
            finish(&train_args(&data, &out, Some(&cache), &["--l2", "0.5"]));
            eprintln!("full tmpfs, k free pages:");
            let args = train_args(&data, &out, Some(&cache), &[]);
            let errors = fail_at_every_write(&args, &out, &want, |k, _| fill_leaving(&small, k));
            assert!(errors.iter().any(|e| e.contains("bundle")), "no failure in the bundle write: {errors:?}");
        }
    }

    // Injected: every write through the library's file helpers after the first k fails.
    let out = tmp.path().join("injected");
    finish(&train_args(&data, &out, Some(&cache), &["--l2", "0.5"]));
    eprintln!("injected, after k writes:");
    let args = train_args(&data, &out, Some(&cache), &[]);
    let errors = fail_at_every_write(&args, &out, &want, |k, c| {
        c.env("HEADSTART_FAULT", format!("disk-full-after:{k}"));
    });
    for file in ["config.json", "head.safetensors", "bundle.toml"] {
        assert!(errors.iter().any(|e| e.contains(file)), "no failure writing {file}: {errors:?}");
    }
    eprintln!("{:.1} s", t0.elapsed().as_secs_f64());
}

/// Whether chmod keeps this process from writing (not for root).
fn chmod_protects(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let probe = dir.join("chmod-probe");
    std::fs::create_dir_all(&probe).unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o555)).unwrap();
    let protects = std::fs::write(probe.join("x"), b"x").is_err();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    protects
}

/// `train` into an unwritable `out` fails before the backbone runs and names the folder.
fn assert_fails_fast(data: &Path, out: &Path, how: &str) {
    let cache = out.with_file_name(format!("cache-{how}"));
    let t = Instant::now();
    let o = command(&train_args(data, out, Some(&cache), &[])).output().unwrap();
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{how}: train panicked:\n{err}");
    assert_eq!(o.status.code(), Some(7), "{how}: an I/O error: {err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{how}: no error line:\n{err}"));
    assert!(line.contains(&s(out)), "{how}: the error does not name {}: {line}", out.display());
    assert_said_once(line);
    assert!(!err.contains("\"stage\":\"features\""), "{how}: features were extracted before the failure:\n{err}");
    assert!(!cache.exists(), "{how}: the feature cache was opened before the failure");
    eprintln!("{how}: {line} ({:.2} s)", t.elapsed().as_secs_f64());
}

#[test]
fn a_read_only_out_fails_before_any_work_and_names_the_folder() {
    let _one = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    data_set(&data);
    // The floor: a run refused at its first check (an unknown model), for the times below.
    let t = Instant::now();
    let o = command(&train_args(&data, &tmp.path().join("unused"), None, &["--model", "no-such-model"])).output().unwrap();
    assert_eq!(o.status.code(), Some(4), "an unknown model");
    eprintln!("unknown model: refused in {:.2} s", t.elapsed().as_secs_f64());

    // Works for every user: the run directory's parent is a regular file.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    assert_fails_fast(&data, &file.join("run"), "parent is a file");

    // A read-only file system, when this process may mount one: a new run directory on it,
    // and an existing one.
    let ro = tmp.path().join("ro");
    match Tmpfs::mount(&ro, "size=1m") {
        Err(why) => eprintln!("read-only tmpfs: skipped ({why})"),
        Ok(mounted) => {
            std::fs::create_dir_all(ro.join("existing")).unwrap();
            mounted.remount("ro");
            assert_fails_fast(&data, &ro.join("new"), "read-only tmpfs, new folder");
            assert_fails_fast(&data, &ro.join("existing"), "read-only tmpfs, existing folder");
        }
    }

    // chmod, where it binds (not for root, who writes regardless).
    let locked = tmp.path().join("locked");
    if chmod_protects(tmp.path()) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        assert_fails_fast(&data, &locked.join("run"), "chmod 555 parent");
        assert_fails_fast(&data, &locked, "chmod 555 folder");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    } else {
        eprintln!("chmod 555: skipped (this process writes to read-only folders, e.g. as root)");
    }
}
