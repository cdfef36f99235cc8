//! The lessor: the one owner of lease state.
//!
//! Replicated part — lease id → granted TTL, checkpointed remaining TTL and
//! attached keys — is changed only through the apply step (`grant`,
//! `revoke`, `checkpoint`, `attach`, `detach`) and persisted in the `lease`
//! family in the same batch as the change: `id` (8 bytes, big-endian) →
//! TTL and remaining TTL, and `id ++ key` → nothing for each attached key.
//!
//! Leader-local part — each lease's deadline — exists only while this member
//! leads. On promotion every lease gets its checkpointed remaining TTL, or
//! its full TTL when it has none (so a restart or a leader change never
//! shortens a lease, and lengthens it by at most one checkpoint interval).
//! Keep-alives push deadlines out (after clearing a checkpoint, which would
//! otherwise shorten the renewed lease on the next promotion), and the
//! expiry loop asks the leader to propose revokes for leases past their
//! deadline and checkpoints for the others.
//!
//! **Invariant:** followers hold no deadlines and so expire nothing; an
//! expired lease is removed only by a replicated revoke.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rocksdb::WriteBatch;

use crate::error::{Error, Result};
use crate::kv::write::Leases;
use crate::storage::{Storage, CF_LEASE};

/// etcd's largest TTL: 9,000,000,000 seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How long a lease found expired is left alone while its revoke is on its
/// way through raft, before it is proposed again.
const REVOKE_RETRY: Duration = Duration::from_secs(3);

struct Lease {
    ttl: i64,
    /// Checkpointed seconds left (0: none, the full TTL applies).
    remaining: i64,
    keys: BTreeSet<Vec<u8>>,
    /// Only on the leader.
    deadline: Option<Instant>,
    /// When the leader last proposed this lease's revoke.
    revoke_proposed: Option<Instant>,
}

/// What `LeaseTimeToLive` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    pub granted_ttl: i64,
    /// Seconds left (the leader's view); the granted TTL elsewhere.
    pub remaining: i64,
    pub keys: Vec<Vec<u8>>,
}

struct State {
    leases: HashMap<i64, Lease>,
    leader: bool,
}

pub struct Lessor {
    storage: Storage,
    min_ttl: i64,
    state: Mutex<State>,
}

impl Lessor {
    /// Loads leases and attachments from the data dir. `min_ttl` is the
    /// smallest TTL granted (etcd: 1.5 election timeouts, rounded up).
    pub fn open(storage: Storage, min_ttl: i64) -> Result<Lessor> {
        let leases = load_leases(&storage)?;
        Ok(Lessor {
            storage,
            min_ttl,
            state: Mutex::new(State {
                leases,
                leader: false,
            }),
        })
    }

