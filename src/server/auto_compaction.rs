//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`),
//! on etcd's schedule: the leader proposes ordinary compactions.
//!
//! - periodic: the current revision is sampled every tenth of the retention
//!   period (at most every 6 minutes); once a period has passed since the
//!   last compaction, the store is compacted to the oldest sample of the
//!   window, i.e. to where it stood one period ago, and then every period
//!   (at most every hour) after that.
//! - revision: every 5 minutes, to the current revision minus the
//!   retention.
//!
//! Followers keep sampling (so a new leader knows the history) but never
//! compact. The decisions (`PeriodicWindow`, `revision_target`) are pure;
//! `run` is the timer and the proposals around them.
//!
//! **Invariant:** auto-compaction only ever proposes `Compact` through
//! raft, like a client's compaction; it touches no store itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apply::Op;
use crate::config::AutoCompaction;
use crate::error::Error;
use crate::pb::etcdserverpb::CompactionRequest;
use crate::server::Member;

/// How often revision mode looks (etcd's constant).
const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The periodic mode's sliding window of sampled revisions.
#[derive(Debug)]
pub struct PeriodicWindow {
    period: Duration,
    retentions: usize,
    revs: VecDeque<i64>,
    last_revision: i64,
    last_success: Instant,
    /// The wait before a compaction: the period for the first, then the
    /// compaction interval (the period, at most an hour).
    base_interval: Duration,
}

impl PeriodicWindow {
    pub fn new(period: Duration, now: Instant) -> PeriodicWindow {
        let retry = Self::retry_interval_of(period);
        PeriodicWindow {
            period,
            retentions: (period.as_nanos() / retry.as_nanos().max(1)) as usize + 1,
            revs: VecDeque::new(),
            last_revision: 0,
            last_success: now,
            base_interval: period,
        }
    }

    fn retry_interval_of(period: Duration) -> Duration {
        period.min(Duration::from_secs(3600)) / 10
    }

    /// Between samples (and compaction attempts).
    pub fn retry_interval(&self) -> Duration {
        Self::retry_interval_of(self.period)
    }

    /// Records the current revision; the window keeps the last
    /// `retentions` samples, the oldest being one period old.
    pub fn sample(&mut self, revision: i64) {
        self.revs.push_back(revision);
        if self.revs.len() > self.retentions {
            self.revs.pop_front();
        }
    }

    /// The revision to compact to now, if it is time.
    pub fn due(&mut self, now: Instant) -> Option<i64> {
        let rev = *self.revs.front()?;
        if now.duration_since(self.last_success) < self.base_interval || rev == self.last_revision {
            return None;
        }
        if self.base_interval == self.period {
            self.base_interval = self.period.min(Duration::from_secs(3600));
        }
        Some(rev)
    }

    /// A compaction to `revision` went through (or was already done).
    pub fn compacted(&mut self, revision: i64, now: Instant) {
        self.last_revision = revision;
        self.last_success = now;
    }
}

/// Revision mode: the revision to compact to, if any.
pub fn revision_target(current: i64, retention: u64, previous: i64) -> Option<i64> {
    let rev = current.saturating_sub(i64::try_from(retention).unwrap_or(i64::MAX));
    (rev > 0 && rev != previous).then_some(rev)
}

/// Runs auto-compaction for `mode` until the task is dropped.
pub async fn run(member: Arc<Member>, mode: AutoCompaction) {
    match mode {
        AutoCompaction::Disabled => {}
        AutoCompaction::Periodic(period) => periodic(member, period).await,
        AutoCompaction::Revision(retention) => revision(member, retention).await,
    }
}

async fn periodic(member: Arc<Member>, period: Duration) {
    let mut window = PeriodicWindow::new(period, Instant::now());
    loop {
        window.sample(member.store().current_revision());
        tokio::time::sleep(window.retry_interval()).await;
        if !member.is_leader() {
            continue;
        }
        let Some(rev) = window.due(Instant::now()) else {
            continue;
        };
        tracing::info!(
            revision = rev,
            compact_period = ?period,
            "starting auto periodic compaction"
        );
        let started = Instant::now();
        match compact(&member, rev).await {
            Ok(()) => {
                tracing::info!(
                    revision = rev,
                    compact_period = ?period,
                    took = ?started.elapsed(),
                    "completed auto periodic compaction"
                );
                window.compacted(rev, Instant::now());
            }
            Err(e) => tracing::warn!(
                revision = rev,
                compact_period = ?period,
                retry_interval = ?window.retry_interval(),
                error = %e,
                "failed auto periodic compaction"
            ),
        }
    }
}

