//! The multi-version key-value store on RocksDB, with etcd's revisions.
//!
//! Two families hold the history: `kv` maps a revision to the full
//! `mvccpb.KeyValue` written at it (etcd's `key` bucket), and `index` maps
//! (user key, revision) to an [`IndexEntry`] (see `keys.rs`). Nothing about
//! the keys is held in memory: a read at revision R seeks the index, so its
//! cost follows what it returns plus the versions it skips, never the size
//! of the store.
//!
//! **Invariant:** only the apply step writes (through [`WriteTxn`]), and the
//! compactor deletes only versions that no read at or above the compacted
//! revision can see. Readers take a RocksDB snapshot and never block either.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};

use prost::Message;
use rocksdb::{ReadOptions, SnapshotWithThreadMode, WriteBatch, DB};

use super::keys::{
    after_key, decode_index_key, index_key, key_prefix, kv_key, seek_at, IndexEntry,
};
use super::revision::Revision;
use crate::error::{Error, Result};
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};
use crate::storage::{Storage, CF_INDEX, CF_KV, CF_META};

const META_REV: &[u8] = b"mvcc/rev";
const META_COMPACT_SCHEDULED: &[u8] = b"mvcc/compact_scheduled";
const META_COMPACT_FINISHED: &[u8] = b"mvcc/compact_finished";

/// Deletions per compaction batch: small enough that a batch never holds up
/// a writer for long, large enough to keep the overhead per batch low.
const COMPACT_BATCH: usize = 1000;

type Snapshot<'a> = SnapshotWithThreadMode<'a, DB>;

/// How to read a range.
#[derive(Debug, Clone, Default)]
pub struct RangeOptions {
    /// At most this many key-values (0: all). `count` ignores it.
    pub limit: usize,
    /// Revision to read at; 0 or less reads the latest.
    pub rev: i64,
    /// Leave values out (they are then never read from disk).
    pub keys_only: bool,
    /// Only count; return no key-values.
    pub count_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the whole range at the read revision, whatever the limit.
    pub count: i64,
    /// The store's current revision (etcd's header revision for a read,
    /// whatever revision it read at).
    pub rev: i64,
}

/// The changes of one main revision, in sub-revision order.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionEvents {
    pub rev: i64,
    pub events: Vec<Event>,
}

/// A finished write transaction, to be written by the apply step together
/// with the applied index.
pub struct WriteOutcome {
    pub batch: WriteBatch,
    /// The store's revision after this transaction.
    pub rev: i64,
    /// What changed, in sub-revision order (empty for no change).
    pub events: Vec<Event>,
}

enum CompactJob {
    Run(i64, Option<tokio::sync::oneshot::Sender<()>>),
}

pub struct MvccStore {
    storage: Storage,
    /// Main revision of the last applied write; readers read at most this.
    current: AtomicI64,
    /// Compacted main revision; reads below it are refused.
    compacted: AtomicI64,
    /// Jobs for the compactor thread; taken on drop to stop it.
    compactor: Mutex<Option<mpsc::Sender<CompactJob>>>,
    compactor_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Readers hold it shared; replacing the whole store (a snapshot from
    /// the leader) holds it exclusively, so no read sees a half-replaced
    /// store.
    replacing: RwLock<()>,
}

impl Drop for MvccStore {
    fn drop(&mut self) {
        // Stop the compactor and wait for it, so the database it holds is
        // closed before the process goes on to exit.
        self.compactor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = self
            .compactor_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = t.join();
        }
    }
}

