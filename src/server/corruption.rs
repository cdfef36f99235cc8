//! Corruption checks, as etcd does them: members that applied the same
//! entries must hold the same store, so their HashKV at one revision must
//! agree.
//!
//! - The initial check (`--feature-gates=InitialCorruptCheck=true`, or
//!   `--experimental-initial-corrupt-check`): a member restarting on an
//!   existing data dir asks its peers for their hash at its own revision
//!   before it serves anything, and refuses to start on a mismatch.
//! - The periodic check (`--corrupt-check-time`): the leader compares its
//!   hash with the followers' and raises a CORRUPT alarm naming the member
//!   that differs. The alarm stops every write cluster-wide (see
//!   `apply::refused_when_corrupt`) until an operator disarms it.
//!
//! The verdicts (`initial_mismatches`, `periodic_suspect`) are pure; asking
//! the peers is the runtime around them.
//!
//! **Invariant:** a check never changes the store; the only thing it ever
//! does to the cluster is propose a CORRUPT alarm.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::ids::format_id;
use crate::membership::MemberInfo;
use crate::mvcc::MvccStore;
use crate::pb::cairnpb::{peer_client::PeerClient, HashKvRequest, HashKvResponse};
use crate::pb::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use crate::server::Member;
use crate::tls::PeerDialer;

/// One member's HashKV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The revision hashed (the store's current one when asked for 0).
    pub revision: i64,
    pub compact_revision: i64,
}

impl KvHash {
    fn of(store: &MvccStore, revision: i64) -> crate::error::Result<KvHash> {
        let (hash, compact_revision, revision) = store.hash_kv(revision)?;
        Ok(KvHash {
            hash,
            revision,
            compact_revision,
        })
    }
}

/// Why a peer gave no hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerHashError {
    /// The peer has not reached the revision yet.
    FutureRevision,
    /// The peer compacted past the revision: we are behind.
    Compacted,
    /// The peer belongs to another cluster.
    ClusterIdMismatch,
    /// Unreachable, timed out, or another failure.
    Other(String),
}

/// What one peer answered.
#[derive(Debug, Clone)]
pub struct PeerHash {
    pub id: u64,
    pub urls: Vec<String>,
    pub answer: Result<HashKvResponse, PeerHashError>,
}

