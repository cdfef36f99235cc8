//! cairn: an etcd-compatible key-value server. See ARCHITECTURE.md for the
//! map; the modules follow the write path from top to bottom.

pub mod alarm;
pub mod api;
pub mod apply;
pub mod backup;
pub mod bbolt;
pub mod config;
pub mod consensus;
pub mod error;
pub mod http;
pub mod ids;
pub mod kv;
pub mod lease;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod pb;
pub mod server;
pub mod storage;
pub mod tls;
pub mod version;
pub mod watch;