impl MvccStore {
    /// Opens the store over `storage`, resuming an unfinished compaction.
    pub fn open(storage: Storage) -> Result<Arc<MvccStore>> {
        let (current, scheduled, finished) = stored_revisions(&storage)?;
        let (tx, rx) = mpsc::channel();
        let worker = storage.clone();
        let thread = std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || compactor_loop(worker, rx))
            .map_err(Error::internal)?;
        let store = Arc::new(MvccStore {
            storage,
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(scheduled),
            compactor: Mutex::new(Some(tx)),
            compactor_thread: Mutex::new(Some(thread)),
            replacing: RwLock::new(()),
        });
        if scheduled > finished {
            store.start_compaction(scheduled, None);
        }
        Ok(store)
    }

    pub fn current_revision(&self) -> i64 {
        self.current.load(Ordering::SeqCst)
    }

    pub fn compacted_revision(&self) -> i64 {
        self.compacted.load(Ordering::SeqCst)
    }

    /// Replaces the whole store: `replace` rewrites the database (installs
    /// a snapshot) while no read runs, then the revisions are read again.
    pub fn replace(&self, replace: impl FnOnce() -> Result<()>) -> Result<()> {
        let _exclusive = self.replacing.write().unwrap_or_else(|e| e.into_inner());
        replace()?;
        self.reload()
    }

    fn read_gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.replacing.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the revisions after the database was replaced under the
    /// store (a snapshot installed), resuming its unfinished compaction.
    fn reload(&self) -> Result<()> {
        let (current, scheduled, finished) = stored_revisions(&self.storage)?;
        self.current.store(current, Ordering::SeqCst);
        self.compacted.store(scheduled, Ordering::SeqCst);
        if scheduled > finished {
            self.start_compaction(scheduled, None);
        }
        Ok(())
    }

    /// Reads `[key, end)` (see [`KeyRange`] for `end`'s forms).
    pub fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
        let _gate = self.read_gate();
        // Order matters: the current revision first, so the snapshot holds
        // every write up to it; the compacted revision last, so a compaction
        // that could remove what we read started after our snapshot.
        let current = self.current_revision();
        let snap = self.storage.db().snapshot();
        let rev = self.check_read_rev(opts.rev, current)?;
        let mut result = range_in(&self.storage, &snap, key, end, rev, opts)?;
        // etcd's header revision is the store's, not the one read at.
        result.rev = current;
        Ok(result)
    }

    fn check_read_rev(&self, requested: i64, current: i64) -> Result<i64> {
        let rev = if requested <= 0 { current } else { requested };
        if rev > current {
            return Err(Error::FutureRevision);
        }
        if rev < self.compacted_revision() {
            return Err(Error::Compacted);
        }
        Ok(rev)
    }

    /// The events of revisions `from..=to`, oldest first, at most
    /// `max_revisions` revisions (a revision is never split). Each event
    /// carries its key's previous version as `prev_kv` when that version is
    /// still stored. Refuses `from` below the compacted revision.
    pub fn history(&self, from: i64, to: i64, max_revisions: usize) -> Result<Vec<RevisionEvents>> {
        let _gate = self.read_gate();
        let snap = self.storage.db().snapshot();
        if from < self.compacted_revision() {
            return Err(Error::Compacted);
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(Revision::new(to + 1, 0).to_bytes().to_vec());
        let mut it = snap.raw_iterator_cf_opt(self.storage.cf(CF_KV), ro);
        it.seek(Revision::new(from, 0).to_bytes());
        let mut out: Vec<RevisionEvents> = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let rev = Revision::from_bytes(k).ok_or_else(corrupt_index)?;
            if out.last().map(|r| r.rev) != Some(rev.main) {
                if out.len() == max_revisions {
                    break;
                }
                out.push(RevisionEvents {
                    rev: rev.main,
                    events: Vec::new(),
                });
            }
            let kv = KeyValue::decode(v).map_err(Error::internal)?;
            let prev = match latest(&self.storage, &snap, &kv.key, rev.main - 1)? {
                Some((r, e)) if !e.tombstone => Some(read_kv(&self.storage, &snap, r)?),
                _ => None,
            };
            let kind = if k.len() == 17 {
                EventType::Delete
            } else {
                EventType::Put
            };
            if let Some(last) = out.last_mut() {
                last.events.push(Event {
                    r#type: kind as i32,
                    kv: Some(kv),
                    prev_kv: prev,
                });
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// etcd's HashKV: a CRC-32C over the `key` bucket as etcd lays it out
    /// (the bucket name, then every revision key and its value, in order)
    /// up to revision `rev` (0: the current one). Versions at or below the
    /// compacted revision count only while they are their key's live
    /// version at `rev` (etcd's "keep" set) — unless no key is live at
    /// `rev`, when etcd filters nothing. Same history, same hash, on every
    /// member and on etcd. Returns (hash, compacted revision, revision
    /// hashed).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64)> {
        let _gate = self.read_gate();
        let current = self.current_revision();
        let snap = self.storage.db().snapshot();
        let compacted = self.compacted_revision();
        // etcd 3.5: the compacted revision itself may still be hashed.
        if rev > 0 && rev < compacted {
            return Err(Error::Compacted);
        }
        if rev > current {
            return Err(Error::FutureRevision);
        }
        let rev = if rev <= 0 { current } else { rev };
        let mut any_live = false;
        scan(&self.storage, &snap, b"", &[0], rev, |_, _, _| {
            any_live = true;
            false
        })?;
        let mut hash = crc32c::crc32c(b"key");
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(Revision::new(rev + 1, 0).to_bytes().to_vec());
        let mut it = snap.raw_iterator_cf_opt(self.storage.cf(CF_KV), ro);
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let r = Revision::from_bytes(k).ok_or_else(corrupt_index)?;
            let tombstone = k.len() > 16;
            let kv = KeyValue::decode(v).map_err(Error::internal)?;
            let counted = if any_live && r.main <= compacted {
                let live = latest(&self.storage, &snap, &kv.key, rev)?;
                !tombstone && live.is_some_and(|(lr, e)| lr == r && !e.tombstone)
            } else {
                // etcd leaves out a tombstone at the compacted revision
                // (versions differ on whether compaction keeps it).
                !(tombstone && r.main == compacted)
            };
            if counted {
                let (ek, ev) = etcd_record(k, v)?;
                hash = crc32c::crc32c_append(hash, &ek);
                hash = crc32c::crc32c_append(hash, &ev);
            }
            it.next();
        }
        it.status()?;
        Ok((hash, compacted, rev))
    }

    /// Starts a write transaction. Only the apply step calls this, one at a
    /// time.
    pub fn write(&self) -> WriteTxn<'_> {
        let base = self.current_revision();
        WriteTxn {
            store: self,
            snap: self.storage.db().snapshot(),
            base,
            sub: 0,
            overlay: BTreeMap::new(),
            batch: WriteBatch::default(),
            events: Vec::new(),
        }
    }

    /// Makes a written transaction visible to readers. Called by the apply
    /// step after the batch is in the database.
    pub fn publish(&self, rev: i64) {
        self.current.store(rev, Ordering::SeqCst);
    }

    /// Checks a compaction request against the store (etcd's rules) and adds
    /// the scheduled compaction to `batch`. After the batch is written, call
    /// [`MvccStore::start_compaction`].
    pub fn schedule_compaction(&self, rev: i64, batch: &mut WriteBatch) -> Result<()> {
        if rev <= self.compacted_revision() {
            return Err(Error::Compacted);
        }
        if rev > self.current_revision() {
            return Err(Error::FutureRevision);
        }
        batch.put_cf(
            self.storage.cf(CF_META),
            META_COMPACT_SCHEDULED,
            rev.to_be_bytes(),
        );
        Ok(())
    }

    /// Refuses reads below `rev` from now on and removes the versions it
    /// hides in the background; `done` fires when they are gone.
    pub fn start_compaction(&self, rev: i64, done: Option<tokio::sync::oneshot::Sender<()>>) {
        self.compacted.fetch_max(rev, Ordering::SeqCst);
        let tx = self.compactor.lock().unwrap_or_else(|e| e.into_inner());
        // If the compactor is gone (we are shutting down), the scheduled
        // compaction is redone at the next start.
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(CompactJob::Run(rev, done));
        }
    }
}

