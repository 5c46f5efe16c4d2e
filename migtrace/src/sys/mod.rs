//! Host utilities below every layer: network namespaces ([`netns`]), children that die
//! with migtrace ([`tied`]), commands on other hosts over ssh ([`ssh`]).

pub mod netns;
pub mod ssh;
pub mod tied;
