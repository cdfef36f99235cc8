//! The space quota, the etcd way: past `--quota-backend-bytes` a write is
//! refused with etcd's error and the NOSPACE alarm is raised; while it is
//! raised, writes that add data fail but reads, deletes and compaction
//! work; after compacting, defragmenting and disarming, writes work again.
//! Runs against the real etcd with `CAIRN_QUOTA_TARGET=etcd`.

mod common;

use std::time::Duration;

use cairn::pb::etcdserverpb::alarm_request::AlarmAction;
use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::lease_client::LeaseClient;
use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::{
    AlarmRequest, AlarmType, CompactionRequest, DefragmentRequest, DeleteRangeRequest,
    LeaseGrantRequest, PutRequest, RangeRequest, StatusRequest,
};
use common::check::channel;
use common::{Rng, Server};
use tonic::Code;

const QUOTA: i64 = 16 * 1024 * 1024;
const VALUE: usize = 64 * 1024;

fn value(rng: &mut Rng) -> Vec<u8> {
    // Incompressible, so the store really grows.
    (0..VALUE).map(|_| rng.next() as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_then_free_space_and_disarm() {
    let kind = common::target_from_env("CAIRN_QUOTA_TARGET");
    let server = tokio::task::block_in_place(|| {
        Server::start_with(kind, &[&format!("--quota-backend-bytes={QUOTA}")])
    });
    let ch = channel(&server.endpoint(), Duration::from_secs(10));
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch.clone());
    let mut mt = MaintenanceClient::new(ch);
    let mut rng = Rng::new(7);
    let member = mt
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .member_id;

    // Fill until refused; it must happen within about twice the quota.
    let mut written = 0usize;
    let refusal = loop {
        let put = PutRequest {
            key: format!("q/{written:05}").into_bytes(),
            value: value(&mut rng),
            ..Default::default()
        };
        match kv.put(put).await {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(
            written * VALUE < 2 * QUOTA as usize,
            "{written} values of {VALUE} bytes accepted under a quota of {QUOTA}"
        );
    };
    assert_eq!(
        (refusal.code(), refusal.message()),
        (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded"
        ),
        "after {written} puts"
    );
    assert!(written > 0, "the first put was refused already");

    // The alarm is raised for this member, and shows in Status.
    let alarms = mt
        .alarm(AlarmRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alarms;
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(
        (alarms[0].member_id, alarms[0].alarm),
        (member, AlarmType::Nospace as i32)
    );
    let status = mt.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        status.errors,
        vec![format!("memberID:{member} alarm:NOSPACE ")]
    );

    // Adding data fails, small as it is; reads and deletes work.
    let small = kv
        .put(PutRequest {
            key: b"q/small".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(small.code(), Code::ResourceExhausted);
    let grant = lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap_err();
    assert_eq!(grant.message(), "etcdserver: mvcc: database space exceeded");
    let count = kv
        .range(RangeRequest {
            key: b"q/".to_vec(),
            range_end: b"q0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count as usize, written);
    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: b"q/".to_vec(),
            range_end: b"q0".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted as usize, written);

    // Compact and defragment: the space comes back.
    let rev = deleted.header.unwrap().revision;
    kv.compact(CompactionRequest {
        revision: rev,
        physical: true,
    })
    .await
    .unwrap();
    mt.defragment(DefragmentRequest {}).await.unwrap();
    let size = mt
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .db_size;
    assert!(
        size < QUOTA / 2,
        "{size} bytes after deleting, compacting and defragmenting"
    );

    // Still refused until the alarm is disarmed.
    assert!(kv
        .put(PutRequest {
            key: b"q/after".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .is_err());
    mt.alarm(AlarmRequest {
        action: AlarmAction::Deactivate as i32,
        member_id: member,
        alarm: AlarmType::Nospace as i32,
    })
    .await
    .unwrap();
    kv.put(PutRequest {
        key: b"q/after".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
    .await
    .expect("writes work again once disarmed");
    let alarms = mt
        .alarm(AlarmRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alarms;
    assert!(alarms.is_empty(), "{alarms:?}");
}
