//! Data-parallel training over libtorch's own c10d (a small C++ shim, `csrc/dist_shim.cpp`).
//!
//! - Launch: the `torchrun` variables `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE` and
//!   `LOCAL_RANK`; a run is distributed when `WORLD_SIZE` > 1. Rank 0 serves a `c10d::TCPStore`
//!   at the master address (under `torchrun`, whose agent serves it already,
//!   `TORCHELASTIC_USE_AGENT_STORE=True`, rank 0 only connects); every rank connects to it, and
//!   the process group rendezvouses through it.
//! - Process group and device ([`resolve`]): `auto` (the default) takes NCCL with the model on
//!   `cuda:LOCAL_RANK` when CUDA devices are visible and the build has NCCL, else Gloo on the
//!   CPU; `gloo` and `nccl` ask for one (`--dist-backend`, else `HEADSTART_DIST_BACKEND`). A
//!   build has NCCL when its libtorch has CUDA and the NCCL headers were found ([`NCCL_BUILT`]).
//!   Tensors given to a collective on another device than the group's are staged through it.
//! - Sharing work out: [`Group::all_gather_rows`] gathers every rank's rows (any count, none
//!   included) in rank order, so ranks can split a pass over the data and all end with the
//!   whole of it.
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

use tch::{Device, Kind, Tensor};

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
    fn hs_group_nccl_new(
        s: *mut c_void,
        prefix: *const c_char,
        rank: c_int,
        world: c_int,
        device: c_int,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn hs_group_allgather(g: *mut c_void, input: *mut c_void, outputs: *const *mut c_void, n: usize, timeout_ms: i64) -> *mut c_char;
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

/// Whether this build has c10d's NCCL process group (its libtorch has CUDA and the NCCL
/// headers were found when it was built).
pub const NCCL_BUILT: bool = cfg!(headstart_nccl);

/// A process group kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

/// The process group asked for: `auto` (NCCL on CUDA, Gloo on the CPU), `gloo` or `nccl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    #[default]
    Auto,
    Gloo,
    Nccl,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(BackendChoice::Auto),
            "gloo" => Ok(BackendChoice::Gloo),
            "nccl" => Ok(BackendChoice::Nccl),
            other => Err(format!("`{other}` is not `auto`, `gloo` or `nccl`")),
        }
    }
}

/// The choice made on the command line, which wins over `HEADSTART_DIST_BACKEND`.
static BACKEND_CHOICE: std::sync::Mutex<Option<BackendChoice>> = std::sync::Mutex::new(None);

/// Sets the process group kind for the data-parallel runs of this process (`--dist-backend`).
pub fn set_backend_choice(c: BackendChoice) {
    if let Ok(mut b) = BACKEND_CHOICE.lock() {
        *b = Some(c);
    }
}

/// The choice set by [`set_backend_choice`], else `HEADSTART_DIST_BACKEND`, else `auto`.
pub fn backend_choice() -> Result<BackendChoice> {
    if let Some(c) = BACKEND_CHOICE.lock().ok().and_then(|b| *b) {
        return Ok(c);
    }
    match env_var("HEADSTART_DIST_BACKEND").filter(|s| !s.trim().is_empty()) {
        None => Ok(BackendChoice::Auto),
        Some(v) => v.parse().map_err(|m| Error::Usage(format!("environment variable `HEADSTART_DIST_BACKEND`: {m}"))),
    }
}

/// The device of the process with `LOCAL_RANK` = `local_rank` on a machine with `cuda_devices`
/// visible CUDA devices: `cuda:LOCAL_RANK`, or the CPU when there is none. More processes on a
/// machine than devices is refused (two NCCL ranks cannot share one device).
pub fn pick_device(local_rank: usize, cuda_devices: usize) -> Result<Device> {
    match cuda_devices {
        0 => Ok(Device::Cpu),
        n if local_rank < n => Ok(Device::Cuda(local_rank)),
        n => Err(Error::Usage(format!(
            "LOCAL_RANK={local_rank} but this machine shows {n} CUDA device{}: start one process per device at most (or hide them with CUDA_VISIBLE_DEVICES= and use --dist-backend gloo)",
            if n == 1 { "" } else { "s" }
        ))),
    }
}

