//! The Maintenance service: Status, HashKV, MoveLeader and the alarm list.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{check_leader, check_learner};
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, HashKvRequest, HashKvResponse, MoveLeaderRequest,
    MoveLeaderResponse, StatusRequest, StatusResponse,
};
use crate::server::Member;

pub struct MaintenanceService {
    member: Arc<Member>,
}

impl MaintenanceService {
    pub fn new(member: Arc<Member>) -> MaintenanceService {
        MaintenanceService { member }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        check_leader(&self.member, &req)?;
        let m = &self.member;
        let raft = &m.raft().status;
        let (db_size, db_size_in_use) = m.storage().size();
        let rev = m.store().current_revision();
        Ok(Response::new(StatusResponse {
            header: Some(m.header(rev)),
            version: crate::version::ETCD_API_VERSION.to_string(),
            db_size,
            leader: raft.leader.load(Ordering::SeqCst),
            raft_index: raft.commit.load(Ordering::SeqCst),
            raft_term: raft.term.load(Ordering::SeqCst),
            raft_applied_index: raft.applied.load(Ordering::SeqCst),
            errors: Vec::new(),
            db_size_in_use,
            is_learner: m.is_learner(),
            ..Default::default()
        }))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        self.member.move_leader(req.into_inner().target_id).await?;
        let rev = self.member.store().current_revision();
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.member.header(rev)),
        }))
    }

    /// The same on every member that has the same history (see
    /// `MvccStore::hash_kv`), which is how operators and tests compare
    /// members' stores.
    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let rev = req.into_inner().revision;
        let store = self.member.store().clone();
        let (hash, compact_revision, hash_revision) =
            tokio::task::spawn_blocking(move || store.hash_kv(rev))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        let current = self.member.store().current_revision();
        Ok(Response::new(HashKvResponse {
            header: Some(self.member.header(current)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    /// No alarms exist yet (the NOSPACE and CORRUPT alarms come with the
    /// quota and corruption checks); etcdctl's `endpoint health` asks.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let rev = self.member.store().current_revision();
        Ok(Response::new(AlarmResponse {
            header: Some(self.member.header(rev)),
            alarms: Vec::new(),
        }))
    }
}
