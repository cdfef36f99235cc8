//! Corruption detection and the CORRUPT alarm, through the real port.
//!
//! - What a CORRUPT alarm does to requests (writes refused with etcd's
//!   `etcdserver: corrupt cluster`, reads served) and `Maintenance.Hash`
//!   agreeing on every member: these run against cairn, or against the
//!   real etcd with `CAIRN_CLUSTER_TARGET=etcd`, which is the reference.
//! - The checks themselves, on a member whose store the test corrupts on
//!   disk while it is stopped (cairn only: the test edits cairn's RocksDB
//!   through the library): the initial check keeps that member from
//!   starting; the leader's periodic check raises CORRUPT naming it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::lease_client::LeaseClient;
use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::{
    alarm_request::AlarmAction, compare, request_op, AlarmRequest, AlarmType, CompactionRequest,
    Compare, DeleteRangeRequest, HashRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
};
use common::check::{assert_same_kv_hash, channel};
use common::{etcdctl, Kind, Server};
use prost::Message;
use tonic::Code;

fn target() -> Kind {
    common::target_from_env("CAIRN_CLUSTER_TARGET")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const RPC_TIMEOUT: Duration = Duration::from_secs(10);

fn kv(endpoint: &str) -> KvClient<tonic::transport::Channel> {
    KvClient::new(channel(endpoint, RPC_TIMEOUT))
}

fn maintenance(endpoint: &str) -> MaintenanceClient<tonic::transport::Channel> {
    MaintenanceClient::new(channel(endpoint, RPC_TIMEOUT))
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

async fn member_id(endpoint: &str) -> u64 {
    let st = maintenance(endpoint)
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    st.header.expect("header").member_id
}

fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) {
    match r {
        Err(s) => {
            assert_eq!(s.code(), Code::DataLoss, "{what}: {s:?}");
            assert_eq!(s.message(), "etcdserver: corrupt cluster", "{what}");
        }
        Ok(v) => panic!("{what} succeeded under a CORRUPT alarm: {v:?}"),
    }
}

fn alarm(action: AlarmAction, member_id: u64) -> AlarmRequest {
    AlarmRequest {
        action: action as i32,
        member_id,
        alarm: AlarmType::Corrupt as i32,
    }
}

/// With CORRUPT raised, every write (put, delete, txn with a write,
/// compaction, lease grant and revoke) fails with etcd's error, while
/// reads, read-only txns and keep-alives are served; `alarm list` and
/// `endpoint status` show it; disarmed, writes go through again and
/// nothing refused was applied.
#[test]
fn corrupt_alarm_refuses_writes_and_serves_reads() {
    let srv = Server::start(target());
    let ep = srv.endpoint();
    runtime().block_on(async {
        let mut kv = kv(&ep);
        let mut m = maintenance(&ep);
        let mut leases = LeaseClient::new(channel(&ep, RPC_TIMEOUT));
        kv.put(put("a", "1")).await.unwrap();
        let rev = kv
            .put(put("b", "2"))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        let lease = leases
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .unwrap()
            .into_inner()
            .id;
        let id = member_id(&ep).await;

        let listed = m
            .alarm(alarm(AlarmAction::Activate, id))
            .await
            .expect("activate CORRUPT")
            .into_inner()
            .alarms;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            (listed[0].member_id, listed[0].alarm),
            (id, AlarmType::Corrupt as i32)
        );

        assert_corrupt(kv.put(put("a", "changed")).await, "put");
        assert_corrupt(
            kv.delete_range(DeleteRangeRequest {
                key: "b".into(),
                ..Default::default()
            })
            .await,
            "delete",
        );
        let write_txn = TxnRequest {
            compare: vec![Compare {
                key: "a".into(),
                result: compare::CompareResult::Greater as i32,
                target: compare::CompareTarget::Version as i32,
                target_union: Some(compare::TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put("c", "3"))),
            }],
            failure: vec![],
        };
        assert_corrupt(kv.txn(write_txn).await, "txn with a put");
        assert_corrupt(
            kv.compact(CompactionRequest {
                revision: rev,
                physical: false,
            })
            .await,
            "compact",
        );
        assert_corrupt(
            leases
                .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
                .await,
            "lease grant",
        );
        assert_corrupt(
            leases.lease_revoke(LeaseRevokeRequest { id: lease }).await,
            "lease revoke",
        );

        // Reads go on: linearizable and serializable ranges, a txn of
        // ranges, keep-alives.
        for serializable in [false, true] {
            let r = kv
                .range(RangeRequest {
                    key: "a".into(),
                    serializable,
                    ..Default::default()
                })
                .await
                .expect("range under CORRUPT")
                .into_inner();
            assert_eq!(r.kvs[0].value, b"1");
        }
        let read_txn = TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: "b".into(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let t = kv.txn(read_txn).await.expect("read-only txn").into_inner();
        assert!(t.succeeded);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(LeaseKeepAliveRequest { id: lease }).await.unwrap();
        let mut ka = leases
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("keep-alive stream")
            .into_inner();
        let renewed = ka.message().await.expect("keep-alive").expect("a reply");
        assert_eq!((renewed.id, renewed.ttl), (lease, 60));

        // What operators see.
        let out = etcdctl(&ep, &["alarm", "list"], None);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("memberID:{id} alarm:CORRUPT \n")
        );
        let st = m.status(StatusRequest {}).await.unwrap().into_inner();
        assert_eq!(st.errors, vec![format!("memberID:{id} alarm:CORRUPT ")]);

        // Disarmed (the answer names the alarm cleared, as etcd's does; a
        // second clear finds nothing): writes again, and nothing refused
        // was applied.
        let cleared = m
            .alarm(alarm(AlarmAction::Deactivate, id))
            .await
            .unwrap()
            .into_inner()
            .alarms;
        assert_eq!(cleared, listed);
        let again = m
            .alarm(alarm(AlarmAction::Deactivate, id))
            .await
            .unwrap()
            .into_inner()
            .alarms;
        assert!(again.is_empty(), "{again:?}");
        let out = etcdctl(&ep, &["alarm", "list"], None);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");
        let after = kv.put(put("a", "changed")).await.expect("put after disarm");
        assert_eq!(after.into_inner().header.unwrap().revision, rev + 1);
        let c = kv
            .range(RangeRequest {
                key: "c".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(c.count, 0, "the refused txn's put was applied");
    });
}

/// `Maintenance.Hash` is the same on every member at one revision, and
/// changes with the store.
#[test]
fn hash_is_the_same_on_every_member() {
    let members = Server::cluster(target(), 3);
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    runtime().block_on(async {
        let mut k = kv(&endpoints[0]);
        for i in 0..50 {
            k.put(put(&format!("key{}", i % 20), &format!("v{i}")))
                .await
                .unwrap();
        }
        let first = hashes(&endpoints).await;
        k.put(put("one-more", "x")).await.unwrap();
        let second = hashes(&endpoints).await;
        assert_ne!(first, second, "the hash did not change with a put");
    });
}

/// Every member's `Maintenance.Hash`, taken once all are at the same
/// revision; panics unless they agree.
async fn hashes(endpoints: &[String]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Same revision on all, before and after hashing: no write landed
        // in between, so the hashes must agree.
        let (rev, _) = assert_same_kv_hash(endpoints, Duration::from_secs(20)).await;
        let mut got = Vec::new();
        for e in endpoints {
            let r = maintenance(e)
                .hash(HashRequest {})
                .await
                .expect("hash")
                .into_inner();
            got.push((r.header.unwrap().revision, r.hash));
        }
        if got.iter().all(|(r, _)| *r == rev) {
            assert!(
                got.iter().all(|(_, h)| *h == got[0].1),
                "members' Hash differ at revision {rev}: {got:?}"
            );
            return got[0].1;
        }
        assert!(Instant::now() < deadline, "members never settled: {got:?}");
    }
}