/// Reads a range from a snapshot at `rev` (already checked).
fn range_in(
    storage: &Storage,
    snap: &Snapshot<'_>,
    key: &[u8],
    end: &[u8],
    rev: i64,
    opts: &RangeOptions,
) -> Result<RangeResult> {
    let mut result = RangeResult {
        rev,
        ..Default::default()
    };
    let mut found: Vec<(Vec<u8>, Revision, IndexEntry)> = Vec::new();
    scan(storage, snap, key, end, rev, |k, r, e| {
        result.count += 1;
        if !opts.count_only && (opts.limit == 0 || found.len() < opts.limit) {
            found.push((k, r, e));
        }
        true
    })?;
    for (k, r, e) in found {
        result.kvs.push(if opts.keys_only {
            kv_from_index(k, r, &e)
        } else {
            read_kv(storage, snap, r)?
        });
    }
    Ok(result)
}

fn kv_from_index(key: Vec<u8>, rev: Revision, e: &IndexEntry) -> KeyValue {
    KeyValue {
        key,
        create_revision: e.create_revision,
        mod_revision: rev.main,
        version: e.version,
        value: Vec::new(),
        lease: e.lease,
    }
}

fn read_kv(storage: &Storage, snap: &Snapshot<'_>, rev: Revision) -> Result<KeyValue> {
    let raw = snap
        .get_cf(storage.cf(CF_KV), kv_key(rev, false))?
        .ok_or_else(|| Error::Internal(format!("mvcc: revision {rev:?} missing from kv")))?;
    KeyValue::decode(raw.as_slice()).map_err(Error::internal)
}

