//! `/health`, etcd's older probe: JSON `{"health":"true","reason":""}`.
//! It fails on any alarm not excluded with `?exclude=NOSPACE` (or
//! `CORRUPT`), when there is no leader (unless `?serializable=true`), or
//! when a read fails — linearizable, or local with `?serializable=true`.

use std::sync::Arc;

use axum::response::Response;
use http::StatusCode;

use super::probes;
use super::reply::{self, Query};
use crate::metrics::METRICS;
use crate::pb::etcdserverpb::AlarmType;
use crate::server::Member;

/// The outcome, as etcd's `Health` struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    pub reason: String,
}

impl Health {
    fn ok() -> Health {
        Health {
            healthy: true,
            reason: String::new(),
        }
    }

    fn failed(reason: String) -> Health {
        Health {
            healthy: false,
            reason,
        }
    }

    /// etcd's JSON: both fields are strings, in this order.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"health":"{}","reason":{}}}"#,
            self.healthy,
            serde_json::Value::String(self.reason.clone())
        )
    }
}

/// Runs etcd's checks in etcd's order; the first failure decides.
pub async fn check(member: &Arc<Member>, query: &Query) -> Health {
    let excluded = query.all("exclude");
    for alarm in member.alarms.list() {
        let kind = AlarmType::try_from(alarm.alarm).unwrap_or(AlarmType::None);
        if excluded.contains(&kind.as_str_name()) {
            continue;
        }
        return Health::failed(
            match kind {
                AlarmType::Nospace => "ALARM NOSPACE",
                AlarmType::Corrupt => "ALARM CORRUPT",
                _ => "ALARM UNKNOWN",
            }
            .to_string(),
        );
    }
    let serializable = query.first("serializable") == Some("true");
    if !serializable && !member.has_leader() {
        return Health::failed("RAFT NO LEADER".to_string());
    }
    match probes::read(member, serializable).await {
        Ok(()) => Health::ok(),
        Err(e) => Health::failed(format!("RANGE ERROR:{e}")),
    }
}

pub async fn answer(member: &Arc<Member>, query: &Query) -> Response {
    let health = check(member, query).await;
    let json = health.to_json();
    if !health.healthy {
        METRICS.health_failures.inc();
        tracing::warn!(output = %json, "/health error");
        return reply::error(StatusCode::SERVICE_UNAVAILABLE, &json);
    }
    METRICS.health_success.inc();
    // Go sniffs the JSON as plain text; etcd sets no type of its own.
    reply::with_type(StatusCode::OK, "text/plain; charset=utf-8", json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_etcds() {
        assert_eq!(Health::ok().to_json(), r#"{"health":"true","reason":""}"#);
        assert_eq!(
            Health::failed("RANGE ERROR:etcdserver: \"x\"".into()).to_json(),
            r#"{"health":"false","reason":"RANGE ERROR:etcdserver: \"x\""}"#
        );
    }
}
