//! Three members on loopback: writes through any member, a kill -9 of the
//! leader under write load, a new leader, the killed member back — and every
//! acknowledged write on every member, with identical stores.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use common::{Kind, Server};
use tonic::transport::{Channel, Endpoint};

async fn channel(endpoint: &str) -> Option<Channel> {
    Endpoint::from_shared(endpoint.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(8))
        .connect()
        .await
        .ok()
}

/// (member id, leader id) as a member reports them.
async fn status(endpoint: &str) -> Option<(u64, u64)> {
    let mut m = MaintenanceClient::new(channel(endpoint).await?);
    let s = m.status(StatusRequest {}).await.ok()?.into_inner();
    Some((s.header?.member_id, s.leader))
}

/// Every member's id, and the index of the leader they all agree on.
async fn ids_and_leader(members: &[Server]) -> (Vec<u64>, usize) {
    let mut ids = Vec::new();
    let mut leaders = Vec::new();
    for m in members {
        let (id, l) = status(&m.endpoint()).await.expect("status");
        ids.push(id);
        leaders.push(l);
    }
    assert!(
        leaders.windows(2).all(|w| w[0] == w[1]),
        "members disagree on the leader: {leaders:x?}"
    );
    let at = ids
        .iter()
        .position(|id| *id == leaders[0])
        .expect("leader is a member");
    (ids, at)
}

/// Writes unique keys through `endpoint` until `stop`; records what was
/// acknowledged (key → revision).
async fn writer(
    endpoint: String,
    tag: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, i64>>>,
) {
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        let Some(ch) = channel(&endpoint).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut kv = KvClient::new(ch);
        while !stop.load(Ordering::SeqCst) {
            seq += 1;
            let key = format!("cl/{tag}/{seq:06}");
            let put = PutRequest {
                key: key.clone().into_bytes(),
                value: key.clone().into_bytes(),
                ..Default::default()
            };
            match kv.put(put).await {
                Ok(r) => {
                    let rev = r.into_inner().header.unwrap().revision;
                    acked.lock().unwrap().insert(key, rev);
                }
                // Leader lost, member down: this write's fate is unknown.
                Err(_) => break,
            }
        }
    }
}

