//! The Cluster service: the member list, and adding, removing, updating and
//! promoting members (the checks and the raft side are in
//! `server::reconfig`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{check_leader, check_learner};
use crate::membership::to_pb;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{
    Member as PbMember, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::server::Member;

pub struct ClusterService {
    member: Arc<Member>,
}

impl ClusterService {
    pub fn new(member: Arc<Member>) -> ClusterService {
        ClusterService { member }
    }

    fn members(&self) -> Vec<PbMember> {
        self.member.membership.list().iter().map(to_pb).collect()
    }

    /// Every call but the list is refused by a learner, and all of them
    /// honour `hasleader`.
    fn guard<T>(&self, req: &Request<T>) -> Result<(), Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, req)
    }
}

// etcd's Cluster responses carry no revision.
#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.guard(&req)?;
        let r = req.into_inner();
        let added = self.member.add_member(&r.peer_ur_ls, r.is_learner).await?;
        Ok(Response::new(MemberAddResponse {
            header: Some(self.member.header(0)),
            member: Some(to_pb(&added)),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.guard(&req)?;
        self.member.remove_member(req.into_inner().id).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.member.header(0)),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.guard(&req)?;
        let r = req.into_inner();
        self.member.update_member(r.id, &r.peer_ur_ls).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.member.header(0)),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.guard(&req)?;
        if req.get_ref().linearizable {
            self.member.read_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.member.header(0)),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.guard(&req)?;
        self.member.promote_member(req.into_inner().id).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.member.header(0)),
            members: self.members(),
        }))
    }
}