/// Visits the live version at `rev` of every key in `[key, end)`, in key
/// order, until `visit` returns false. `end` empty means just `key`; `end`
/// `"\0"` means every key from `key` on (etcd's conventions).
fn scan(
    storage: &Storage,
    snap: &Snapshot<'_>,
    key: &[u8],
    end: &[u8],
    rev: i64,
    mut visit: impl FnMut(Vec<u8>, Revision, IndexEntry) -> bool,
) -> Result<()> {
    let start = key_prefix(key);
    let upper = match end {
        [] => Some(after_key(&start)),
        [0] => None,
        e if e <= key => return Ok(()),
        e => Some(key_prefix(e)),
    };
    let mut ro = ReadOptions::default();
    if let Some(u) = upper {
        ro.set_iterate_upper_bound(u);
    }
    let mut it = snap.raw_iterator_cf_opt(storage.cf(CF_INDEX), ro);
    it.seek(seek_at(&start, Revision::new(rev, i64::MAX)));
    while let Some(k) = it.key() {
        let (plen, ukey, r) = decode_index_key(k).ok_or_else(corrupt_index)?;
        let prefix = k[..plen].to_vec();
        if r.main > rev {
            // Newer than the read: jump to this key's version at `rev`.
            it.seek(seek_at(&prefix, Revision::new(rev, i64::MAX)));
            continue;
        }
        let entry = it
            .value()
            .and_then(IndexEntry::decode)
            .ok_or_else(corrupt_index)?;
        if !entry.tombstone && !visit(ukey, r, entry) {
            break;
        }
        // Older versions of this key: step once (usually there are none),
        // seek past them otherwise.
        it.next();
        if it.key().is_some_and(|k| k.starts_with(&prefix)) {
            it.seek(after_key(&prefix));
        }
    }
    it.status()?;
    Ok(())
}

