//! Who the members are, as replicated state: ids and peer URLs from the
//! cluster's bootstrap, and the name and client URLs each member publishes
//! through raft once it runs (as etcd's members do), so that `MemberList`
//! on any member shows every member's client URLs; members added, removed,
//! promoted or given new peer URLs at run time.
//!
//! **Invariant:** changed only by the apply step, persisted in `meta` in
//! the same batch as the applied index.

use std::sync::{Arc, Mutex};

use prost::Message;
use rocksdb::WriteBatch;

use crate::error::{Error, Result};
use crate::pb::etcdserverpb::Member as PbMember;
use crate::storage::{Storage, CF_META};

const META_MEMBERS: &[u8] = b"members";

/// A member of the cluster as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredMembers {
    #[prost(message, repeated, tag = "1")]
    members: Vec<PbMember>,
}

pub struct Membership {
    storage: Storage,
    members: Mutex<Vec<MemberInfo>>,
}

impl Membership {
    /// The stored members, or `initial` (the bootstrap's) when none are
    /// stored yet.
    pub fn open(storage: Storage, initial: Vec<MemberInfo>) -> Result<Arc<Membership>> {
        let members = load(&storage)?.unwrap_or(initial);
        Ok(Arc::new(Membership {
            storage,
            members: Mutex::new(members),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<MemberInfo>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every member, by id.
    pub fn list(&self) -> Vec<MemberInfo> {
        let mut v = self.lock().clone();
        v.sort_by_key(|m| m.id);
        v
    }

    pub fn get(&self, id: u64) -> Option<MemberInfo> {
        self.lock().iter().find(|m| m.id == id).cloned()
    }

    /// Apply step: a member's published name and client URLs.
    pub fn set_attributes(
        &self,
        id: u64,
        name: &str,
        client_urls: &[String],
        batch: &mut WriteBatch,
    ) {
        self.change(batch, |members| {
            if let Some(m) = members.iter_mut().find(|m| m.id == id) {
                m.name = name.to_string();
                m.client_urls = client_urls.to_vec();
            }
        });
    }

    /// Apply step: a member joins (as a voter or a learner). Its name and
    /// client URLs come later, when it publishes them.
    pub fn add(&self, member: MemberInfo, batch: &mut WriteBatch) {
        self.change(batch, |members| {
            members.retain(|m| m.id != member.id);
            members.push(member);
        });
    }

    /// Apply step: a member leaves.
    pub fn remove(&self, id: u64, batch: &mut WriteBatch) {
        self.change(batch, |members| members.retain(|m| m.id != id));
    }

    /// Apply step: a learner becomes a voter.
    pub fn promote(&self, id: u64, batch: &mut WriteBatch) {
        self.change(batch, |members| {
            if let Some(m) = members.iter_mut().find(|m| m.id == id) {
                m.is_learner = false;
            }
        });
    }

    /// Apply step: a member's new peer URLs.
    pub fn set_peer_urls(&self, id: u64, peer_urls: &[String], batch: &mut WriteBatch) {
        self.change(batch, |members| {
            if let Some(m) = members.iter_mut().find(|m| m.id == id) {
                m.peer_urls = peer_urls.to_vec();
            }
        });
    }

    /// Re-reads the members from the database (after a snapshot replaced
    /// the replicated state).
    pub fn reload(&self) -> Result<()> {
        if let Some(stored) = load(&self.storage)? {
            *self.lock() = stored;
        }
        Ok(())
    }

    /// Changes the list and stores all of it in `batch`, with the rest of
    /// the entry's effects.
    fn change(&self, batch: &mut WriteBatch, f: impl FnOnce(&mut Vec<MemberInfo>)) {
        let mut members = self.lock();
        f(&mut members);
        let stored = StoredMembers {
            members: members.iter().map(to_pb).collect(),
        };
        batch.put_cf(
            self.storage.cf(CF_META),
            META_MEMBERS,
            stored.encode_to_vec(),
        );
    }
}

/// The members in a consistent view of the database (`fallback` when none
/// are stored yet).
pub fn members_at(
    storage: &Storage,
    snap: &rocksdb::Snapshot<'_>,
    fallback: &[MemberInfo],
) -> Result<Vec<MemberInfo>> {
    let Some(raw) = snap.get_cf(storage.cf(CF_META), META_MEMBERS)? else {
        return Ok(fallback.to_vec());
    };
    let stored = StoredMembers::decode(raw.as_slice()).map_err(Error::internal)?;
    let mut members: Vec<MemberInfo> = stored.members.into_iter().map(from_pb).collect();
    members.sort_by_key(|m| m.id);
    Ok(members)
}

fn load(storage: &Storage) -> Result<Option<Vec<MemberInfo>>> {
    let Some(raw) = storage.db().get_cf(storage.cf(CF_META), META_MEMBERS)? else {
        return Ok(None);
    };
    let stored = StoredMembers::decode(raw.as_slice()).map_err(Error::internal)?;
    Ok(Some(stored.members.into_iter().map(from_pb).collect()))
}

pub fn to_pb(m: &MemberInfo) -> PbMember {
    PbMember {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

pub fn from_pb(m: PbMember) -> MemberInfo {
    MemberInfo {
        id: m.id,
        name: m.name,
        peer_urls: m.peer_ur_ls,
        client_urls: m.client_ur_ls,
        is_learner: m.is_learner,
    }
}
