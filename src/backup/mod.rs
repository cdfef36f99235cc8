//! Backups in etcd's format: the store written as an etcd (bbolt) database
//! file, which `Maintenance.Snapshot` streams to `etcdctl snapshot save`;
//! `cairn snapshot restore` and `status`, which read such files (cairn's or
//! a real etcd's).

pub mod cli;
pub mod export;
pub mod restore;
pub mod status;

pub use export::{write_etcd_db, Exported};