async fn revision(member: Arc<Member>, retention: u64) {
    let mut previous = 0;
    loop {
        tokio::time::sleep(REVISION_INTERVAL).await;
        if !member.is_leader() {
            continue;
        }
        let current = member.store().current_revision();
        let Some(rev) = revision_target(current, retention, previous) else {
            continue;
        };
        tracing::info!(
            revision = rev,
            revision_compaction_retention = retention,
            "starting auto revision compaction"
        );
        let started = Instant::now();
        match compact(&member, rev).await {
            Ok(()) => {
                previous = rev;
                tracing::info!(
                    revision = rev,
                    revision_compaction_retention = retention,
                    took = ?started.elapsed(),
                    "completed auto revision compaction"
                );
            }
            Err(e) => tracing::warn!(
                revision = rev,
                revision_compaction_retention = retention,
                retry_interval = ?REVISION_INTERVAL,
                error = %e,
                "failed auto revision compaction"
            ),
        }
    }
}

/// A compaction through raft; one that finds the revision already
/// compacted counts as done, as in etcd.
async fn compact(member: &Member, revision: i64) -> crate::error::Result<()> {
    let op = Op::Compact(CompactionRequest {
        revision,
        physical: false,
    });
    match member.propose(op).await {
        Ok(_) | Err(Error::Compacted) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_compacts_to_the_revision_one_period_ago() {
        let start = Instant::now();
        let period = Duration::from_secs(10);
        let mut w = PeriodicWindow::new(period, start);
        assert_eq!(w.retry_interval(), Duration::from_secs(1));
        // One sample a second, the store growing 100 revisions a second.
        let mut decisions = Vec::new();
        for tick in 0..40u64 {
            w.sample(1 + 100 * tick as i64);
            let now = start + Duration::from_secs(tick + 1);
            if let Some(rev) = w.due(now) {
                decisions.push((tick + 1, rev));
                w.compacted(rev, now);
            }
        }
        // First after one period, to the first sample; then every period,
        // each time to the revision of one period (plus a tick) before.
        assert_eq!(decisions, vec![(10, 1), (20, 901), (30, 1901), (40, 2901)]);
    }

    #[test]
    fn periodic_retries_and_skips_a_revision_already_compacted() {
        let start = Instant::now();
        let mut w = PeriodicWindow::new(Duration::from_secs(10), start);
        for tick in 0..10u64 {
            w.sample(5);
            assert_eq!(w.due(start + Duration::from_secs(tick)), None);
        }
        // Due, but the attempt fails: asked again next time.
        assert_eq!(w.due(start + Duration::from_secs(10)), Some(5));
        assert_eq!(w.due(start + Duration::from_secs(11)), Some(5));
        w.compacted(5, start + Duration::from_secs(11));
        // Nothing written since: nothing to do, however long it waits.
        for tick in 12..40u64 {
            w.sample(5);
            assert_eq!(w.due(start + Duration::from_secs(tick)), None);
        }
    }

    #[test]
    fn long_periods_sample_every_six_minutes_and_compact_hourly() {
        let w = PeriodicWindow::new(Duration::from_secs(24 * 3600), Instant::now());
        assert_eq!(w.retry_interval(), Duration::from_secs(360));
        assert_eq!(w.retentions, 241);
    }

    #[test]
    fn revision_mode_keeps_the_retention() {
        assert_eq!(revision_target(1000, 100, 0), Some(900));
        assert_eq!(revision_target(1000, 100, 900), None);
        assert_eq!(revision_target(50, 100, 0), None);
        assert_eq!(revision_target(100, 100, 0), None);
    }
}
