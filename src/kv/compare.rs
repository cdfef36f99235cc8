//! Judging a txn's compares, as etcd does.

use std::cmp::Ordering;

use super::KvView;
use crate::error::Result;
use crate::mvcc::RangeOptions;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::{Compare, RequestOp, TxnRequest};
use crate::pb::mvccpb::KeyValue;

/// Whether one compare holds. A compare over a range holds when it holds
/// for every key in it; on no key at all it is judged against an all-zero
/// key-value, except a value compare, which then fails (an absent value and
/// an empty one cannot be told apart on the wire).
pub fn holds(view: &impl KvView, c: &Compare) -> Result<bool> {
    let rr = view.range(&c.key, &c.range_end, &RangeOptions::default())?;
    if rr.kvs.is_empty() {
        if c.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(rr.kvs.iter().all(|kv| compare_kv(c, kv)))
}

/// The comparison itself, on one key-value.
pub fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&int_target(c, |t| match t {
            TargetUnion::CreateRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&int_target(c, |t| match t {
            TargetUnion::ModRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&int_target(c, |t| match t {
            TargetUnion::Version(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&int_target(c, |t| match t {
            TargetUnion::Lease(r) => Some(*r),
            _ => None,
        })),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// The integer a compare names; a union of the wrong kind counts as 0.
fn int_target(c: &Compare, pick: impl Fn(&TargetUnion) -> Option<i64>) -> i64 {
    c.target_union.as_ref().and_then(pick).unwrap_or(0)
}

/// The branch every txn in `req` takes, outer first, then each nested txn
/// of the taken branch depth-first. As in etcd, all compares — nested ones
/// too — are judged against the state before the transaction.
pub fn path(view: &impl KvView, req: &TxnRequest) -> Result<Vec<bool>> {
    let mut out = Vec::new();
    walk(view, req, &mut out)?;
    Ok(out)
}

fn walk(view: &impl KvView, req: &TxnRequest, out: &mut Vec<bool>) -> Result<()> {
    let mut ok = true;
    for c in &req.compare {
        if !holds(view, c)? {
            ok = false;
            break;
        }
    }
    out.push(ok);
    for op in branch(req, ok) {
        if let Some(crate::pb::etcdserverpb::request_op::Request::RequestTxn(t)) = &op.request {
            walk(view, t, out)?;
        }
    }
    Ok(())
}

pub fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: b"k".to_vec(),
            range_end: vec![],
            target_union: Some(u),
        }
    }

    #[test]
    fn missing_key_compares_as_zero() {
        let zero = KeyValue::default();
        let c = cmp(
            CompareTarget::Mod,
            CompareResult::Equal,
            TargetUnion::ModRevision(0),
        );
        assert!(compare_kv(&c, &zero));
        let c = cmp(
            CompareTarget::Version,
            CompareResult::Greater,
            TargetUnion::Version(0),
        );
        assert!(!compare_kv(&c, &zero));
    }

    #[test]
    fn value_compares_bytes() {
        let kv = KeyValue {
            value: b"b".to_vec(),
            ..Default::default()
        };
        let gt = cmp(
            CompareTarget::Value,
            CompareResult::Greater,
            TargetUnion::Value(b"a".to_vec()),
        );
        let lt = cmp(
            CompareTarget::Value,
            CompareResult::Less,
            TargetUnion::Value(b"a".to_vec()),
        );
        assert!(compare_kv(&gt, &kv));
        assert!(!compare_kv(&lt, &kv));
    }

    #[test]
    fn mismatched_union_counts_as_zero() {
        let kv = KeyValue {
            version: 3,
            ..Default::default()
        };
        // Target VERSION but a mod revision in the union: compared with 0.
        let c = cmp(
            CompareTarget::Version,
            CompareResult::Greater,
            TargetUnion::ModRevision(10),
        );
        assert!(compare_kv(&c, &kv));
    }
}
