//! Periodic auto-compaction through the real port: with
//! `--auto-compaction-retention=2s`, the store is compacted while writes go
//! on, never past the history of the last retention period. Runs against
//! cairn, or the real etcd with `CAIRN_CLUSTER_TARGET=etcd` (the
//! reference).

mod common;

use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::{HashKvRequest, PutRequest};
use common::check::channel;
use common::Server;

#[test]
fn periodic_auto_compaction_keeps_the_retention_period() {
    let kind = common::target_from_env("CAIRN_CLUSTER_TARGET");
    let srv = Server::start_with(
        kind,
        &[
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=2s",
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = channel(&srv.endpoint(), Duration::from_secs(5));
        let mut kv = KvClient::new(ch.clone());
        let mut m = MaintenanceClient::new(ch);
        // (when, revision) of every write.
        let mut written: Vec<(Instant, i64)> = Vec::new();
        let start = Instant::now();
        let compacted = loop {
            let rev = kv
                .put(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .header
                .unwrap()
                .revision;
            written.push((Instant::now(), rev));
            let c = m
                .hash_kv(HashKvRequest { revision: 0 })
                .await
                .unwrap()
                .into_inner()
                .compact_revision;
            if c > 0 {
                break c;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no auto-compaction after 15 s\n{}",
                srv.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let now = Instant::now();
        // To a revision at least a period old: everything written in the
        // last 2 s is still there.
        let kept_from = written
            .iter()
            .find(|(t, _)| now.duration_since(*t) < Duration::from_secs(2))
            .map(|(_, r)| *r)
            .unwrap();
        assert!(
            compacted < kept_from,
            "compacted to {compacted}, past revision {kept_from} written less than 2 s ago"
        );
    });
}
