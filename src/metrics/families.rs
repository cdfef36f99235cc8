//! The metric families cairn exports, under etcd's names, help texts,
//! label names and histogram buckets (taken from etcd 3.4's `/metrics` and
//! its source), so that dashboards and alerts written for etcd work
//! unchanged.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric of the process, registered in [`Metrics::registry`].
pub struct Metrics {
    pub registry: Registry,

    // Raft and the member (etcd's `etcdserver/metrics.go`).
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes_seen: IntCounter,
    pub heartbeat_send_failures: IntCounter,
    pub slow_apply: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub quota_backend_bytes: IntGauge,
    pub server_id: IntGaugeVec,
    pub server_version: IntGaugeVec,
    pub cluster_version: IntGaugeVec,

    // The store (etcd's `mvcc/metrics.go`).
    pub db_total_size: IntGauge,
    pub db_total_size_in_use: IntGauge,
    pub put_total: IntCounter,
    pub delete_total: IntCounter,
    pub keys_total: IntGauge,
    pub current_revision: IntGauge,
    pub compact_revision: IntGauge,
    pub debugging_db_total_size: IntGauge,
    pub range_total: IntCounter,
    pub txn_total: IntCounter,
    pub is_learner: IntGauge,

    // Disks (etcd's `wal/metrics.go`, `mvcc/backend/metrics.go`).
    pub wal_fsync_duration: Histogram,
    pub backend_commit_duration: Histogram,

    // Peers (etcd's `rafthttp/metrics.go`).
    pub peer_round_trip_time: HistogramVec,
    pub peer_sent_failures: IntCounterVec,
    pub peer_sent_bytes: IntCounterVec,
    pub peer_received_bytes: IntCounterVec,
    pub active_peers: IntGaugeVec,
    pub disconnected_peers: IntCounterVec,
    pub defrag_duration: Histogram,

    // The HTTP health endpoints (etcd's `etcdhttp/health.go`).
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    pub healthcheck: IntGaugeVec,
    pub healthchecks_total: IntCounterVec,

    // gRPC (go-grpc-prometheus, as etcd registers it).
    pub client_grpc_sent_bytes: IntCounter,
    pub client_grpc_received_bytes: IntCounter,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
}

/// The one set of metrics of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn opts(namespace: &str, subsystem: &str, name: &str, help: &str) -> Opts {
    Opts::new(name, help)
        .namespace(namespace)
        .subsystem(subsystem)
}

