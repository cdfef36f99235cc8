//! Faults in a 3-member cluster: a member partitioned away (a follower, then
//! the leader), a member that lags so far that it needs a raft snapshot, and
//! all members killed at once. Each test ends by comparing `HashKV` on every
//! member. Runs against cairn, or the real etcd with
//! `CAIRN_CLUSTER_TARGET=etcd`, so the tests check themselves against etcd.
//!
//! Every RPC has a client deadline; waits poll with deadlines.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use common::check::{assert_same_kv_hash, channel};
use common::proxy::{heal, isolate, Proxy};
use common::{Kind, Server};
use tokio::task::block_in_place;

/// Client deadline of the RPCs that must fail on a cut-off member, and of
/// the writers' puts.
const RPC: Duration = Duration::from_secs(3);
/// `--election-timeout`'s default, which the members run with.
const ELECTION: Duration = Duration::from_secs(1);

fn target() -> Kind {
    common::target_from_env("CAIRN_CLUSTER_TARGET")
}

fn endpoints(members: &[Server]) -> Vec<String> {
    members.iter().map(Server::endpoint).collect()
}

/// Acknowledged writes: key → revision of the put.
type Acked = BTreeMap<String, i64>;

/// Tasks that put unique keys `f/TAG-I/SEQ` until stopped and record the
/// acknowledged ones.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// `per_endpoint` writers on each endpoint.
    fn start(endpoints: &[String], per_endpoint: usize, tag: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Acked::new()));
        let mut tasks = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            for j in 0..per_endpoint {
                tasks.push(tokio::spawn(writer(
                    e.clone(),
                    format!("{tag}-{i}{j}"),
                    stop.clone(),
                    acked.clone(),
                )));
            }
        }
        Writers { stop, acked, tasks }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` writes are acknowledged in all.
    async fn wait_for(&self, n: usize, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {n} writes acknowledged after {within:?}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> Acked {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

async fn writer(endpoint: String, tag: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Acked>>) {
    let mut kv = KvClient::new(channel(&endpoint, RPC));
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let key = format!("f/{tag}/{seq:06}");
        let put = PutRequest {
            key: key.clone().into_bytes(),
            value: key.clone().into_bytes(),
            ..Default::default()
        };
        match kv.put(put).await {
            Ok(r) => {
                let rev = r.into_inner().header.expect("header").revision;
                acked.lock().unwrap().insert(key, rev);
            }
            // No leader, member down, deadline: this write's fate is unknown.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

struct Status {
    id: u64,
    leader: u64,
    raft_index: u64,
}

async fn status(endpoint: &str) -> Option<Status> {
    let mut m = MaintenanceClient::new(channel(endpoint, Duration::from_secs(2)));
    let s = m.status(StatusRequest {}).await.ok()?.into_inner();
    let h = s.header?;
    Some(Status {
        id: h.member_id,
        leader: s.leader,
        raft_index: s.raft_index,
    })
}

/// Every member's id, and the index of the leader they all agree on
/// (waits for one, up to `within`).
async fn agreed_leader(endpoints: &[String], within: Duration) -> (Vec<u64>, usize) {
    let deadline = Instant::now() + within;
    loop {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for e in endpoints {
            if let Some(s) = status(e).await {
                ids.push(s.id);
                leaders.push(s.leader);
            }
        }
        if ids.len() == endpoints.len() && leaders.iter().all(|l| *l == leaders[0]) {
            if let Some(at) = ids.iter().position(|id| *id == leaders[0]) {
                return (ids, at);
            }
        }
        assert!(
            Instant::now() < deadline,
            "members do not agree on a leader after {within:?}: ids {ids:x?}, leaders {leaders:x?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every member at `endpoints` names the same leader, other
/// than `not`.
async fn new_leader_among(endpoints: &[String], not: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let mut seen = Vec::new();
        for e in endpoints {
            if let Some(s) = status(e).await {
                seen.push(s.leader);
            }
        }
        if seen.len() == endpoints.len()
            && seen.iter().all(|l| *l == seen[0])
            && seen[0] != 0
            && seen[0] != not
        {
            return seen[0];
        }
        assert!(
            Instant::now() < deadline,
            "no new leader (other than {not:x}) within {within:?}: seen {seen:x?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything under `f/` on `endpoint` (key → mod revision) and the
/// response's revision.
async fn read_all(endpoint: &str, serializable: bool) -> Result<(Acked, i64), tonic::Status> {
    let mut kv = KvClient::new(channel(endpoint, Duration::from_secs(10)));
    let r = kv
        .range(RangeRequest {
            key: b"f/".to_vec(),
            range_end: b"f0".to_vec(),
            keys_only: true,
            serializable,
            ..Default::default()
        })
        .await?
        .into_inner();
    let kvs = r
        .kvs
        .into_iter()
        .map(|kv| (String::from_utf8(kv.key).unwrap(), kv.mod_revision))
        .collect();
    Ok((kvs, r.header.map_or(0, |h| h.revision)))
}

/// What of `acked` is missing from `view` or there at another revision.
fn missing(view: &Acked, acked: &Acked) -> Option<String> {
    let bad: Vec<String> = acked
        .iter()
        .filter(|(k, rev)| view.get(*k) != Some(rev))
        .map(|(k, rev)| format!("{k}@{rev} (found {:?})", view.get(k)))
        .collect();
    if bad.is_empty() {
        None
    } else {
        Some(format!(
            "{} of {} acknowledged writes missing or at another revision, e.g. {:?}",
            bad.len(),
            acked.len(),
            &bad[..bad.len().min(5)]
        ))
    }
}

/// Polls serializable reads on `endpoint` until they show every write in
/// `acked` at its revision; how long that took.
async fn wait_has_all(endpoint: &str, acked: &Acked, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let problem = match read_all(endpoint, true).await {
            Ok((view, _)) => match missing(&view, acked) {
                None => return start.elapsed(),
                Some(p) => p,
            },
            Err(e) => format!("serializable range: {e}"),
        };
        assert!(
            start.elapsed() < within,
            "{endpoint} after {within:?}: {problem}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the member at `endpoint` (id `id`) no longer names itself
/// leader; how long after `since` that was.
async fn stepped_down(endpoint: &str, id: u64, since: Instant, within: Duration) -> Duration {
    loop {
        if let Some(s) = status(endpoint).await {
            if s.leader != id {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < within,
            "old leader {endpoint} still leads {:?} after it was cut off",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A linearizable range and a put on `endpoint` must both fail (an error,
/// or no answer within the client deadline). Their errors, for the log.
async fn serves_nothing(endpoint: &str, key: &str) -> (String, String) {
    let mut kv = KvClient::new(channel(endpoint, RPC));
    let mut kv2 = kv.clone();
    let started = Instant::now();
    let (read, put) = tokio::join!(
        kv.range(RangeRequest {
            key: b"f/".to_vec(),
            range_end: b"f0".to_vec(),
            count_only: true,
            ..Default::default()
        }),
        kv2.put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"from the minority".to_vec(),
            ..Default::default()
        })
    );
    let read = match read {
        Ok(r) => panic!(
            "linearizable range on cut-off {endpoint} answered after {:?}: {:?}",
            started.elapsed(),
            r.into_inner().header
        ),
        Err(e) => format!("{:?}: {}", e.code(), e.message()),
    };
    let put = match put {
        Ok(r) => panic!(
            "put on cut-off {endpoint} acknowledged after {:?}: {:?}",
            started.elapsed(),
            r.into_inner().header
        ),
        Err(e) => format!("{:?}: {}", e.code(), e.message()),
    };
    // etcd 3.5's linearizable member list (3.4 knows no such field and
    // answers from memory).
    if target() == Kind::Cairn {
        use cairn::pb::etcdserverpb::cluster_client::ClusterClient;
        use cairn::pb::etcdserverpb::MemberListRequest;
        let mut cluster = ClusterClient::new(channel(endpoint, RPC));
        let list = cluster
            .member_list(MemberListRequest { linearizable: true })
            .await;
        assert!(
            list.is_err(),
            "linearizable member list on cut-off {endpoint} answered"
        );
    }
    (read, put)
}

/// One put through any of `endpoints`, retried until acknowledged.
async fn put_acked(endpoints: &[String], key: &str, within: Duration) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        for e in endpoints {
            let mut kv = KvClient::new(channel(e, RPC));
            let put = PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"probe".to_vec(),
                ..Default::default()
            };
            match kv.put(put).await {
                Ok(r) => return r.into_inner().header.expect("header").revision,
                Err(err) => assert!(
                    Instant::now() < deadline,
                    "put {key} not acknowledged within {within:?}: {err}"
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Partitions member `victim` (the leader if `victim_leads`) away while
/// writers run on the other two, checks that it serves nothing linearizable
/// while the majority goes on, heals, and waits until it has caught up.
/// Returns the writes acknowledged meanwhile.
async fn partition_round(
    endpoints: &[String],
    ids: &[u64],
    proxies: &[Proxy],
    victim: usize,
    victim_leads: bool,
    tag: &str,
) -> Acked {
    let role = if victim_leads { "leader" } else { "follower" };
    let cut_off = &endpoints[victim];
    let majority: Vec<String> = (0..endpoints.len())
        .filter(|i| *i != victim)
        .map(|i| endpoints[i].clone())
        .collect();
    let writers = Writers::start(&majority, 2, tag);
    writers
        .wait_for(50, Duration::from_secs(10), "before the partition")
        .await;

    isolate(proxies, victim);
    let cut = Instant::now();
    let at_cut = writers.count();

    let mut election = None;
    if victim_leads {
        // A new leader among the majority, and check-quorum: the old leader
        // steps down within two election timeouts (the check runs every
        // election timeout; the first may still count answers from before
        // the cut).
        let (elected, down) = tokio::join!(
            async {
                new_leader_among(&majority, ids[victim], 5 * ELECTION).await;
                cut.elapsed()
            },
            stepped_down(
                cut_off,
                ids[victim],
                cut,
                2 * ELECTION + Duration::from_millis(500)
            )
        );
        election = Some((elected, down));
    }
    let (read_err, put_err) = serves_nothing(cut_off, &format!("f/{tag}/minority")).await;

    // The majority goes on, and what it acknowledges now does not reach the
    // cut-off member.
    writers
        .wait_for(
            at_cut + 200,
            Duration::from_secs(10),
            "majority during the partition",
        )
        .await;
    let probe = format!("f/{tag}/probe");
    let probe_rev = put_acked(&majority, &probe, Duration::from_secs(10)).await;
    let (view, _) = read_all(cut_off, true)
        .await
        .expect("serializable range on the cut-off member");
    assert!(
        !view.contains_key(&probe),
        "{probe} reached the cut-off {role} {cut_off} during the partition"
    );
    let partitioned = cut.elapsed();

    heal(proxies);
    let healed = Instant::now();
    let mut acked = writers.acked.lock().unwrap().clone();
    acked.insert(probe.clone(), probe_rev);
    let at_heal = acked.len();
    let caught_up = wait_has_all(cut_off, &acked, Duration::from_secs(15)).await;
    writers
        .wait_for(
            at_heal + 100,
            Duration::from_secs(15),
            "majority after healing",
        )
        .await;
    acked.extend(writers.stop().await);
    wait_has_all(cut_off, &acked, Duration::from_secs(15)).await;
    eprintln!(
        "{role} {cut_off} cut off for {partitioned:?}{}: range → {read_err}; put → {put_err}; \
         {} writes acknowledged during the partition; it had every write acknowledged before \
         the heal {caught_up:?} after it; {} writes in all, {:?} after the heal",
        election.map_or(String::new(), |(e, d)| format!(
            " (new leader after {e:?}, old one stepped down after {d:?})"
        )),
        at_heal - at_cut,
        acked.len(),
        healed.elapsed(),
    );
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_minority_serves_nothing_then_catches_up() {
    let kind = target();
    let start = Instant::now();
    let (members, proxies) = block_in_place(|| Server::cluster_behind_proxies(kind, 3, &[]));
    let eps = endpoints(&members);

    let (ids, leader) = agreed_leader(&eps, Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let mut acked = partition_round(&eps, &ids, &proxies, follower, false, "a1").await;

    let (ids, leader) = agreed_leader(&eps, Duration::from_secs(15)).await;
    acked.extend(partition_round(&eps, &ids, &proxies, leader, true, "a2").await);

    for e in &eps {
        wait_has_all(e, &acked, Duration::from_secs(10)).await;
    }
    let (rev, hash) = assert_same_kv_hash(&eps, Duration::from_secs(20)).await;
    let openers: Vec<_> = proxies.iter().map(Proxy::openers).collect();
    assert!(
        openers.iter().all(|o| !o.contains_key(&None)),
        "a proxy could not tell who opened some connections: {openers:?}"
    );
    eprintln!(
        "{}: {} writes, every member has them; HashKV({rev}) = {hash:#x} everywhere; {:?} in \
         all; connections through proxy i by opener: {openers:?}",
        kind.name(),
        acked.len(),
        start.elapsed()
    );
}

/// The proxy itself: it forwards both ways; blocked, it passes nothing
/// either way and closes nothing, and accepts new connections without
/// connecting them; healed, it delivers what it held; dropped, it stops.
#[test]
fn proxy_black_holes_then_heals() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    let echoes = std::thread::spawn(move || {
        let mut threads = Vec::new();
        for c in echo.incoming().take(2) {
            let mut w = c.unwrap();
            let mut r = w.try_clone().unwrap();
            threads.push(std::thread::spawn(move || {
                let _ = std::io::copy(&mut r, &mut w);
            }));
        }
        threads
    });
    let proxy = Proxy::start(echo_port);
    let connect = || {
        let c = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        c
    };
    let read = |c: &mut TcpStream, n: usize| {
        let mut buf = vec![0; n];
        c.read_exact(&mut buf)
            .map(|_| String::from_utf8(buf).unwrap())
    };
    let mut a = connect();
    a.write_all(b"one").unwrap();
    assert_eq!(read(&mut a, 3).unwrap(), "one");

    proxy.block();
    a.write_all(b"two").unwrap();
    let mut b = connect();
    b.write_all(b"three").unwrap();
    for c in [&mut a, &mut b] {
        let e = read(c, 1).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "blocked proxy: {e}"
        );
    }

    proxy.heal();
    assert_eq!(read(&mut a, 3).unwrap(), "two");
    assert_eq!(read(&mut b, 5).unwrap(), "three");

    let dropped = Instant::now();
    drop(proxy);
    assert!(dropped.elapsed() < Duration::from_secs(2));
    // The proxy closed both connections, so the echo threads end.
    assert_eq!(read(&mut a, 1).unwrap_or_default(), "");
    for t in echoes.join().unwrap() {
        t.join().unwrap();
    }
}

/// etcd keeps 5000 entries behind a snapshot for slow followers
/// (`SnapshotCatchUpEntries`); with `--snapshot-count=1000` a member that
/// missed 7000+ entries can only catch up from a snapshot.
const LAG: usize = 7500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_member_catches_up_from_snapshot() {
    let kind = target();
    let start = Instant::now();
    let (mut members, _proxies) =
        block_in_place(|| Server::cluster_behind_proxies(kind, 3, &["--snapshot-count=1000"]));
    let eps = endpoints(&members);
    let (_, leader) = agreed_leader(&eps, Duration::from_secs(10)).await;
    let lagging = (leader + 1) % 3;
    let majority: Vec<String> = (0..3)
        .filter(|i| *i != lagging)
        .map(|i| eps[i].clone())
        .collect();
    let index_before = status(&eps[lagging]).await.expect("status").raft_index;
    block_in_place(|| members[lagging].kill9());

    let writers = Writers::start(&majority, 8, "b");
    writers
        .wait_for(LAG, Duration::from_secs(60), "with a member down")
        .await;
    let mut acked = writers.stop().await;
    let wrote = start.elapsed();
    let mut index_now = 0;
    for e in &majority {
        index_now = index_now.max(status(e).await.expect("status").raft_index);
    }
    assert!(
        index_now >= index_before + 7000,
        "the stopped member is only {} entries behind",
        index_now - index_before
    );

    block_in_place(|| members[lagging].restart());
    let caught_up = wait_has_all(&eps[lagging], &acked, Duration::from_secs(30)).await;

    // It serves writes too.
    let writers = Writers::start(&eps[lagging..lagging + 1], 2, "b-after");
    writers
        .wait_for(
            100,
            Duration::from_secs(10),
            "through the member that lagged",
        )
        .await;
    acked.extend(writers.stop().await);
    for e in &eps {
        wait_has_all(e, &acked, Duration::from_secs(10)).await;
    }
    // Whether it really took a snapshot shows only in its log; it must
    // have (else this test lags too little).
    let log = std::fs::read_to_string(members[lagging].log_path()).unwrap_or_default();
    let snapshot_logged = match kind {
        Kind::Etcd => log.contains("applied snapshot"),
        Kind::Cairn => log.contains("installing a snapshot"),
    };
    assert!(
        snapshot_logged,
        "the lagging member never installed a snapshot: the test lags too little"
    );
    let (rev, hash) = assert_same_kv_hash(&eps, Duration::from_secs(20)).await;
    eprintln!(
        "{}: member {} stopped {} entries behind ({} writes in {wrote:?}), had them all \
         {caught_up:?} after its restart (snapshot in its log: {snapshot_logged}); HashKV({rev}) = {hash:#x} everywhere; {:?} in all",
        kind.name(),
        eps[lagging],
        index_now - index_before,
        acked.len(),
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_all_at_once_loses_nothing() {
    let kind = target();
    let start = Instant::now();
    let (mut members, _proxies) = block_in_place(|| Server::cluster_behind_proxies(kind, 3, &[]));
    let eps = endpoints(&members);

    let writers = Writers::start(&eps, 2, "c");
    writers
        .wait_for(1000, Duration::from_secs(20), "before the crash")
        .await;
    block_in_place(|| Server::kill9_all(&mut members));
    let acked = writers.stop().await;
    let last = acked.values().copied().max().unwrap_or(0);

    let down = Instant::now();
    block_in_place(|| Server::restart_all(&mut members));
    let back = down.elapsed();

    for e in &eps {
        let deadline = Instant::now() + Duration::from_secs(15);
        let (view, rev) = loop {
            match read_all(e, false).await {
                Ok(r) => break r,
                Err(err) => {
                    assert!(
                        Instant::now() < deadline,
                        "linearizable range on {e}: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        if let Some(p) = missing(&view, &acked) {
            panic!("{e} after restarting all: {p}");
        }
        assert!(
            rev >= last,
            "{e} is at revision {rev}, below acknowledged {last}"
        );
    }
    let (rev, hash) = assert_same_kv_hash(&eps, Duration::from_secs(20)).await;
    eprintln!(
        "{}: {} acknowledged writes (last at revision {last}) all there after killing and \
         restarting every member ({back:?} to come back); HashKV({rev}) = {hash:#x} everywhere; \
         {:?} in all",
        kind.name(),
        acked.len(),
        start.elapsed()
    );
}
