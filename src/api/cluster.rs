//! The Cluster service: the member list (adding, removing and promoting
//! members come next).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::check_leader;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{MemberListRequest, MemberListResponse};
use crate::server::Member;

pub struct ClusterService {
    member: Arc<Member>,
}

impl ClusterService {
    pub fn new(member: Arc<Member>) -> ClusterService {
        ClusterService { member }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        check_leader(&self.member, &req)?;
        let members = self
            .member
            .membership
            .list()
            .iter()
            .map(crate::membership::to_pb)
            .collect();
        // etcd's Cluster responses carry no revision.
        Ok(Response::new(MemberListResponse {
            header: Some(self.member.header(0)),
            members,
        }))
    }
}
