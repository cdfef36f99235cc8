//! The Lease service: grant and revoke go through raft; keep-alive and time
//! to live are answered by the leader's lessor (followers forward them), the
//! list by the local one.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{check_leader, check_learner, ResponseStream};
use crate::apply::{self, Op};
use crate::error::Error;
use crate::lease::LeaseInfo;
use crate::lease::Lessor;
use crate::pb::cairnpb::{LeaseRenewRequest, LeaseTtlRequest, LeaseTtlResponse};
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use crate::server::Member;

pub struct LeaseService {
    member: Arc<Member>,
    lessor: Arc<Lessor>,
}

impl LeaseService {
    pub fn new(member: Arc<Member>, lessor: Arc<Lessor>) -> LeaseService {
        LeaseService { member, lessor }
    }

    fn current(&self) -> i64 {
        self.member.store().current_revision()
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let mut r = req.into_inner();
        if r.id == 0 {
            r.id = self.member.next_lease_id();
        }
        // etcd counts a lease as this many bytes against the quota.
        const LEASE_OVERHEAD: usize = 64;
        self.member.check_quota(LEASE_OVERHEAD).await?;
        match self.member.propose(Op::LeaseGrant(r)).await? {
            apply::Response::LeaseGrant(mut g) => {
                g.header = Some(self.member.header(g.header.map_or(0, |h| h.revision)));
                Ok(Response::new(g))
            }
            _ => Err(Error::Internal("unexpected response kind".into()).status()),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        match self
            .member
            .propose(Op::LeaseRevoke(req.into_inner()))
            .await?
        {
            apply::Response::LeaseRevoke(mut r) => {
                r.header = Some(self.member.header(r.header.map_or(0, |h| h.revision)));
                Ok(Response::new(r))
            }
            _ => Err(Error::Internal("unexpected response kind".into()).status()),
        }
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<ResponseStream<LeaseKeepAliveResponse>>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let member = self.member.clone();
        let lessor = self.lessor.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                let ttl = match renew(&member, &lessor, r.id).await {
                    Ok(ttl) => ttl,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let resp = LeaseKeepAliveResponse {
                    header: Some(member.header(member.store().current_revision())),
                    id: r.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let r = req.into_inner();
        let info = time_to_live(&self.member, &self.lessor, r.id).await?;
        let header = Some(self.member.header(self.current()));
        let resp = match info {
            Some(info) => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: info.remaining,
                granted_ttl: info.granted_ttl,
                keys: if r.keys { info.keys } else { Vec::new() },
            },
            // etcd answers an unknown lease with TTL -1, not an error.
            None => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let leases = self
            .lessor
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.member.header(self.current())),
            leases,
        }))
    }
}

/// A keep-alive: carried out by the leader (where lease deadlines live),
/// forwarded to it from a follower.
async fn renew(member: &Member, lessor: &Lessor, id: i64) -> Result<i64, Status> {
    if member.is_leader() || member.membership.list().len() == 1 {
        return renew_on_leader(member, lessor, id).await;
    }
    let resp = member
        .leader_peer()
        .await?
        .lease_renew(LeaseRenewRequest {
            cluster_id: member.cluster_id,
            id,
        })
        .await?;
    Ok(resp.into_inner().ttl)
}

/// A lease's time left, as the leader sees it (deadlines live there): asked
/// of the leader from a follower, as etcd does.
async fn time_to_live(
    member: &Member,
    lessor: &Lessor,
    id: i64,
) -> Result<Option<LeaseInfo>, Status> {
    if member.is_leader() || member.membership.list().len() == 1 {
        return Ok(lessor.info(id));
    }
    let r = member
        .leader_peer()
        .await?
        .lease_ttl(LeaseTtlRequest {
            cluster_id: member.cluster_id,
            id,
        })
        .await?
        .into_inner();
    Ok(r.found.then_some(LeaseInfo {
        id,
        granted_ttl: r.granted_ttl,
        remaining: r.ttl,
        keys: r.keys,
    }))
}

/// The leader's side of a time-to-live question from a follower.
pub fn time_to_live_on_leader(
    member: &Member,
    lessor: &Lessor,
    id: i64,
) -> Result<LeaseTtlResponse, Status> {
    if !member.is_leader() {
        return Err(Error::LeaderChanged.status());
    }
    Ok(match lessor.info(id) {
        Some(i) => LeaseTtlResponse {
            found: true,
            ttl: i.remaining,
            granted_ttl: i.granted_ttl,
            keys: i.keys,
        },
        None => LeaseTtlResponse::default(),
    })
}

/// The leader's side of a keep-alive. A lease with a checkpoint of its time
/// left first has it cleared through raft — the checkpoint would otherwise
/// shorten the renewed lease at the next restart (etcd does the same).
/// An unknown or expired lease answers TTL 0, as in etcd.
pub async fn renew_on_leader(member: &Member, lessor: &Lessor, id: i64) -> Result<i64, Status> {
    if !member.is_leader() {
        // Leadership moved while the keep-alive was on its way.
        return Err(Error::LeaderChanged.status());
    }
    if lessor.has_checkpoint(id) {
        let cp = LeaseCheckpointRequest {
            checkpoints: vec![LeaseCheckpoint {
                id,
                remaining_ttl: 0,
            }],
        };
        member.propose(Op::LeaseCheckpoint(cp)).await?;
    }
    Ok(lessor.renew(id).unwrap_or(0))
}