    /// Re-reads leases after the database was replaced under the lessor (a
    /// snapshot installed; only followers install them, so no deadlines).
    pub fn reload(&self) -> Result<()> {
        let leases = load_leases(&self.storage)?;
        let mut st = self.state();
        st.leases = leases;
        let leader = st.leader;
        drop(st);
        if leader {
            self.set_leader(true);
        }
        Ok(())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn min_ttl(&self) -> i64 {
        self.min_ttl
    }

    /// Apply step: creates a lease; returns the TTL it got.
    pub fn grant(&self, id: i64, ttl: i64, batch: &mut WriteBatch) -> Result<i64> {
        if id == 0 {
            return Err(Error::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        let mut st = self.state();
        if st.leases.contains_key(&id) {
            return Err(Error::LeaseExists);
        }
        let ttl = ttl.max(self.min_ttl);
        batch.put_cf(
            self.storage.cf(CF_LEASE),
            id.to_be_bytes(),
            ttl.to_be_bytes(),
        );
        let deadline = st.leader.then(|| Instant::now() + secs(ttl));
        st.leases.insert(
            id,
            Lease {
                ttl,
                remaining: 0,
                keys: BTreeSet::new(),
                deadline,
                revoke_proposed: None,
            },
        );
        Ok(ttl)
    }

    /// Apply step: the keys a revoke must delete (sorted), or not found.
    pub fn keys_of(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        let st = self.state();
        let lease = st.leases.get(&id).ok_or(Error::LeaseNotFound)?;
        Ok(lease.keys.iter().cloned().collect())
    }

    /// Apply step: forgets a lease (its keys are deleted by the caller in
    /// the same batch).
    pub fn revoke(&self, id: i64, batch: &mut WriteBatch) -> Result<()> {
        let mut st = self.state();
        let lease = st.leases.remove(&id).ok_or(Error::LeaseNotFound)?;
        let cf = self.storage.cf(CF_LEASE);
        batch.delete_cf(cf, id.to_be_bytes());
        for k in lease.keys {
            batch.delete_cf(cf, attachment(id, &k));
        }
        Ok(())
    }

    /// Apply step: records how long a lease has left (0: its full TTL), for
    /// the next promotion. The current leader's deadline is not touched.
    pub fn checkpoint(&self, id: i64, remaining: i64, batch: &mut WriteBatch) {
        let mut st = self.state();
        if let Some(l) = st.leases.get_mut(&id) {
            l.remaining = remaining.max(0);
            batch.put_cf(
                self.storage.cf(CF_LEASE),
                id.to_be_bytes(),
                record(l.ttl, l.remaining),
            );
        }
    }

    /// Whether a keep-alive of `id` must first clear a checkpoint.
    pub fn has_checkpoint(&self, id: i64) -> bool {
        self.state()
            .leases
            .get(&id)
            .is_some_and(|l| l.remaining > 0)
    }

    /// Leader only: checkpoints worth proposing — every lease whose time
    /// left (in whole seconds, rounded up) has dropped below what is
    /// recorded.
    pub fn due_checkpoints(&self, limit: usize) -> Vec<(i64, i64)> {
        let st = self.state();
        if !st.leader {
            return Vec::new();
        }
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, l) in &st.leases {
            if out.len() == limit {
                break;
            }
            let Some(deadline) = l.deadline else { continue };
            // Rounded up: a checkpoint never shortens a lease.
            let left = deadline
                .saturating_duration_since(now)
                .as_millis()
                .div_ceil(1000) as i64;
            let recorded = if l.remaining > 0 { l.remaining } else { l.ttl };
            if left > 0 && left < recorded {
                out.push((*id, left));
            }
        }
        out
    }

    /// Apply step: `key` now belongs to lease `id`.
    pub fn attach(&self, id: i64, key: &[u8], batch: &mut WriteBatch) {
        let mut st = self.state();
        if let Some(l) = st.leases.get_mut(&id) {
            if l.keys.insert(key.to_vec()) {
                batch.put_cf(self.storage.cf(CF_LEASE), attachment(id, key), []);
            }
        }
    }

    /// Apply step: `key` no longer belongs to lease `id`.
    pub fn detach(&self, id: i64, key: &[u8], batch: &mut WriteBatch) {
        let mut st = self.state();
        if let Some(l) = st.leases.get_mut(&id) {
            if l.keys.remove(key) {
                batch.delete_cf(self.storage.cf(CF_LEASE), attachment(id, key));
            }
        }
    }

    /// This member became leader (every lease gets its full TTL from now)
    /// or stopped being one (deadlines are dropped).
    pub fn set_leader(&self, leader: bool) {
        let mut st = self.state();
        st.leader = leader;
        let now = Instant::now();
        for l in st.leases.values_mut() {
            let left = if l.remaining > 0 { l.remaining } else { l.ttl };
            l.deadline = leader.then(|| now + secs(left));
            l.revoke_proposed = None;
        }
    }

    /// Leader only: renews a lease; its TTL, or `None` when it does not
    /// exist or has already expired (its revoke is on the way).
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut st = self.state();
        if !st.leader {
            return None;
        }
        let now = Instant::now();
        let l = st.leases.get_mut(&id)?;
        match l.deadline {
            Some(d) if d <= now => None,
            _ => {
                l.deadline = Some(now + secs(l.ttl));
                Some(l.ttl)
            }
        }
    }

    pub fn info(&self, id: i64) -> Option<LeaseInfo> {
        let st = self.state();
        let l = st.leases.get(&id)?;
        let remaining = match l.deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).as_secs() as i64,
            None => l.ttl,
        };
        Some(LeaseInfo {
            id,
            granted_ttl: l.ttl,
            remaining,
            keys: l.keys.iter().cloned().collect(),
        })
    }

    /// Every lease id, soonest deadline first (as etcd lists them).
    pub fn ids(&self) -> Vec<i64> {
        let st = self.state();
        let mut v: Vec<(Option<Instant>, i64)> =
            st.leases.iter().map(|(id, l)| (l.deadline, *id)).collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// Leader only: leases past their deadline, to be revoked. Each is given
    /// a grace period so it is proposed once, again only if that revoke got
    /// lost.
    pub fn expired(&self, limit: usize) -> Vec<i64> {
        let mut st = self.state();
        if !st.leader {
            return Vec::new();
        }
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, l) in st.leases.iter_mut() {
            if out.len() == limit {
                break;
            }
            let due = l.deadline.is_some_and(|d| d <= now);
            let retry = l.revoke_proposed.is_none_or(|p| p + REVOKE_RETRY <= now);
            if due && retry {
                out.push(*id);
                l.revoke_proposed = Some(now);
            }
        }
        out
    }
}

