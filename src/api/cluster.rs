//! The Cluster service. A single member lists itself; adding, removing and
//! promoting members come with clustering.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::check_leader;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{Member as PbMember, MemberListRequest, MemberListResponse};
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
            .members
            .iter()
            .map(|m| PbMember {
                id: m.id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: m.client_urls.clone(),
                is_learner: m.is_learner,
            })
            .collect();
        // etcd's Cluster responses carry no revision.
        Ok(Response::new(MemberListResponse {
            header: Some(self.member.header(0)),
            members,
        }))
    }
}
