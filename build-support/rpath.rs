// Shared by the build scripts of the crates that produce executables: embeds a run-time
// search path to the project's libtorch, so binaries and tests find `libtorch_cpu`/`libc10`
// and the CUDA runtime libraries they link without LD_LIBRARY_PATH.
//
// Absolute paths to the venv's libraries come first; `$ORIGIN`-relative ones follow, so a
// checkout that is moved with its `target/` and `.venv/` still runs
// (`target/<profile>/headstart` and `target/<profile>/deps/<test>`).

fn rpath() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    let lib = std::path::PathBuf::from(lib);
    let mut dirs = vec![];
    if let Ok(real) = std::fs::canonicalize(lib.join("libtorch_cpu.so")) {
        if let Some(dir) = real.parent() {
            dirs.push(dir.display().to_string());
            if let Some(site) = dir.parent().and_then(|t| t.parent()) {
                dirs.push(site.join("nvidia").join("cu13").join("lib").display().to_string());
            }
        }
    }
    for up in ["../..", "../../.."] {
        dirs.push(format!("$ORIGIN/{up}/.venv/libtorch/lib"));
        dirs.push(format!("$ORIGIN/{up}/.venv/cuda-lib"));
    }
    for d in dirs {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{d}");
    }
}