impl Leases for Lessor {
    fn exists(&self, id: i64) -> bool {
        self.state().leases.contains_key(&id)
    }
}

/// A lease's record: TTL and checkpointed remaining TTL.
fn record(ttl: i64, remaining: i64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&ttl.to_be_bytes());
    v[8..].copy_from_slice(&remaining.to_be_bytes());
    v
}

fn attachment(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = id.to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

/// Leases and their attachments as stored.
fn load_leases(storage: &Storage) -> Result<HashMap<i64, Lease>> {
    let mut leases: HashMap<i64, Lease> = HashMap::new();
    let mut it = storage.db().raw_iterator_cf(storage.cf(CF_LEASE));
    it.seek_to_first();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let bad = || Error::Internal("corrupt lease record".into());
        let id = i64::from_be_bytes(k.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        if k.len() == 8 {
            let num = |r: Option<&[u8]>| -> Result<i64> {
                Ok(i64::from_be_bytes(
                    r.ok_or_else(bad)?.try_into().map_err(|_| bad())?,
                ))
            };
            let ttl = num(v.get(..8))?;
            // Records written before checkpoints hold the TTL only.
            let remaining = if v.len() >= 16 { num(v.get(8..16))? } else { 0 };
            let l = leases.entry(id).or_insert_with(|| Lease {
                ttl,
                remaining,
                keys: BTreeSet::new(),
                deadline: None,
                revoke_proposed: None,
            });
            l.ttl = ttl;
            l.remaining = remaining;
        } else {
            leases
                .entry(id)
                .or_insert_with(|| Lease {
                    ttl: 0,
                    remaining: 0,
                    keys: BTreeSet::new(),
                    deadline: None,
                    revoke_proposed: None,
                })
                .keys
                .insert(k[8..].to_vec());
        }
        it.next();
    }
    it.status()?;
    drop(it);
    Ok(leases)
}

/// Every lease in a consistent view of the database, in id order: (id,
/// TTL, checkpointed seconds left or 0).
pub fn leases_at(
    storage: &Storage,
    snap: &rocksdb::Snapshot<'_>,
    mut f: impl FnMut(i64, i64, i64) -> Result<()>,
) -> Result<()> {
    let mut it = snap.raw_iterator_cf(storage.cf(CF_LEASE));
    it.seek_to_first();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        // Attachment records (id + key) are not leases.
        if k.len() == 8 {
            let bad = || Error::Internal("corrupt lease record".into());
            let id = i64::from_be_bytes(k.try_into().map_err(|_| bad())?);
            let ttl =
                i64::from_be_bytes(v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
            let remaining = match v.get(8..16) {
                Some(r) => i64::from_be_bytes(r.try_into().map_err(|_| bad())?),
                None => 0,
            };
            f(id, ttl, remaining)?;
        }
        it.next();
    }
    it.status()?;
    Ok(())
}

/// Restore: a lease as a backup holds it (its TTL and checkpointed time
/// left), written straight into `batch` before any lessor opens the store.
pub fn import_lease(storage: &Storage, batch: &mut WriteBatch, id: i64, ttl: i64, remaining: i64) {
    batch.put_cf(
        storage.cf(CF_LEASE),
        id.to_be_bytes(),
        record(ttl, remaining),
    );
}

/// Restore: `key` belongs to lease `id`.
pub fn import_attachment(storage: &Storage, batch: &mut WriteBatch, id: i64, key: &[u8]) {
    batch.put_cf(storage.cf(CF_LEASE), attachment(id, key), []);
}
