//! Build script: the shared library's SONAME and export list, and the CUDA kernels
//! (kernels/skip.cu) embedded as a fatbin.
//!
//! With the `cuda` feature, nvcc is looked for in `$NVCC`, `$CUDA_HOME/bin/nvcc`, then `PATH`;
//! when found it compiles the kernels into OUT_DIR with the flags in kernels/nvcc-flags.txt
//! (sm_80 and sm_90 code, compute_90 PTX). Without nvcc, or when it fails (its output is shown
//! as a warning), or with `GAUSSSKIP_PREBUILT=1`, the committed kernels/prebuilt/gaussskip.fatbin
//! is used. Either way the crate sees the file through `GAUSSSKIP_FATBIN` (for include_bytes!)
//! and its origin through `GAUSSSKIP_FATBIN_ORIGIN`. No CUDA toolkit is ever required.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // The kernel sources, flags and prebuilt fatbin (not the notes or the host emulation).
    println!("cargo:rerun-if-changed=kernels/nvcc-flags.txt");
    println!("cargo:rerun-if-changed=kernels/prebuilt/gaussskip.fatbin");
    if let Ok(dir) = std::fs::read_dir("kernels") {
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "cu" || e == "cuh") {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    for var in ["NVCC", "CUDA_HOME", "GAUSSSKIP_PREBUILT"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // The shared library's ABI identity: a SONAME that changes only with GS_ABI_VERSION, and
    // only the gs_* functions exported (the version script).
    println!("cargo:rerun-if-changed=src/exports.map");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let manifest = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libgaussskip.so.1");
        println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={manifest}/src/exports.map");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let prebuilt = root.join("kernels/prebuilt/gaussskip.fatbin");
    let (path, origin) = match compiled(&root) {
        Some(found) => found,
        None => (prebuilt, "prebuilt".to_string()),
    };
    println!("cargo:rustc-env=GAUSSSKIP_FATBIN={}", path.display());
    println!("cargo:rustc-env=GAUSSSKIP_FATBIN_ORIGIN={origin}");
}

/// Compiles the kernels with the nvcc found, or returns None (never fails the build).
fn compiled(root: &Path) -> Option<(PathBuf, String)> {
    if env::var_os("GAUSSSKIP_PREBUILT").is_some_and(|v| v != "0") {
        return None;
    }
    let nvcc = find_nvcc()?;
    let flags = std::fs::read_to_string(root.join("kernels/nvcc-flags.txt")).ok()?;
    let out = PathBuf::from(env::var("OUT_DIR").ok()?).join("gaussskip.fatbin");
    let result = Command::new(&nvcc)
        .args(flags.split_whitespace())
        .arg("-o")
        .arg(&out)
        .arg(root.join("kernels/skip.cu"))
        .output();
    match result {
        Ok(o) if o.status.success() => {
            let version = Command::new(&nvcc)
                .arg("--version")
                .output()
                .ok()
                .and_then(|v| String::from_utf8(v.stdout).ok())
                .and_then(|v| {
                    v.lines()
                        .find(|l| l.contains("release"))
                        .map(str::to_string)
                })
                .unwrap_or_default();
            Some((out, format!("nvcc {}", version.trim())))
        }
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stderr);
            for line in text.lines().take(20) {
                println!("cargo:warning=nvcc failed, using the prebuilt kernels: {line}");
            }
            None
        }
        Err(e) => {
            println!(
                "cargo:warning=could not run {}: {e}; using the prebuilt kernels",
                nvcc.display()
            );
            None
        }
    }
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        return Some(p);
    }
    if let Some(p) = env::var_os("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .filter(|p| p.is_file())
    {
        return Some(p);
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file())
}