/// The newest version of `key` at `rev`, tombstones included.
fn latest(
    storage: &Storage,
    snap: &Snapshot<'_>,
    key: &[u8],
    rev: i64,
) -> Result<Option<(Revision, IndexEntry)>> {
    let prefix = key_prefix(key);
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(after_key(&prefix));
    let mut it = snap.raw_iterator_cf_opt(storage.cf(CF_INDEX), ro);
    it.seek(seek_at(&prefix, Revision::new(rev, i64::MAX)));
    match (it.key(), it.value()) {
        (Some(k), Some(v)) => {
            let (_, _, r) = decode_index_key(k).ok_or_else(corrupt_index)?;
            let e = IndexEntry::decode(v).ok_or_else(corrupt_index)?;
            Ok(Some((r, e)))
        }
        _ => {
            it.status()?;
            Ok(None)
        }
    }
}

fn corrupt_index() -> Error {
    Error::Internal("mvcc: corrupt index record".into())
}

/// One write transaction of the apply step: puts and deletes get sub
/// revisions of one main revision, reads see the transaction's own writes
/// (as etcd's do), and nothing is visible to others until the apply step
/// writes the batch and publishes the revision.
pub struct WriteTxn<'a> {
    store: &'a MvccStore,
    snap: Snapshot<'a>,
    base: i64,
    sub: i64,
    /// Keys written by this transaction: their newest version.
    overlay: BTreeMap<Vec<u8>, (Revision, IndexEntry, KeyValue)>,
    batch: WriteBatch,
    events: Vec<Event>,
}

impl WriteTxn<'_> {
    /// The revision this transaction reads at: the base, or the new one once
    /// it has changed something.
    pub fn rev(&self) -> i64 {
        if self.events.is_empty() {
            self.base
        } else {
            self.base + 1
        }
    }

    pub fn compacted_revision(&self) -> i64 {
        self.store.compacted_revision()
    }

    /// The live value of `key` as this transaction sees it.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        if let Some((_, e, kv)) = self.overlay.get(key) {
            return Ok((!e.tombstone).then(|| kv.clone()));
        }
        match latest(&self.store.storage, &self.snap, key, self.base)? {
            Some((r, e)) if !e.tombstone => Ok(Some(read_kv(&self.store.storage, &self.snap, r)?)),
            _ => Ok(None),
        }
    }

    /// Reads a range as etcd's write transaction does: at `opts.rev`, or at
    /// the transaction's own state when `opts.rev` is 0.
    pub fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
        let current = self.rev();
        let rev = if opts.rev <= 0 { current } else { opts.rev };
        if rev > current {
            return Err(Error::FutureRevision);
        }
        if rev < self.store.compacted_revision() {
            return Err(Error::Compacted);
        }
        let own_writes = rev > self.base && self.overlay_touches(key, end);
        if !own_writes {
            let at = rev.min(self.base);
            let mut r = range_in(&self.store.storage, &self.snap, key, end, at, opts)?;
            r.rev = current;
            return Ok(r);
        }
        // Merge the base state with this transaction's writes.
        let all = RangeOptions {
            limit: 0,
            rev: self.base,
            keys_only: opts.keys_only,
            count_only: false,
        };
        let base = range_in(&self.store.storage, &self.snap, key, end, self.base, &all)?;
        let mut merged: BTreeMap<Vec<u8>, KeyValue> = base
            .kvs
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        for (k, (_, e, kv)) in &self.overlay {
            if in_range(k, key, end) {
                if e.tombstone {
                    merged.remove(k);
                } else {
                    let mut kv = kv.clone();
                    if opts.keys_only {
                        kv.value.clear();
                    }
                    merged.insert(k.clone(), kv);
                }
            }
        }
        let count = merged.len() as i64;
        let kvs = if opts.count_only {
            Vec::new()
        } else {
            let n = if opts.limit == 0 {
                merged.len()
            } else {
                opts.limit
            };
            merged.into_values().take(n).collect()
        };
        Ok(RangeResult {
            kvs,
            count,
            rev: current,
        })
    }

    fn overlay_touches(&self, key: &[u8], end: &[u8]) -> bool {
        self.overlay.keys().any(|k| in_range(k, key, end))
    }

    /// Writes `key`; returns the version it replaced, if it was live.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<Option<KeyValue>> {
        let prev = self.get(key)?;
        let rev = Revision::new(self.base + 1, self.sub);
        self.sub += 1;
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev.main, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        let entry = IndexEntry {
            tombstone: false,
            create_revision,
            version,
            lease,
        };
        let s = &self.store.storage;
        self.batch
            .put_cf(s.cf(CF_KV), kv_key(rev, false), kv.encode_to_vec());
        self.batch
            .put_cf(s.cf(CF_INDEX), index_key(key, rev), entry.encode());
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv.clone()),
            prev_kv: prev.clone(),
        });
        self.overlay.insert(key.to_vec(), (rev, entry, kv));
        Ok(prev)
    }

    /// Deletes every live key in `[key, end)`; returns what was deleted.
    pub fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>> {
        let opts = RangeOptions::default();
        let live = self.range(key, end, &opts)?.kvs;
        for prev in &live {
            let rev = Revision::new(self.base + 1, self.sub);
            self.sub += 1;
            let entry = IndexEntry {
                tombstone: true,
                create_revision: 0,
                version: 0,
                lease: 0,
            };
            let kv = KeyValue {
                key: prev.key.clone(),
                mod_revision: rev.main,
                ..Default::default()
            };
            let s = &self.store.storage;
            self.batch
                .put_cf(s.cf(CF_KV), kv_key(rev, true), kv.encode_to_vec());
            self.batch
                .put_cf(s.cf(CF_INDEX), index_key(&prev.key, rev), entry.encode());
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(kv.clone()),
                prev_kv: Some(prev.clone()),
            });
            self.overlay.insert(prev.key.clone(), (rev, entry, kv));
        }
        Ok(live)
    }

    /// Ends the transaction: the batch to write (with the new store
    /// revision in it when something changed) and the events.
    pub fn finish(mut self) -> WriteOutcome {
        let rev = self.rev();
        if !self.events.is_empty() {
            self.batch
                .put_cf(self.store.storage.cf(CF_META), META_REV, rev.to_be_bytes());
        }
        WriteOutcome {
            batch: self.batch,
            rev,
            events: self.events,
        }
    }
}