/// Everything under `cl/` as a linearizable read on `endpoint` sees it
/// (retried while the cluster has no leader).
async fn contents(endpoint: &str) -> BTreeMap<String, i64> {
    let start = Instant::now();
    let r = loop {
        let mut kv = KvClient::new(channel(endpoint).await.expect("connect"));
        let req = RangeRequest {
            key: b"cl/".to_vec(),
            range_end: b"cl0".to_vec(),
            ..Default::default()
        };
        match kv.range(req).await {
            Ok(r) => break r.into_inner(),
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                eprintln!("linearizable range on {endpoint}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("linearizable range on {endpoint}: {e}"),
        }
    };
    r.kvs
        .into_iter()
        .map(|kv| (String::from_utf8(kv.key).unwrap(), kv.mod_revision))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_under_writes_loses_nothing() {
    let mut members = Server::cluster(Kind::Cairn, 3);
    let (ids, leader_at) = ids_and_leader(&members).await;
    let leader = ids[leader_at];

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let writers: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(writer(
                members[i % 3].endpoint(),
                i,
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_kill = acked.lock().unwrap().len();
    members[leader_at].kill9();
    let killed = Instant::now();

    // A new leader among the survivors.
    let survivors: Vec<String> = (0..3)
        .filter(|i| *i != leader_at)
        .map(|i| members[i].endpoint())
        .collect();
    let new_leader = loop {
        let mut seen = Vec::new();
        for e in &survivors {
            if let Some((_, l)) = status(e).await {
                seen.push(l);
            }
        }
        if seen.len() == 2 && seen[0] == seen[1] && seen[0] != 0 && seen[0] != leader {
            break seen[0];
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no new leader 10 s after killing {leader:x} (seen {seen:x?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let election = killed.elapsed();
    // Writes go on through the survivors (a write that was on its way to
    // the old leader is lost and waits out its request timeout first).
    let after_kill = loop {
        let n = acked.lock().unwrap().len();
        if n >= before_kill + 100 {
            break n;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "only {} writes acknowledged after the leader died",
            n - before_kill
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= after_kill);

    members[leader_at].restart();
    let mut stores = Vec::new();
    for m in &members {
        stores.push(contents(&m.endpoint()).await);
    }
    for (key, rev) in &acked {
        assert_eq!(
            stores[0].get(key),
            Some(rev),
            "acknowledged {key} at revision {rev}"
        );
    }
    assert_eq!(stores[0], stores[1], "members 0 and 1 differ");
    assert_eq!(stores[0], stores[2], "members 0 and 2 differ");
    eprintln!(
        "3 members: {} acknowledged writes ({before_kill} before the kill), new leader {new_leader:x} after {election:?}; stores identical",
        acked.len()
    );
}

/// Leases across members: granted through a follower, kept alive through
/// every member (followers forward to the leader), still there after the
/// leader dies, and expired by the new leader — on every member alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_follow_the_leader() {
    use cairn::pb::etcdserverpb::lease_client::LeaseClient;
    use cairn::pb::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest};
    use tokio_stream::StreamExt;

    let mut members = Server::cluster(Kind::Cairn, 3);
    let (_, leader_at) = ids_and_leader(&members).await;
    let follower = (leader_at + 1) % 3;
    let ch = channel(&members[follower].endpoint()).await.unwrap();
    const TTL: i64 = 5;
    let granted = Instant::now();
    let id = LeaseClient::new(ch.clone())
        .lease_grant(LeaseGrantRequest { ttl: TTL, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    KvClient::new(ch)
        .put(PutRequest {
            key: b"cl/leased".to_vec(),
            value: b"v".to_vec(),
            lease: id,
            ..Default::default()
        })
        .await
        .unwrap();
    for m in &members {
        let mut lease = LeaseClient::new(channel(&m.endpoint()).await.unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut answers = lease
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
        let ttl = answers.next().await.unwrap().unwrap().ttl;
        assert_eq!(ttl, TTL, "keep-alive through {}", m.endpoint());
    }
    // The time left is the leader's: a follower asks it, so every member
    // sees the clock run down (a follower's own view would be the full TTL).
    let renewed = Instant::now();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for m in &members {
        use cairn::pb::etcdserverpb::LeaseTimeToLiveRequest;
        let mut lease = LeaseClient::new(channel(&m.endpoint()).await.unwrap());
        let r = lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
            .await
            .unwrap()
            .into_inner();
        let most = TTL - renewed.elapsed().as_secs() as i64;
        assert!(
            r.ttl <= most && r.ttl >= most - 2,
            "time to live through {}: {} s left {:?} after the keep-alive (TTL {TTL})",
            m.endpoint(),
            r.ttl,
            renewed.elapsed()
        );
        assert_eq!((r.granted_ttl, r.keys.len()), (TTL, 1));
    }
    members[leader_at].kill9();
    let killed = Instant::now();
    // The key stays at least a TTL after the last keep-alive, then goes
    // from every survivor.
    let survivors: Vec<String> = (0..3)
        .filter(|i| *i != leader_at)
        .map(|i| members[i].endpoint())
        .collect();
    loop {
        let mut present = 0;
        for e in &survivors {
            present += contents(e).await.contains_key("cl/leased") as usize;
        }
        if present == 0 {
            assert!(
                killed.elapsed() >= Duration::from_secs(TTL as u64) - Duration::from_millis(500),
                "lease expired {:?} after the leader died (TTL {TTL}s)",
                killed.elapsed()
            );
            break;
        }
        assert!(
            granted.elapsed() < Duration::from_secs(30),
            "lease never expired after the leader died"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// MoveLeader as etcd: only the leader hands over, only to a member, and
/// the call returns once the new leader leads. Then every member stops
/// cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_then_clean_stop() {
    use cairn::pb::etcdserverpb::MoveLeaderRequest;

    let mut members = Server::cluster(Kind::Cairn, 3);
    let (ids, leader_at) = ids_and_leader(&members).await;
    let target_at = (leader_at + 1) % 3;
    let maintenance = |i: usize| {
        let e = members[i].endpoint();
        async move { MaintenanceClient::new(channel(&e).await.unwrap()) }
    };
    let err = maintenance(target_at)
        .await
        .move_leader(MoveLeaderRequest {
            target_id: ids[leader_at],
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: not leader");
    let err = maintenance(leader_at)
        .await
        .move_leader(MoveLeaderRequest { target_id: 0xdead })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: bad leader transferee");
    maintenance(leader_at)
        .await
        .move_leader(MoveLeaderRequest {
            target_id: ids[target_at],
        })
        .await
        .expect("move leader");
    for m in &members {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, l) = status(&m.endpoint()).await.expect("status");
            if l == ids[target_at] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} still sees {l:x}",
                m.endpoint()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for m in &mut members {
        let status = m.terminate(Duration::from_secs(15));
        assert!(
            status.is_some_and(|s| s.success()),
            "SIGTERM: {status:?}; log:\n{}",
            m.log_tail(20)
        );
    }
}

/// A member bootstrapped with another cluster token belongs to another
/// cluster (other ids): the others refuse its raft messages, both sides say
/// why in their logs, and the two members of the real cluster work on
/// without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_of_another_cluster_is_refused() {
    let mut members = tokio::task::block_in_place(|| {
        Server::cluster_spawn_each(
            Kind::Cairn,
            &[&[], &[], &["--initial-cluster-token=another-cluster"]],
        )
    });
    tokio::task::block_in_place(|| {
        members[0].await_ready();
        members[1].await_ready();
    });
    let mut kv = KvClient::new(channel(&members[0].endpoint()).await.unwrap());
    kv.put(PutRequest {
        key: b"cl/k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
    .await
    .expect("the two members of the cluster make a quorum");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stranger = std::fs::read_to_string(members[2].log_path()).unwrap_or_default();
        let ours: String = (0..2)
            .map(|i| std::fs::read_to_string(members[i].log_path()).unwrap_or_default())
            .collect();
        if stranger.contains("peer refused our raft messages")
            && stranger.contains("cluster ID mismatch")
            && ours.contains("request sent was ignored due to cluster ID mismatch")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no clear refusal in the logs; the stranger's:\n{}",
            members[2].log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        members[2].is_running(),
        "the stranger keeps trying, as etcd's does"
    );
    assert!(
        status(&members[2].endpoint()).await.is_none(),
        "a member without a cluster serves no clients"
    );
}
