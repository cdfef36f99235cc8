//! The KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{check_leader, check_learner};
use crate::apply::{self, Op};
use crate::error::Error;
use crate::kv::{range, validate};
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::server::Member;

pub struct KvService {
    member: Arc<Member>,
}

impl KvService {
    pub fn new(member: Arc<Member>) -> KvService {
        KvService { member }
    }

    fn header(&self, h: Option<ResponseHeader>) -> Option<ResponseHeader> {
        Some(self.member.header(h.map_or(0, |h| h.revision)))
    }

    async fn write(&self, op: Op) -> Result<apply::Response, Status> {
        Ok(self.member.propose(op).await?)
    }
}

/// What etcd's quota counts for a put: the request plus a fixed overhead.
fn put_cost(r: &PutRequest) -> usize {
    const KV_OVERHEAD: usize = 256;
    KV_OVERHEAD + r.key.len() + r.value.len()
}

/// A txn costs the puts of its costlier branch (nested txns included).
fn txn_cost(t: &TxnRequest) -> usize {
    use crate::pb::etcdserverpb::request_op::Request as R;
    let branch = |ops: &[crate::pb::etcdserverpb::RequestOp]| -> usize {
        ops.iter()
            .map(|op| match &op.request {
                Some(R::RequestPut(p)) => put_cost(p),
                Some(R::RequestTxn(inner)) => txn_cost(inner),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

fn unexpected() -> Status {
    Error::Internal("unexpected response kind".into()).status()
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        check_learner(&self.member, req.get_ref().serializable)?;
        check_leader(&self.member, &req)?;
        let r = req.into_inner();
        validate::check_range(&r)?;
        if !r.serializable {
            self.member.read_barrier().await?;
        }
        let store = self.member.store().clone();
        // Large ranges read many records: keep them off the async workers.
        let mut resp = tokio::task::spawn_blocking(move || range::range(store.as_ref(), &r))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        resp.header = self.header(resp.header);
        crate::metrics::hooks::range_served();
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let r = req.into_inner();
        validate::check_put(&r)?;
        self.member.check_quota(put_cost(&r)).await?;
        match self.write(Op::Put(r)).await? {
            apply::Response::Put(mut p) => {
                p.header = self.header(p.header);
                Ok(Response::new(p))
            }
            _ => Err(unexpected()),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let r = req.into_inner();
        validate::check_delete(&r)?;
        match self.write(Op::DeleteRange(r)).await? {
            apply::Response::DeleteRange(mut d) => {
                d.header = self.header(d.header);
                Ok(Response::new(d))
            }
            _ => Err(unexpected()),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let r = req.into_inner();
        validate::check_txn(&r, self.member.max_txn_ops)?;
        let cost = txn_cost(&r);
        if cost > 0 {
            self.member.check_quota(cost).await?;
        }
        match self.write(Op::Txn(r)).await? {
            apply::Response::Txn(mut t) => {
                t.header = self.header(t.header);
                Ok(Response::new(t))
            }
            _ => Err(unexpected()),
        }
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let r = req.into_inner();
        match self.write(Op::Compact(r)).await? {
            apply::Response::Compact(mut c, physical) => {
                if let Some(done) = physical {
                    // `physical`: answer once the old versions are gone.
                    let _ = done.await;
                }
                c.header = self.header(c.header);
                Ok(Response::new(c))
            }
            _ => Err(unexpected()),
        }
    }
}
