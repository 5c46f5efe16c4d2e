//! Host utilities below every layer: network namespaces ([`netns`]), shaping an
//! interface ([`tc`]), children that die with migtrace ([`tied`]), processes named by
//! pid and start time ([`process`]), state only root can reach ([`private`]), commands
//! on other hosts over ssh ([`ssh`]).

pub mod netns;
pub mod private;
pub mod process;
pub mod ssh;
pub mod tc;
pub mod tied;
