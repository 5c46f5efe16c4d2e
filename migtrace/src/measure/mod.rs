//! Turning what the hosts, the probes and the network saw into measures.
//!
//! - [`record`]: the per-migration record (versioned JSON lines) and its durable writer.
pub mod downtime;
pub mod heartbeat;
pub mod link;
pub mod memcheck;
pub mod outage;
pub mod ping;
pub mod prober;
pub mod quality;
pub mod record;
pub mod session;
pub mod timeline;
