//! `headstart serve` through the real binary on loopback: every route, each limit, auth,
//! graceful shutdown, and concurrent clients getting what `headstart predict` gives.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

mod common;

fn headstart(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_headstart")).args(args).output().unwrap()
}

/// An image bundle (MobileNetV2 head on three sample classes) and a text bundle (tiny BERT),
/// trained once for every test here.
struct Bundles {
    _dir: tempfile::TempDir,
    image: PathBuf,
    text: PathBuf,
    images: Vec<PathBuf>,
}

fn bundles() -> &'static Bundles {
    static B: OnceLock<Bundles> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("images");
        common::sample_set(&data);
        let run = dir.path().join("img_run");
        let o = headstart(&["train", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap(), "--no-cache", "--progress", "none"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let texts = dir.path().join("reviews.jsonl");
        let mut s = String::new();
        for i in 0..24 {
            let (w, l) = if i % 2 == 0 { (["great", "loved", "good"][i % 3], "pos") } else { (["awful", "boring", "bad"][i % 3], "neg") };
            s += &format!("{{\"review\": \"the film was {w} {i}\", \"stars\": \"{l}\"}}\n");
        }
        std::fs::write(&texts, s).unwrap();
        let trun = dir.path().join("text_run");
        let bert = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/text/bert_tiny");
        let o = headstart(&[
            "train",
            "--data",
            texts.to_str().unwrap(),
            "--model",
            bert.to_str().unwrap(),
            "--text-column",
            "review",
            "--label-column",
            "stars",
            "--out",
            trun.to_str().unwrap(),
            "--no-cache",
            "--progress",
            "none",
            // Pinned, so that the precision test below reads the same on every CPU (`auto`
            // embeds text in bf16 where the CPU has it).
            "--precision",
            "fp32",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut images = vec![];
        for c in ["Bag", "Trouser", "Sandal"] {
            let mut f: Vec<_> = std::fs::read_dir(data.join(c)).unwrap().map(|e| e.unwrap().path()).collect();
            f.sort();
            images.extend(f.into_iter().take(2));
        }
        Bundles { image: run.join("bundle"), text: trun.join("bundle"), images, _dir: dir }
    })
}

/// A running server; killed if a test fails before it stops.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_headstart"));
        cmd.arg("serve").args(args).stderr(Stdio::piped()).stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (err, l2) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(a) = line.split("http://").nth(1) {
                    let _ = tx.send(a.to_string());
                }
                l2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("server did not start: {}", log.lock().unwrap()));
        let s = Server { child, base: format!("http://{addr}"), log };
        s.wait_ready();
        s
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if get(&self.url("/readyz"), None).0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("not ready: {}", self.log.lock().unwrap());
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status, Retry-After and body of a response (error statuses included).
fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, Option<String>, String) {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let retry = resp.header("retry-after").map(str::to_string);
    (resp.status(), retry, resp.into_string().unwrap())
}

fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let mut r = ureq::get(url);
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    match r.call() {
        Err(ureq::Error::Transport(_)) => (0, String::new()),
        r => {
            let (s, _, b) = answer(r);
            (s, b)
        }
    }
}

fn post_json(url: &str, body: &str) -> (u16, Option<String>, String) {
    answer(ureq::post(url).set("Content-Type", "application/json").send_string(body))
}

fn post_multipart(url: &str, parts: &[(&str, &[u8])]) -> (u16, Option<String>, String) {
    let boundary = "----headstartTestBoundary7";
    let mut body = vec![];
    for (name, data) in parts {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.bin\"\r\n\r\n").as_bytes());
        body.extend(*data);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    answer(ureq::post(url).set("Content-Type", &format!("multipart/form-data; boundary={boundary}")).send_bytes(&body))
}

fn b64(p: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap())
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The same labels in the same order, probabilities equal within float rounding of a
/// different batch composition.
fn assert_same_top(got: &Value, want: &Value, what: &str) {
    let (g, w) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(g.len(), w.len(), "{what}: {got} vs {want}");
    for (a, b) in g.iter().zip(w) {
        assert_eq!(a[0], b[0], "{what}: {got} vs {want}");
        let d = (a[1].as_f64().unwrap() - b[1].as_f64().unwrap()).abs();
        assert!(d < 1e-5, "{what}: probability differs by {d}: {got} vs {want}");
    }
}

