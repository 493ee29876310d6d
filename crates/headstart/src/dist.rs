//! Data-parallel training over libtorch's own c10d (a small C++ shim, `csrc/dist_shim.cpp`).
//!
//! - Launch: the `torchrun` variables `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE` and
//!   `LOCAL_RANK`; a run is distributed when `WORLD_SIZE` > 1. Rank 0 serves a `c10d::TCPStore`
//!   at the master address (under `torchrun`, whose agent serves it already,
//!   `TORCHELASTIC_USE_AGENT_STORE=True`, rank 0 only connects); every rank connects to it, and
//!   the process group rendezvouses through it.
//! - Process group: Gloo (CPU tensors). `HEADSTART_DIST_BACKEND=nccl` asks for NCCL, which a
//!   build has only when made with `HEADSTART_NCCL=1` (CUDA and NCCL headers needed).
//! - Collectives are bucketed: tensors are flattened into buffers of at most
//!   [`BUCKET_BYTES`] (one kind per buffer), all started together, then copied back.
//! - A lost rank: every rank bumps a heartbeat counter in the store several times a second.
//!   When a collective fails (a peer's connection closed, or the timeout passed), the counters
//!   are read twice a moment apart; ranks whose counter stood still are named in the error. A
//!   store that cannot be reached means rank 0, which serves it, is gone.
//! - `HEADSTART_DIST_TIMEOUT` (seconds, default 1800) bounds rendezvous and every collective.
//! - c10's log level follows `TORCH_CPP_LOG_LEVEL` as in PyTorch; unset, only errors show (a
//!   lost peer otherwise makes c10d print a C++ backtrace per broken socket).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Largest flattened buffer per collective (the default bucket size of PyTorch's DDP).
pub const BUCKET_BYTES: usize = 25 << 20;
const HEARTBEAT: Duration = Duration::from_millis(250);
const PG_PREFIX: &str = "headstart/pg";

extern "C" {
    fn hs_free_error(e: *mut c_char);
    fn hs_init_logging();
    fn hs_store_new(host: *const c_char, port: c_int, world: c_int, is_server: c_int, timeout_ms: i64, out: *mut *mut c_void) -> *mut c_char;
    fn hs_store_free(s: *mut c_void);
    fn hs_store_add(s: *mut c_void, key: *const c_char, delta: i64, value: *mut i64) -> *mut c_char;
    fn hs_group_gloo_new(s: *mut c_void, prefix: *const c_char, rank: c_int, world: c_int, timeout_ms: i64, out: *mut *mut c_void) -> *mut c_char;
    #[cfg(headstart_nccl)]
    fn hs_group_nccl_new(s: *mut c_void, prefix: *const c_char, rank: c_int, world: c_int, timeout_ms: i64, out: *mut *mut c_void) -> *mut c_char;
    fn hs_group_free(g: *mut c_void);
    fn hs_group_allreduce_sum(g: *mut c_void, ts: *const *mut c_void, n: usize, timeout_ms: i64) -> *mut c_char;
    fn hs_group_broadcast(g: *mut c_void, ts: *const *mut c_void, n: usize, root: c_int, timeout_ms: i64) -> *mut c_char;
    fn hs_group_barrier(g: *mut c_void, timeout_ms: i64) -> *mut c_char;
    fn hs_sync_batch_norm(
        g: *mut c_void,
        x: *mut c_void,
        w: *mut c_void,
        b: *mut c_void,
        rm: *mut c_void,
        rv: *mut c_void,
        momentum: f64,
        eps: f64,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
}

/// The process group (address) and timeout synchronised BatchNorm uses while a run trains
/// with it, and the first failure it met (reported by [`Group::check_sync_bn`]).
static SYNC_BN: std::sync::Mutex<(Option<(usize, i64)>, Option<String>)> = std::sync::Mutex::new((None, None));

/// Training-mode BatchNorm over every rank's batch when a data-parallel run synchronises it
/// (else `None`: the caller normalises locally). `momentum` as in `tch` (0.1 by default).
///
/// A failed collective cannot be returned through a model's forward pass: it is recorded for
/// the training loop, and the output is NaN so that nothing is learnt from it.
pub fn sync_batch_norm(x: &Tensor, bn: &tch::nn::BatchNorm, momentum: f64, eps: f64) -> Option<Tensor> {
    let (g, ms) = SYNC_BN.lock().ok()?.0?;
    let ptr = |t: Option<&Tensor>| t.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut c_void);
    let mut out = std::ptr::null_mut();
    // SAFETY: the group outlives the registration; every tensor pointer is live for the call;
    // `out` receives a tensor allocated by the shim, owned from here on.
    let r = check(unsafe {
        hs_sync_batch_norm(
            g as *mut c_void,
            ptr(Some(x)),
            ptr(bn.ws.as_ref()),
            ptr(bn.bs.as_ref()),
            ptr(Some(&bn.running_mean)),
            ptr(Some(&bn.running_var)),
            momentum,
            eps,
            ms,
            &mut out,
        )
    });
    match r {
        Ok(()) => Some(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) }),
        Err(m) => {
            if let Ok(mut s) = SYNC_BN.lock() {
                s.1.get_or_insert(m);
            }
            Some(x.full_like(f64::NAN))
        }
    }
}

