//! Embeds the eBPF object built by `cargo xtask build`.
//!
//! The object is built for `bpfel-unknown-none` with a toolchain that has the Rust library
//! sources (see xtask); a plain `cargo build` cannot do that, so when the object is absent
//! we embed nothing and the binary says how to build it properly when probes are needed.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=MIGTRACE_EBPF_OBJECT");
    let object = env::var_os("MIGTRACE_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
            manifest.join("../target/ebpf/bpfel-unknown-none/release/migtrace")
        });
    // Rerun when the object appears or changes; cargo compares mtimes.
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("migtrace.bpf.o");
    let bytes = fs::read(&object).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=eBPF object {} not found: migtrace is built without probes (run `cargo xtask build`)",
            object.display()
        );
    }
    fs::write(&out, bytes).expect("write OUT_DIR/migtrace.bpf.o");
}