fn error_of(status: u16, body: &str, want_status: u16, want_field: &str) {
    assert_eq!(status, want_status, "{body}");
    let v = parse(body);
    let field = if want_field.is_empty() { Value::Null } else { json!(want_field) };
    assert_eq!(v["error"]["field"], field, "{body}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[test]
fn routes_and_concurrent_answers_match_predict() {
    let b = bundles();
    let (img, txt) = (format!("img={}", b.image.display()), format!("txt={}", b.text.display()));
    let s = Server::start(&[&img, &txt, "--addr", "127.0.0.1:0", "--max-batch", "4", "--max-wait-ms", "20", "--threads", "2"], &[]);
    assert_eq!(get(&s.url("/healthz"), None).0, 200);
    let (st, body) = get(&s.url("/v1/models"), None);
    assert_eq!(st, 200);
    let models = parse(&body);
    let m = models["models"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["name"], "img");
    assert_eq!(m[0]["modality"], "image");
    assert_eq!(m[0]["backbone"], "mobilenet_v2.tv_in1k");
    assert_eq!(m[0]["preprocessing"]["size"], 224);
    assert_eq!(m[0]["labels"], json!(["Bag", "Sandal", "Trouser"]));
    assert_eq!(m[1]["modality"], "text");
    assert_eq!(m[1]["labels"], json!(["neg", "pos"]));

    // What `headstart predict` says for the same inputs.
    let mut args: Vec<&str> = vec!["predict", b.image.to_str().unwrap(), "--top-k", "3", "--json", "--no-cache"];
    args.extend(b.images.iter().map(|p| p.to_str().unwrap()));
    let o = headstart(&args);
    assert!(o.status.success());
    let want_img: Vec<Value> = parse(&String::from_utf8_lossy(&o.stdout))["predictions"].as_array().unwrap().iter().map(|p| p["top"].clone()).collect();
    let texts = ["the film was great and long", "boring, awful film", "good", "bad bad bad"];
    let mut targs: Vec<&str> = vec!["predict", b.text.to_str().unwrap(), "--top-k", "2", "--json"];
    for t in &texts {
        targs.extend(["--text", t]);
    }
    let o = headstart(&targs);
    assert!(o.status.success());
    let want_txt: Vec<Value> = parse(&String::from_utf8_lossy(&o.stdout))["predictions"].as_array().unwrap().iter().map(|p| p["top"].clone()).collect();

    // Eight clients at once, each sending single images, several images, uploads and texts.
    let url = s.url("/v1/predict");
    let sent = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..8)
            .map(|c| {
                let (url, want_img, want_txt) = (&url, &want_img, &want_txt);
                sc.spawn(move || {
                    let mut n = 0;
                    for round in 0..3 {
                        let i = (c + round) % b.images.len();
                        let (st, _, body) = post_json(url, &json!({"model": "img", "inputs": [b64(&b.images[i])], "top_k": 3}).to_string());
                        assert_eq!(st, 200, "{body}");
                        assert_same_top(&parse(&body)["predictions"][0]["top"], &want_img[i], "single image");
                        let all: Vec<String> = b.images.iter().map(|p| format!("data:image/png;base64,{}", b64(p))).collect();
                        let (st, _, body) = post_json(&format!("{url}?model=img"), &json!({"inputs": all, "top_k": 3}).to_string());
                        assert_eq!(st, 200, "{body}");
                        let v = parse(&body);
                        for (k, w) in want_img.iter().enumerate() {
                            assert_same_top(&v["predictions"][k]["top"], w, "image list");
                        }
                        let bytes = std::fs::read(&b.images[i]).unwrap();
                        let (st, _, body) = post_multipart(url, &[("model", b"img"), ("top_k", b"3"), ("file", &bytes)]);
                        assert_eq!(st, 200, "{body}");
                        assert_same_top(&parse(&body)["predictions"][0]["top"], &want_img[i], "upload");
                        let (st, _, body) = post_json(url, &json!({"model": "txt", "inputs": texts, "top_k": 2}).to_string());
                        assert_eq!(st, 200, "{body}");
                        let v = parse(&body);
                        for (k, w) in want_txt.iter().enumerate() {
                            assert_same_top(&v["predictions"][k]["top"], w, "texts");
                        }
                        n += 4;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
    });
    let (st, metrics) = get(&s.url("/metrics"), None);
    assert_eq!(st, 200);
    assert!(metrics.contains(&format!("headstart_requests_total{{route=\"/v1/predict\",status=\"200\"}} {sent}")), "{metrics}");
    assert!(metrics.contains("# TYPE headstart_request_duration_seconds histogram"), "{metrics}");
    assert!(metrics.contains("headstart_batch_size_bucket{model=\"img\",le=\"4\"}"), "{metrics}");
    assert!(metrics.contains("headstart_queue_depth{model=\"txt\"} 0"), "{metrics}");
    // Batches never exceed --max-batch: every image batch is within the le="4" bucket.
    let count = |name: &str| metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).unwrap().parse::<u64>().unwrap();
    assert_eq!(count("headstart_batch_size_bucket{model=\"img\",le=\"4\"}"), count("headstart_batch_size_count{model=\"img\"}"));
    // Without a model name, several bundles are ambiguous.
    let (st, _, body) = post_json(&url, &json!({"inputs": ["x"]}).to_string());
    error_of(st, &body, 400, "model");
    let (st, _, body) = post_json(&url, &json!({"model": "nope", "inputs": ["x"]}).to_string());
    error_of(st, &body, 404, "model");
    assert_eq!(get(&s.url("/nowhere"), None).0, 404);
}

/// A PNG whose header declares `w × h` pixels (the data is a real 28 × 28 image's).
fn declared_png(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut png = std::fs::read(&bundles().images[0]).unwrap();
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

#[test]
fn each_limit_answers_with_a_json_error_naming_the_field() {
    let b = bundles();
    let (img, txt) = (format!("img={}", b.image.display()), format!("txt={}", b.text.display()));
    let s = Server::start(&[&img, &txt, "--addr", "127.0.0.1:0", "--max-body-bytes", "20000", "--max-text-chars", "40", "--max-inputs", "3"], &[]);
    let url = s.url("/v1/predict");
    let ok = b64(&b.images[0]);
    // Body size, JSON and multipart.
    let big = "A".repeat(30_000);
    let (st, _, body) = post_json(&url, &json!({"model": "img", "inputs": [big]}).to_string());
    error_of(st, &body, 413, "body");
    let (st, _, body) = post_multipart(&url, &[("model", b"img"), ("file", big.as_bytes())]);
    error_of(st, &body, 413, "body");
    // The decoded-pixel cap, from the header (400 Mpx declared in a few hundred bytes).
    let bomb = base64::engine::general_purpose::STANDARD.encode(declared_png(20_000, 20_000));
    let (st, _, body) = post_json(&url, &json!({"model": "img", "inputs": [ok, bomb]}).to_string());
    error_of(st, &body, 413, "inputs[1]");
    assert!(body.contains("pixel cap"), "{body}");
    // Text length.
    let (st, _, body) = post_json(&url, &json!({"model": "txt", "inputs": ["short", "x".repeat(41)]}).to_string());
    error_of(st, &body, 413, "inputs[1]");
    let (st, _, body) = post_json(&url, &json!({"model": "txt", "inputs": ["x".repeat(40)]}).to_string());
    assert_eq!(st, 200, "{body}");
    // Inputs per request.
    let (st, _, body) = post_json(&url, &json!({"model": "txt", "inputs": ["a", "b", "c", "d"]}).to_string());
    error_of(st, &body, 413, "inputs");
    // Malformed requests: 400 naming the field.
    let (st, _, body) = post_json(&url, "{\"model\": \"img\", \"inputs\": [");
    error_of(st, &body, 400, "body");
    let (st, _, body) = post_json(&url, &json!({"model": "img", "inputs": [ok, "not*base64"]}).to_string());
    error_of(st, &body, 400, "inputs[1]");
    let (st, _, body) =
        post_json(&url, &json!({"model": "img", "inputs": [base64::engine::general_purpose::STANDARD.encode(b"plain text, not an image")]}).to_string());
    error_of(st, &body, 400, "inputs[0]");
    let (st, _, body) = post_json(&url, &json!({"model": "img", "inputs": ok}).to_string());
    error_of(st, &body, 400, "inputs");
    let (st, _, body) = post_json(&url, &json!({"model": "img", "inputs": [ok], "top_k": 0}).to_string());
    error_of(st, &body, 400, "top_k");
    let (st, _, body) = post_json(&url, &json!({"model": "txt", "inputs": [7]}).to_string());
    error_of(st, &body, 400, "inputs[0]");
    let (st, _, body) = post_json(&url, &json!({"model": "img"}).to_string());
    error_of(st, &body, 400, "inputs");
    // The server is still well after all that.
    let (st, _, body) = post_json(&url, &json!({"model": "img", "inputs": [ok]}).to_string());
    assert_eq!(st, 200, "{body}");
}

#[test]
fn full_queue_gets_503_with_retry_after_and_slow_requests_time_out() {
    let b = bundles();
    let img = format!("img={}", b.image.display());
    let s = Server::start(
        &[&img, "--addr", "127.0.0.1:0", "--queue-size", "1", "--max-batch", "1", "--threads", "1", "--timeout-ms", "1000"],
        &[("HEADSTART_FAULT", "serve-delay-ms:2500")],
    );
    let url = s.url("/v1/predict");
    let req = json!({"inputs": [b64(&b.images[0])]}).to_string();
    std::thread::scope(|sc| {
        // A: taken by the worker at once, which then takes 2.5 s: past the 1 s timeout.
        let a = sc.spawn(|| post_json(&url, &req));
        std::thread::sleep(Duration::from_millis(300));
        // B: waits in the queue (size 1), also past the timeout.
        let bq = sc.spawn(|| post_json(&url, &req));
        std::thread::sleep(Duration::from_millis(300));
        // C: the queue is full.
        let (st, retry, body) = post_json(&url, &req);
        error_of(st, &body, 503, "");
        assert_eq!(retry.as_deref(), Some("1"));
        for h in [a, bq] {
            let (st, _, body) = h.join().unwrap();
            assert_eq!(st, 504, "{body}");
            assert_eq!(parse(&body)["error"]["code"], "timeout");
        }
    });
}

#[test]
fn bearer_key_is_required_when_configured() {
    let b = bundles();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "s3cret-token\n").unwrap();
    let s = Server::start(&[b.text.to_str().unwrap(), "--addr", "127.0.0.1:0", "--api-key-file", key.to_str().unwrap()], &[]);
    assert_eq!(get(&s.url("/healthz"), None).0, 200);
    assert_eq!(get(&s.url("/readyz"), None).0, 200);
    for k in [None, Some("wrong"), Some("s3cret-toke"), Some("s3cret-token-")] {
        let (st, body) = get(&s.url("/v1/models"), k);
        assert_eq!(st, 401, "{k:?}: {body}");
        assert_eq!(parse(&body)["error"]["code"], "unauthorized");
        assert_eq!(get(&s.url("/metrics"), k).0, 401);
    }
    assert_eq!(get(&s.url("/v1/models"), Some("s3cret-token")).0, 200);
    let post = |k: Option<&str>| {
        let mut r = ureq::post(&s.url("/v1/predict")).set("Content-Type", "application/json");
        if let Some(k) = k {
            r = r.set("Authorization", &format!("Bearer {k}"));
        }
        answer(r.send_string(&json!({"inputs": ["good film"]}).to_string())).0
    };
    assert_eq!(post(None), 401);
    assert_eq!(post(Some("s3cret-token")), 200);
    // The name defaults to the run folder's.
    assert_eq!(parse(&get(&s.url("/v1/models"), Some("s3cret-token")).1)["models"][0]["name"], "text_run");
}

#[test]
fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let b = bundles();
    let img = format!("img={}", b.image.display());
    let mut s = Server::start(&[&img, "--addr", "127.0.0.1:0"], &[("HEADSTART_FAULT", "serve-delay-ms:1500")]);
    let url = s.url("/v1/predict");
    let req = json!({"inputs": [b64(&b.images[0])]}).to_string();
    let h = std::thread::spawn(move || post_json(&url, &req));
    std::thread::sleep(Duration::from_millis(500));
    s.signal(libc::SIGTERM);
    let (st, _, body) = h.join().unwrap();
    assert_eq!(st, 200, "the request in flight is answered: {body}");
    let t = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", s.log.lock().unwrap());
    assert_eq!(get(&s.url("/healthz"), None).0, 0, "no longer listening");
}

#[test]
fn non_loopback_bind_without_key_warns_and_sigint_stops() {
    let b = bundles();
    let mut s = Server::start(&[b.text.to_str().unwrap(), "--addr", "0.0.0.0:0"], &[]);
    s.signal(libc::SIGINT);
    assert_eq!(s.child.wait().unwrap().code(), Some(0));
    std::thread::sleep(Duration::from_millis(100));
    let log = s.log.lock().unwrap().clone();
    assert!(log.contains("warning: listening on 0.0.0.0:0 without --api-key-file"), "{log}");
}

#[test]
fn precision_is_each_bundles_own_unless_asked_and_another_is_warned_about() {
    let b = bundles();
    let (img, txt) = (format!("img={}", b.image.display()), format!("txt={}", b.text.display()));
    let precisions =
        |s: &Server| -> Vec<Value> { parse(&get(&s.url("/v1/models"), None).1)["models"].as_array().unwrap().iter().map(|m| m["precision"].clone()).collect() };
    let s = Server::start(&[&img, &txt, "--addr", "127.0.0.1:0"], &[]);
    assert_eq!(precisions(&s), vec![json!("fp32"), json!("fp32")]);
    assert!(!s.log.lock().unwrap().contains("warning"), "{}", s.log.lock().unwrap());
    drop(s);
    let s = Server::start(&[&img, &txt, "--addr", "127.0.0.1:0", "--precision", "bf16"], &[]);
    assert_eq!(precisions(&s), vec![json!("bf16"), json!("bf16")]);
    let log = s.log.lock().unwrap().clone();
    for name in ["img", "txt"] {
        assert!(log.contains(&format!("warning: {name}: the head was trained on fp32 features but bf16 was asked for")), "{log}");
    }
    // The answers come from the bf16 encoder: close to predict's fp32 ones, not equal.
    let (st, _, body) = post_json(&s.url("/v1/predict"), &json!({"model": "img", "inputs": [b64(&b.images[0])], "top_k": 3}).to_string());
    assert_eq!(st, 200, "{body}");
    let o = headstart(&["predict", b.image.to_str().unwrap(), "--top-k", "3", "--json", "--no-cache", b.images[0].to_str().unwrap()]);
    let want = &parse(&String::from_utf8_lossy(&o.stdout))["predictions"][0]["top"];
    let got = &parse(&body)["predictions"][0]["top"];
    assert_ne!(got, want);
    assert_eq!(got[0][0], want[0][0]);
    assert!((got[0][1].as_f64().unwrap() - want[0][1].as_f64().unwrap()).abs() < 0.1, "{got} {want}");
}

fn fixture(part: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(part)
}

/// An audio bundle (the tiny random Whisper, clips capped at 2 s) and a CLIP bundle (the tiny
/// CLIP on coloured shapes), trained once for the tests below, with the inputs they are asked
/// about: clips in every container symphonia reads (mono, stereo and 3 channels; 16, 22.05 and
/// 44.1 kHz), and held-out shapes.
struct MoreBundles {
    dir: tempfile::TempDir,
    audio: PathBuf,
    clip: PathBuf,
    clips: Vec<PathBuf>,
    shapes: Vec<PathBuf>,
}

fn more_bundles() -> &'static MoreBundles {
    static B: OnceLock<MoreBundles> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("sounds");
        common::write_audio_set(&data, 4, 0);
        let run = dir.path().join("audio_run");
        let whisper = fixture("whisper_tiny_random");
        let o = headstart(&[
            "train",
            "--data",
            data.to_str().unwrap(),
            "--model",
            whisper.to_str().unwrap(),
            "--max-seconds",
            "2",
            "--out",
            run.to_str().unwrap(),
            "--no-cache",
            "--progress",
            "none",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let crun = dir.path().join("clip_run");
        let (model, pool) = (fixture("clip/shapes/model"), fixture("clip/shapes/pool"));
        let o = headstart(&[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            pool.to_str().unwrap(),
            "--out",
            crun.to_str().unwrap(),
            "--no-cache",
            "--progress",
            "none",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut clips = vec![];
        for (class, k, rate) in [("hum", 20, 16000), ("whistle", 21, 44100), ("hiss", 22, 16000)] {
            let p = dir.path().join(format!("{class}{k}.wav"));
            common::wav(&p, &common::sound(class, k, rate), rate);
            clips.push(p);
        }
        for f in ["speech.wav", "gen/flac_16_stereo.flac", "gen/vorbis_stereo.ogg", "gen/mp3_stereo.mp3", "gen/pcm_24_3ch.wav"] {
            clips.push(fixture("audio").join(f));
        }
        let test = fixture("clip/shapes/test");
        let shapes =
            ["red_circle", "blue_square", "green_triangle", "blue_cross", "red_square", "green_circle"].iter().map(|c| test.join(c).join("00.png")).collect();
        MoreBundles { audio: run.join("bundle"), clip: crun.join("bundle"), clips, shapes, dir }
    })
}

/// What `headstart predict --json` says of `files`: each file's top labels, and the skipped.
fn predicted(bundle: &Path, files: &[PathBuf], top_k: &str) -> (Vec<Value>, Vec<Value>) {
    predicted_with(bundle, files, top_k, &[])
}

/// [`predicted`] with more `predict` flags.
fn predicted_with(bundle: &Path, files: &[PathBuf], top_k: &str, flags: &[&str]) -> (Vec<Value>, Vec<Value>) {
    let mut args: Vec<&str> = vec!["predict", bundle.to_str().unwrap(), "--top-k", top_k, "--json", "--no-cache"];
    args.extend(flags);
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    let o = headstart(&args);
    let v = parse(&String::from_utf8_lossy(&o.stdout));
    let tops = v["predictions"].as_array().map(|a| a.iter().map(|p| p["top"].clone()).collect()).unwrap_or_default();
    (tops, v["skipped"].as_array().cloned().unwrap_or_default())
}

/// Every reply of a JSON or multipart request to `url` against the expected tops.
fn check_all(url: &str, model: &str, files: &[PathBuf], want: &[Value], what: &str) {
    let all: Vec<String> =
        files.iter().enumerate().map(|(i, p)| if i % 2 == 0 { b64(p) } else { format!("data:application/octet-stream;base64,{}", b64(p)) }).collect();
    let (st, _, body) = post_json(url, &json!({"model": model, "inputs": all, "top_k": 3}).to_string());
    assert_eq!(st, 200, "{what}: {body}");
    let v = parse(&body);
    assert_eq!(v["predictions"].as_array().unwrap().len(), want.len(), "{body}");
    for (k, w) in want.iter().enumerate() {
        assert_same_top(&v["predictions"][k]["top"], w, &format!("{what} list, {}", files[k].display()));
    }
    let bytes: Vec<Vec<u8>> = files.iter().take(2).map(|p| std::fs::read(p).unwrap()).collect();
    let (st, _, body) = post_multipart(url, &[("model", model.as_bytes()), ("top_k", b"3"), ("a", &bytes[0]), ("b", &bytes[1])]);
    assert_eq!(st, 200, "{what} upload: {body}");
    let v = parse(&body);
    for (k, w) in want.iter().take(2).enumerate() {
        assert_same_top(&v["predictions"][k]["top"], w, &format!("{what} upload"));
    }
}

#[test]
fn audio_and_clip_bundles_answer_concurrent_clients_as_predict_does() {
    let b = more_bundles();
    let (aud, clip) = (format!("aud={}", b.audio.display()), format!("clip={}", b.clip.display()));
    let s = Server::start(&[&aud, &clip, "--addr", "127.0.0.1:0", "--max-batch", "4", "--max-wait-ms", "20", "--threads", "2"], &[]);
    let models = parse(&get(&s.url("/v1/models"), None).1);
    let (a, c) = (&models["models"][0], &models["models"][1]);
    assert_eq!((&a["name"], &a["modality"], &a["encoder"]), (&json!("aud"), &json!("audio"), &json!("audio")), "{a}");
    assert_eq!(a["backbone"], json!(fixture("whisper_tiny_random").display().to_string()));
    assert_eq!(a["labels"], json!(["hiss", "hum", "whistle"]));
    let pre = &a["preprocessing"];
    assert_eq!((&pre["sample_rate"], &pre["feature_extractor"], &pre["max_seconds"]), (&json!(16000), &json!("log-mel 80"), &json!(2.0)), "{pre}");
    assert_eq!((&pre["family"], &pre["layer"], &pre["window_seconds"]), (&json!("whisper"), &Value::Null, &json!(30)), "{pre}");
    assert_eq!(pre["audio_window"], json!("full"), "{pre}");
    assert!(pre["pooling"].as_str().is_some_and(|p| p.contains("mean")), "{pre}");
    assert_eq!((&c["name"], &c["modality"], &c["encoder"]), (&json!("clip"), &json!("image"), &json!("clip")), "{c}");
    assert_eq!(c["backbone"], json!(fixture("clip/shapes/model").display().to_string()));
    assert_eq!(c["labels"].as_array().unwrap().len(), 16);
    assert_eq!(c["preprocessing"]["size"], 32, "{c}");
    assert!((c["preprocessing"]["mean"][0].as_f64().unwrap() - 0.48145467).abs() < 1e-6, "{c}");
    assert_eq!((&a["precision"], &c["precision"]), (&json!("fp32"), &json!("fp32")));

    let (want_audio, skipped) = predicted(&b.audio, &b.clips, "3");
    assert!(skipped.is_empty() && want_audio.len() == b.clips.len(), "{skipped:?}");
    let (want_clip, skipped) = predicted(&b.clip, &b.shapes, "3");
    assert!(skipped.is_empty() && want_clip.len() == b.shapes.len(), "{skipped:?}");
    // The answers are not all alike (a constant model would pass trivially).
    assert!(want_audio.iter().any(|t| t[0][0] != want_audio[0][0][0]), "{want_audio:?}");
    assert!(want_clip.iter().any(|t| t[0][0] != want_clip[0][0][0]), "{want_clip:?}");

    let url = s.url("/v1/predict");
    std::thread::scope(|sc| {
        for client in 0..6 {
            let (url, want_audio, want_clip) = (&url, &want_audio, &want_clip);
            sc.spawn(move || {
                for round in 0..2 {
                    check_all(url, "aud", &b.clips, want_audio, "audio");
                    check_all(url, "clip", &b.shapes, want_clip, "clip");
                    let i = (client + round) % b.clips.len();
                    let (st, _, body) = post_json(url, &json!({"model": "aud", "inputs": [b64(&b.clips[i])], "top_k": 3}).to_string());
                    assert_eq!(st, 200, "{body}");
                    assert_same_top(&parse(&body)["predictions"][0]["top"], &want_audio[i], "single clip");
                }
            });
        }
    });
    let (_, metrics) = get(&s.url("/metrics"), None);
    let count = |name: &str| metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).unwrap().parse::<u64>().unwrap();
    for m in ["aud", "clip"] {
        assert_eq!(count(&format!("headstart_batch_size_bucket{{model=\"{m}\",le=\"4\"}}")), count(&format!("headstart_batch_size_count{{model=\"{m}\"}}")));
    }
}

/// A WAV header declaring `seconds` of 16 kHz audio over a few real samples.
fn declared_wav(seconds: u32) -> Vec<u8> {
    let mut w = common::wav_bytes(&common::sound("hum", 1, 16000)[..1600], 16000);
    let data = seconds * 16000 * 2;
    w[4..8].copy_from_slice(&(36 + data).to_le_bytes());
    w[40..44].copy_from_slice(&data.to_le_bytes());
    w
}

#[test]
fn audio_inputs_are_refused_with_json_errors_naming_the_input() {
    let b = more_bundles();
    let aud = format!("aud={}", b.audio.display());
    let s = Server::start(&[&aud, "--addr", "127.0.0.1:0", "--max-body-bytes", "300000"], &[]);
    let url = s.url("/v1/predict");
    let ok = b64(&b.clips[0]);
    let enc = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    // Malformed base64, and bytes no decoder reads.
    let (st, _, body) = post_json(&url, &json!({"inputs": [ok, ok, "UklGR*not base64"]}).to_string());
    error_of(st, &body, 400, "inputs[2]");
    assert!(body.contains("base64"), "{body}");
    let (st, _, body) = post_json(&url, &json!({"inputs": [ok, enc(b"RIFF\x24\x00\x00\x00WAVEfmt nonsense")]}).to_string());
    error_of(st, &body, 400, "inputs[1]");
    assert!(body.contains("cannot read the audio") && body.contains("not a readable audio file"), "{body}");
    let (st, _, body) = post_multipart(&url, &[("file", b"plain text, not audio")]);
    error_of(st, &body, 400, "inputs[0]");
    let (st, _, body) = post_json(&url, &json!({"inputs": [{"audio": ok}]}).to_string());
    error_of(st, &body, 400, "inputs[0]");
    // All silent: left out by predict, refused here.
    let (st, _, body) = post_json(&url, &json!({"inputs": [enc(&common::wav_bytes(&[0.0; 16000], 16000))]}).to_string());
    error_of(st, &body, 400, "inputs[0]");
    assert!(body.contains("all silent"), "{body}");
    // Over-long: the bundle's 2 s cap, the one predict applies, with predict's very reason;
    // from the header where it declares the length (an hour in a few kB), else while decoding.
    let long = b.dir.path().join("long.wav");
    common::wav(&long, &common::sound("hum", 3, 16000).repeat(5)[..48000], 16000);
    let hour = b.dir.path().join("hour.wav");
    std::fs::write(&hour, declared_wav(3600)).unwrap();
    let ogg = fixture("audio/en_B.ogg");
    let (tops, skipped) = predicted(&b.audio, &[long.clone(), hour.clone(), ogg.clone()], "1");
    assert!(tops.is_empty() && skipped.len() == 3, "{skipped:?}");
    for (i, f) in [&long, &hour, &ogg].iter().enumerate() {
        let reason = skipped[i]["reason"].as_str().unwrap();
        assert!(reason.starts_with("over-long: "), "{reason}");
        let (st, _, body) = post_json(&url, &json!({"inputs": [ok, b64(f)]}).to_string());
        error_of(st, &body, 413, "inputs[1]");
        assert_eq!(parse(&body)["error"]["message"], json!(reason), "{}", f.display());
        let (st, _, body) = post_multipart(&url, &[("f", &std::fs::read(f).unwrap())]);
        error_of(st, &body, 413, "inputs[0]");
    }
    assert!(skipped[0]["reason"].as_str().unwrap().contains("3.0 s") && skipped[1]["reason"].as_str().unwrap().contains("3600.0 s"), "{skipped:?}");
    // The body limit, as for every model.
    let big = std::fs::read(fixture("audio/gen/pcm_24_3ch.wav")).unwrap().repeat(3);
    let (st, _, body) = post_multipart(&url, &[("f", &big)]);
    error_of(st, &body, 413, "body");
    // Still well, and an audio model does not take text.
    let (st, _, body) = post_json(&url, &json!({"inputs": [ok], "top_k": 1}).to_string());
    assert_eq!(st, 200, "{body}");
    let (st, _, body) = post_json(&url, &json!({"inputs": ["aGVsbG8="]}).to_string());
    error_of(st, &body, 400, "inputs[0]");
}

#[test]
fn audio_bundles_run_at_fp32_and_clip_bundles_at_the_precision_asked_for() {
    let b = more_bundles();
    let (aud, clip) = (format!("aud={}", b.audio.display()), format!("clip={}", b.clip.display()));
    let s = Server::start(&[&aud, &clip, "--addr", "127.0.0.1:0", "--precision", "bf16"], &[]);
    let models = parse(&get(&s.url("/v1/models"), None).1);
    assert_eq!((&models["models"][0]["precision"], &models["models"][1]["precision"]), (&json!("fp32"), &json!("bf16")));
    let log = s.log.lock().unwrap().clone();
    assert!(log.contains("warning: aud: audio encoders run in fp32 only; --precision bf16 does not apply"), "{log}");
    // The CLIP head was trained on fp32 embeddings: running its tower at bf16 is warned about.
    assert!(log.contains("warning: clip: the head was trained on fp32 features but bf16 was asked for"), "{log}");
    // And the answers are predict's at the same precision.
    let (want, _) = predicted_with(&b.clip, &b.shapes[..1], "3", &["--precision", "bf16"]);
    let (st, _, body) = post_json(&s.url("/v1/predict"), &json!({"model": "clip", "inputs": [b64(&b.shapes[0])], "top_k": 3}).to_string());
    assert_eq!(st, 200, "{body}");
    assert_same_top(&parse(&body)["predictions"][0]["top"], &want[0], "clip at bf16");
}
