//! What the rest of the code calls where something worth counting happens:
//! one call per event site, so that the write path reads as before.
//! Counting is a few atomic operations; nothing here locks or does I/O.

use std::time::Duration;

use super::METRICS;
use crate::apply::{Op as ApplyOp, Response};
use crate::error::Error;
use crate::pb::etcdserverpb::{response_op::Response as Op, TxnRequest, TxnResponse};
use crate::pb::mvccpb::Event;

/// etcd warns about (and counts) an apply slower than this.
const SLOW_APPLY: Duration = Duration::from_millis(100);

/// The raft thread learnt who leads: a change to a known leader is counted
/// (the first election too, as etcd does).
pub fn leader_seen(previous: u64, now: u64) {
    if is_leader_change(previous, now) {
        METRICS.leader_changes_seen.inc();
    }
}

fn is_leader_change(previous: u64, now: u64) -> bool {
    now != 0 && now != previous
}

/// One committed entry went through the apply step in `took`.
pub fn entry_applied(took: Duration) {
    if took > SLOW_APPLY {
        METRICS.slow_apply.inc();
    }
}

/// The raft log's synced write (entries and hard state) took `took`.
pub fn wal_fsync(took: Duration) {
    METRICS.wal_fsync_duration.observe(took.as_secs_f64());
}

/// The apply step's batch reached the database in `took`.
pub fn backend_commit(took: Duration) {
    METRICS.backend_commit_duration.observe(took.as_secs_f64());
}

/// An applied request, for etcd's mvcc counters, counted as etcd's
/// `metricsTxnWrite` does: every range it read (a range op, a compare, the
/// read behind `prev_kv` or `ignore_*`), every put and every delete call;
/// and one txn when they add up to more than one operation.
pub fn write_applied(op: &ApplyOp, resp: &Response, events: &[Event]) {
    let (ranges, puts, deletes) = match (op, resp) {
        (ApplyOp::Put(p), Response::Put(_)) => (
            u64::from(p.prev_kv || p.ignore_value || p.ignore_lease),
            1,
            0,
        ),
        (ApplyOp::DeleteRange(d), Response::DeleteRange(_)) => (u64::from(d.prev_kv), 0, 1),
        (ApplyOp::Txn(t), Response::Txn(r)) if !crate::apply::txn_is_read_only(t) => {
            // etcd evaluates a writing txn's compares in a read txn of
            // their own, then runs the branch in a write txn: two counts.
            let (ranges, puts, deletes) = txn_ops(t, r);
            let compares = t.compare.len() as u64;
            METRICS.range_total.inc_by(compares);
            if compares > 1 {
                METRICS.txn_total.inc();
            }
            (ranges - compares, puts, deletes)
        }
        (ApplyOp::Txn(t), Response::Txn(r)) => txn_ops(t, r),
        (_, Response::LeaseRevoke(_)) => (0, 0, events.len() as u64),
        _ => (0, 0, 0),
    };
    METRICS.put_total.inc_by(puts);
    METRICS.delete_total.inc_by(deletes);
    METRICS.range_total.inc_by(ranges);
    if ranges + puts + deletes > 1 {
        METRICS.txn_total.inc();
    }
}

/// A range served outside the apply step (a Range call).
pub fn range_served() {
    METRICS.range_total.inc();
}

/// (ranges, puts, deletes) a txn ran: its compares, then the branch it
/// took, nested txns included.
fn txn_ops(t: &TxnRequest, r: &TxnResponse) -> (u64, u64, u64) {
    use crate::pb::etcdserverpb::request_op::Request as Req;
    let branch = if r.succeeded { &t.success } else { &t.failure };
    let mut counts = (t.compare.len() as u64, 0, 0);
    for (req, resp) in branch.iter().zip(&r.responses) {
        match (&req.request, &resp.response) {
            (Some(Req::RequestRange(_)), _) => counts.0 += 1,
            (Some(Req::RequestPut(p)), _) => {
                counts.0 += u64::from(p.prev_kv || p.ignore_value || p.ignore_lease);
                counts.1 += 1;
            }
            (Some(Req::RequestDeleteRange(d)), _) => {
                counts.0 += u64::from(d.prev_kv);
                counts.2 += 1;
            }
            (Some(Req::RequestTxn(inner)), Some(Op::ResponseTxn(inner_resp))) => {
                let (r, p, d) = txn_ops(inner, inner_resp);
                counts = (counts.0 + r, counts.1 + p, counts.2 + d);
            }
            _ => {}
        }
    }
    counts
}

/// The raft connection to member `remote` came up, or went down.
pub fn peer_connection(local: u64, remote: u64, up: bool) {
    let (local, remote) = (format!("{local:x}"), format!("{remote:x}"));
    METRICS
        .active_peers
        .with_label_values(&[&local, &remote])
        .set(i64::from(up));
    if !up {
        METRICS
            .disconnected_peers
            .with_label_values(&[&local, &remote])
            .inc();
    }
}

