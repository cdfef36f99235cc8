//! Who this member and its cluster are: decided once, when the data dir is
//! new, from `--initial-cluster` and the token, and read back from the data
//! dir on every later start (as etcd does, the flags are then ignored).

use prost::Message;

use crate::error::{Error, Result};
use crate::ids;
use crate::membership::{from_pb, to_pb, MemberInfo};
use crate::pb::etcdserverpb::Member as PbMember;
use crate::storage::{Storage, CF_META};

const META_IDENTITY: &[u8] = b"identity";

#[derive(Clone, PartialEq, prost::Message)]
struct StoredIdentity {
    #[prost(uint64, tag = "1")]
    member_id: u64,
    #[prost(uint64, tag = "2")]
    cluster_id: u64,
    #[prost(message, repeated, tag = "3")]
    members: Vec<PbMember>,
    /// Joined a running cluster: its raft configuration comes from the
    /// leader, never from a bootstrap.
    #[prost(bool, tag = "4")]
    joined: bool,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
    pub members: Vec<MemberInfo>,
    /// True when this start created the data dir.
    pub new: bool,
    /// This member joined a running cluster (`--initial-cluster-state
    /// existing`).
    pub joined: bool,
}

/// One member of `--initial-cluster`.
#[derive(Debug, Clone)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl Identity {
    /// Reads the identity from the data dir, or derives a new one the way
    /// etcd does and stores it durably.
    pub fn load_or_create(
        storage: &Storage,
        name: &str,
        initial_cluster: &[InitialMember],
        token: &str,
    ) -> Result<Identity> {
        let meta = storage.cf(CF_META);
        if let Some(raw) = storage.db().get_cf(meta, META_IDENTITY)? {
            let s = StoredIdentity::decode(raw.as_slice()).map_err(Error::internal)?;
            return Ok(Identity {
                member_id: s.member_id,
                cluster_id: s.cluster_id,
                members: s.members.into_iter().map(from_pb).collect(),
                new: false,
                joined: s.joined,
            });
        }
        let mut members: Vec<MemberInfo> = initial_cluster
            .iter()
            .map(|m| MemberInfo {
                id: ids::member_id(&m.peer_urls, token),
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                // Learnt when each member publishes them, this one too.
                client_urls: Vec::new(),
                is_learner: false,
            })
            .collect();
        members.sort_by_key(|m| m.id);
        let me = members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "couldn't find local name {name:?} in the initial cluster configuration"
                ))
            })?
            .id;
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        let identity = Identity {
            member_id: me,
            cluster_id: ids::cluster_id(&ids),
            members,
            new: true,
            joined: false,
        };
        identity.store(storage)?;
        Ok(identity)
    }

    /// Whether the data dir has an identity already.
    pub fn exists(storage: &Storage) -> Result<bool> {
        Ok(storage
            .db()
            .get_cf(storage.cf(CF_META), META_IDENTITY)?
            .is_some())
    }

    /// The identity of a member joining a running cluster, as that cluster
    /// told it (see [`find_self`]); stored durably.
    pub fn create_joined(
        storage: &Storage,
        member_id: u64,
        cluster_id: u64,
        members: Vec<MemberInfo>,
    ) -> Result<Identity> {
        let identity = Identity {
            member_id,
            cluster_id,
            members,
            new: true,
            joined: true,
        };
        identity.store(storage)?;
        Ok(identity)
    }

    fn store(&self, storage: &Storage) -> Result<()> {
        let stored = StoredIdentity {
            member_id: self.member_id,
            cluster_id: self.cluster_id,
            members: self.members.iter().map(to_pb).collect(),
            joined: self.joined,
        };
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(storage.cf(CF_META), META_IDENTITY, stored.encode_to_vec());
        storage.write(batch, true)
    }
}

/// etcd's checks when joining a running cluster: `--initial-cluster` names
/// exactly the cluster's members (the new one included, as MemberAdd
/// printed it), each with the peer URLs the cluster knows; this member is
/// the one whose peer URLs are `own_peer_urls`. Returns its id.
pub fn find_self(
    remote: &[MemberInfo],
    initial_cluster: &[InitialMember],
    name: &str,
) -> std::result::Result<u64, String> {
    if remote.len() != initial_cluster.len() {
        return Err(format!(
            "error validating peerURLs {{ClusterID:... Members:[{}]}}: member count is unequal",
            remote
                .iter()
                .map(|m| format!("{:x}", m.id))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    let sorted = |urls: &[String]| {
        let mut v = urls.to_vec();
        v.sort();
        v
    };
    let mut me = None;
    for local in initial_cluster {
        let urls = sorted(&local.peer_urls);
        let Some(m) = remote.iter().find(|m| sorted(&m.peer_urls) == urls) else {
            return Err(format!(
                "error validating peerURLs: unmatched member while checking PeerURLs ({:?} is not in the cluster)",
                local.peer_urls
            ));
        };
        if local.name == name {
            me = Some(m.id);
        }
    }
    me.ok_or_else(|| {
        format!("couldn't find local name {name:?} in the initial cluster configuration")
    })
}
