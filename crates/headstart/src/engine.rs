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
