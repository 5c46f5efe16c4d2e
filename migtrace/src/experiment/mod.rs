//! Turning single migrations into a study (the paper's §IV–V): factors and levels,
//! designs, a resumable runner, and the results store.
//!
//! - [`spec`]: the experiment spec (TOML) and its validation.
//! - [`design`]: single-variable sweeps and full factorials, expanded to treatments.
//! - [`store`]: `results/<experiment>/`, durable and resumable.
//! - [`runner`]: one lab per treatment, repetitions as ping-pong migrations.

pub mod design;
pub mod runner;
pub mod spec;
pub mod store;
pub mod testbed;