/// etcd's disk latency buckets: 1 ms doubling up to 8.192 s.
fn disk_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 14).unwrap_or_default()
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            has_leader: IntGauge::with_opts(opts(
                "etcd",
                "server",
                "has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ))
            .unwrap(),
            is_leader: IntGauge::with_opts(opts(
                "etcd",
                "server",
                "is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ))
            .unwrap(),
            leader_changes_seen: IntCounter::with_opts(opts(
                "etcd",
                "server",
                "leader_changes_seen_total",
                "The number of leader changes seen.",
            ))
            .unwrap(),
            heartbeat_send_failures: IntCounter::with_opts(opts(
                "etcd",
                "server",
                "heartbeat_send_failures_total",
                "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
            ))
            .unwrap(),
            slow_apply: IntCounter::with_opts(opts(
                "etcd",
                "server",
                "slow_apply_total",
                "The total number of slow apply requests (likely overloaded from slow disk).",
            ))
            .unwrap(),
            // etcd exports these two as gauges (they are raft indexes).
            proposals_committed: IntGauge::with_opts(opts(
                "etcd",
                "server",
                "proposals_committed_total",
                "The total number of consensus proposals committed.",
            ))
            .unwrap(),
            proposals_applied: IntGauge::with_opts(opts(
                "etcd",
                "server",
                "proposals_applied_total",
                "The total number of consensus proposals applied.",
            ))
            .unwrap(),
            proposals_pending: IntGauge::with_opts(opts(
                "etcd",
                "server",
                "proposals_pending",
                "The current number of pending proposals to commit.",
            ))
            .unwrap(),
            proposals_failed: IntCounter::with_opts(opts(
                "etcd",
                "server",
                "proposals_failed_total",
                "The total number of failed proposals seen.",
            ))
            .unwrap(),
            quota_backend_bytes: IntGauge::with_opts(opts(
                "etcd",
                "server",
                "quota_backend_bytes",
                "Current backend storage quota size in bytes.",
            ))
            .unwrap(),
            server_id: IntGaugeVec::new(
                opts(
                    "etcd",
                    "server",
                    "id",
                    "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
                ),
                &["server_id"],
            )
            .unwrap(),
            server_version: IntGaugeVec::new(
                opts(
                    "etcd",
                    "server",
                    "version",
                    "Which version is running. 1 for 'server_version' label with current version.",
                ),
                &["server_version"],
            )
            .unwrap(),
            cluster_version: IntGaugeVec::new(
                opts(
                    "etcd",
                    "",
                    "cluster_version",
                    "Which version is running. 1 for 'cluster_version' label with current cluster version",
                ),
                &["cluster_version"],
            )
            .unwrap(),
            db_total_size: IntGauge::with_opts(opts(
                "etcd",
                "mvcc",
                "db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ))
            .unwrap(),
            db_total_size_in_use: IntGauge::with_opts(opts(
                "etcd",
                "mvcc",
                "db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ))
            .unwrap(),
            put_total: IntCounter::with_opts(opts(
                "etcd",
                "mvcc",
                "put_total",
                "Total number of puts seen by this member.",
            ))
            .unwrap(),
            delete_total: IntCounter::with_opts(opts(
                "etcd",
                "mvcc",
                "delete_total",
                "Total number of deletes seen by this member.",
            ))
            .unwrap(),
            keys_total: IntGauge::with_opts(opts(
                "etcd_debugging",
                "mvcc",
                "keys_total",
                "Total number of keys.",
            ))
            .unwrap(),
            current_revision: IntGauge::with_opts(opts(
                "etcd_debugging",
                "mvcc",
                "current_revision",
                "The current revision of store.",
            ))
            .unwrap(),
            compact_revision: IntGauge::with_opts(opts(
                "etcd_debugging",
                "mvcc",
                "compact_revision",
                "The revision of the last compaction in store.",
            ))
            .unwrap(),
            debugging_db_total_size: IntGauge::with_opts(opts(
                "etcd_debugging",
                "mvcc",
                "db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ))
            .unwrap(),
            range_total: IntCounter::with_opts(opts(
                "etcd",
                "mvcc",
                "range_total",
                "Total number of ranges seen by this member.",
            ))
            .unwrap(),
            txn_total: IntCounter::with_opts(opts(
                "etcd",
                "mvcc",
                "txn_total",
                "Total number of txns seen by this member.",
            ))
            .unwrap(),
            is_learner: IntGauge::with_opts(opts(
                "etcd",
                "server",
                "is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            ))
            .unwrap(),
            wal_fsync_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "wal_fsync_duration_seconds",
                    "The latency distributions of fsync called by WAL.",
                )
                .namespace("etcd")
                .subsystem("disk")
                .buckets(disk_buckets()),
            )
            .unwrap(),
            backend_commit_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "backend_commit_duration_seconds",
                    "The latency distributions of commit called by backend.",
                )
                .namespace("etcd")
                .subsystem("disk")
                .buckets(disk_buckets()),
            )
            .unwrap(),
            peer_round_trip_time: HistogramVec::new(
                HistogramOpts::new(
                    "peer_round_trip_time_seconds",
                    "Round-Trip-Time histogram between peers",
                )
                .namespace("etcd")
                .subsystem("network")
                // 0.1 ms doubling up to 3.2768 s, as etcd.
                .buckets(exponential_buckets(0.0001, 2.0, 16).unwrap_or_default()),
                &["To"],
            )
            .unwrap(),
            peer_sent_failures: IntCounterVec::new(
                opts(
                    "etcd",
                    "network",
                    "peer_sent_failures_total",
                    "The total number of send failures from peers.",
                ),
                &["To"],
            )
            .unwrap(),
            peer_sent_bytes: IntCounterVec::new(
                opts(
                    "etcd",
                    "network",
                    "peer_sent_bytes_total",
                    "The total number of bytes sent to peers.",
                ),
                &["To"],
            )
            .unwrap(),
            peer_received_bytes: IntCounterVec::new(
                opts(
                    "etcd",
                    "network",
                    "peer_received_bytes_total",
                    "The total number of bytes received from peers.",
                ),
                &["From"],
            )
            .unwrap(),
            active_peers: IntGaugeVec::new(
                opts(
                    "etcd",
                    "network",
                    "active_peers",
                    "The current number of active peer connections.",
                ),
                &["Local", "Remote"],
            )
            .unwrap(),
            disconnected_peers: IntCounterVec::new(
                opts(
                    "etcd",
                    "network",
                    "disconnected_peers_total",
                    "The total number of disconnected peers.",
                ),
                &["Local", "Remote"],
            )
            .unwrap(),
            // etcd's: 100 ms doubling up to 409.6 s.
            defrag_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "backend_defrag_duration_seconds",
                    "The latency distribution of backend defragmentation.",
                )
                .namespace("etcd")
                .subsystem("disk")
                .buckets(exponential_buckets(0.1, 2.0, 13).unwrap_or_default()),
            )
            .unwrap(),
            health_success: IntCounter::with_opts(opts(
                "etcd",
                "server",
                "health_success",
                "The total number of successful health checks",
            ))
            .unwrap(),
            health_failures: IntCounter::with_opts(opts(
                "etcd",
                "server",
                "health_failures",
                "The total number of failed health checks",
            ))
            .unwrap(),
            healthcheck: IntGaugeVec::new(
                opts(
                    "etcd",
                    "server",
                    "healthcheck",
                    "The result of each kind of healthcheck.",
                ),
                &["type", "name"],
            )
            .unwrap(),
            healthchecks_total: IntCounterVec::new(
                opts(
                    "etcd",
                    "server",
                    "healthchecks_total",
                    "The total number of each kind of healthcheck.",
                ),
                &["type", "name", "status"],
            )
            .unwrap(),
            grpc_started: IntCounterVec::new(
                Opts::new(
                    "grpc_server_started_total",
                    "Total number of RPCs started on the server.",
                ),
                &["grpc_type", "grpc_service", "grpc_method"],
            )
            .unwrap(),
            grpc_handled: IntCounterVec::new(
                Opts::new(
                    "grpc_server_handled_total",
                    "Total number of RPCs completed on the server, regardless of success or failure.",
                ),
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            )
            .unwrap(),
            client_grpc_sent_bytes: IntCounter::with_opts(opts(
                "etcd",
                "network",
                "client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
            ))
            .unwrap(),
            client_grpc_received_bytes: IntCounter::with_opts(opts(
                "etcd",
                "network",
                "client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
            ))
            .unwrap(),
            registry,
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.has_leader.clone()),
            Box::new(self.is_leader.clone()),
            Box::new(self.leader_changes_seen.clone()),
            Box::new(self.heartbeat_send_failures.clone()),
            Box::new(self.slow_apply.clone()),
            Box::new(self.proposals_committed.clone()),
            Box::new(self.proposals_applied.clone()),
            Box::new(self.proposals_pending.clone()),
            Box::new(self.proposals_failed.clone()),
            Box::new(self.quota_backend_bytes.clone()),
            Box::new(self.server_id.clone()),
            Box::new(self.server_version.clone()),
            Box::new(self.cluster_version.clone()),
            Box::new(self.db_total_size.clone()),
            Box::new(self.db_total_size_in_use.clone()),
            Box::new(self.put_total.clone()),
            Box::new(self.delete_total.clone()),
            Box::new(self.keys_total.clone()),
            Box::new(self.current_revision.clone()),
            Box::new(self.compact_revision.clone()),
            Box::new(self.debugging_db_total_size.clone()),
            Box::new(self.range_total.clone()),
            Box::new(self.txn_total.clone()),
            Box::new(self.is_learner.clone()),
            Box::new(self.wal_fsync_duration.clone()),
            Box::new(self.backend_commit_duration.clone()),
            Box::new(self.peer_round_trip_time.clone()),
            Box::new(self.peer_sent_failures.clone()),
            Box::new(self.peer_sent_bytes.clone()),
            Box::new(self.peer_received_bytes.clone()),
            Box::new(self.active_peers.clone()),
            Box::new(self.disconnected_peers.clone()),
            Box::new(self.defrag_duration.clone()),
            Box::new(self.health_success.clone()),
            Box::new(self.health_failures.clone()),
            Box::new(self.healthcheck.clone()),
            Box::new(self.healthchecks_total.clone()),
            Box::new(self.client_grpc_sent_bytes.clone()),
            Box::new(self.client_grpc_received_bytes.clone()),
            Box::new(self.grpc_started.clone()),
            Box::new(self.grpc_handled.clone()),
        ];
        for c in collectors {
            // Names are fixed above and distinct: a clash is a bug caught
            // by the unit test below, not something to stop a server for.
            if let Err(e) = self.registry.register(c) {
                tracing::error!(error = %e, "registering a metric failed");
            }
        }
        // CPU, memory and file descriptors of this process, under the same
        // names as Go's client (`process_*`).
        #[cfg(target_os = "linux")]
        if let Err(e) = self.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::error!(error = %e, "registering the process metrics failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_registers_under_its_etcd_name() {
        let m = Metrics::new();
        m.put_total.inc();
        m.wal_fsync_duration.observe(0.003);
        let names: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        for want in [
            "etcd_server_has_leader",
            "etcd_server_is_leader",
            "etcd_server_leader_changes_seen_total",
            "etcd_server_proposals_committed_total",
            "etcd_server_proposals_applied_total",
            "etcd_server_proposals_pending",
            "etcd_server_proposals_failed_total",
            "etcd_mvcc_db_total_size_in_bytes",
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "etcd_mvcc_put_total",
            "etcd_debugging_mvcc_keys_total",
            "etcd_disk_wal_fsync_duration_seconds",
            "etcd_disk_backend_commit_duration_seconds",
            "etcd_server_slow_apply_total",
            "etcd_server_heartbeat_send_failures_total",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    }

    #[test]
    fn disk_buckets_are_etcds() {
        let b = disk_buckets();
        assert_eq!(b.len(), 14);
        assert!((b[0] - 0.001).abs() < 1e-12);
        assert!((b[13] - 8.192).abs() < 1e-9);
    }
}
