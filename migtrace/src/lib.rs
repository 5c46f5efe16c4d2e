//! migtrace: measure VM live migration precisely.
//!
//! - [`probe`]: load the eBPF programs, attach them, stream their events.
//! - [`lab`]: the embedded two-host lab (guest image, network namespace, QEMU, QMP).
//! - [`hypervisor`]: a pair of hosts that can migrate a VM.
//! - [`measure`]: a measured migration, its timeline, downtime every way, the record.
//! - [`stats`]: statistics of an experiment's records (per treatment, Table II, effects).
//! - [`experiment`]: factors, designs, the resumable runner and the results store.
//! - [`report`]: tables, pages and figures for people.
//! - [`model`]: predicting a migration before it happens, fitted on traces.
//! - [`sys`]: host utilities below every layer (network namespaces, tied children).
//! - [`files`]: results on disk (modes, atomic writes, the results directory's lock).
//! - [`percentile`]: the one percentile definition (nearest rank) every output uses.
pub mod clock;
pub mod experiment;
pub mod files;
pub mod hypervisor;
pub mod lab;
pub mod measure;
pub mod model;
pub mod percentile;
pub mod probe;
pub mod report;
pub mod stats;
pub mod sys;
