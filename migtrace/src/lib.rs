//! migtrace: measure VM live migration precisely.
//!
//! - [`probe`]: load the eBPF programs, attach them, stream their events.
pub mod clock;
pub mod hypervisor;
pub mod lab;
pub mod measure;
pub mod probe;