/// The initial check's verdict: the peers whose hash differs from ours at
/// the same compaction. Different compactions, and peers that could not
/// answer, are logged and do not count, as in etcd.
pub fn initial_mismatches(me: u64, local: &KvHash, peers: &[PeerHash]) -> Vec<u64> {
    let mut mismatched = Vec::new();
    for p in peers {
        match &p.answer {
            Ok(r) if r.hash != local.hash => {
                if r.compact_revision == local.compact_revision {
                    tracing::warn!(
                        local_member_id = %format_id(me),
                        local_member_revision = local.revision,
                        local_member_compact_revision = local.compact_revision,
                        local_member_hash = local.hash,
                        remote_peer_id = %format_id(p.id),
                        remote_peer_endpoints = ?p.urls,
                        remote_peer_revision = r.revision,
                        remote_peer_compact_revision = r.compact_revision,
                        remote_peer_hash = r.hash,
                        "found different hash values from remote peer"
                    );
                    mismatched.push(p.id);
                } else {
                    tracing::warn!(
                        local_member_id = %format_id(me),
                        local_member_compact_revision = local.compact_revision,
                        remote_peer_id = %format_id(p.id),
                        remote_peer_compact_revision = r.compact_revision,
                        "found different compact revision values from remote peer"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                let msg = match e {
                    PeerHashError::FutureRevision => "cannot fetch hash from slow remote peer",
                    PeerHashError::Compacted => {
                        "cannot fetch hash from remote peer; local member is behind"
                    }
                    PeerHashError::ClusterIdMismatch => "cluster ID mismatch",
                    PeerHashError::Other(_) => continue,
                };
                tracing::warn!(
                    local_member_id = %format_id(me),
                    local_member_revision = local.revision,
                    local_member_compact_revision = local.compact_revision,
                    local_member_hash = local.hash,
                    remote_peer_id = %format_id(p.id),
                    remote_peer_endpoints = ?p.urls,
                    "{msg}"
                );
            }
        }
    }
    mismatched
}

/// The periodic check's verdict: the member to raise CORRUPT for, if any
/// (etcd raises one alarm per pass). `first` is the leader's hash before
/// asking the peers (they hashed at `first.revision`), `second` its hash
/// after a linearizable read made sure it applied everything the peers
/// could have.
pub fn periodic_suspect(
    leader: u64,
    first: &KvHash,
    second: &KvHash,
    peers: &[PeerHash],
) -> Option<u64> {
    // The leader's own store changed under the same revision.
    if second.hash != first.hash
        && second.revision == first.revision
        && second.compact_revision == first.compact_revision
    {
        tracing::warn!(
            revision_1 = first.revision,
            compact_revision_1 = first.compact_revision,
            hash_1 = first.hash,
            revision_2 = second.revision,
            compact_revision_2 = second.compact_revision,
            hash_2 = second.hash,
            "found hash mismatch"
        );
        return Some(leader);
    }
    let mut suspect = None;
    let mut checked = 0;
    for p in peers {
        let Ok(r) = &p.answer else { continue };
        checked += 1;
        if r.revision > second.revision {
            tracing::warn!(
                leader_revision = second.revision,
                follower_revision = r.revision,
                follower_peer_id = %format_id(p.id),
                "revision from follower must be less than or equal to leader's"
            );
            suspect = suspect.or(Some(p.id));
        }
        if r.compact_revision > second.compact_revision {
            tracing::warn!(
                leader_compact_revision = second.compact_revision,
                follower_compact_revision = r.compact_revision,
                follower_peer_id = %format_id(p.id),
                "compact revision from follower must be less than or equal to leader's"
            );
            suspect = suspect.or(Some(p.id));
        }
        if r.compact_revision == first.compact_revision && r.hash != first.hash {
            tracing::warn!(
                leader_compact_revision = second.compact_revision,
                leader_hash = first.hash,
                follower_compact_revision = r.compact_revision,
                follower_hash = r.hash,
                follower_peer_id = %format_id(p.id),
                "same compact revision then hashes must match"
            );
            suspect = suspect.or(Some(p.id));
        }
    }
    tracing::info!(
        number_of_peers_checked = checked,
        "finished peer corruption check"
    );
    suspect
}

/// etcd's request timeout for peer hash requests: 5 s plus two election
/// timeouts.
pub fn request_timeout(election_timeout: Duration) -> Duration {
    Duration::from_secs(5) + 2 * election_timeout
}

/// Asks every other member for its hash at `revision`, all at once; each
/// peer's URLs are tried in order until one answers.
pub async fn peer_hashes(
    dialer: &PeerDialer,
    members: &[MemberInfo],
    me: u64,
    cluster_id: u64,
    revision: i64,
    timeout: Duration,
) -> Vec<PeerHash> {
    let asks = members
        .iter()
        .filter(|m| m.id != me && !m.peer_urls.is_empty())
        .map(|m| async move {
            let mut last = PeerHashError::Other("no peer URL".into());
            for url in &m.peer_urls {
                let ask = ask_peer(dialer, url, cluster_id, revision);
                match tokio::time::timeout(timeout, ask).await {
                    Ok(Ok(r)) => {
                        return PeerHash {
                            id: m.id,
                            urls: m.peer_urls.clone(),
                            answer: Ok(r),
                        }
                    }
                    Ok(Err(e)) => last = e,
                    Err(_) => last = PeerHashError::Other("timed out".into()),
                }
                tracing::warn!(
                    local_member_id = %format_id(me),
                    requested_revision = revision,
                    remote_peer_endpoint = %url,
                    error = ?last,
                    "failed hash kv request"
                );
            }
            PeerHash {
                id: m.id,
                urls: m.peer_urls.clone(),
                answer: Err(last),
            }
        });
    futures::future::join_all(asks).await
}

async fn ask_peer(
    dialer: &PeerDialer,
    url: &str,
    cluster_id: u64,
    revision: i64,
) -> Result<HashKvResponse, PeerHashError> {
    let other = |e: String| PeerHashError::Other(e);
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| other(e.to_string()))?
        .connect_timeout(Duration::from_secs(1));
    let channel = dialer
        .connect(endpoint)
        .await
        .map_err(|e| other(e.to_string()))?;
    let reply = PeerClient::new(channel)
        .hash_kv(HashKvRequest {
            cluster_id,
            revision,
        })
        .await;
    match reply {
        Ok(r) => Ok(r.into_inner()),
        // The peer answers with etcd's error texts; tell them apart by it.
        Err(s) if s.message() == Error::FutureRevision.to_string() => {
            Err(PeerHashError::FutureRevision)
        }
        Err(s) if s.message() == Error::Compacted.to_string() => Err(PeerHashError::Compacted),
        Err(s) if s.message().starts_with("cluster ID mismatch") => {
            Err(PeerHashError::ClusterIdMismatch)
        }
        Err(s) => Err(other(s.message().to_string())),
    }
}

/// The initial check: before this restarted member serves anything, its
/// hash at its own revision against its peers'. An error means do not
/// start.
pub async fn initial_check(
    dialer: &PeerDialer,
    store: &MvccStore,
    members: &[MemberInfo],
    me: u64,
    cluster_id: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    tracing::info!(
        local_member_id = %format_id(me),
        timeout = ?timeout,
        "starting initial corruption check"
    );
    let local = KvHash::of(store, 0)
        .map_err(|e| anyhow::anyhow!("{} failed to fetch hash ({e})", format_id(me)))?;
    let peers = peer_hashes(dialer, members, me, cluster_id, local.revision, timeout).await;
    if !initial_mismatches(me, &local, &peers).is_empty() {
        anyhow::bail!("{} found data inconsistency with peers", format_id(me));
    }
    tracing::info!(
        local_member_id = %format_id(me),
        "initial corruption checking passed; no corruption"
    );
    Ok(())
}

/// The periodic check, run by the leader every `every` until the process
/// ends.
pub async fn monitor(member: Arc<Member>, every: Duration, timeout: Duration) {
    tracing::info!(
        local_member_id = %format_id(member.id),
        interval = ?every,
        "enabled corruption checking"
    );
    loop {
        tokio::time::sleep(every).await;
        if !member.is_leader() {
            continue;
        }
        if let Err(e) = periodic_check(&member, timeout).await {
            tracing::warn!(error = %e, "failed to check hash KV");
        }
    }
}

async fn periodic_check(member: &Arc<Member>, timeout: Duration) -> crate::error::Result<()> {
    let store = member.store().clone();
    let first = hash_off_thread(&store).await?;
    let members = member.membership.list();
    let peers = peer_hashes(
        member.peer_dialer(),
        &members,
        member.id,
        member.cluster_id,
        first.revision,
        timeout,
    )
    .await;
    tokio::time::timeout(timeout, member.read_barrier())
        .await
        .map_err(|_| Error::Timeout)??;
    let second = hash_off_thread(&store).await?;
    if let Some(id) = periodic_suspect(member.id, &first, &second, &peers) {
        let alarm = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: id,
            alarm: AlarmType::Corrupt as i32,
        };
        // As etcd: the alarm is proposed in the background; the next pass
        // is not held up by it.
        let member = member.clone();
        tokio::spawn(async move {
            if let Err(e) = member.propose(crate::apply::Op::Alarm(alarm)).await {
                tracing::warn!(error = %e, "failed to raise the CORRUPT alarm");
            }
        });
    }
    Ok(())
}

