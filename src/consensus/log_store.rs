//! raft-rs's `Storage` on RocksDB: the log, the hard state and the
//! configuration of this member's raft.
//!
//! Layout (family `raft_log`): entry index, big-endian → `eraftpb.Entry`.
//! Family `raft_state`: `hard_state`, `conf_state` (with `conf_index`, the
//! entry it was last changed by), `truncated` (index and term of the last
//! entry removed by log compaction, or of the snapshot the log starts after).
//!
//! **Invariant:** [`LogStore::append`] returns only after the entries, the
//! term and the vote are fsynced; raft-rs is told they are persisted only
//! then.

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::WriteBatch;

use crate::error::{Error, Result};
use crate::storage::{Storage, CF_RAFT_LOG, CF_RAFT_STATE};

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const TRUNCATED: &[u8] = b"truncated";
const CONF_INDEX: &[u8] = b"conf_index";

pub struct LogStore {
    storage: Storage,
    hard_state: HardState,
    conf_state: ConfState,
    /// The entry that made `conf_state` (a conf change, or a snapshot).
    conf_index: u64,
    truncated_index: u64,
    truncated_term: u64,
    /// Terms of the entries after `truncated_index`, in order: `term()` is
    /// asked for often and must not decode whole entries. Bounded by log
    /// compaction (`--snapshot-count`).
    terms: VecDeque<u64>,
}

impl LogStore {
    pub fn open(storage: Storage) -> Result<LogStore> {
        let state = storage.cf(CF_RAFT_STATE);
        let db = storage.db();
        let hard_state = match db.get_cf(state, HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(Error::internal)?,
            None => HardState::default(),
        };
        let conf_state = match db.get_cf(state, CONF_STATE)? {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(Error::internal)?,
            None => ConfState::default(),
        };
        let (truncated_index, truncated_term) = match db.get_cf(state, TRUNCATED)? {
            Some(b) if b.len() == 16 => (
                u64::from_be_bytes(b[..8].try_into().unwrap_or_default()),
                u64::from_be_bytes(b[8..].try_into().unwrap_or_default()),
            ),
            _ => (0, 0),
        };
        let conf_index = match db.get_cf(state, CONF_INDEX)? {
            Some(b) if b.len() == 8 => u64::from_be_bytes(b[..8].try_into().unwrap_or_default()),
            _ => 0,
        };
        let terms = load_terms(&storage, truncated_index)?;
        Ok(LogStore {
            storage,
            hard_state,
            conf_state,
            conf_index,
            truncated_index,
            truncated_term,
            terms,
        })
    }

    /// Whether this member has a configuration (was bootstrapped before).
    pub fn is_initialized(&self) -> bool {
        !self.conf_state.voters.is_empty() || !self.conf_state.learners.is_empty()
    }

    /// Starts a new log whose configuration is `voters`, as etcd does: as
    /// if the members were added at index 1 in term 1 — so every member of
    /// a new cluster starts from the same state, and the first election
    /// makes term 2, as in etcd.
    pub fn bootstrap(&mut self, voters: &[u64]) -> Result<()> {
        let cs = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        let hs = HardState {
            term: 1,
            commit: 1,
            ..Default::default()
        };
        let mut batch = WriteBatch::default();
        let state = self.storage.cf(CF_RAFT_STATE);
        batch.put_cf(
            state,
            CONF_STATE,
            cs.write_to_bytes().map_err(Error::internal)?,
        );
        batch.put_cf(
            state,
            HARD_STATE,
            hs.write_to_bytes().map_err(Error::internal)?,
        );
        batch.put_cf(state, TRUNCATED, pair(1, 1));
        self.storage.write(batch, true)?;
        self.conf_state = cs;
        self.hard_state = hs;
        self.truncated_index = 1;
        self.truncated_term = 1;
        self.terms.clear();
        Ok(())
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn last_index(&self) -> u64 {
        self.truncated_index + self.terms.len() as u64
    }

    pub fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }

