//! Multi-version storage of keys with etcd's revision semantics.

pub mod keys;
pub mod revision;
pub mod store;

pub use revision::Revision;
pub use store::{
    in_range, MvccStore, RangeOptions, RangeResult, RevisionEvents, WriteOutcome, WriteTxn,
};
