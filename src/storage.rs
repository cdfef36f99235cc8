//! The one RocksDB instance of a member and its column families.
//!
//! Every family has one owner module that encodes its keys and values:
//! `raft_log` and `raft_state` belong to `consensus::log_store`, `kv`,
//! `index` and the mvcc keys of `meta` belong to `mvcc`, `lease` to
//! `lease::Lessor`, the applied index in `meta` belongs to `apply`.
//!
//! **Invariant:** the raft log is written with `sync = true` before a
//! member acknowledges an entry; everything else may be written unsynced,
//! because it can be rebuilt by re-applying the log from the applied index.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::error::Result;

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_STATE: &str = "raft_state";
pub const CF_KV: &str = "kv";
pub const CF_INDEX: &str = "index";
pub const CF_META: &str = "meta";
pub const CF_LEASE: &str = "lease";

const FAMILIES: [&str; 6] = [
    CF_RAFT_LOG,
    CF_RAFT_STATE,
    CF_KV,
    CF_INDEX,
    CF_META,
    CF_LEASE,
];

/// The member's database. Cheap to clone; all clones share one RocksDB.
#[derive(Clone)]
pub struct Storage {
    db: Arc<DB>,
}

impl Storage {
    /// Opens (creating if needed) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Storage> {
        std::fs::create_dir_all(dir).map_err(crate::error::Error::internal)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // A small process: two background jobs match the machines we run on
        // and keep compaction from starving the apply thread.
        opts.set_max_background_jobs(2);
        // RocksDB keeps a write-ahead log file until every family's data in
        // it is flushed; a family written rarely (raft_state, lease) would
        // otherwise keep hundreds of MiB of old log files alive.
        opts.set_max_total_wal_size(64 * 1024 * 1024);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = FAMILIES.iter().map(|name| {
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(Storage { db: Arc::new(db) })
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    pub fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // The families are created at open; a missing one is a programming error.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} missing"))
    }

    /// Writes a batch; `sync` makes it durable before returning.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// Compacts every family through all levels: space held by deleted
    /// and overwritten records is given back (etcd's defragment).
    pub fn compact_all(&self) {
        for name in FAMILIES {
            self.db
                .compact_range_cf(self.cf(name), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Bytes of live data on disk and in memory: (total, in use).
    pub fn size(&self) -> (i64, i64) {
        let mut total = 0u64;
        let mut live = 0u64;
        for name in FAMILIES {
            let cf = self.cf(name);
            let p = |prop: &str| {
                self.db
                    .property_int_value_cf(cf, prop)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            let mem = p("rocksdb.cur-size-all-mem-tables");
            total += p("rocksdb.total-sst-files-size") + mem;
            live += p("rocksdb.estimate-live-data-size") + mem;
        }
        (total as i64, live.min(total) as i64)
    }
}