/// Whether `k` lies in the range given as etcd's (key, range_end).
pub fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        e => k >= key && k < e,
    }
}

fn compactor_loop(storage: Storage, rx: mpsc::Receiver<CompactJob>) {
    while let Ok(CompactJob::Run(rev, done)) = rx.recv() {
        match compact_physically(&storage, rev) {
            Ok(removed) => {
                tracing::info!(revision = rev, removed, "finished scheduled compaction")
            }
            Err(e) => tracing::error!(revision = rev, error = %e, "compaction failed"),
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// Removes every version that no read at or above `rev` can see: for each
/// key, all versions older than its newest one at `rev`, and that one too
/// if it is a deletion. Works in small batches so writers never wait long.
fn compact_physically(storage: &Storage, rev: i64) -> Result<usize> {
    let (index, kv) = (storage.cf(CF_INDEX), storage.cf(CF_KV));
    let mut batch = WriteBatch::default();
    let mut removed = 0usize;
    let mut it = storage.db().raw_iterator_cf(index);
    it.seek_to_first();
    // The key whose newest version at `rev` we have passed: its older
    // versions all go.
    let mut kept_prefix: Option<Vec<u8>> = None;
    while let Some(k) = it.key() {
        let (plen, _, r) = decode_index_key(k).ok_or_else(corrupt_index)?;
        let prefix = &k[..plen];
        if r.main > rev {
            it.seek(seek_at(prefix, Revision::new(rev, i64::MAX)));
            continue;
        }
        let entry = it
            .value()
            .and_then(IndexEntry::decode)
            .ok_or_else(corrupt_index)?;
        let older = kept_prefix.as_deref() == Some(prefix);
        if older || entry.tombstone {
            batch.delete_cf(index, k);
            batch.delete_cf(kv, kv_key(r, entry.tombstone));
            removed += 1;
        }
        if !older {
            kept_prefix = Some(prefix.to_vec());
        }
        if batch.len() >= 2 * COMPACT_BATCH {
            storage.write(std::mem::take(&mut batch), false)?;
        }
        it.next();
    }
    it.status()?;
    batch.put_cf(
        storage.cf(CF_META),
        META_COMPACT_FINISHED,
        rev.to_be_bytes(),
    );
    storage.write(batch, false)?;
    Ok(removed)
}

/// etcd's revision key for one of ours: main, `_`, sub (and `t` for a
/// tombstone), where ours has no separator.
fn etcd_revision_key(k: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(k.len() + 1);
    out.extend_from_slice(&k[..8]);
    out.push(b'_');
    out.extend_from_slice(&k[8..]);
    out
}

/// One `kv` record as etcd's `key` bucket holds it: etcd's revision key, and
/// the value — for a tombstone, the key alone (etcd keeps nothing else).
fn etcd_record<'v>(k: &[u8], v: &'v [u8]) -> Result<(Vec<u8>, std::borrow::Cow<'v, [u8]>)> {
    let ek = etcd_revision_key(k);
    if k.len() > 16 {
        let kv = KeyValue::decode(v).map_err(Error::internal)?;
        let bare = KeyValue {
            key: kv.key,
            ..Default::default()
        };
        return Ok((ek, std::borrow::Cow::Owned(bare.encode_to_vec())));
    }
    Ok((ek, std::borrow::Cow::Borrowed(v)))
}

/// The whole history as etcd's `key` bucket, from a consistent view, in
/// order: what a backup in etcd's format holds.
pub fn etcd_key_bucket(
    storage: &Storage,
    snap: &Snapshot<'_>,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let mut it = snap.raw_iterator_cf(storage.cf(CF_KV));
    it.seek_to_first();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let (ek, ev) = etcd_record(k, v)?;
        f(&ek, &ev)?;
        it.next();
    }
    it.status()?;
    Ok(())
}

/// The store's current revision in a consistent view.
pub fn revision_at(storage: &Storage, snap: &Snapshot<'_>) -> Result<i64> {
    Ok(snap
        .get_cf(storage.cf(CF_META), META_REV)?
        .and_then(|v| v.as_slice().try_into().ok().map(i64::from_be_bytes))
        .unwrap_or(1))
}

/// The compaction state in a consistent view: (scheduled, finished)
/// revisions, -1 when none.
pub fn compaction_at(storage: &Storage, snap: &Snapshot<'_>) -> Result<(i64, i64)> {
    let meta = storage.cf(CF_META);
    let read = |k: &[u8]| -> Result<i64> {
        Ok(snap
            .get_cf(meta, k)?
            .map(|v| i64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8])))
            .unwrap_or(-1))
    };
    Ok((read(META_COMPACT_SCHEDULED)?, read(META_COMPACT_FINISHED)?))
}