    /// Appends entries (replacing any conflicting suffix) and saves the hard
    /// state: one fsync for everything in this call, when anything in it
    /// must survive a crash. As in etcd, a hard state whose only change is
    /// the commit index is written without one: a lost commit index is
    /// learnt again, and RocksDB's log keeps writes in order, so an applied
    /// index that reached the disk implies the commit index did too.
    pub fn append(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<()> {
        let must_sync = !entries.is_empty()
            || hs.is_some_and(|h| h.term != self.hard_state.term || h.vote != self.hard_state.vote);
        let mut batch = WriteBatch::default();
        let log = self.storage.cf(CF_RAFT_LOG);
        if let Some(first) = entries.first() {
            if first.index <= self.truncated_index {
                return Err(Error::Internal(format!(
                    "append at {} overwrites the compacted log (truncated at {})",
                    first.index, self.truncated_index
                )));
            }
            let new_last = entries[entries.len() - 1].index;
            for i in new_last + 1..=self.last_index() {
                batch.delete_cf(log, i.to_be_bytes());
            }
            for e in entries {
                batch.put_cf(
                    log,
                    e.index.to_be_bytes(),
                    e.write_to_bytes().map_err(Error::internal)?,
                );
            }
        }
        if let Some(hs) = hs {
            batch.put_cf(
                self.storage.cf(CF_RAFT_STATE),
                HARD_STATE,
                hs.write_to_bytes().map_err(Error::internal)?,
            );
        }
        let started = std::time::Instant::now();
        self.storage.write(batch, must_sync)?;
        if must_sync {
            crate::metrics::hooks::wal_fsync(started.elapsed());
        }
        if let Some(first) = entries.first() {
            self.terms
                .truncate((first.index - self.truncated_index - 1) as usize);
            self.terms.extend(entries.iter().map(|e| e.term));
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Raises the stored commit index. Unsynced: a commit index lost in a
    /// crash is learnt again from the log and the leader.
    pub fn set_commit(&mut self, commit: u64) -> Result<()> {
        if commit <= self.hard_state.commit {
            return Ok(());
        }
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.storage.cf(CF_RAFT_STATE),
            HARD_STATE,
            hs.write_to_bytes().map_err(Error::internal)?,
        );
        self.storage.write(batch, false)?;
        self.hard_state = hs;
        Ok(())
    }

    /// Records the configuration made by the conf change at `index`.
    pub fn set_conf_state(&mut self, cs: ConfState, index: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        let state = self.storage.cf(CF_RAFT_STATE);
        batch.put_cf(
            state,
            CONF_STATE,
            cs.write_to_bytes().map_err(Error::internal)?,
        );
        batch.put_cf(state, CONF_INDEX, index.to_be_bytes());
        self.storage.write(batch, true)?;
        self.conf_state = cs;
        self.conf_index = index;
        Ok(())
    }

    /// Starts the log over after a snapshot received from the leader: no
    /// entries, the snapshot's index and term as the truncation point, its
    /// configuration. (The store's data is installed by the apply step.)
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        let (index, term) = (meta.index, meta.term);
        let cs = meta.get_conf_state().clone();
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(index);
        hs.term = hs.term.max(term);
        let mut batch = WriteBatch::default();
        let log = self.storage.cf(CF_RAFT_LOG);
        if self.last_index() >= self.first_index() {
            batch.delete_range_cf(
                log,
                self.first_index().to_be_bytes(),
                (self.last_index() + 1).to_be_bytes(),
            );
        }
        let state = self.storage.cf(CF_RAFT_STATE);
        batch.put_cf(state, TRUNCATED, pair(index, term));
        batch.put_cf(
            state,
            CONF_STATE,
            cs.write_to_bytes().map_err(Error::internal)?,
        );
        batch.put_cf(state, CONF_INDEX, index.to_be_bytes());
        batch.put_cf(
            state,
            HARD_STATE,
            hs.write_to_bytes().map_err(Error::internal)?,
        );
        self.storage.write(batch, true)?;
        self.terms.clear();
        self.truncated_index = index;
        self.truncated_term = term;
        self.conf_state = cs;
        self.conf_index = index;
        self.hard_state = hs;
        Ok(())
    }

    /// Drops every entry up to and including `index` (which must be
    /// applied), keeping its term for raft's log matching.
    pub fn compact_to(&mut self, index: u64) -> Result<()> {
        if index <= self.truncated_index || index > self.last_index() {
            return Ok(());
        }
        let term = self
            .term_of(index)
            .ok_or_else(|| Error::Internal("term missing".into()))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.storage.cf(CF_RAFT_LOG),
            self.first_index().to_be_bytes(),
            (index + 1).to_be_bytes(),
        );
        batch.put_cf(self.storage.cf(CF_RAFT_STATE), TRUNCATED, pair(index, term));
        self.storage.write(batch, false)?;
        self.terms.drain(..(index - self.truncated_index) as usize);
        self.truncated_index = index;
        self.truncated_term = term;
        Ok(())
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.truncated_index {
            return Some(self.truncated_term);
        }
        let offset = index.checked_sub(self.truncated_index + 1)?;
        self.terms.get(offset as usize).copied()
    }
}

/// The terms of the stored entries after `truncated_index`, checking that
/// the log has no gap.
fn load_terms(storage: &Storage, truncated_index: u64) -> Result<VecDeque<u64>> {
    let mut terms = VecDeque::new();
    let mut it = storage.db().raw_iterator_cf(storage.cf(CF_RAFT_LOG));
    it.seek((truncated_index + 1).to_be_bytes());
    let mut expect = truncated_index + 1;
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let index = u64::from_be_bytes(k.try_into().map_err(Error::internal)?);
        if index != expect {
            return Err(Error::Internal(format!(
                "raft log has a gap: expected entry {expect}, found {index}"
            )));
        }
        let e = Entry::parse_from_bytes(v).map_err(Error::internal)?;
        terms.push_back(e.term);
        expect += 1;
        it.next();
    }
    it.status()?;
    Ok(terms)
}

fn pair(a: u64, b: u64) -> Vec<u8> {
    let mut v = a.to_be_bytes().to_vec();
    v.extend_from_slice(&b.to_be_bytes());
    v
}

fn store_err(e: Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let mut it = self
            .storage
            .db()
            .raw_iterator_cf(self.storage.cf(CF_RAFT_LOG));
        it.seek(low.to_be_bytes());
        for index in low..high {
            let Some(v) = it.value() else {
                return Err(raft::Error::Store(StorageError::Unavailable));
            };
            let e = Entry::parse_from_bytes(v).map_err(|e| store_err(Error::internal(e)))?;
            if e.index != index {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
            size += v.len() as u64;
            // Always at least one entry, however large.
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e);
            it.next();
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index())
    }

    /// Only the metadata: the store itself is streamed to the follower by
    /// the transport, from a consistent view taken when it starts sending.
    /// That view is at or past `applied` (applying only moves forward), and
    /// the follower's apply step skips entries its store already holds, so
    /// the follower ends up exactly where replaying the log would put it.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let applied = crate::apply::stored_applied_index(&self.storage).map_err(store_err)?;
        // The configuration must be the one in force at `applied`: wait
        // until a committed conf change is applied too (raft asks again).
        if applied < self.conf_index || applied < request_index {
            return Err(unavailable());
        }
        let term = self.term_of(applied).ok_or_else(unavailable)?;
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}
