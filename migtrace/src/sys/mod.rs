//! Host utilities below every layer: network namespaces ([`netns`]), children that
//! die with migtrace ([`tied`]), processes named by pid and start time ([`process`]).

pub mod netns;
pub mod process;
pub mod tied;
