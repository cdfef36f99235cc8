//! The watch hub: where applied revisions meet watch streams.
//!
//! The apply step publishes each revision's events here (with every
//! event's previous version attached). The hub keeps the most recent
//! revisions in a bounded ring, shared by all streams as `Arc`s, and tells
//! streams the newest revision through a `watch` channel. A stream pulls what
//! it needs: from the ring while it is close to the present, from the
//! store's history (the `kv` family) when it has fallen further behind.
//!
//! **Invariant:** publishing never waits for a stream. A slow stream only
//! falls behind and later reads history; the apply step and the other
//! streams never notice it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::error::Result;
use crate::mvcc::{MvccStore, RevisionEvents};
use crate::pb::mvccpb::Event;

/// Revisions kept in memory at most, and their approximate bytes.
const RING_REVISIONS: usize = 16 * 1024;
const RING_BYTES: usize = 64 * 1024 * 1024;
/// Revisions read from history in one go by a lagging stream.
const HISTORY_BATCH: usize = 256;

pub struct WatchHub {
    store: Arc<MvccStore>,
    ring: Mutex<Ring>,
    latest: watch::Sender<i64>,
}

#[derive(Default)]
struct Ring {
    /// Consecutive revisions, oldest first.
    revs: VecDeque<(Arc<RevisionEvents>, usize)>,
    bytes: usize,
}

impl WatchHub {
    pub fn new(store: Arc<MvccStore>) -> Arc<WatchHub> {
        let (latest, _) = watch::channel(store.current_revision());
        Arc::new(WatchHub {
            store,
            ring: Mutex::new(Ring::default()),
            latest,
        })
    }

    pub fn store(&self) -> &Arc<MvccStore> {
        &self.store
    }

    /// The newest revision whose events streams can read.
    pub fn latest(&self) -> i64 {
        *self.latest.borrow()
    }

    /// A receiver that wakes when a newer revision is published.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    /// Apply step: revision `rev` is in the store; here are its events.
    pub fn publish(&self, rev: i64, events: Vec<Event>) {
        let size: usize = events.iter().map(event_size).sum::<usize>() + 64;
        {
            let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            // The ring holds consecutive revisions only; after a gap (which a
            // correct apply never makes) start it afresh.
            if ring.revs.back().is_some_and(|(r, _)| r.rev + 1 != rev) {
                ring.revs.clear();
                ring.bytes = 0;
            }
            ring.revs
                .push_back((Arc::new(RevisionEvents { rev, events }), size));
            ring.bytes += size;
            while ring.revs.len() > RING_REVISIONS || ring.bytes > RING_BYTES {
                match ring.revs.pop_front() {
                    Some((_, s)) => ring.bytes -= s,
                    None => break,
                }
            }
        }
        self.latest.send_replace(rev);
    }

    /// The store jumped to `rev` (a snapshot installed): the ring no longer
    /// describes it, so streams read what they miss from history.
    pub fn reset(&self, rev: i64) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            ring.revs.clear();
            ring.bytes = 0;
        }
        self.latest.send_replace(rev);
    }

    /// The events of revisions `from..=to` from memory, oldest first, or
    /// `None` when the ring no longer reaches back to `from`. Cheap: no
    /// I/O, a lock held only to clone `Arc`s.
    pub fn recent(&self, from: i64, to: i64) -> Option<Batch> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let first = ring.revs.front()?.0.rev;
        if first > from {
            return None;
        }
        let skip = (from - first) as usize;
        let revs = ring
            .revs
            .iter()
            .skip(skip)
            .take_while(|(r, _)| r.rev <= to)
            .map(|(r, _)| r.clone())
            .collect();
        Some(Batch { revs, covered: to })
    }

    /// The events of revisions from `from` on, up to `to` and not past what
    /// the ring holds, read from the store's history (blocking I/O): a
    /// prefix of that range, at least one revision when there is one. Fails
    /// with `Compacted` below the compacted revision.
    pub fn history(&self, from: i64, to: i64) -> Result<Batch> {
        let oldest = {
            let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            ring.revs.front().map_or(i64::MAX, |(r, _)| r.rev)
        };
        let to = to.min(oldest - 1);
        let revs: Vec<Arc<RevisionEvents>> = self
            .store
            .history(from, to, HISTORY_BATCH)?
            .into_iter()
            .map(Arc::new)
            .collect();
        // A full batch may stop short of `to`; otherwise everything up to
        // `to` was read (revision 1, the empty store's, has no events).
        let covered = match revs.last() {
            Some(last) if revs.len() == HISTORY_BATCH => last.rev,
            _ => to,
        };
        Ok(Batch { revs, covered })
    }
}

/// Events read for a watcher, and the last revision the read covered
/// (the watcher moves past it even when nothing matched).
pub struct Batch {
    pub revs: Vec<Arc<RevisionEvents>>,
    pub covered: i64,
}

fn event_size(e: &Event) -> usize {
    let kv = |k: &Option<crate::pb::mvccpb::KeyValue>| {
        k.as_ref().map_or(0, |k| k.key.len() + k.value.len() + 48)
    };
    kv(&e.kv) + kv(&e.prev_kv)
}
