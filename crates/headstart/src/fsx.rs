//! File-system helpers: writes that never leave a half-written file behind.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_replace(path, bytes, true)
}

/// Like [`atomic_write`] without the syncs: for caches, whose readers detect and recompute a
/// damaged entry.
pub fn cache_write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_replace(path, bytes, false)
}

fn write_replace(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| Error::input(path, "not a file path"))?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.tmp-{}-{seq}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        if let Some(e) = injected_disk_full() {
            return Err(e);
        }
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if sync {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Test hook for the fault tests, nothing else: with `HEADSTART_FAULT=disk-full-after:N` in the
/// environment, every write through this module after the first `N` of the process fails as on
/// a full disk. Any other value, or none, changes nothing.
fn injected_disk_full() -> Option<std::io::Error> {
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n: usize = std::env::var("HEADSTART_FAULT").ok()?.strip_prefix("disk-full-after:")?.parse().ok()?;
    let done = WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    (done >= n).then(|| std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (injected by HEADSTART_FAULT)"))
}
