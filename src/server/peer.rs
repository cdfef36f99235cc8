//! The `Peer` gRPC service on the peer URLs: raft messages from the other
//! members, and keep-alives that followers forward to the leader.

use std::sync::Arc;

use protobuf::Message as _;
use raft::prelude::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::api::lease::renew_on_leader;
use crate::consensus::{Command, RaftHandle};
use crate::lease::Lessor;
use crate::pb::cairnpb::peer_server::Peer;
use crate::pb::cairnpb::{LeaseRenewRequest, LeaseRenewResponse, RaftAck, RaftBatch};
use crate::server::Member;

pub struct PeerService {
    raft: RaftHandle,
    cluster_id: u64,
    member_id: u64,
    /// Set once the member is ready to serve; keep-alives wait for it.
    member: tokio::sync::watch::Receiver<Option<Arc<Member>>>,
    lessor: Arc<Lessor>,
}

impl PeerService {
    pub fn new(
        raft: RaftHandle,
        cluster_id: u64,
        member_id: u64,
        member: tokio::sync::watch::Receiver<Option<Arc<Member>>>,
        lessor: Arc<Lessor>,
    ) -> PeerService {
        PeerService {
            raft,
            cluster_id,
            member_id,
            member,
            lessor,
        }
    }

    fn check_cluster(&self, cluster_id: u64, from: u64) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: ours is {:x}, member {from:x} sent {cluster_id:x}",
                self.cluster_id
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let mut stream = req.into_inner();
        while let Some(batch) = stream.message().await? {
            self.check_cluster(batch.cluster_id, batch.from)?;
            if batch.to != self.member_id {
                return Err(Status::failed_precondition(format!(
                    "member ID mismatch: this is {:x}, the batch is for {:x}",
                    self.member_id, batch.to
                )));
            }
            for raw in batch.messages {
                let m = Message::parse_from_bytes(&raw)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                self.raft
                    .send(Command::Step(Box::new(m)))
                    .map_err(|e| Status::unavailable(e.to_string()))?;
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn lease_renew(
        &self,
        req: Request<LeaseRenewRequest>,
    ) -> Result<Response<LeaseRenewResponse>, Status> {
        let r = req.into_inner();
        self.check_cluster(r.cluster_id, 0)?;
        let mut rx = self.member.clone();
        let member = rx
            .wait_for(|m| m.is_some())
            .await
            .map_err(|_| Status::unavailable("member stopped"))?
            .clone()
            .expect("set");
        let ttl = renew_on_leader(&member, &self.lessor, r.id).await?;
        Ok(Response::new(LeaseRenewResponse { ttl }))
    }
}
