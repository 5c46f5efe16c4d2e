//! Host utilities below every layer: network namespaces ([`netns`]), shaping an
//! interface ([`tc`]) and children that die with migtrace ([`tied`]).

pub mod netns;
pub mod tc;
pub mod tied;
