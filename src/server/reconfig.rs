//! Membership changes: adding (as a voter or a learner), removing,
//! promoting and re-addressing members, with etcd's checks and errors.
//!
//! Adding, removing and promoting are raft conf changes; new peer URLs are
//! an ordinary entry (the voters stay the same). Either way the member list
//! changes when the entry is applied, on every member alike.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use raft::prelude::{ConfChange, ConfChangeType};
use tokio::sync::oneshot;
use tonic::Status;

use super::{Member, MemberInfo};
use crate::apply::{ConfChangeContext, Op};
use crate::config::EtcdUrl;
use crate::consensus::Command;
use crate::error::{Error, Result};
use crate::ids;
use crate::pb::cairnpb::PromoteRequest;
use crate::pb::etcdserverpb::Member as PbMember;

/// etcd's readiness rule for a promotion: the learner's log matches at
/// least this share of the leader's.
const PROMOTE_READY_RATIO: f64 = 0.9;

/// Peer URLs as etcd stores them (its textual form, sorted), or etcd's
/// error for a malformed one.
fn canonical_urls(urls: &[String]) -> Result<Vec<String>> {
    if urls.is_empty() {
        return Err(Error::MemberBadUrls);
    }
    let mut out = Vec::with_capacity(urls.len());
    for u in urls {
        let parsed = EtcdUrl::parse(u).map_err(|_| Error::MemberBadUrls)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::MemberBadUrls);
        }
        out.push(parsed.as_str().to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// How long a peer must have been reachable to count as connected (etcd's
/// `HealthInterval`).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

impl Member {
    /// Whether this member has reached `id` for at least [`HEALTH_INTERVAL`]
    /// (itself: always).
    fn connected_a_while(&self, id: u64) -> bool {
        id == self.id
            || self
                .peer_activity
                .active_since(id)
                .is_some_and(|t| t.elapsed() >= HEALTH_INTERVAL)
    }

    /// etcd's check before any membership change is added: this member has
    /// been connected to every voter for a while.
    fn connected_to_all_voters(&self, members: &[MemberInfo]) -> bool {
        members
            .iter()
            .filter(|m| !m.is_learner)
            .all(|m| self.connected_a_while(m.id))
    }

    /// Replicates a conf change and waits until it is applied here.
    async fn propose_conf_change(
        &self,
        change_type: ConfChangeType,
        node_id: u64,
        info: Option<PbMember>,
    ) -> Result<()> {
        let _one_at_a_time = self.conf_change.lock().await;
        let id = self.next_request_id();
        let ctx = ConfChangeContext {
            id,
            member: self.id,
            info,
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(change_type);
        cc.node_id = node_id;
        cc.context = ctx.encode_to_vec().into();
        let (done, rx) = oneshot::channel();
        self.raft()
            .send(Command::ProposeConfChange { id, cc, done })?;
        match tokio::time::timeout(self.request_timeout(), rx).await {
            Ok(Ok(result)) => result.map(|_| ()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// etcd's MemberAdd: a new member, known by its peer URLs until it
    /// starts and publishes its name.
    pub async fn add_member(&self, peer_urls: &[String], learner: bool) -> Result<MemberInfo> {
        let urls = canonical_urls(peer_urls)?;
        let members = self.membership.list();
        // etcd's order: the strict check, then (when the change applies)
        // the id, the peer URLs, the number of learners.
        if self.strict_reconfig_check {
            if !learner && !ready_to_add_voter(&members) {
                return Err(Error::NotEnoughStartedMembers);
            }
            if !self.connected_to_all_voters(&members) {
                return Err(Error::Unhealthy);
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // Same URLs within the same second: the same id, as in etcd.
        let id = ids::added_member_id(&urls, now);
        if id == 0 || members.iter().any(|m| m.id == id) {
            return Err(Error::MemberExists);
        }
        if members
            .iter()
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
        {
            return Err(Error::PeerUrlExists);
        }
        if learner && members.iter().filter(|m| m.is_learner).count() >= self.max_learners {
            return Err(Error::TooManyLearners);
        }
        let info = PbMember {
            id,
            peer_ur_ls: urls.clone(),
            is_learner: learner,
            ..Default::default()
        };
        let change = if learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        self.propose_conf_change(change, id, Some(info)).await?;
        Ok(MemberInfo {
            id,
            name: String::new(),
            peer_urls: urls,
            client_urls: Vec::new(),
            is_learner: learner,
        })
    }

    /// etcd's MemberRemove. A removed member stops itself once it applies
    /// the change (a removed leader hands off leadership first).
    pub async fn remove_member(&self, id: u64) -> Result<()> {
        let Some(target) = self.membership.get(id) else {
            return Err(Error::MemberNotFound);
        };
        if self.strict_reconfig_check && !target.is_learner {
            let members = self.membership.list();
            if !ready_to_remove_voter(&members, id) {
                return Err(Error::NotEnoughStartedMembers);
            }
            // A member nobody reaches is not part of the working quorum:
            // removing it is safe. Otherwise the voters reachable for a
            // while, without the one removed, must still be a quorum.
            let reachable = id == self.id || self.peer_activity.active_since(id).is_some();
            if reachable {
                let voters: Vec<&MemberInfo> = members.iter().filter(|m| !m.is_learner).collect();
                let active = voters
                    .iter()
                    .filter(|m| self.connected_a_while(m.id))
                    .count();
                if active.saturating_sub(1) < 1 + voters.len().saturating_sub(1) / 2 {
                    return Err(Error::Unhealthy);
                }
            }
        }
        self.propose_conf_change(ConfChangeType::RemoveNode, id, None)
            .await
    }

    /// etcd's MemberUpdate: new peer URLs for a member, taken as given (etcd
    /// neither parses nor sorts them here).
    pub async fn update_member(&self, id: u64, peer_urls: &[String]) -> Result<()> {
        let urls = peer_urls.to_vec();
        let members = self.membership.list();
        if !members.iter().any(|m| m.id == id) {
            return Err(Error::MemberNotFound);
        }
        if members
            .iter()
            .any(|m| m.id != id && m.peer_urls.iter().any(|u| urls.contains(u)))
        {
            return Err(Error::PeerUrlExists);
        }
        let op = Op::UpdateMember(PbMember {
            id,
            peer_ur_ls: urls,
            ..Default::default()
        });
        self.propose(op).await.map(|_| ())
    }

    /// etcd's MemberPromote: only the leader knows how far the learner's
    /// log is, so a follower forwards the request to it.
    pub async fn promote_member(&self, id: u64) -> std::result::Result<(), Status> {
        if self.is_leader() {
            return Ok(self.promote_on_leader(id).await?);
        }
        self.leader_peer()
            .await?
            .promote(PromoteRequest {
                cluster_id: self.cluster_id,
                id,
            })
            .await?;
        Ok(())
    }

    /// Before a leader stops, it hands leadership to the voter whose log is
    /// most complete (as etcd's Stop does), so that the others do not wait
    /// out an election timeout. Best effort, bounded by `within`.
    pub async fn hand_off_leadership(&self, within: Duration) {
        if !self.is_leader() {
            return;
        }
        let (done, rx) = oneshot::channel();
        if self.raft().send(Command::Progress { done }).is_err() {
            return;
        }
        let Ok(Some(progress)) = rx.await else {
            return;
        };
        let best = self
            .membership
            .list()
            .into_iter()
            .filter(|m| m.id != self.id && !m.is_learner)
            .max_by_key(|m| progress.members.get(&m.id).map_or(0, |p| p.0));
        if let Some(to) = best {
            tracing::info!(to = %ids::format_id(to.id), "handing off leadership before stopping");
            if let Ok(Err(e)) = tokio::time::timeout(within, self.move_leader(to.id)).await {
                tracing::warn!(error = %e, "leadership hand-off failed");
            }
        }
    }

    /// The leader's side of a promotion.
    pub async fn promote_on_leader(&self, id: u64) -> Result<()> {
        let Some(target) = self.membership.get(id) else {
            return Err(Error::MemberNotFound);
        };
        if !target.is_learner {
            return Err(Error::MemberNotLearner);
        }
        let (done, rx) = oneshot::channel();
        self.raft().send(Command::Progress { done })?;
        let progress = rx.await.map_err(|_| Error::Stopped)?;
        // Leadership moved while the request was on its way.
        let progress = progress.ok_or(Error::LeaderChanged)?;
        let matched = progress.members.get(&id).map_or(0, |p| p.0);
        if (matched as f64) < progress.leader_matched as f64 * PROMOTE_READY_RATIO {
            return Err(Error::LearnerNotReady);
        }
        if self.strict_reconfig_check && !ready_to_promote(&self.membership.list()) {
            return Err(Error::NotEnoughStartedMembers);
        }
        self.propose_conf_change(ConfChangeType::AddNode, id, None)
            .await
    }
}

/// Votes needed among `voters`.
fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// etcd's strict reconfiguration check for adding a voter: enough voters
/// have started (published their names) to make a quorum of the larger
/// cluster — except that a single member may always get a second.
fn ready_to_add_voter(members: &[MemberInfo]) -> bool {
    let voters: Vec<&MemberInfo> = members.iter().filter(|m| !m.is_learner).collect();
    let started = voters.iter().filter(|m| !m.name.is_empty()).count();
    let after = voters.len() + 1;
    if started == 1 && after == 2 {
        return true;
    }
    started >= quorum(after)
}

/// etcd's check before promoting a learner: counted as started, the
/// learner and the started voters make a quorum of the larger cluster.
fn ready_to_promote(members: &[MemberInfo]) -> bool {
    let voters: Vec<&MemberInfo> = members.iter().filter(|m| !m.is_learner).collect();
    let started = voters.iter().filter(|m| !m.name.is_empty()).count() + 1;
    started >= quorum(voters.len() + 1)
}

/// etcd's check before removing a voter: the voters that have started,
/// without the one removed, still make a quorum of the smaller cluster.
fn ready_to_remove_voter(members: &[MemberInfo], id: u64) -> bool {
    let voters: Vec<&MemberInfo> = members
        .iter()
        .filter(|m| !m.is_learner && m.id != id)
        .collect();
    let started = voters.iter().filter(|m| !m.name.is_empty()).count();
    started >= quorum(voters.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, started: bool, learner: bool) -> MemberInfo {
        MemberInfo {
            id,
            name: if started {
                format!("m{id}")
            } else {
                String::new()
            },
            peer_urls: vec![format!("http://127.0.0.1:{id}")],
            client_urls: Vec::new(),
            is_learner: learner,
        }
    }

    #[test]
    fn adding_a_voter_needs_a_started_quorum_of_the_larger_cluster() {
        assert!(ready_to_add_voter(&[m(1, true, false)]));
        // Two of three started: a fourth voter needs three started.
        let three = [m(1, true, false), m(2, true, false), m(3, false, false)];
        assert!(!ready_to_add_voter(&three));
        let three = [m(1, true, false), m(2, true, false), m(3, true, false)];
        assert!(ready_to_add_voter(&three));
        // Learners are not counted.
        let with_learner = [m(1, true, false), m(2, true, false), m(3, false, true)];
        assert!(ready_to_add_voter(&with_learner));
    }

    #[test]
    fn removing_a_voter_keeps_a_started_quorum() {
        let three = [m(1, true, false), m(2, true, false), m(3, false, false)];
        assert!(!ready_to_remove_voter(&three, 1));
        assert!(ready_to_remove_voter(&three, 3));
    }

    #[test]
    fn urls_are_checked_and_kept_in_etcd_form() {
        assert_eq!(
            canonical_urls(&["HTTP://b:2".into(), "http://a:1".into()]).unwrap(),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
        assert_eq!(canonical_urls(&["a:1".into()]), Err(Error::MemberBadUrls));
        assert_eq!(
            canonical_urls(&["http://a".into()]),
            Err(Error::MemberBadUrls)
        );
        assert_eq!(
            canonical_urls(&["http://a:1/p".into()]),
            Err(Error::MemberBadUrls)
        );
        assert_eq!(canonical_urls(&[]), Err(Error::MemberBadUrls));
    }
}
