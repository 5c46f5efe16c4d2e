//! migtrace's eBPF programs, grouped by what they observe.
//!
//! All programs write to one ring buffer ([`maps::EVENTS`]) and count records they could
//! not reserve in [`maps::LOSS`], so userspace can report loss instead of hiding it.
#![no_std]
#![no_main]
// Atomic adds on per-CPU counters (see maps::atomic_add); eBPF builds use a nightly
// or RUSTC_BOOTSTRAP toolchain anyway (-Z build-std).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod kvm;
mod maps;
mod net;
mod qemu;
mod selftest;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
