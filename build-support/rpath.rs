// Shared by the build scripts of the crates that produce executables: embeds a run-time
// search path to the project's libtorch, so binaries and tests find `libtorch_cpu`/`libc10`
// and the CUDA runtime libraries they link without LD_LIBRARY_PATH.

fn rpath() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    let lib = std::path::PathBuf::from(lib);
    // The CPU link directory holds symlinks; the loader needs the real library directory
    // and the CUDA runtime directory beside the torch package.
    let mut dirs = vec![];
    if let Ok(real) = std::fs::canonicalize(lib.join("libtorch_cpu.so")) {
        if let Some(dir) = real.parent() {
            dirs.push(dir.to_path_buf());
            if let Some(site) = dir.parent().and_then(|t| t.parent()) {
                dirs.push(site.join("nvidia").join("cu13").join("lib"));
            }
        }
    }
    for d in dirs {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", d.display());
    }
}
