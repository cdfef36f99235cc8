//! A member that crashes half way through installing a snapshot from the
//! leader (the store half replaced) finishes the install when it starts
//! again, then catches up: every acknowledged write, and the same HashKV as
//! the others.
//!
//! The crash is a failpoint (`CAIRN_FAILPOINT_SNAPSHOT_INSTALL`: abort after
//! the first family is installed), armed through this process's environment,
//! which the servers it starts inherit — so this is a test binary of its
//! own, with one test.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use common::check::{assert_same_kv_hash, channel};
use common::{Kind, Server};
use tokio::task::block_in_place;

const FAILPOINT: &str = "CAIRN_FAILPOINT_SNAPSHOT_INSTALL";
/// Writes made while the member is down: far past what `--snapshot-count`
/// leaves in the log (cairn keeps half of it after a compaction).
const WRITES: usize = 1500;

async fn leader_of(endpoint: &str) -> (u64, u64) {
    let mut m = MaintenanceClient::new(channel(endpoint, Duration::from_secs(3)));
    let s = m
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    (s.header.expect("header").member_id, s.leader)
}

/// Key → revision of every key under `sc/` as a serializable read on
/// `endpoint` sees it.
async fn contents(endpoint: &str) -> Option<BTreeMap<Vec<u8>, i64>> {
    let mut kv = KvClient::new(channel(endpoint, Duration::from_secs(3)));
    let r = kv
        .range(RangeRequest {
            key: b"sc/".to_vec(),
            range_end: b"sc0".to_vec(),
            serializable: true,
            keys_only: true,
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    Some(r.kvs.into_iter().map(|k| (k.key, k.mod_revision)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_install_interrupted_by_a_crash_is_finished_at_restart() {
    let mut members =
        block_in_place(|| Server::cluster_with(Kind::Cairn, 3, &["--snapshot-count=200"]));
    let eps: Vec<String> = members.iter().map(Server::endpoint).collect();
    let (_, leader) = leader_of(&eps[0]).await;
    let mut at = 0;
    for (i, e) in eps.iter().enumerate() {
        if leader_of(e).await.0 == leader {
            at = i;
        }
    }
    let lagging = (at + 1) % 3;
    block_in_place(|| members[lagging].kill9());

    // Concurrent writers through the leader; every write must succeed.
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let (ep, acked) = (eps[at].clone(), acked.clone());
            tokio::spawn(async move {
                let mut kv = KvClient::new(channel(&ep, Duration::from_secs(10)));
                for i in (w..WRITES).step_by(8) {
                    let key = format!("sc/{i:05}").into_bytes();
                    let r = kv
                        .put(PutRequest {
                            key: key.clone(),
                            value: vec![b'v'; 100],
                            ..Default::default()
                        })
                        .await
                        .expect("put with two of three members up");
                    let rev = r.into_inner().header.expect("header").revision;
                    acked.lock().unwrap().insert(key, rev);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    let acked = acked.lock().unwrap().clone();

    // Armed: the member dies while installing the leader's snapshot.
    std::env::set_var(FAILPOINT, "1");
    block_in_place(|| members[lagging].restart_no_wait());
    let status = block_in_place(|| members[lagging].wait_exit(Duration::from_secs(30)));
    std::env::remove_var(FAILPOINT);
    let log = std::fs::read_to_string(members[lagging].log_path()).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("the failpoint never fired; log:\n{log}"));
    assert!(
        !status.success() && log.contains("crashing in the middle of a snapshot install"),
        "expected a crash in the install, got {status}; log:\n{}",
        members[lagging].log_tail(30)
    );

    // Unarmed: the interrupted install is finished first, then it catches
    // up like any member.
    block_in_place(|| members[lagging].restart());
    let log = std::fs::read_to_string(members[lagging].log_path()).unwrap_or_default();
    assert!(
        log.contains("finishing a snapshot install interrupted by a crash"),
        "the restart did not resume the install; log:\n{}",
        members[lagging].log_tail(30)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = contents(&eps[lagging]).await;
        if seen.as_ref() == Some(&acked) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after its restart the member has {} of {} acknowledged writes (or other revisions)",
            seen.map_or(0, |s| s
                .iter()
                .filter(|(k, r)| acked.get(*k) == Some(r))
                .count()),
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_same_kv_hash(&eps, Duration::from_secs(20)).await;
}
