//! The apply thread: runs committed entries through the apply step while the
//! raft thread goes on persisting the next ones — fsync and apply overlap,
//! as in etcd.
//!
//! It owns the applier and the waiters of proposals and linearizable reads;
//! everything reaches it as an [`ApplyMsg`] through one FIFO channel, so a
//! waiter is always registered before its entry arrives.
//!
//! **Invariant:** entries are applied in log order, one at a time, and a
//! client is answered only after its entry is applied.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType};
use tokio::sync::oneshot;

use super::node::RaftStatus;
use crate::apply::{Applier, Response};
use crate::error::Result;

pub enum ApplyMsg {
    /// A proposal of this member's, to be answered when applied.
    Register {
        id: u64,
        done: oneshot::Sender<Result<Response>>,
    },
    /// Committed entries, in order (conf changes already taken into raft
    /// by the raft thread).
    Entries(Vec<Entry>),
    /// Reads that may go ahead once everything up to `index` is applied.
    ReadReady {
        index: u64,
        waiters: Vec<oneshot::Sender<Result<()>>>,
    },
    /// This member became leader, or stopped being one.
    Leader(bool),
    /// Replace the store with the snapshot staged in `dir`, which the raft
    /// log now starts after (`index`).
    Install { dir: std::path::PathBuf, index: u64 },
}

/// Clean up abandoned waiters after this many registrations.
const SWEEP_EVERY: u64 = 4096;

pub fn run(
    mut applier: Applier,
    member: u64,
    status: Arc<RaftStatus>,
    rx: mpsc::Receiver<ApplyMsg>,
) -> Result<()> {
    let mut waiters: HashMap<u64, oneshot::Sender<Result<Response>>> = HashMap::new();
    let mut reads: Vec<(u64, Vec<oneshot::Sender<Result<()>>>)> = Vec::new();
    let mut registered = 0u64;
    status
        .applied
        .store(applier.applied_index(), Ordering::SeqCst);
    while let Ok(msg) = rx.recv() {
        match msg {
            ApplyMsg::Register { id, done } => {
                waiters.insert(id, done);
                registered += 1;
                if registered.is_multiple_of(SWEEP_EVERY) {
                    // Clients that timed out: their entries may still
                    // apply, but nobody waits for the answer.
                    waiters.retain(|_, w| !w.is_closed());
                }
            }
            ApplyMsg::Entries(entries) => {
                for e in entries {
                    // Already in the store (before a restart, or brought
                    // by a snapshot that reached past this entry).
                    if e.index <= applier.applied_index() {
                        continue;
                    }
                    let started = std::time::Instant::now();
                    let applied = match e.get_entry_type() {
                        EntryType::EntryNormal if !e.get_data().is_empty() => {
                            applier.apply(e.index, e.get_data())?
                        }
                        EntryType::EntryConfChange => {
                            let cc = ConfChange::parse_from_bytes(e.get_data())
                                .map_err(crate::error::Error::internal)?;
                            if cc.get_change_type() == ConfChangeType::RemoveNode
                                && cc.node_id == member
                            {
                                status.removed.store(true, Ordering::SeqCst);
                                status.removed_notify.notify_one();
                            }
                            applier.apply_conf_change(e.index, &cc)?
                        }
                        // Empty entries of a new leader.
                        _ => {
                            applier.apply_empty(e.index)?;
                            None
                        }
                    };
                    crate::metrics::hooks::entry_applied(started.elapsed());
                    if let Some(applied) = applied {
                        if applied.member == member {
                            if let Some(w) = waiters.remove(&applied.id) {
                                let _ = w.send(applied.result);
                            }
                        }
                    }
                }
                let applied = applier.applied_index();
                status.applied.store(applied, Ordering::SeqCst);
                release_reads(&mut reads, applied);
            }
            ApplyMsg::ReadReady { index, waiters } => {
                reads.push((index, waiters));
                release_reads(&mut reads, applier.applied_index());
            }
            ApplyMsg::Leader(leader) => applier.set_leader(leader),
            ApplyMsg::Install { dir, index } => {
                applier.install(&dir, index)?;
                let applied = applier.applied_index();
                status.applied.store(applied, Ordering::SeqCst);
                release_reads(&mut reads, applied);
            }
        }
    }
    Ok(())
}

fn release_reads(reads: &mut Vec<(u64, Vec<oneshot::Sender<Result<()>>>)>, applied: u64) {
    reads.retain_mut(|(index, ws)| {
        if *index > applied {
            return true;
        }
        for w in ws.drain(..) {
            let _ = w.send(Ok(()));
        }
        false
    });
}