async fn hash_off_thread(store: &Arc<MvccStore>) -> crate::error::Result<KvHash> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || KvHash::of(&store, 0))
        .await
        .map_err(Error::internal)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hash: u32, revision: i64, compact_revision: i64) -> KvHash {
        KvHash {
            hash,
            revision,
            compact_revision,
        }
    }

    fn answer(id: u64, hash: u32, revision: i64, compact_revision: i64) -> PeerHash {
        PeerHash {
            id,
            urls: vec![format!("http://127.0.0.1:{id}")],
            answer: Ok(HashKvResponse {
                member_id: id,
                revision,
                hash,
                compact_revision,
                hash_revision: revision,
            }),
        }
    }

    fn failed(id: u64, e: PeerHashError) -> PeerHash {
        PeerHash {
            id,
            urls: Vec::new(),
            answer: Err(e),
        }
    }

    #[test]
    fn initial_check_counts_only_same_compaction_mismatches() {
        let local = h(7, 10, 3);
        assert!(initial_mismatches(1, &local, &[answer(2, 7, 12, 3)]).is_empty());
        assert_eq!(
            initial_mismatches(1, &local, &[answer(2, 7, 12, 3), answer(3, 8, 12, 3)]),
            vec![3]
        );
        // A peer that compacted since cannot be compared.
        assert!(initial_mismatches(1, &local, &[answer(2, 8, 12, 5)]).is_empty());
        // Peers that cannot answer do not stop the start.
        assert!(initial_mismatches(
            1,
            &local,
            &[
                failed(2, PeerHashError::FutureRevision),
                failed(3, PeerHashError::Compacted),
                failed(4, PeerHashError::Other("connection refused".into())),
            ]
        )
        .is_empty());
    }

    #[test]
    fn periodic_check_names_the_differing_follower() {
        let first = h(7, 10, 3);
        let second = h(9, 11, 3);
        assert_eq!(
            periodic_suspect(1, &first, &second, &[answer(2, 7, 10, 3)]),
            None
        );
        assert_eq!(
            periodic_suspect(
                1,
                &first,
                &second,
                &[answer(2, 7, 10, 3), answer(3, 5, 10, 3)]
            ),
            Some(3)
        );
        // A follower ahead of the leader, or compacted further, is suspect.
        assert_eq!(
            periodic_suspect(1, &first, &second, &[answer(2, 7, 12, 3)]),
            Some(2)
        );
        assert_eq!(
            periodic_suspect(1, &first, &second, &[answer(2, 4, 10, 4)]),
            Some(2)
        );
        // A follower still at an older compaction is not compared.
        assert_eq!(
            periodic_suspect(1, &first, &second, &[answer(2, 4, 10, 2)]),
            None
        );
        // Only one alarm per pass: the first suspect.
        assert_eq!(
            periodic_suspect(
                1,
                &first,
                &second,
                &[answer(3, 5, 10, 3), answer(2, 6, 10, 3)]
            ),
            Some(3)
        );
    }

    #[test]
    fn periodic_check_names_the_leader_when_its_own_hash_moved() {
        let first = h(7, 10, 3);
        assert_eq!(
            periodic_suspect(1, &first, &h(8, 10, 3), &[answer(2, 7, 10, 3)]),
            Some(1)
        );
        assert_eq!(periodic_suspect(1, &first, &h(8, 11, 3), &[]), None);
    }
}
