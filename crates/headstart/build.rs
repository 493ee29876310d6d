include!("../../build-support/rpath.rs");

fn main() {
    rpath();
    dist_shim();
}

/// Compiles `csrc/dist_shim.cpp` (c10d's TCPStore and process groups behind a C interface)
/// against the torch headers that `torch-sys` compiles its own wrapper against: `LIBTORCH_INCLUDE`,
/// else `LIBTORCH`, each with `include/` and `include/torch/csrc/api/include/`. The Gloo names
/// that ProcessGroupGloo.hpp includes come from `csrc/gloo_decl/` (declarations only; the
/// wheel ships no Gloo headers). `HEADSTART_NCCL=1` adds the NCCL process group; it then needs
/// the CUDA and NCCL headers in `CUDA_HOME/include` and `NCCL_INCLUDE`.
fn dist_shim() {
    for f in ["csrc/dist_shim.cpp", "csrc/gloo_decl"] {
        println!("cargo:rerun-if-changed={f}");
    }
    for v in ["LIBTORCH", "LIBTORCH_INCLUDE", "LIBTORCH_CXX11_ABI", "HEADSTART_NCCL", "CUDA_HOME", "NCCL_INCLUDE"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let var = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
    let Some(root) = var("LIBTORCH_INCLUDE").or_else(|| var("LIBTORCH")) else {
        panic!("set LIBTORCH (or LIBTORCH_INCLUDE) to the libtorch directory, as for torch-sys; the distributed shim compiles against its headers");
    };
    let root = std::path::PathBuf::from(root);
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
    if var("HEADSTART_NCCL").as_deref() == Some("1") {
        println!("cargo:rustc-cfg=headstart_nccl");
        b.define("HEADSTART_NCCL", None).define("USE_C10D_NCCL", None).define("USE_CUDA", None);
        for v in ["CUDA_HOME", "NCCL_INCLUDE"] {
            if let Some(d) = var(v) {
                b.include(if v == "CUDA_HOME" { std::path::PathBuf::from(d).join("include") } else { d.into() });
            }
        }
    }
    b.compile("headstart_dist");
}
