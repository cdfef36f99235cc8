//! Puts, deletes and transactions applied to a write transaction, with
//! etcd's responses.

use super::{compare, range};
use crate::error::{Error, Result};
use crate::mvcc::WriteTxn;
use crate::pb::etcdserverpb::request_op::Request;
use crate::pb::etcdserverpb::response_op::Response;
use crate::pb::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RequestOp, ResponseHeader,
    ResponseOp, TxnRequest, TxnResponse,
};

/// Which leases exist, as the apply step sees them.
pub trait Leases {
    fn exists(&self, id: i64) -> bool;
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

pub fn put(w: &mut WriteTxn, req: &PutRequest, leases: &dyn Leases) -> Result<PutResponse> {
    let prev = if req.ignore_value || req.ignore_lease || req.prev_kv {
        w.get(&req.key)?
    } else {
        None
    };
    if (req.ignore_value || req.ignore_lease) && prev.is_none() {
        return Err(Error::KeyNotFound);
    }
    let value = match (&prev, req.ignore_value) {
        (Some(p), true) => p.value.clone(),
        _ => req.value.clone(),
    };
    let lease = match (&prev, req.ignore_lease) {
        (Some(p), true) => p.lease,
        _ => {
            if req.lease != 0 && !leases.exists(req.lease) {
                return Err(Error::LeaseNotFound);
            }
            req.lease
        }
    };
    w.put(&req.key, value, lease)?;
    Ok(PutResponse {
        header: header(w.rev()),
        prev_kv: if req.prev_kv { prev } else { None },
    })
}

pub fn delete_range(w: &mut WriteTxn, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
    let deleted = w.delete_range(&req.key, &req.range_end)?;
    Ok(DeleteRangeResponse {
        header: header(w.rev()),
        deleted: deleted.len() as i64,
        prev_kvs: if req.prev_kv { deleted } else { Vec::new() },
    })
}

/// A whole transaction: every compare (nested ones too) is judged first
/// against the state before it, then the taken path's puts and ranges are
/// checked — an error there aborts the txn before it writes anything —,
/// then the ops run in order.
pub fn txn(w: &mut WriteTxn, req: &TxnRequest, leases: &dyn Leases) -> Result<TxnResponse> {
    let path = compare::path(w, req)?;
    let mut pos = 0;
    check_path(w, req, &path, &mut pos, &|w, op| check_put(w, op, leases))?;
    let mut pos = 0;
    check_path(w, req, &path, &mut pos, &check_range)?;
    let mut pos = 0;
    let mut resp = exec(w, req, &path, &mut pos, leases)?;
    resp.header = header(w.rev());
    Ok(resp)
}

type Check<'a> = dyn Fn(&WriteTxn, &RequestOp) -> Result<()> + 'a;

fn check_path(
    w: &WriteTxn,
    req: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
    check: &Check<'_>,
) -> Result<()> {
    let ok = path[*pos];
    *pos += 1;
    for op in compare::branch(req, ok) {
        match &op.request {
            Some(Request::RequestTxn(t)) => check_path(w, t, path, pos, check)?,
            _ => check(w, op)?,
        }
    }
    Ok(())
}

fn check_put(w: &WriteTxn, op: &RequestOp, leases: &dyn Leases) -> Result<()> {
    let Some(Request::RequestPut(p)) = &op.request else {
        return Ok(());
    };
    if (p.ignore_value || p.ignore_lease) && w.get(&p.key)?.is_none() {
        return Err(Error::KeyNotFound);
    }
    if p.lease != 0 && !leases.exists(p.lease) {
        return Err(Error::LeaseNotFound);
    }
    Ok(())
}

fn check_range(w: &WriteTxn, op: &RequestOp) -> Result<()> {
    let Some(Request::RequestRange(r)) = &op.request else {
        return Ok(());
    };
    if r.revision == 0 {
        Ok(())
    } else if r.revision > w.rev() {
        Err(Error::FutureRevision)
    } else if r.revision < w.compacted_revision() {
        Err(Error::Compacted)
    } else {
        Ok(())
    }
}

fn exec(
    w: &mut WriteTxn,
    req: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
    leases: &dyn Leases,
) -> Result<TxnResponse> {
    let ok = path[*pos];
    *pos += 1;
    let mut responses = Vec::new();
    for op in compare::branch(req, ok) {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => Response::ResponseRange(range::range(w, r)?),
            Some(Request::RequestPut(p)) => Response::ResponsePut(put(w, p, leases)?),
            Some(Request::RequestDeleteRange(d)) => {
                Response::ResponseDeleteRange(delete_range(w, d)?)
            }
            Some(Request::RequestTxn(t)) => {
                // A nested txn's header stays empty, as in etcd.
                let mut r = exec(w, t, path, pos, leases)?;
                r.header = Some(ResponseHeader::default());
                Response::ResponseTxn(r)
            }
            // Refused before raft (validate::check_txn); nothing to run.
            None => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded: ok,
        responses,
    })
}