/// Restore: one record of etcd's `key` bucket (etcd's revision key and
/// value) into our `kv` and `index` families, through `batch`. Returns its
/// main revision.
pub fn import_etcd_record(
    storage: &Storage,
    batch: &mut WriteBatch,
    etcd_key: &[u8],
    value: &[u8],
) -> Result<i64> {
    let bad = || Error::Internal(format!("not an etcd revision key: {etcd_key:?}"));
    if !(etcd_key.len() == 17 || etcd_key.len() == 18 && etcd_key[17] == b't')
        || etcd_key[8] != b'_'
    {
        return Err(bad());
    }
    let main = i64::from_be_bytes(etcd_key[..8].try_into().map_err(|_| bad())?);
    let sub = i64::from_be_bytes(etcd_key[9..17].try_into().map_err(|_| bad())?);
    let rev = Revision::new(main, sub);
    let tombstone = etcd_key.len() == 18;
    let kv = KeyValue::decode(value).map_err(Error::internal)?;
    if tombstone {
        // etcd keeps the key alone; ours also knows its revision.
        let stored = KeyValue {
            key: kv.key.clone(),
            mod_revision: main,
            ..Default::default()
        };
        let entry = IndexEntry {
            tombstone: true,
            create_revision: 0,
            version: 0,
            lease: 0,
        };
        batch.put_cf(storage.cf(CF_KV), kv_key(rev, true), stored.encode_to_vec());
        batch.put_cf(
            storage.cf(CF_INDEX),
            index_key(&kv.key, rev),
            entry.encode(),
        );
    } else {
        let entry = IndexEntry {
            tombstone: false,
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
        };
        batch.put_cf(storage.cf(CF_KV), kv_key(rev, false), value);
        batch.put_cf(
            storage.cf(CF_INDEX),
            index_key(&kv.key, rev),
            entry.encode(),
        );
    }
    Ok(main)
}