// ---------------------------------------------------------------------------
// cairn only: a member's store corrupted on disk
// ---------------------------------------------------------------------------

/// Rewrites the value of the newest live revision of `key` in a stopped
/// member's store, as a disk or bug would: same revision, other bytes.
fn corrupt_on_disk(data_dir: &Path, key: &[u8]) {
    use cairn::pb::mvccpb::KeyValue;
    use cairn::storage::{Storage, CF_KV};
    let storage = Storage::open(&data_dir.join("member")).expect("open the stopped member's store");
    let cf = storage.cf(CF_KV);
    let mut target = None;
    for item in storage.db().iterator_cf(cf, rocksdb::IteratorMode::End) {
        let (k, v) = item.expect("read kv");
        if let Ok(record) = KeyValue::decode(v.as_ref()) {
            if record.key == key && !record.value.is_empty() {
                target = Some((k.to_vec(), record));
                break;
            }
        }
    }
    let (k, mut record) = target.expect("the key's record");
    record.value = b"flipped by the test".to_vec();
    storage
        .db()
        .put_cf(cf, k, record.encode_to_vec())
        .expect("write the corrupted record");
    storage.db().flush_cf(cf).expect("flush");
}

fn write_keys(endpoint: &str, n: usize) {
    runtime().block_on(async {
        let mut k = kv(endpoint);
        for i in 0..n {
            k.put(put(&format!("key{i}"), &format!("value{i}")))
                .await
                .unwrap();
        }
    });
}

fn endpoints(members: &[Server]) -> Vec<String> {
    members.iter().map(|m| m.endpoint()).collect()
}

