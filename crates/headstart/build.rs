include!("../../build-support/rpath.rs");

use std::path::{Path, PathBuf};

fn main() {
    rpath();
    dist_shim();
}

/// Compiles `csrc/dist_shim.cpp` (c10d's TCPStore and process groups behind a C interface)
/// against the torch headers that `torch-sys` compiles its own wrapper against: `LIBTORCH_INCLUDE`,
/// else `LIBTORCH`, each with `include/` and `include/torch/csrc/api/include/`. The Gloo names
/// that ProcessGroupGloo.hpp includes come from `csrc/gloo_decl/` (declarations only; the
/// wheel ships no Gloo headers).
///
/// The NCCL process group is compiled in (`HEADSTART_NCCL` defined, cfg `headstart_nccl`) when
/// the libtorch that `torch-sys` links has CUDA (`libtorch_cuda.so` in its library directory)
/// and the headers it needs are found (see [`nccl_includes`]). `HEADSTART_NCCL=0` leaves it
/// out; `HEADSTART_NCCL=1` requires it (the build stops, saying what is missing).
fn dist_shim() {
    for f in ["csrc/dist_shim.cpp", "csrc/gloo_decl"] {
        println!("cargo:rerun-if-changed={f}");
    }
    for v in ["LIBTORCH", "LIBTORCH_INCLUDE", "LIBTORCH_CXX11_ABI", "HEADSTART_NCCL", "CUDA_HOME", "NCCL_INCLUDE", "DEP_TCH_LIBTORCH_LIB"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let var = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
    let Some(root) = var("LIBTORCH_INCLUDE").or_else(|| var("LIBTORCH")) else {
        panic!("set LIBTORCH (or LIBTORCH_INCLUDE) to the libtorch directory, as for torch-sys; the distributed shim compiles against its headers");
    };
    let root = PathBuf::from(root);
    let mut b = cc::Build::new();
    b.cpp(true)
        .pic(true)
        .warnings(false)
        .include("csrc/gloo_decl")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", var("LIBTORCH_CXX11_ABI").unwrap_or_else(|| "1".into())))
        .define("GLOG_USE_GLOG_EXPORT", None)
        .define("USE_C10D_GLOO", None)
        .define("USE_DISTRIBUTED", None)
        .file("csrc/dist_shim.cpp");
    println!("cargo::rustc-check-cfg=cfg(headstart_nccl)");
    let lib = var("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from).unwrap_or_else(|| root.join("lib"));
    let wanted = var("HEADSTART_NCCL");
    let found = if wanted.as_deref() == Some("0") { Err("HEADSTART_NCCL=0".to_string()) } else { nccl_includes(&root, &lib) };
    match (found, wanted.as_deref()) {
        (Ok(dirs), _) => {
            println!("cargo:rustc-cfg=headstart_nccl");
            b.define("HEADSTART_NCCL", None).define("USE_C10D_NCCL", None).define("USE_CUDA", None);
            for d in dirs {
                b.include(d);
            }
        }
        (Err(why), Some("1")) => panic!("HEADSTART_NCCL=1, but the NCCL process group cannot be built: {why}"),
        // A CUDA libtorch without the headers: said, not fatal (the shim builds with Gloo only).
        (Err(why), None) if lib.join("libtorch_cuda.so").exists() => println!("cargo:warning=the NCCL process group is left out: {why}"),
        (Err(_), _) => {}
    }
    b.compile("headstart_dist");
}

/// The include directories the NCCL process group needs, or why it cannot be built: a libtorch
/// with CUDA in `lib`, c10d's NCCL header under `root`, the CUDA runtime headers (`CUDA_HOME`,
/// the pip `nvidia` packages beside the torch wheel, `/usr/local/cuda`) and `nccl.h`
/// (`NCCL_INCLUDE`, the same places, `/usr/include`).
fn nccl_includes(root: &Path, lib: &Path) -> Result<Vec<PathBuf>, String> {
    if !lib.join("libtorch_cuda.so").exists() {
        return Err(format!("{} has no libtorch_cuda.so (a CPU libtorch)", lib.display()));
    }
    let pg = root.join("include/torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp");
    if !pg.exists() {
        return Err(format!("{} is missing", pg.display()));
    }
    let var = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty()).map(PathBuf::from);
    let mut places: Vec<PathBuf> = vec![];
    places.extend(var("NCCL_INCLUDE"));
    places.extend(var("CUDA_HOME").map(|d| d.join("include")));
    // The torch wheel's CUDA dependencies: site-packages/nvidia/<package>/include.
    if let Some(site) = std::fs::canonicalize(root).ok().and_then(|r| r.parent().map(Path::to_path_buf)) {
        if let Ok(rd) = std::fs::read_dir(site.join("nvidia")) {
            let mut pkgs: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("include")).filter(|p| p.is_dir()).collect();
            pkgs.sort();
            places.extend(pkgs);
        }
    }
    places.extend(["/usr/local/cuda/include", "/usr/include"].map(PathBuf::from));
    let mut dirs: Vec<PathBuf> = vec![];
    let mut missing = vec![];
    for header in NCCL_HEADERS {
        match places.iter().find(|d| d.join(header).exists()) {
            Some(d) if !dirs.contains(d) => dirs.push(d.clone()),
            Some(_) => {}
            None => missing.push(format!("`{header}`")),
        }
    }
    if missing.is_empty() {
        Ok(dirs)
    } else {
        Err(format!("{} not found (set CUDA_HOME to a CUDA toolkit, NCCL_INCLUDE to the directory of nccl.h)", missing.join(", ")))
    }
}

/// What ProcessGroupNCCL.hpp includes from CUDA and NCCL (through ATen's CUDA context).
const NCCL_HEADERS: [&str; 8] = ["cuda_runtime_api.h", "crt/host_config.h", "nv/target", "cusparse.h", "cublas_v2.h", "cublasLt.h", "cusolverDn.h", "nccl.h"];
