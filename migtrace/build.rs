//! Embeds the artifacts `cargo xtask build` produces with other toolchains or flags:
//! the eBPF object (bpfel-unknown-none, -Z build-std), the static guest agent
//! (`workloads`, crt-static) and the minimal guest (assembled with binutils). A plain `cargo build` cannot produce them, so when one is
//! absent we embed nothing and the binary says how to build it when it is needed.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let target = manifest.join("../target");
    embed("MIGTRACE_EBPF_OBJECT", target.join("ebpf/bpfel-unknown-none/release/migtrace"), "migtrace.bpf.o");
    embed("MIGTRACE_GUEST_AGENT", target.join("x86_64-unknown-linux-gnu/release/workloads"), "workloads.static");
    embed("MIGTRACE_MINIMAL_GUEST", target.join("minimal-guest/migtrace-minimal-guest.elf"), "minimal-guest.elf");
}

fn embed(var: &str, default: PathBuf, name: &str) {
    println!("cargo:rerun-if-env-changed={var}");
    let path = env::var_os(var).map(PathBuf::from).unwrap_or(default);
    // Rerun when the file appears or changes; cargo compares mtimes.
    println!("cargo:rerun-if-changed={}", path.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join(name);
    let bytes = fs::read(&path).unwrap_or_default();
    if bytes.is_empty() {
        println!("cargo:warning={} not found: embedding nothing (run `cargo xtask build`)", path.display());
    }
    fs::write(&out, bytes).expect("write into OUT_DIR");
}
