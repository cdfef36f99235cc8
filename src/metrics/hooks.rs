//! What the rest of the code calls where something worth counting happens:
//! one call per event site, so that the write path reads as before.
//! Counting is a few atomic operations; nothing here locks or does I/O.

use std::time::Duration;

use super::METRICS;
use crate::apply::Response;
use crate::error::Error;
use crate::pb::etcdserverpb::{response_op::Response as Op, TxnResponse};
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

/// A write request was applied (`events` are what it changed): its put and
/// delete operations are counted as etcd's mvcc counts them — every Put
/// and every DeleteRange run, whether or not it deleted anything, and one
/// delete per key of a revoked lease.
pub fn write_applied(resp: &Response, events: &[Event]) {
    let (puts, deletes) = match resp {
        Response::Put(_) => (1, 0),
        Response::DeleteRange(_) => (0, 1),
        Response::Txn(t) => txn_ops(t),
        Response::LeaseRevoke(_) => (0, events.len() as u64),
        _ => (0, 0),
    };
    METRICS.put_total.inc_by(puts);
    METRICS.delete_total.inc_by(deletes);
}

/// (puts, deletes) a txn ran, nested txns included: its responses are
/// those of the branch it took.
fn txn_ops(t: &TxnResponse) -> (u64, u64) {
    t.responses
        .iter()
        .fold((0, 0), |(p, d), r| match &r.response {
            Some(Op::ResponsePut(_)) => (p + 1, d),
            Some(Op::ResponseDeleteRange(_)) => (p, d + 1),
            Some(Op::ResponseTxn(inner)) => {
                let (ip, id) = txn_ops(inner);
                (p + ip, d + id)
            }
            _ => (p, d),
        })
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
        use crate::pb::etcdserverpb::ResponseOp;
        use crate::pb::etcdserverpb::{DeleteRangeResponse, PutResponse, RangeResponse};
        let op = |r: Op| ResponseOp { response: Some(r) };
        let inner = TxnResponse {
            responses: vec![
                op(Op::ResponsePut(PutResponse::default())),
                op(Op::ResponseDeleteRange(DeleteRangeResponse::default())),
            ],
            ..Default::default()
        };
        let outer = TxnResponse {
            responses: vec![
                op(Op::ResponsePut(PutResponse::default())),
                op(Op::ResponseRange(RangeResponse::default())),
                op(Op::ResponseTxn(inner)),
                op(Op::ResponseDeleteRange(DeleteRangeResponse::default())),
            ],
            ..Default::default()
        };
        assert_eq!(txn_ops(&outer), (2, 2));
        assert_eq!(txn_ops(&TxnResponse::default()), (0, 0));
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