/// The process group and the device of this rank's model: `auto` is NCCL on `cuda:LOCAL_RANK`
/// when CUDA devices are visible and the build has NCCL, else Gloo on the CPU; `gloo` trains
/// on the CPU; `nccl` needs both a build with NCCL and a CUDA device.
pub fn resolve(choice: BackendChoice, local_rank: usize, cuda_devices: usize, nccl_built: bool) -> Result<(Backend, Device)> {
    match choice {
        BackendChoice::Gloo => Ok((Backend::Gloo, Device::Cpu)),
        BackendChoice::Auto if cuda_devices == 0 || !nccl_built => Ok((Backend::Gloo, Device::Cpu)),
        BackendChoice::Nccl if !nccl_built => Err(Error::Usage(
            "the NCCL backend was asked for, but this build has no NCCL: it was built against a libtorch without CUDA, or without the NCCL headers (see docs/distributed.md)"
                .into(),
        )),
        BackendChoice::Nccl if cuda_devices == 0 => Err(Error::Usage("the NCCL backend was asked for, but no CUDA device is visible".into())),
        BackendChoice::Auto | BackendChoice::Nccl => Ok((Backend::Nccl, pick_device(local_rank, cuda_devices)?)),
    }
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
    pub backend: Backend,
    /// Where this rank's model and the group's collectives live.
    pub device: Device,
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

    /// Rendezvous at the master's store (rank 0 serves it), then the process group
    /// [`resolve`] picks from [`backend_choice`] and the visible CUDA devices.
    pub fn join(env: &Env, timeout: Duration) -> Result<Group> {
        let cuda = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        let (backend, device) = resolve(backend_choice()?, env.local_rank, cuda, NCCL_BUILT)?;
        Group::join_as(env, timeout, backend, device)
    }

    /// [`Group::join`] with the process group and device given.
    pub fn join_as(env: &Env, timeout: Duration, backend: Backend, device: Device) -> Result<Group> {
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
        // SAFETY: a live store; the group keeps its own reference to it.
        let made = match (backend, device) {
            (Backend::Gloo, _) => check(unsafe { hs_group_gloo_new(store.0, prefix.as_ptr(), rank as c_int, world as c_int, ms, &mut pg) }),
            #[cfg(headstart_nccl)]
            (Backend::Nccl, Device::Cuda(d)) => {
                check(unsafe { hs_group_nccl_new(store.0, prefix.as_ptr(), rank as c_int, world as c_int, d as c_int, ms, &mut pg) })
            }
            (Backend::Nccl, _) => {
                return Err(resolve(BackendChoice::Nccl, env.local_rank, 0, NCCL_BUILT)
                    .err()
                    .unwrap_or_else(|| Error::Usage("NCCL needs a CUDA device".into())))
            }
        };
        made.map_err(|m| Error::Distributed(format!("rank {rank}: creating the {} process group failed: {m}", backend.name())))?;
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
        Ok(Group { rank, world, backend, device, timeout, store, pg, stop, beat: Some(beat) })
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

    /// Runs an in-place collective on `ts`, staging the tensors that are not on the group's
    /// device through copies there (then copied back).
    fn staged(&self, ts: &[Tensor], f: impl FnOnce(&[*mut c_void]) -> std::result::Result<(), String>, what: &str) -> Result<()> {
        let moved: Vec<Option<Tensor>> = ts.iter().map(|t| (t.device() != self.device).then(|| t.to_device(self.device))).collect();
        let ptrs: Vec<*mut c_void> = ts.iter().zip(&moved).map(|(t, m)| m.as_ref().unwrap_or(t).as_ptr() as *mut c_void).collect();
        f(&ptrs).map_err(|m| self.failure(what, m))?;
        tch::no_grad(|| -> Result<()> {
            for (t, m) in ts.iter().zip(&moved) {
                if let Some(m) = m {
                    t.shallow_clone().f_copy_(m)?;
                }
            }
            Ok(())
        })
    }

    /// Sums each (contiguous) tensor in place over the ranks.
    pub fn allreduce_sum(&self, ts: &[Tensor], what: &str) -> Result<()> {
        // SAFETY: the tensors outlive the call, which waits for every collective.
        self.staged(ts, |p| check(unsafe { hs_group_allreduce_sum(self.pg, p.as_ptr(), p.len(), self.ms()) }), what)
    }

    /// Copies each (contiguous) tensor of rank `root` into the others' in place.
    pub fn broadcast(&self, ts: &[Tensor], root: usize, what: &str) -> Result<()> {
        // SAFETY: as for allreduce_sum.
        self.staged(ts, |p| check(unsafe { hs_group_broadcast(self.pg, p.as_ptr(), p.len(), root as c_int, self.ms()) }), what)
    }

    /// Every rank's `rows` (`[n_r, ...]`, any `n_r`, zero included; the same trailing shape and
    /// kind on every rank), in rank order, on this rank's device of `rows`. The counts travel
    /// first; each rank's rows are padded to the largest count for one all-gather, then cut.
    pub fn all_gather_rows(&self, rows: &Tensor, what: &str) -> Result<Vec<Tensor>> {
        if rows.dim() == 0 {
            return Err(Error::Usage(format!("{what}: a gather takes rows, not a scalar")));
        }
        let mut counts = vec![0i64; self.world];
        counts[self.rank] = rows.size()[0];
        let counts_t = Tensor::from_slice(&counts);
        self.allreduce_sum(std::slice::from_ref(&counts_t), what)?;
        let counts = Vec::<i64>::try_from(&counts_t)?;
        let most = counts.iter().copied().max().unwrap_or(0);
        let mut shape = rows.size();
        shape[0] = most;
        let opts = (rows.kind(), self.device);
        let padded = Tensor::zeros(shape.as_slice(), opts);
        if counts[self.rank] > 0 {
            tch::no_grad(|| padded.narrow(0, 0, counts[self.rank]).f_copy_(rows))?;
        }
        let outs: Vec<Tensor> = (0..self.world).map(|_| Tensor::zeros(shape.as_slice(), opts)).collect();
        let ptrs: Vec<*mut c_void> = outs.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        // SAFETY: the input and outputs are live, contiguous and alike in shape and kind.
        check(unsafe { hs_group_allgather(self.pg, padded.as_ptr() as *mut c_void, ptrs.as_ptr(), ptrs.len(), self.ms()) })
            .map_err(|m| self.failure(what, m))?;
        Ok(outs.iter().zip(&counts).map(|(t, &n)| t.narrow(0, 0, n).to_device(rows.device())).collect())
    }

    /// Every rank's bytes, in rank order.
    pub fn all_gather_bytes(&self, bytes: &[u8], what: &str) -> Result<Vec<Vec<u8>>> {
        let t = Tensor::from_slice(bytes);
        self.all_gather_rows(&t, what)?.iter().map(|t| Ok(Vec::<u8>::try_from(t)?)).collect()
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
    fn each_local_rank_gets_its_own_cuda_device_or_the_cpu() {
        assert_eq!(pick_device(0, 0).unwrap(), Device::Cpu);
        assert_eq!(pick_device(3, 0).unwrap(), Device::Cpu);
        assert_eq!(pick_device(0, 1).unwrap(), Device::Cuda(0));
        assert_eq!(pick_device(3, 8).unwrap(), Device::Cuda(3));
        assert_eq!(pick_device(7, 8).unwrap(), Device::Cuda(7));
        let e = pick_device(2, 2).unwrap_err().to_string();
        assert!(e.contains("LOCAL_RANK=2") && e.contains("2 CUDA devices"), "{e}");
        assert!(pick_device(1, 1).unwrap_err().to_string().contains("1 CUDA device:"));
    }

    #[test]
    fn backend_is_nccl_on_cuda_and_gloo_on_the_cpu() {
        use BackendChoice::*;
        // auto: NCCL on the rank's device when there is one and the build has NCCL.
        assert_eq!(resolve(Auto, 1, 4, true).unwrap(), (Backend::Nccl, Device::Cuda(1)));
        assert_eq!(resolve(Auto, 1, 0, true).unwrap(), (Backend::Gloo, Device::Cpu));
        assert_eq!(resolve(Auto, 1, 4, false).unwrap(), (Backend::Gloo, Device::Cpu));
        assert!(resolve(Auto, 4, 4, true).unwrap_err().to_string().contains("LOCAL_RANK=4"));
        // gloo: the CPU, whatever devices there are.
        assert_eq!(resolve(Gloo, 1, 4, true).unwrap(), (Backend::Gloo, Device::Cpu));
        // nccl: needs the build and a device.
        assert_eq!(resolve(Nccl, 0, 2, true).unwrap(), (Backend::Nccl, Device::Cuda(0)));
        assert!(resolve(Nccl, 0, 2, false).unwrap_err().to_string().contains("this build has no NCCL"));
        assert!(resolve(Nccl, 0, 0, true).unwrap_err().to_string().contains("no CUDA device"));
        assert_eq!("auto".parse::<BackendChoice>().unwrap(), Auto);
        assert_eq!(" nccl".parse::<BackendChoice>().unwrap(), Nccl);
        assert!("mpi".parse::<BackendChoice>().unwrap_err().contains("`mpi`"));
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
