//! `/livez` and `/readyz` (etcd 3.5.11+/3.6): named checks run in turn;
//! `200 ok` when all pass, `503` listing every check with `[+]`/`[-]` when
//! one fails. `?verbose` lists them on success too, `?exclude=NAME` skips
//! one (unknown names are ignored, as etcd does), and `/readyz/NAME` runs
//! only that check.

use std::sync::Arc;

use axum::response::Response;
use http::StatusCode;

use super::reply::{self, Query};
use crate::error::Error;
use crate::metrics::METRICS;
use crate::mvcc::RangeOptions;
use crate::pb::etcdserverpb::AlarmType;
use crate::server::Member;

/// One named health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A CORRUPT alarm is active.
    DataCorruption,
    /// A local read works.
    SerializableRead,
    /// A read through the leader works (the cluster has consensus).
    LinearizableRead,
    /// This member is a voter.
    NonLearner,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }

    /// Runs the check; the error text is etcd's.
    async fn run(self, member: &Arc<Member>) -> Result<(), String> {
        match self {
            Check::DataCorruption => {
                if member.alarms.has(AlarmType::Corrupt) {
                    return Err("alarm activated: CORRUPT".into());
                }
                Ok(())
            }
            Check::SerializableRead => read(member, true).await.map_err(|e| e.to_string()),
            Check::LinearizableRead => read(member, false).await.map_err(|e| e.to_string()),
            Check::NonLearner => {
                if member.is_learner() {
                    return Err("not supported for learner".into());
                }
                Ok(())
            }
        }
    }
}

/// etcd's health read: a keys-only range of one key, linearizable (through
/// a ReadIndex round, within the request timeout) unless `serializable`.
pub async fn read(member: &Arc<Member>, serializable: bool) -> Result<(), Error> {
    if !serializable {
        member.read_barrier().await?;
    }
    let store = member.store().clone();
    let opts = RangeOptions {
        limit: 1,
        keys_only: true,
        ..Default::default()
    };
    // Off the async workers: a snapshot install holds the store's lock.
    tokio::task::spawn_blocking(move || store.range(b"health", &[], &opts))
        .await
        .map_err(Error::internal)??;
    Ok(())
}

/// `/livez` or `/readyz`, with the checks each runs, in etcd's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Livez,
    Readyz,
}

impl Probe {
    pub fn name(self) -> &'static str {
        match self {
            Probe::Livez => "livez",
            Probe::Readyz => "readyz",
        }
    }

    pub fn checks(self) -> &'static [Check] {
        match self {
            // Alive as long as it can read its own store: a member without
            // a leader must not be restarted for that.
            Probe::Livez => &[Check::SerializableRead],
            Probe::Readyz => &[
                Check::DataCorruption,
                Check::SerializableRead,
                Check::LinearizableRead,
                Check::NonLearner,
            ],
        }
    }

    /// The probe a path names, with the one check a sub-path names; `None`
    /// for any other path (a 404).
    pub fn route(path: &str) -> Option<(Probe, Option<Check>)> {
        let (root, sub) = match path.strip_prefix('/')?.split_once('/') {
            Some((root, sub)) => (root, Some(sub)),
            None => (path.strip_prefix('/')?, None),
        };
        let probe = [Probe::Livez, Probe::Readyz]
            .into_iter()
            .find(|p| p.name() == root)?;
        match sub {
            None => Some((probe, None)),
            Some(name) => {
                let check = probe.checks().iter().find(|c| c.name() == name)?;
                Some((probe, Some(*check)))
            }
        }
    }
}

/// Answers a probe: runs `only`, or every check not excluded.
pub async fn answer(
    member: &Arc<Member>,
    probe: Probe,
    only: Option<Check>,
    query: &Query,
) -> Response {
    let checks: Vec<Check> = match only {
        Some(c) => vec![c],
        None => {
            let excluded = query.all("exclude");
            probe
                .checks()
                .iter()
                .copied()
                .filter(|c| !excluded.contains(&c.name()))
                .collect()
        }
    };
    let mut report = String::new();
    let mut failed = false;
    for check in checks {
        let outcome = check.run(member).await;
        record(probe, check, outcome.is_ok());
        match outcome {
            Ok(()) => report.push_str(&format!("[+]{} ok\n", check.name())),
            Err(e) => {
                failed = true;
                report.push_str(&format!("[-]{} failed: {e}\n", check.name()));
            }
        }
    }
    if failed {
        // Failures always say which check failed, verbose or not.
        return reply::error(StatusCode::SERVICE_UNAVAILABLE, &report);
    }
    if !query.has("verbose") {
        report.clear();
    }
    report.push_str("ok\n");
    reply::text(StatusCode::OK, report)
}

fn record(probe: Probe, check: Check, ok: bool) {
    let labels = [probe.name(), check.name()];
    METRICS
        .healthcheck
        .with_label_values(&labels)
        .set(ok as i64);
    let status = if ok { "success" } else { "error" };
    METRICS
        .healthchecks_total
        .with_label_values(&[probe.name(), check.name(), status])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_probes_and_their_checks() {
        assert_eq!(Probe::route("/livez"), Some((Probe::Livez, None)));
        assert_eq!(Probe::route("/readyz"), Some((Probe::Readyz, None)));
        assert_eq!(
            Probe::route("/readyz/linearizable_read"),
            Some((Probe::Readyz, Some(Check::LinearizableRead)))
        );
        assert_eq!(
            Probe::route("/livez/serializable_read"),
            Some((Probe::Livez, Some(Check::SerializableRead)))
        );
        // livez has no such check; unknown names and odd shapes are 404s.
        assert_eq!(Probe::route("/livez/non_learner"), None);
        assert_eq!(Probe::route("/readyz/non_exist"), None);
        assert_eq!(Probe::route("/readyz/"), None);
        assert_eq!(Probe::route("/readyz/non_learner/x"), None);
        assert_eq!(Probe::route("/healthz"), None);
        assert_eq!(Probe::route(""), None);
        assert_eq!(Probe::route("readyz"), None);
    }
}
