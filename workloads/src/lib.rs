//! The paper's guest load generators (Salfner, Tröger, Polze, DEPEND 2011, §III.A):
//! a CPU burner held at a target utilisation, a locked-pages generator and a
//! dirty-pages generator, driven by one treatment [`spec::Spec`].

pub mod clock;
pub mod cpu;
pub mod dirty;
pub mod memory;
pub mod runner;
pub mod spec;
pub mod verify;
