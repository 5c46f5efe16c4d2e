//! Types shared by migtrace's eBPF programs and its userspace.
//!
//! Everything the kernel side writes (ring-buffer records, map keys and values) is
//! `#[repr(C)]`, padding-free and defined once here, so both sides agree on the layout.
//! The `host` feature adds std-only helpers that probe the running host; `xtask doctor`
//! and `migtrace` share them.
#![cfg_attr(not(feature = "host"), no_std)]

pub mod event;

#[cfg(feature = "host")]
pub mod host;
