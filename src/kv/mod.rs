//! etcd's KV request semantics on top of the MVCC store: how a
//! `RangeRequest` is filtered, sorted and limited, how puts, deletes and
//! transactions change the store, how compares are judged, and which
//! requests are refused before they reach raft.
//!
//! **Invariant:** nothing here does network I/O or reads a clock; the write
//! functions run inside the apply step and must be deterministic.

pub mod compare;
pub mod range;
pub mod validate;
pub mod write;

use crate::error::Result;
use crate::mvcc::{MvccStore, RangeOptions, RangeResult, WriteTxn};

/// A consistent view of the store that ranges can be read from: the store
/// itself for reads, or a write transaction for the reads inside a txn.
pub trait KvView {
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult>;
}

impl KvView for MvccStore {
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
        MvccStore::range(self, key, end, opts)
    }
}

impl KvView for WriteTxn<'_> {
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
        WriteTxn::range(self, key, end, opts)
    }
}