/// Raft message bytes sent to member `to`.
pub fn peer_bytes_sent(to: u64, bytes: u64) {
    METRICS
        .peer_sent_bytes
        .with_label_values(&[&format!("{to:x}")])
        .inc_by(bytes);
}

/// Raft message bytes received from member `from`.
pub fn peer_bytes_received(from: u64, bytes: u64) {
    METRICS
        .peer_received_bytes
        .with_label_values(&[&format!("{from:x}")])
        .inc_by(bytes);
}

/// A defragmentation (a full RocksDB compaction) took `took`.
pub fn defragmented(took: Duration) {
    METRICS.defrag_duration.observe(took.as_secs_f64());
}

/// A raft message for member `to` was dropped because its queue was full.
pub fn peer_message_dropped(to: u64, heartbeat: bool) {
    METRICS
        .peer_sent_failures
        .with_label_values(&[&format!("{to:x}")])
        .inc();
    if heartbeat {
        METRICS.heartbeat_send_failures.inc();
    }
}

/// One probe of member `to` came back after `rtt`.
pub fn peer_round_trip(to: u64, rtt: Duration) {
    METRICS
        .peer_round_trip_time
        .with_label_values(&[&format!("{to:x}")])
        .observe(rtt.as_secs_f64());
}

/// A proposal on its way through raft: pending until dropped.
pub struct PendingProposal(());

impl PendingProposal {
    pub fn start() -> PendingProposal {
        METRICS.proposals_pending.inc();
        PendingProposal(())
    }

    /// Counts the outcome: a proposal that raft dropped, that timed out or
    /// that the stopping member abandoned failed (as etcd counts them); a
    /// request the apply step refused did not.
    pub fn finish<T>(self, result: &Result<T, Error>) {
        if is_failed_proposal(result) {
            METRICS.proposals_failed.inc();
        }
    }
}

fn is_failed_proposal<T>(result: &Result<T, Error>) -> bool {
    matches!(
        result,
        Err(Error::Timeout | Error::Stopped | Error::NoLeader | Error::LeaderChanged)
    )
}

impl Drop for PendingProposal {
    fn drop(&mut self) {
        METRICS.proposals_pending.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_change_counts_only_for_a_new_known_leader() {
        assert!(is_leader_change(0, 1));
        assert!(!is_leader_change(1, 1));
        assert!(!is_leader_change(1, 0));
        assert!(is_leader_change(0, 1));
        assert!(is_leader_change(1, 2));
    }

    #[test]
    fn txn_operations_are_counted_through_nesting() {
        use crate::pb::etcdserverpb::request_op::Request as Req;
        use crate::pb::etcdserverpb::{
            Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
            RangeRequest, RangeResponse, RequestOp, ResponseOp,
        };
        let req = |r: Req| RequestOp { request: Some(r) };
        let resp = |r: Op| ResponseOp { response: Some(r) };
        let inner_req = TxnRequest {
            compare: vec![Compare::default()],
            success: vec![
                req(Req::RequestPut(PutRequest::default())),
                req(Req::RequestDeleteRange(DeleteRangeRequest {
                    prev_kv: true,
                    ..Default::default()
                })),
            ],
            failure: vec![],
        };
        let inner_resp = TxnResponse {
            succeeded: true,
            responses: vec![
                resp(Op::ResponsePut(PutResponse::default())),
                resp(Op::ResponseDeleteRange(DeleteRangeResponse::default())),
            ],
            ..Default::default()
        };
        // The failure branch ran: the success branch is not counted.
        let outer_req = TxnRequest {
            compare: vec![Compare::default(), Compare::default()],
            success: vec![req(Req::RequestPut(PutRequest::default()))],
            failure: vec![
                req(Req::RequestPut(PutRequest {
                    prev_kv: true,
                    ..Default::default()
                })),
                req(Req::RequestRange(RangeRequest::default())),
                req(Req::RequestTxn(inner_req)),
            ],
        };
        let outer_resp = TxnResponse {
            succeeded: false,
            responses: vec![
                resp(Op::ResponsePut(PutResponse::default())),
                resp(Op::ResponseRange(RangeResponse::default())),
                resp(Op::ResponseTxn(inner_resp)),
            ],
            ..Default::default()
        };
        // Ranges: 2 compares, the put's prev_kv, the range, the inner
        // compare, the inner delete's prev_kv.
        assert_eq!(txn_ops(&outer_req, &outer_resp), (6, 2, 1));
        assert_eq!(
            txn_ops(&TxnRequest::default(), &TxnResponse::default()),
            (0, 0, 0)
        );
    }

    #[test]
    fn only_unreplicated_proposals_fail() {
        assert!(!is_failed_proposal::<()>(&Err(Error::KeyNotFound)));
        assert!(!is_failed_proposal::<()>(&Err(Error::NoSpace)));
        assert!(!is_failed_proposal::<()>(&Ok(())));
        assert!(is_failed_proposal::<()>(&Err(Error::Timeout)));
        assert!(is_failed_proposal::<()>(&Err(Error::NoLeader)));
    }
}
