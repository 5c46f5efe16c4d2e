//! Host utilities below every layer: network namespaces ([`netns`]) and children that
//! die with migtrace ([`tied`]).

pub mod netns;
pub mod tied;
