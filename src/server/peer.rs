//! The `Peer` gRPC service on the peer URLs: raft messages and snapshots
//! from the other members, keep-alives and promotions that followers
//! forward to the leader, and the member list for a member that joins.

use std::sync::Arc;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tonic::{Request, Response, Status, Streaming};

use crate::api::lease::{renew_on_leader, time_to_live_on_leader};
use crate::consensus::snapshot::{self, Records};
use crate::consensus::{Command, RaftHandle};
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::mvcc::MvccStore;
use crate::pb::cairnpb::peer_server::Peer;
use crate::pb::cairnpb::{
    HashKvRequest, HashKvResponse, LeaseRenewRequest, LeaseRenewResponse, LeaseTtlRequest,
    LeaseTtlResponse, MembersRequest, MembersResponse, PeerMember, PromoteRequest, PromoteResponse,
    RaftAck, RaftBatch, SnapshotAck, SnapshotChunk,
};
use crate::server::Member;
use crate::storage::Storage;

pub struct PeerService {
    raft: RaftHandle,
    cluster_id: u64,
    member_id: u64,
    /// Set once the member is ready to serve; keep-alives wait for it.
    member: tokio::sync::watch::Receiver<Option<Arc<Member>>>,
    lessor: Arc<Lessor>,
    membership: Arc<Membership>,
    storage: Storage,
    store: Arc<MvccStore>,
    /// One incoming snapshot at a time: two would share a staging directory
    /// when they are the same snapshot resent.
    receiving: tokio::sync::Mutex<()>,
}

/// What the peer service works with.
pub struct PeerContext {
    pub raft: RaftHandle,
    pub cluster_id: u64,
    pub member_id: u64,
    pub member: tokio::sync::watch::Receiver<Option<Arc<Member>>>,
    pub lessor: Arc<Lessor>,
    pub membership: Arc<Membership>,
    pub storage: Storage,
    pub store: Arc<MvccStore>,
}

impl PeerService {
    pub fn new(c: PeerContext) -> PeerService {
        PeerService {
            raft: c.raft,
            cluster_id: c.cluster_id,
            member_id: c.member_id,
            member: c.member,
            lessor: c.lessor,
            membership: c.membership,
            storage: c.storage,
            store: c.store,
            receiving: tokio::sync::Mutex::new(()),
        }
    }

    /// The member, once it is ready to serve.
    async fn ready_member(&self) -> Result<Arc<Member>, Status> {
        let mut rx = self.member.clone();
        let m = rx
            .wait_for(|m| m.is_some())
            .await
            .map_err(|_| Status::unavailable("member stopped"))?;
        m.clone()
            .ok_or_else(|| Status::unavailable("member stopped"))
    }

    fn check_to(&self, to: u64) -> Result<(), Status> {
        if to != self.member_id {
            return Err(Status::failed_precondition(format!(
                "member ID mismatch: this is {:x}, the message is for {to:x}",
                self.member_id
            )));
        }
        Ok(())
    }

    fn check_cluster(&self, cluster_id: u64, from: u64) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            tracing::warn!(
                local_cluster_id = format_args!("{:x}", self.cluster_id),
                remote_cluster_id = format_args!("{cluster_id:x}"),
                remote_member = format_args!("{from:x}"),
                "request sent was ignored due to cluster ID mismatch"
            );
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
            self.check_to(batch.to)?;
            crate::metrics::hooks::peer_bytes_received(
                batch.from,
                batch.messages.iter().map(|m| m.len() as u64).sum(),
            );
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
        let member = self.ready_member().await?;
        let ttl = renew_on_leader(&member, &self.lessor, r.id).await?;
        Ok(Response::new(LeaseRenewResponse { ttl }))
    }

    async fn lease_ttl(
        &self,
        req: Request<LeaseTtlRequest>,
    ) -> Result<Response<LeaseTtlResponse>, Status> {
        let r = req.into_inner();
        self.check_cluster(r.cluster_id, 0)?;
        let member = self.ready_member().await?;
        Ok(Response::new(time_to_live_on_leader(
            &member,
            &self.lessor,
            r.id,
        )?))
    }

    /// Stages the incoming store on disk as it arrives, then hands the raft
    /// message (pointing at the staged files) to raft.
    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let mut stream = req.into_inner();
        let head = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check_cluster(head.cluster_id, head.from)?;
        self.check_to(head.to)?;
        let mut msg = Message::parse_from_bytes(&head.message)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument("not a snapshot message"));
        }
        let _one_at_a_time = self.receiving.lock().await;
        let meta = msg.get_snapshot().get_metadata();
        let name = format!("{:016x}-{:016x}", meta.term, meta.index);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Records>(4);
        let storage = self.storage.clone();
        let stager = tokio::task::spawn_blocking(move || {
            snapshot::stage(&storage, &name, || rx.blocking_recv())
        });
        let received = async {
            while let Some(c) = stream.message().await? {
                let r = Records {
                    family: c.family,
                    keys: c.keys,
                    values: c.values,
                };
                if tx.send(r).await.is_err() {
                    break;
                }
            }
            Ok::<(), Status>(())
        }
        .await;
        drop(tx);
        let staged = stager.await.map_err(|e| Status::internal(e.to_string()))?;
        let dir = match (received, staged) {
            (Ok(()), Ok(dir)) => dir,
            (Err(e), staged) => {
                if let Ok(dir) = staged {
                    let _ = std::fs::remove_dir_all(dir);
                }
                return Err(e);
            }
            (Ok(()), Err(e)) => return Err(Status::internal(e.to_string())),
        };
        msg.mut_snapshot()
            .set_data(dir.to_string_lossy().into_owned().into_bytes().into());
        self.raft
            .send(Command::Step(Box::new(msg)))
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(SnapshotAck {}))
    }

    /// Who the cluster is, for a member that joins it.
    async fn members(
        &self,
        _req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let members = self
            .membership
            .list()
            .into_iter()
            .map(|m| PeerMember {
                id: m.id,
                name: m.name,
                peer_urls: m.peer_urls,
                client_urls: m.client_urls,
                is_learner: m.is_learner,
            })
            .collect();
        Ok(Response::new(MembersResponse {
            cluster_id: self.cluster_id,
            members,
        }))
    }

    async fn promote(
        &self,
        req: Request<PromoteRequest>,
    ) -> Result<Response<PromoteResponse>, Status> {
        let r = req.into_inner();
        self.check_cluster(r.cluster_id, 0)?;
        let member = self.ready_member().await?;
        member.promote_on_leader(r.id).await?;
        Ok(Response::new(PromoteResponse {}))
    }

    /// A peer's corruption check asks for our hash at its revision. Served
    /// as soon as the peer port is up (a member restarting with the initial
    /// check asks before it serves anything itself), not only once ready.
    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let r = req.into_inner();
        self.check_cluster(r.cluster_id, 0)?;
        let store = self.store.clone();
        let (hash, compact_revision, hash_revision) =
            tokio::task::spawn_blocking(move || store.hash_kv(r.revision))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(HashKvResponse {
            member_id: self.member_id,
            revision: self.store.current_revision(),
            hash,
            compact_revision,
            hash_revision,
        }))
    }
}
