//! Backups in etcd's format: the store written as an etcd (bbolt) database
//! file, which `Maintenance.Snapshot` streams to `etcdctl snapshot save`;
//! `cairn snapshot restore` and `status`, which read such files (cairn's or
//! a real etcd's).

pub mod cli;
pub mod export;
pub mod restore;
pub mod status;

pub use export::{write_etcd_db, Exported};

/// etcd's `leasepb.Lease`, as its `lease` bucket holds it.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LeaseRecord {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}