/// While alive, synchronised BatchNorm uses the group that made it.
pub struct SyncBnGuard(());

impl Drop for SyncBnGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = SYNC_BN.lock() {
            *s = (None, None);
        }
    }
}

/// Takes ownership of a shim error message.
fn check(e: *mut c_char) -> std::result::Result<(), String> {
    if e.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string from malloc, freed here once.
    let m = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
    unsafe { hs_free_error(e) };
    Err(m)
}

/// Where this process stands in a distributed launch (the `torchrun` variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn num<T: std::str::FromStr>(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<T>> {
    match get(name).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| Error::Usage(format!("environment variable `{name}`: `{v}` is not a valid number"))),
    }
}

impl Env {
    /// The launch variables; `None` when `WORLD_SIZE` is unset or 1 (a single process).
    pub fn from_env() -> Result<Option<Env>> {
        Env::from_lookup(&env_var)
    }

    /// [`Env::from_env`] over any source of variables.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Env>> {
        let world = num::<usize>(get, "WORLD_SIZE")?.unwrap_or(1);
        if world <= 1 {
            return Ok(None);
        }
        let need = |name: &str| Error::Usage(format!("WORLD_SIZE={world} but environment variable `{name}` is not set (set it as torchrun does)"));
        let rank = num::<usize>(get, "RANK")?.ok_or_else(|| need("RANK"))?;
        if rank >= world {
            return Err(Error::Usage(format!("environment variable `RANK`={rank} must be below WORLD_SIZE={world}")));
        }
        let local_rank = num::<usize>(get, "LOCAL_RANK")?.unwrap_or(0);
        let master_addr = get("MASTER_ADDR").map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).ok_or_else(|| need("MASTER_ADDR"))?;
        let master_port = num::<u16>(get, "MASTER_PORT")?.ok_or_else(|| need("MASTER_PORT"))?;
        Ok(Some(Env { rank, world, local_rank, master_addr, master_port }))
    }
}

/// Whether this process writes the run's files: a single process, or rank 0 of a launch.
pub fn is_primary() -> bool {
    let n = |name| num::<usize>(&env_var, name).ok().flatten();
    n("WORLD_SIZE").unwrap_or(1) <= 1 || n("RANK").unwrap_or(0) == 0
}

fn timeout_from_env() -> Result<Duration> {
    let s = num::<f64>(&env_var, "HEADSTART_DIST_TIMEOUT")?.unwrap_or(1800.0);
    if !(s.is_finite() && s > 0.0) {
        return Err(Error::Usage(format!("environment variable `HEADSTART_DIST_TIMEOUT`: {s} must be a positive number of seconds")));
    }
    Ok(Duration::from_secs_f64(s))
}

