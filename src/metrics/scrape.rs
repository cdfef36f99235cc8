//! A scrape: the gauges that are cheaper to read when asked than to keep
//! up to date (raft's indexes and leader, database sizes, the number of
//! keys) are read from the member, then everything is encoded in
//! Prometheus' text format.
//!
//! **Invariant:** a scrape never blocks apply: it reads atomics and RocksDB
//! properties, and counts keys on a blocking thread under the store's
//! shared read lock, at most once per [`KEY_COUNT_MAX_AGE`].

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{Encoder, TextEncoder};

use super::METRICS;
use crate::mvcc::RangeOptions;
use crate::server::Member;

/// Counting keys reads the whole key index: scrapes closer together than
/// this reuse the last count.
const KEY_COUNT_MAX_AGE: Duration = Duration::from_secs(5);

/// When the keys were last counted.
static KEYS_COUNTED: Mutex<Option<Instant>> = Mutex::new(None);

/// The content type of [`encode`]'s output, as etcd's promhttp sends it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Reads the scrape-time gauges from `member` and returns every metric in
/// Prometheus' text format.
pub async fn scrape(member: &Member) -> String {
    let status = &member.raft().status;
    let leader = status.leader.load(Ordering::SeqCst);
    METRICS.has_leader.set((leader != 0) as i64);
    METRICS
        .is_leader
        .set(status.is_leader.load(Ordering::SeqCst) as i64);
    METRICS
        .proposals_committed
        .set(status.commit.load(Ordering::SeqCst) as i64);
    METRICS
        .proposals_applied
        .set(status.applied.load(Ordering::SeqCst) as i64);
    METRICS.is_learner.set(member.is_learner() as i64);
    METRICS
        .current_revision
        .set(member.store().current_revision());
    METRICS
        .compact_revision
        .set(member.store().compacted_revision().max(0));
    let (total, in_use) = member.storage().size();
    METRICS.db_total_size.set(total);
    METRICS.debugging_db_total_size.set(total);
    METRICS.db_total_size_in_use.set(in_use);
    count_keys(member).await;
    encode()
}

/// Refreshes `etcd_debugging_mvcc_keys_total` unless it is recent.
async fn count_keys(member: &Member) {
    {
        let mut last = KEYS_COUNTED.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < KEY_COUNT_MAX_AGE) {
            return;
        }
        *last = Some(Instant::now());
    }
    let store = member.store().clone();
    let opts = RangeOptions {
        count_only: true,
        ..Default::default()
    };
    // Every key: from the smallest to the end of the key space.
    let counted = tokio::task::spawn_blocking(move || store.range(&[0], &[0], &opts)).await;
    match counted {
        Ok(Ok(r)) => METRICS.keys_total.set(r.count),
        Ok(Err(e)) => tracing::debug!(error = %e, "counting keys for the metrics failed"),
        Err(e) => tracing::debug!(error = %e, "counting keys for the metrics failed"),
    }
}

/// Every registered metric in Prometheus' text format.
pub fn encode() -> String {
    let families = METRICS.registry.gather();
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::warn!(error = %e, "encoding the metrics failed");
    }
    String::from_utf8(out).unwrap_or_default()
}