/// With the initial check on, a member restarts when its store agrees with
/// its peers', and refuses to start, with etcd's error, when it does not.
#[test]
fn initial_check_refuses_to_start_a_corrupted_member() {
    let mut members = Server::cluster_with(
        Kind::Cairn,
        3,
        &["--feature-gates=InitialCorruptCheck=true"],
    );
    write_keys(&members[0].endpoint(), 20);
    runtime().block_on(assert_same_kv_hash(
        &endpoints(&members),
        Duration::from_secs(20),
    ));

    // A clean restart passes the check.
    members[2]
        .terminate(Duration::from_secs(10))
        .expect("stopped");
    members[2].restart();
    assert!(
        members[2]
            .log_tail(400)
            .contains("initial corruption checking passed; no corruption"),
        "{}",
        members[2].log_tail(60)
    );

    // A corrupted store does not.
    members[2]
        .terminate(Duration::from_secs(10))
        .expect("stopped");
    corrupt_on_disk(&members[2].data_dir(), b"key7");
    members[2].restart_no_wait();
    let status = members[2].wait_exit(Duration::from_secs(30));
    let log = members[2].log_tail(100);
    let status = status.unwrap_or_else(|| panic!("the corrupted member kept running:\n{log}"));
    assert!(!status.success(), "{log}");
    assert!(log.contains("found data inconsistency with peers"), "{log}");
    assert!(
        log.contains("found different hash values from remote peer"),
        "{log}"
    );

    // The others never noticed anything, and take writes.
    write_keys(&members[0].endpoint(), 1);
}

/// The leader's periodic check finds the member whose store differs and
/// raises CORRUPT for it, which stops writes everywhere.
#[test]
fn periodic_check_raises_corrupt_for_the_differing_member() {
    let mut members = Server::cluster_with(Kind::Cairn, 3, &["--corrupt-check-time=1s"]);
    write_keys(&members[0].endpoint(), 20);
    runtime().block_on(assert_same_kv_hash(
        &endpoints(&members),
        Duration::from_secs(20),
    ));
    let rt = runtime();
    // A follower: the check runs on the leader.
    let mut follower = None;
    for (i, m) in members.iter().enumerate() {
        let st = rt.block_on(async {
            maintenance(&m.endpoint())
                .status(StatusRequest {})
                .await
                .unwrap()
                .into_inner()
        });
        if st.leader != st.header.unwrap().member_id {
            follower = Some(i);
        }
    }
    let f = follower.expect("a follower");
    let id = rt.block_on(member_id(&members[f].endpoint()));

    // Passes while the stores agree: rounds of the check that compared
    // both peers, and no alarm.
    let deadline = Instant::now() + Duration::from_secs(20);
    let passed = r#""msg":"finished peer corruption check","number-of-peers-checked":2"#;
    while !members
        .iter()
        .any(|m| m.log_tail(200).matches(passed).count() >= 2)
    {
        assert!(Instant::now() < deadline, "no complete check round logged");
        std::thread::sleep(Duration::from_millis(100));
    }
    for m in &members {
        rt.block_on(async {
            let r = maintenance(&m.endpoint())
                .alarm(AlarmRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert!(r.alarms.is_empty(), "{:?}", r.alarms);
        });
    }

    members[f]
        .terminate(Duration::from_secs(10))
        .expect("stopped");
    corrupt_on_disk(&members[f].data_dir(), b"key3");
    members[f].restart();

    let other = (f + 1) % 3;
    let ep = members[other].endpoint();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(&ep, &["alarm", "list"], None);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text == format!("memberID:{id} alarm:CORRUPT \n") {
            break;
        }
        assert!(text.is_empty(), "unexpected alarms: {text}");
        assert!(
            Instant::now() < deadline,
            "no CORRUPT alarm raised; leader logs:\n{}",
            members
                .iter()
                .map(|m| m.log_tail(30))
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.block_on(async {
        assert_corrupt(
            kv(&ep).put(put("key1", "x")).await,
            "put on a healthy member",
        );
        let r = kv(&ep)
            .range(RangeRequest {
                key: "key1".into(),
                ..Default::default()
            })
            .await
            .expect("reads go on");
        assert_eq!(r.into_inner().kvs[0].value, b"value1");
    });
}

/// `Maintenance.Hash` answers at the store's revision, also when a
/// compaction removed the newest records (a delete's tombstone).
#[test]
fn hash_revision_after_compacting_the_newest_tombstone() {
    let srv = Server::start(target());
    let ep = srv.endpoint();
    runtime().block_on(async {
        let mut k = kv(&ep);
        k.put(put("k", "v")).await.unwrap();
        let rev = k
            .delete_range(DeleteRangeRequest {
                key: "k".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        k.compact(CompactionRequest {
            revision: rev,
            physical: true,
        })
        .await
        .unwrap();
        let h = maintenance(&ep)
            .hash(HashRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(h.header.unwrap().revision, rev);
    });
}
