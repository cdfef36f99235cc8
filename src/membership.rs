//! Who the members are, as replicated state: ids and peer URLs from the
//! cluster's bootstrap, and the name and client URLs each member publishes
//! through raft once it runs (as etcd's members do), so that `MemberList`
//! on any member shows every member's client URLs.
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
        let members = match storage.db().get_cf(storage.cf(CF_META), META_MEMBERS)? {
            Some(raw) => StoredMembers::decode(raw.as_slice())
                .map_err(Error::internal)?
                .members
                .into_iter()
                .map(from_pb)
                .collect(),
            None => initial,
        };
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
        let mut members = self.lock();
        let Some(m) = members.iter_mut().find(|m| m.id == id) else {
            return;
        };
        m.name = name.to_string();
        m.client_urls = client_urls.to_vec();
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
