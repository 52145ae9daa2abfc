//! Compiles `bpf/*.c` with clang (`-target bpf`) into `$OUT_DIR`.
//!
//! Needs Debian `clang` and `libbpf-dev`. When either is missing the build still succeeds with an
//! empty object and a warning, and `IpipTc::attach` reports `Error::Unavailable` at run time, so
//! the rest of the workspace builds on machines without an eBPF toolchain.

use std::path::PathBuf;
use std::process::Command;

/// The C sources under `bpf/`, by stem.
const PROGRAMS: &[&str] = &["ipip", "fastpath"];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let clang = std::env::var("FELIS_BPF_CLANG").unwrap_or_else(|_| "clang".to_string());
    println!("cargo:rerun-if-env-changed=FELIS_BPF_CLANG");
    // libbpf-dev's headers; without them, as without clang, the crate builds with no programs.
    let headers = std::path::Path::new("/usr/include/bpf/bpf_helpers.h").exists();
    if !headers {
        println!(
            "cargo:warning=felis-ebpf: /usr/include/bpf/bpf_helpers.h missing; building without eBPF programs (install libbpf-dev)"
        );
    }
    // Included by the programs.
    println!("cargo:rerun-if-changed=bpf/stats.h");
    for name in PROGRAMS {
        let source = PathBuf::from("bpf").join(format!("{name}.c"));
        let object = out.join(format!("{name}.o"));
        println!("cargo:rerun-if-changed={}", source.display());
        if !headers {
            if std::fs::write(&object, b"").is_err() {
                std::process::exit(1);
            }
            continue;
        }
        let arch_include = format!("/usr/include/{}-linux-gnu", arch());
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I{arch_include}"))
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                // A compile error in our own C is a bug: fail loudly.
                eprintln!("clang failed on {} ({s})", source.display());
                std::process::exit(1);
            }
            Err(e) => {
                println!(
                    "cargo:warning=felis-ebpf: {clang} not runnable ({e}); building without eBPF programs (install clang and libbpf-dev)"
                );
                if std::fs::write(&object, b"").is_err() {
                    std::process::exit(1);
                }
            }
        }
    }
}

/// Debian's multiarch directory for `asm/types.h`.
fn arch() -> String {
    match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") | Err(_) => "x86_64".to_string(),
        Ok("aarch64") => "aarch64".to_string(),
        Ok(other) => other.to_string(),
    }
}