/// Restore: the store's revision and compaction state (-1: none).
pub fn import_revisions(
    storage: &Storage,
    batch: &mut WriteBatch,
    current: i64,
    compact_scheduled: i64,
    compact_finished: i64,
) {
    let meta = storage.cf(CF_META);
    // As etcd's restore: a compaction may have removed the newest records
    // (tombstones at or below it), so the store is at least at the
    // compacted revision.
    let current = current.max(compact_finished).max(compact_scheduled).max(1);
    batch.put_cf(meta, META_REV, current.to_be_bytes());
    if compact_scheduled >= 0 {
        batch.put_cf(
            meta,
            META_COMPACT_SCHEDULED,
            compact_scheduled.to_be_bytes(),
        );
    }
    if compact_finished >= 0 {
        batch.put_cf(meta, META_COMPACT_FINISHED, compact_finished.to_be_bytes());
    }
}

/// Every live key's lease (keys whose newest version is not a deletion and
/// carries a lease), in key order, from the stored index.
pub fn live_leases(storage: &Storage, mut f: impl FnMut(&[u8], i64) -> Result<()>) -> Result<()> {
    let mut it = storage.db().raw_iterator_cf(storage.cf(CF_INDEX));
    it.seek_to_first();
    let mut last_prefix: Option<Vec<u8>> = None;
    while let Some(k) = it.key() {
        let (plen, key, _) = decode_index_key(k).ok_or_else(corrupt_index)?;
        // Newest version first: only the first record of each key counts.
        if last_prefix.as_deref() != Some(&k[..plen]) {
            last_prefix = Some(k[..plen].to_vec());
            let entry = it
                .value()
                .and_then(IndexEntry::decode)
                .ok_or_else(corrupt_index)?;
            if !entry.tombstone && entry.lease != 0 {
                f(&key, entry.lease)?;
            }
        }
        it.next();
    }
    it.status()?;
    Ok(())
}

/// The stored current revision and compaction state: (current, scheduled,
/// finished), -1 for a compaction that never happened. etcd's store starts
/// at revision 1; the first write makes it 2.
fn stored_revisions(storage: &Storage) -> Result<(i64, i64, i64)> {
    let meta = storage.cf(CF_META);
    let read = |k: &[u8]| -> Result<Option<i64>> {
        Ok(storage
            .db()
            .get_cf(meta, k)?
            .map(|v| i64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8]))))
    };
    Ok((
        read(META_REV)?.unwrap_or(1),
        read(META_COMPACT_SCHEDULED)?.unwrap_or(-1),
        read(META_COMPACT_FINISHED)?.unwrap_or(-1),
    ))
}