/// A store handle shared with the heartbeat thread (c10d's TCPStore serialises its calls).
struct StoreHandle(*mut c_void);
// SAFETY: the TCPStore client guards every operation with its own mutex.
unsafe impl Send for StoreHandle {}
unsafe impl Sync for StoreHandle {}

impl StoreHandle {
    fn add(&self, key: &str, delta: i64) -> std::result::Result<i64, String> {
        let k = CString::new(key).map_err(|e| e.to_string())?;
        let mut v = 0i64;
        // SAFETY: a live store, a valid C string and an out pointer to a local.
        check(unsafe { hs_store_add(self.0, k.as_ptr(), delta, &mut v) })?;
        Ok(v)
    }
}

impl Drop for StoreHandle {
    fn drop(&mut self) {
        // SAFETY: created by hs_store_new, freed once.
        unsafe { hs_store_free(self.0) };
    }
}

fn beat_key(rank: usize) -> String {
    format!("headstart/alive/{rank}")
}

/// A joined process group: this rank's place in it, and its collectives.
pub struct Group {
    pub rank: usize,
    pub world: usize,
    timeout: Duration,
    store: Arc<StoreHandle>,
    pg: *mut c_void,
    stop: Arc<AtomicBool>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl Group {
    /// Joins the launch described by the environment; `None` for a single process.
    pub fn from_env() -> Result<Option<Group>> {
        match Env::from_env()? {
            None => Ok(None),
            Some(env) => Group::join(&env, timeout_from_env()?).map(Some),
        }
    }

    /// Rendezvous at the master's store (rank 0 serves it), then a Gloo process group.
    pub fn join(env: &Env, timeout: Duration) -> Result<Group> {
        let ms = timeout.as_millis() as i64;
        let (rank, world) = (env.rank, env.world);
        let host = CString::new(env.master_addr.as_str()).map_err(|_| Error::Usage("environment variable `MASTER_ADDR` holds a NUL byte".into()))?;
        // SAFETY: sets c10's log level; no arguments.
        unsafe { hs_init_logging() };
        // Under torchrun the agent already serves the store at the master address.
        let serve = rank == 0 && env_var("TORCHELASTIC_USE_AGENT_STORE").as_deref() != Some("True");
        let mut s = std::ptr::null_mut();
        // SAFETY: valid C string and out pointer; the shim reports failure as a message.
        check(unsafe { hs_store_new(host.as_ptr(), env.master_port as c_int, world as c_int, serve as c_int, ms, &mut s) }).map_err(|m| {
            Error::Distributed(format!(
                "rank {rank}: rendezvous at {}:{} with {world} ranks failed within {:?}: {m}",
                env.master_addr, env.master_port, timeout
            ))
        })?;
        let store = Arc::new(StoreHandle(s));
        let prefix = CString::new(PG_PREFIX).expect("no NUL");
        let mut pg = std::ptr::null_mut();
        let backend = env_var("HEADSTART_DIST_BACKEND").unwrap_or_else(|| "gloo".into());
        let make = match backend.as_str() {
            "gloo" => hs_group_gloo_new,
            #[cfg(headstart_nccl)]
            "nccl" => hs_group_nccl_new,
            #[cfg(not(headstart_nccl))]
            "nccl" => return Err(Error::Usage("HEADSTART_DIST_BACKEND=nccl, but this build has no NCCL (build with HEADSTART_NCCL=1)".into())),
            other => return Err(Error::Usage(format!("environment variable `HEADSTART_DIST_BACKEND`: `{other}` is not `gloo` or `nccl`"))),
        };
        // SAFETY: a live store; the group keeps its own reference to it.
        check(unsafe { make(store.0, prefix.as_ptr(), rank as c_int, world as c_int, ms, &mut pg) })
            .map_err(|m| Error::Distributed(format!("rank {rank}: creating the {backend} process group failed: {m}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let beat = {
            let (store, stop, key) = (store.clone(), stop.clone(), beat_key(rank));
            std::thread::Builder::new()
                .name("headstart-heartbeat".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) && store.add(&key, 1).is_ok() {
                        std::thread::sleep(HEARTBEAT);
                    }
                })
                .map_err(|e| Error::Distributed(format!("rank {rank}: cannot start the heartbeat thread: {e}")))?
        };
        Ok(Group { rank, world, timeout, store, pg, stop, beat: Some(beat) })
    }

    pub fn is_primary(&self) -> bool {
        self.rank == 0
    }

    /// Ranks other than this one whose heartbeat stood still (all of them but this one when
    /// the store, served by rank 0, cannot be reached: then rank 0 is named).
    fn lost_ranks(&self) -> Vec<usize> {
        let read = || (0..self.world).map(|r| self.store.add(&beat_key(r), 0)).collect::<std::result::Result<Vec<i64>, String>>();
        let Ok(first) = read() else { return vec![0] };
        std::thread::sleep(HEARTBEAT * 8);
        let Ok(second) = read() else { return vec![0] };
        (0..self.world).filter(|&r| r != self.rank && first[r] == second[r]).collect()
    }

    /// The error for a failed collective, naming the ranks found lost.
    pub fn failure(&self, what: &str, message: String) -> Error {
        let lost = self.lost_ranks().into_iter().filter(|&r| r != self.rank).collect::<Vec<_>>();
        let who = match lost.len() {
            0 => "no other rank stopped answering (a timeout, or a failure here)".to_string(),
            1 => format!("lost rank {}", lost[0]),
            _ => format!("lost ranks {}", lost.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")),
        };
        Error::Distributed(format!("rank {} of {}: {what} failed: {who} ({message})", self.rank, self.world, message = message.trim()))
    }

    fn ms(&self) -> i64 {
        self.timeout.as_millis() as i64
    }

    /// Makes training-mode BatchNorm (`models::vision::ConvBn`) synchronise over this group
    /// until the guard is dropped.
    pub fn sync_bn(&self) -> SyncBnGuard {
        if let Ok(mut s) = SYNC_BN.lock() {
            *s = (Some((self.pg as usize, self.ms())), None);
        }
        SyncBnGuard(())
    }

    /// The failure synchronised BatchNorm met since the last call, as an error naming the
    /// lost ranks.
    pub fn check_sync_bn(&self) -> Result<()> {
        let failed = SYNC_BN.lock().ok().and_then(|mut s| s.1.take());
        failed.map_or(Ok(()), |m| Err(self.failure("synchronised BatchNorm", m)))
    }

    /// The error for a failed step (the backward pass runs synchronised BatchNorm's
    /// collectives), naming the lost ranks.
    pub fn step_failure(&self, e: Error) -> Error {
        self.failure("a training step", e.to_string())
    }

    /// Sums each (contiguous) tensor in place over the ranks.
    pub fn allreduce_sum(&self, ts: &[Tensor], what: &str) -> Result<()> {
        let ptrs: Vec<*mut c_void> = ts.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        // SAFETY: the tensors outlive the call, which waits for every collective.
        check(unsafe { hs_group_allreduce_sum(self.pg, ptrs.as_ptr(), ptrs.len(), self.ms()) }).map_err(|m| self.failure(what, m))
    }

    /// Copies each (contiguous) tensor of rank `root` into the others' in place.
    pub fn broadcast(&self, ts: &[Tensor], root: usize, what: &str) -> Result<()> {
        let ptrs: Vec<*mut c_void> = ts.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        // SAFETY: as for allreduce_sum.
        check(unsafe { hs_group_broadcast(self.pg, ptrs.as_ptr(), ptrs.len(), root as c_int, self.ms()) }).map_err(|m| self.failure(what, m))
    }

    pub fn barrier(&self, what: &str) -> Result<()> {
        // SAFETY: a live group.
        check(unsafe { hs_group_barrier(self.pg, self.ms()) }).map_err(|m| self.failure(what, m))
    }

    /// A collective over any tensors, bucketed: flattened into buffers of one kind and at most
    /// [`BUCKET_BYTES`], reduced (summed) or broadcast from `root`, and copied back in place.
    pub fn bucketed(&self, ts: &[Tensor], root: Option<usize>, what: &str) -> Result<()> {
        let buckets = buckets(ts);
        let flats: Vec<Tensor> = buckets.iter().map(|b| Tensor::cat(&b.iter().map(|&i| ts[i].reshape(-1)).collect::<Vec<_>>(), 0)).collect();
        match root {
            None => self.allreduce_sum(&flats, what)?,
            Some(r) => self.broadcast(&flats, r, what)?,
        }
        tch::no_grad(|| -> Result<()> {
            for (b, flat) in buckets.iter().zip(&flats) {
                let mut off = 0;
                for &i in b {
                    let n = ts[i].numel() as i64;
                    ts[i].shallow_clone().f_copy_(&flat.narrow(0, off, n).view_as(&ts[i]))?;
                    off += n;
                }
            }
            Ok(())
        })
    }

    /// Sums numbers over the ranks (f64).
    pub fn sum_f64(&self, v: &[f64], what: &str) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(v);
        self.allreduce_sum(std::slice::from_ref(&t), what)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }
}

/// Indices of `ts` grouped into buckets: consecutive, one kind each, at most BUCKET_BYTES
/// (a larger tensor gets its own).
fn buckets(ts: &[Tensor]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![];
    let (mut bytes, mut kind): (usize, Option<Kind>) = (0, None);
    for (i, t) in ts.iter().enumerate() {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let fits = kind == Some(t.kind()) && bytes + size <= BUCKET_BYTES;
        match out.last_mut() {
            Some(b) if fits => b.push(i),
            _ => {
                out.push(vec![i]);
                bytes = 0;
            }
        }
        bytes += size;
        kind = Some(t.kind());
    }
    out
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(b) = self.beat.take() {
            let _ = b.join();
        }
        // SAFETY: created by hs_group_gloo_new, freed once; the store handle outlives it.
        unsafe { hs_group_free(self.pg) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_by_kind_and_size() {
        let big = (BUCKET_BYTES / 4) as i64;
        let ts = [
            Tensor::zeros([10], tch::kind::FLOAT_CPU),
            Tensor::zeros([10], tch::kind::FLOAT_CPU),
            Tensor::zeros([3], (Kind::Int64, tch::Device::Cpu)),
            Tensor::zeros([big], tch::kind::FLOAT_CPU),
            Tensor::zeros([1], tch::kind::FLOAT_CPU),
        ];
        assert_eq!(buckets(&ts), vec![vec![0, 1], vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn environment_is_read_as_torchrun_sets_it() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(Env::from_lookup(&vars(&[])).unwrap(), None);
        assert_eq!(Env::from_lookup(&vars(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(), None);
        let full = vars(&[("WORLD_SIZE", "4"), ("RANK", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")]);
        let e = Env::from_lookup(&full).unwrap().unwrap();
        assert_eq!((e.rank, e.world, e.local_rank, e.master_addr.as_str(), e.master_port), (2, 4, 0, "10.0.0.1", 29500));
        let err = |p: &'static [(&'static str, &'static str)]| Env::from_lookup(&vars(p)).unwrap_err().to_string();
        assert!(err(&[("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]).contains("`RANK`"));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]).contains("below WORLD_SIZE=2"));
        assert!(err(&[("WORLD_SIZE", "two")]).contains("`WORLD_SIZE`"));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "99999")]).contains("`MASTER_PORT`"));
    }
}
