//! Consensus: raft-rs driven over a RocksDB log.

pub mod apply_worker;
pub mod log_store;
pub mod node;
pub mod peer_probe;
pub mod snapshot;
pub mod transport;

pub use node::{Command, NodeConfig, RaftHandle, RaftStatus};
