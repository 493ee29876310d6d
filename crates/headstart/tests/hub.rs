//! Hub downloads against a local server on 127.0.0.1 that serves the hub's file layout
//! (`/api/models/{id}/revision/{rev}`, `/{id}/resolve/{rev}/{file}` with ranges), and the
//! resulting cache layout (`refs/`, `snapshots/`, `blobs/`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use headstart::weights::{hub, save_safetensors, Weights};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

struct Server {
    url: String,
    resolves: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `files` as repo `repo_id` at COMMIT, for at most 60 s.
fn serve(repo_id: &'static str, files: HashMap<String, Vec<u8>>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let resolves = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, s) = (resolves.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("range") {
                        range = v.trim().strip_prefix("bytes=").map(str::to_string);
                    }
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut out = stream;
            let listing = format!("/api/models/{repo_id}/revision/main");
            let resolve = format!("/{repo_id}/resolve/main/");
            if path == listing {
                let siblings: Vec<_> = files.keys().map(|f| serde_json::json!({"rfilename": f})).collect();
                let body = serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string();
                let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            } else if let Some(data) = path.strip_prefix(&resolve).and_then(|f| files.get(f)) {
                r.fetch_add(1, Ordering::SeqCst);
                let etag = format!("{:x}", data.len() * 7919 + path.len());
                let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
                    Some((a, b)) => (a.parse().unwrap_or(0), b.parse().unwrap_or(data.len() - 1).min(data.len() - 1)),
                    None => (0, data.len() - 1),
                };
                let body = &data[start..=end];
                let _ = write!(
                    out,
                    "HTTP/1.1 206 Partial Content\r\nx-repo-commit: {COMMIT}\r\netag: \"{etag}\"\r\ncontent-range: bytes {start}-{end}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    data.len(),
                    body.len()
                );
                let _ = out.write_all(body);
            } else {
                let _ = write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        }
    });
    Server { url, resolves, stop, thread: Some(thread) }
}

#[test]
fn download_fills_the_hub_cache_and_reuses_it() {
    let dir = fixture("vit_tiny");
    let files: HashMap<String, Vec<u8>> = ["config.json", "model.safetensors"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .chain([("README.md".to_string(), b"# tiny".to_vec())])
        .collect();
    let server = serve("tiny/vit", files);
    let cache = tempfile::tempdir().unwrap();

    let snap = hub::download(cache.path(), "tiny/vit", "main", Some(&server.url)).unwrap();
    assert_eq!(snap, cache.path().join("models--tiny--vit/snapshots").join(COMMIT));
    assert_eq!(std::fs::read_to_string(cache.path().join("models--tiny--vit/refs/main")).unwrap().trim(), COMMIT);
    assert!(snap.join("config.json").is_file());
    assert!(!snap.join("README.md").exists(), "only config and weights are fetched");
    assert_eq!(std::fs::read(snap.join("model.safetensors")).unwrap(), std::fs::read(dir.join("model.safetensors")).unwrap());
    assert_eq!(hub::resolve_snapshot(cache.path(), "tiny/vit", "main").unwrap(), snap);
    assert_eq!(hub::resolve_snapshot(cache.path(), "tiny/vit", COMMIT).unwrap(), snap);
    let w = Weights::open(&snap).unwrap();
    assert_eq!(w.names().len(), Weights::open(&dir).unwrap().names().len());

    // A second download finds everything in the cache and fetches no file again.
    let fetched = server.resolves.load(Ordering::SeqCst);
    assert!(fetched >= 2);
    hub::download(cache.path(), "tiny/vit", "main", Some(&server.url)).unwrap();
    assert_eq!(server.resolves.load(Ordering::SeqCst), fetched);
}

#[test]
fn sharded_safetensors_download_and_load_as_one() {
    let dir = fixture("vit_tiny");
    let whole = Weights::open(&dir).unwrap();
    let names = whole.names().to_vec();
    let (a, b) = names.split_at(names.len() / 2);
    let tmp = tempfile::tempdir().unwrap();
    let mut files = HashMap::new();
    let mut map = serde_json::Map::new();
    for (i, part) in [a, b].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let tensors: Vec<_> = part.iter().map(|n| (n.clone(), whole.tensor(n).unwrap())).collect();
        let p = tmp.path().join(&file);
        save_safetensors(&p, &tensors).unwrap();
        files.insert(file.clone(), std::fs::read(&p).unwrap());
        for n in part.iter() {
            map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map}).to_string();
    files.insert("model.safetensors.index.json".into(), index.into_bytes());
    files.insert("config.json".into(), std::fs::read(dir.join("config.json")).unwrap());
    let server = serve("tiny/sharded", files);
    let cache = tempfile::tempdir().unwrap();
    let snap = hub::download(cache.path(), "tiny/sharded", "main", Some(&server.url)).unwrap();
    let sharded = Weights::open(&snap).unwrap();
    assert_eq!(sharded.files().len(), 2);
    let mut got = sharded.names().to_vec();
    got.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(got, want);
    for n in &names {
        assert!(sharded.tensor(n).unwrap().equal(&whole.tensor(n).unwrap()), "{n}");
    }
}

#[test]
fn hub_cache_errors_are_clear() {
    let cache = tempfile::tempdir().unwrap();
    let e = hub::resolve_snapshot(cache.path(), "org/absent", "main").unwrap_err().to_string();
    assert!(e.contains("org/absent") && e.contains("not in the hub cache"), "{e}");
    let e = hub::resolve_snapshot(cache.path(), "../etc", "main").unwrap_err().to_string();
    assert!(e.contains("not a valid hub repo id"), "{e}");
    // Refused at once when nothing listens: no hang.
    let t = Instant::now();
    let e = hub::download(cache.path(), "org/absent", "main", Some("http://127.0.0.1:9")).unwrap_err().to_string();
    assert!(e.contains("org/absent"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn text_model_downloads_with_its_tokenizer_and_loads() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/text/roberta_tiny");
    let files: HashMap<String, Vec<u8>> = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .chain([("README.md".to_string(), b"# tiny".to_vec())])
        .collect();
    let server = serve("tiny/roberta", files);
    let cache = tempfile::tempdir().unwrap();
    let snap = hub::download(cache.path(), "tiny/roberta", "main", Some(&server.url)).unwrap();
    for f in ["config.json", "model.safetensors", "vocab.json", "merges.txt"] {
        assert!(snap.join(f).is_file(), "{f} not fetched");
    }
    let opts = headstart::text::TextModelOptions::default();
    let (a, b) = (headstart::text::TextModel::load(&snap, &opts).unwrap(), headstart::text::TextModel::load(&dir, &opts).unwrap());
    assert_eq!((&a.weights_sha256, &a.tokenizer.sha256), (&b.weights_sha256, &b.tokenizer.sha256));
    let texts = vec!["the movie was great".to_string()];
    assert_eq!(a.tokenizer.batch(&texts, None).unwrap().ids, b.tokenizer.batch(&texts, None).unwrap().ids);
}
