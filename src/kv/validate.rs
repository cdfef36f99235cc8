//! Checks etcd makes before a request reaches raft: they depend only on the
//! request, never on the store, so they answer at once.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::pb::etcdserverpb::request_op::Request;
use crate::pb::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

pub fn check_range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// The whole txn check: sizes and keys first (cheap), then overlapping
/// writes in each branch.
pub fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<()> {
    check_txn_ops(r, max_ops)?;
    check_writes(&r.success)?;
    check_writes(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: usize) -> Result<()> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    // A nested txn gets only the budget its parent leaves (etcd's rule).
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize) -> Result<()> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(t)) => check_txn_ops(t, max_ops),
        // An op with nothing in it: etcd answers "key not found".
        None => Err(Error::KeyNotFound),
    }
}

/// A deleted interval `[begin, end)`, or one key when `end` is `None`.
#[derive(Clone)]
struct Deleted {
    begin: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Deleted {
    fn covers(&self, k: &[u8]) -> bool {
        match &self.end {
            None => k == self.begin.as_slice(),
            // Compared byte by byte as etcd's interval tree does: an end of
            // "\0" (etcd's "to the end") sorts below every begin, so such a
            // delete covers nothing here.
            Some(e) => k >= self.begin.as_slice() && k < e.as_slice(),
        }
    }
}

/// Refuses a branch that writes one key twice, or puts a key it also
/// deletes — across nested txns too, except that the two branches of one
/// nested txn may put the same key (only one of them runs).
fn check_writes(ops: &[RequestOp]) -> Result<()> {
    writes_of(ops).map(|_| ())
}

fn writes_of(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Deleted>)> {
    let mut dels: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Deleted {
                begin: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = writes_of(&t.success)?;
        let (puts_else, dels_else) = writes_of(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.covers(k)) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) || dels.iter().any(|d| d.covers(k)) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.covers(&p.key)) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    #[test]
    fn duplicate_puts_refused() {
        assert_eq!(
            check_writes(&[put("a"), put("a")]),
            Err(Error::DuplicateKey)
        );
        assert_eq!(check_writes(&[put("a"), put("b")]), Ok(()));
    }

    #[test]
    fn put_inside_deleted_range_refused() {
        assert_eq!(
            check_writes(&[del("a", "c"), put("b")]),
            Err(Error::DuplicateKey)
        );
        assert_eq!(check_writes(&[del("a", "c"), put("c")]), Ok(()));
    }

    #[test]
    fn nested_branches_may_share_a_key() {
        assert_eq!(check_writes(&[txn(vec![put("a")], vec![put("a")])]), Ok(()));
        assert_eq!(
            check_writes(&[txn(vec![put("a")], vec![]), put("a")]),
            Err(Error::DuplicateKey)
        );
    }

    #[test]
    fn too_many_ops() {
        let t = TxnRequest {
            compare: vec![],
            success: (0..3).map(|i| put(&format!("k{i}"))).collect(),
            failure: vec![],
        };
        assert_eq!(check_txn(&t, 2), Err(Error::TooManyOps));
        assert_eq!(check_txn(&t, 3), Ok(()));
    }
}
