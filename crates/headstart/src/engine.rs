//! Process-wide engine settings.

/// Keeps large tensor buffers in the heap instead of fresh `mmap`s. libtorch allocates and
/// frees activation buffers of tens to hundreds of MB on every forward pass; with glibc's
/// defaults each one is a new mapping whose pages are faulted in and zeroed again, which on a
/// CNN forward pass costs more system time than the arithmetic. Call once at start-up, before
/// heavy allocation (the binary does).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts glibc malloc parameters; it is called before other threads
    // allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Hands memory that is free in the allocator's arenas back to the system. With the settings of
/// [`tune_allocator`] freed blocks stay resident, each in the arena of the thread that freed
/// it, so after a large one-off buffer (a huge image decoded on a worker thread) call this, or
/// the next worker's large buffer adds to the resident size instead of reusing that memory.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Precision of a forward pass: frozen feature extraction, inference, or fine-tuning. How
/// `auto` resolves, and for which networks, is in [`crate::precision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    /// bf16 autocast on CPU (matmuls and convolutions in bfloat16, reductions and losses fp32).
    Bf16,
    /// bf16 where the policy allows it for the network and the hardware computes it natively,
    /// else fp32; resolved once per run ([`Precision::resolve`]).
    Auto,
}

// libtorch's autocast switches for a given device type. tch exposes only the CUDA ones, so
// these bind the C++ functions of the pinned libtorch 2.11.0 directly (Itanium C++ ABI; every
// argument is a one-byte enum or bool, passed as in C).
mod ffi {
    extern "C" {
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        pub fn set_autocast_enabled(device: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        pub fn is_autocast_enabled(device: i8) -> bool;
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        pub fn set_autocast_dtype(device: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        pub fn get_autocast_dtype(device: i8) -> i8;
        #[link_name = "_ZN2at8autocast17increment_nestingEv"]
        pub fn increment_nesting() -> i32;
        #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
        pub fn decrement_nesting() -> i32;
        #[link_name = "_ZN2at8autocast11clear_cacheEv"]
        pub fn clear_cache();
    }
}

const DEVICE_CPU: i8 = 0;
const SCALAR_BFLOAT16: i8 = 15;

/// Runs `f` with CPU autocast at `precision` (a no-op for fp32), restoring the previous state.
/// Resolve `auto` first ([`Precision::resolve`]): an unresolved `auto` runs in fp32.
pub fn autocast_cpu<T>(precision: Precision, f: impl FnOnce() -> T) -> T {
    if precision != Precision::Bf16 {
        return f();
    }
    // SAFETY: plain setters/getters of libtorch's thread-local autocast state.
    let (was_enabled, was_dtype) = unsafe { (ffi::is_autocast_enabled(DEVICE_CPU), ffi::get_autocast_dtype(DEVICE_CPU)) };
    unsafe {
        ffi::set_autocast_dtype(DEVICE_CPU, SCALAR_BFLOAT16);
        ffi::set_autocast_enabled(DEVICE_CPU, true);
        ffi::increment_nesting();
    }
    let out = f();
    unsafe {
        if ffi::decrement_nesting() == 0 {
            ffi::clear_cache();
        }
        ffi::set_autocast_enabled(DEVICE_CPU, was_enabled);
        ffi::set_autocast_dtype(DEVICE_CPU, was_dtype);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_autocast_runs_matmuls_in_bf16_and_restores_fp32() {
        let a = tch::Tensor::randn([4, 8], tch::kind::FLOAT_CPU);
        let b = tch::Tensor::randn([8, 3], tch::kind::FLOAT_CPU);
        assert_eq!(autocast_cpu(Precision::Bf16, || a.matmul(&b)).kind(), tch::Kind::BFloat16);
        assert_eq!(autocast_cpu(Precision::Fp32, || a.matmul(&b)).kind(), tch::Kind::Float);
        assert_eq!(a.matmul(&b).kind(), tch::Kind::Float);
        let x = tch::Tensor::randn([2, 3, 16, 16], tch::kind::FLOAT_CPU);
        let w = tch::Tensor::randn([4, 3, 3, 3], tch::kind::FLOAT_CPU);
        let y = autocast_cpu(Precision::Bf16, || x.conv2d(&w, None::<tch::Tensor>, [1, 1], [0, 0], [1, 1], 1));
        assert_eq!(y.kind(), tch::Kind::BFloat16);
    }
}
