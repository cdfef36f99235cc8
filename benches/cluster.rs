//! Cluster benchmark: a 3-member cluster of the real etcd, then of cairn, on
//! loopback, under the same load (modelled on etcd's own `benchmark` tool).
//!
//! (a) Put throughput: `PUTS` puts by 100 concurrent clients sharing 10 gRPC
//!     connections, all to the leader (etcd's `benchmark put --clients=100
//!     --conns=10` would spread the connections over its endpoints; sending
//!     everything to the leader spares the followers' forwarding hop and is
//!     the same for both servers). 8-byte keys drawn at random from a space
//!     of 100,000, 256-byte values. Reported: puts/s, average and p99
//!     latency.
//! (b) Put latency: `SEQ_PUTS` puts one after the other, 1 client, 1
//!     connection, to the leader. Reported: average and p99 latency.
//! (c) Linearizable range (a single-key get) by 100 clients over 10
//!     connections, `RANGES` requests, against a follower and then against
//!     the leader. Reported: requests/s, average and p99 latency.
//! (d) The same with serializable ranges against the follower, for
//!     reference (served from the member's own store, no ReadIndex round).
//!
//! The ranges read keys written during the warm-up (`READ_KEYS` keys, 1,000
//! puts plus 1,000 gets through each read endpoint, before anything is
//! measured); a range that finds nothing is counted as a miss and reported.
//!
//! Run (a plain `main`, no harness; prints a table):
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/cairn/target
//! cargo bench --bench cluster            # release build of cairn and of this client
//! CAIRN_BIN=/path/to/cairn cargo bench --bench cluster
//! cargo test --release --bench cluster   # same thing, test profile
//! ```
//!
//! The cairn binary is `$CAIRN_BIN` if set, else
//! `$CARGO_TARGET_DIR/release/cairn` if it exists, else the binary Cargo
//! built alongside this benchmark (release under `cargo bench`, debug under
//! `cargo test --bench cluster`). The one used is printed: compare release
//! with release. etcd is `/usr/bin/etcd`. Members are started with the same
//! flags as `tests/common`'s `Server::cluster` (which always runs the cairn
//! Cargo built, hence a launcher of our own here), each with a fresh data
//! dir; every member is killed and reaped when the benchmark ends (`Drop`,
//! and `PR_SET_PDEATHSIG` should the benchmark itself be killed). The client
//! runs on 2 tokio worker threads on the same machine as the 3 members, so
//! on a small machine the figures include the contention between them.
//! Total run time is about half a minute.

#[path = "../tests/common/mod.rs"]
mod common;

use std::ffi::{c_int, c_ulong};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use tonic::transport::{Channel, Endpoint};

const MEMBERS: usize = 3;
const CLIENTS: usize = 100;
const CONNS: usize = 10;
const PUTS: usize = 20_000;
const SEQ_PUTS: usize = 2_000;
const RANGES: usize = 20_000;
const KEY_SPACE: u64 = 100_000;
const VALUE_BYTES: usize = 256;
const READ_KEYS: usize = 1_000;
const WARMUP: usize = 1_000;
/// A phase stops early (and says so) after this long.
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Cluster processes
// ---------------------------------------------------------------------------

extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
}

const SIGKILL: c_int = 9;
const PR_SET_PDEATHSIG: c_int = 1;

struct Member {
    name: String,
    endpoint: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Member {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log_tail(&self, lines: usize) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `None` while running, else how it exited.
    fn exited(&mut self) -> Option<String> {
        match &mut self.child {
            Some(c) => match c.try_wait() {
                Ok(None) => None,
                Ok(Some(st)) => Some(st.to_string()),
                Err(e) => Some(e.to_string()),
            },
            None => Some("not started".into()),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    kind: &'static str,
    members: Vec<Member>,
    ids: Vec<u64>,
    leader: usize,
}

impl Cluster {
    fn follower(&self) -> usize {
        (self.leader + 1) % self.members.len()
    }

    /// Prints the log tail of every member that exited, or of all of them
    /// when `all`. True if every member is still running.
    fn report_health(&mut self, all: bool) -> bool {
        let mut ok = true;
        for m in &mut self.members {
            let exited = m.exited();
            if let Some(st) = &exited {
                ok = false;
                println!("  !! {} member {} EXITED: {st}", self.kind, m.name);
            }
            if exited.is_some() || all {
                println!(
                    "  --- {} {} log tail ({}):\n{}\n  ---",
                    self.kind,
                    m.name,
                    m.log_path().display(),
                    m.log_tail(40)
                );
            }
        }
        ok
    }
}

/// Spawns `MEMBERS` members of `bin` with `tests/common`'s cluster flags.
fn spawn_cluster(kind: &'static str, bin: &str) -> Vec<Member> {
    let ports: Vec<(u16, u16)> = (0..MEMBERS)
        .map(|_| (common::free_port(), common::free_port()))
        .collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    ports
        .into_iter()
        .enumerate()
        .map(|(i, (client_port, peer_port))| {
            use std::os::unix::process::CommandExt;
            let dir = tempfile::Builder::new()
                .prefix(&format!("{kind}-bench-m{i}-"))
                .tempdir()
                .expect("temp dir");
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
            let mut cmd = Command::new(bin);
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("ETCD") {
                    cmd.env_remove(&k);
                }
            }
            cmd.args([
                format!("--name=m{i}"),
                format!("--data-dir={}", dir.path().join("data").display()),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster={initial}"),
                "--initial-cluster-token=cairn-test".to_string(),
            ]);
            if kind == "etcd" {
                cmd.args(["--logger=zap", "--log-outputs=stderr"]);
            }
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            // Spawned from the main thread, which outlives every member.
            unsafe {
                cmd.pre_exec(|| {
                    prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong);
                    Ok(())
                });
            }
            let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
            Member {
                name: format!("m{i}"),
                endpoint: client,
                child: Some(child),
                dir,
            }
        })
        .collect()
}

async fn connect(endpoint: &str) -> Result<Channel, String> {
    Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("connect {endpoint}: {e}"))
}

/// (member id, leader id) as a member reports them.
async fn status(endpoint: &str) -> Result<(u64, u64), String> {
    let mut m = MaintenanceClient::new(connect(endpoint).await?);
    let s = m
        .status(StatusRequest {})
        .await
        .map_err(|e| format!("status: {e}"))?
        .into_inner();
    Ok((s.header.map(|h| h.member_id).unwrap_or(0), s.leader))
}

/// Every member's id and the index of the leader they all agree on, or why
/// not.
async fn ids_and_leader(members: &[Member]) -> Result<(Vec<u64>, usize), String> {
    let mut ids = Vec::new();
    let mut leaders = Vec::new();
    for m in members {
        let (id, l) = status(&m.endpoint).await?;
        ids.push(id);
        leaders.push(l);
    }
    if leaders[0] == 0 || leaders.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!("no agreed leader: {leaders:x?}"));
    }
    match ids.iter().position(|id| *id == leaders[0]) {
        Some(at) => Ok((ids, at)),
        None => Err(format!("leader {:x} is not among {ids:x?}", leaders[0])),
    }
}

/// Starts the cluster and waits until every member answers and agrees on a
/// leader.
fn start_cluster(rt: &tokio::runtime::Runtime, kind: &'static str, bin: &str) -> Cluster {
    let mut members = spawn_cluster(kind, bin);
    let start = Instant::now();
    loop {
        for m in &mut members {
            if let Some(st) = m.exited() {
                panic!(
                    "{kind} {} exited during startup ({st}); log:\n{}",
                    m.name,
                    m.log_tail(60)
                );
            }
        }
        match rt.block_on(ids_and_leader(&members)) {
            Ok((ids, leader)) => {
                return Cluster {
                    kind,
                    members,
                    ids,
                    leader,
                }
            }
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                let tails: Vec<String> = members
                    .iter()
                    .map(|m| format!("--- {}:\n{}", m.name, m.log_tail(30)))
                    .collect();
                panic!(
                    "{kind} cluster not ready after 30 s ({e}); logs:\n{}",
                    tails.join("\n")
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Op {
    /// A put of a random key from `KEY_SPACE`.
    Put,
    /// A put of key `i % READ_KEYS` (the warm-up, so ranges find their keys).
    PutReadKey,
    /// A single-key range of one of the `READ_KEYS` keys.
    Get { serializable: bool },
}

fn key(n: u64) -> Vec<u8> {
    format!("{n:08}").into_bytes()
}

#[derive(Default)]
struct Stats {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    /// Ranges that found no key.
    misses: usize,
    elapsed: Duration,
    /// Latencies in ms, sorted.
    lat_ms: Vec<f64>,
    cut_short: bool,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn avg(&self) -> f64 {
        self.lat_ms.iter().sum::<f64>() / self.lat_ms.len().max(1) as f64
    }
    fn p99(&self) -> f64 {
        let n = self.lat_ms.len();
        self.lat_ms
            .get((n * 99 / 100).min(n.saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    }
    fn note(&self, what: &str, total: usize) -> String {
        let mut s = format!(
            "{what}: {}/{total} ok in {:.2} s",
            self.ok,
            self.elapsed.as_secs_f64()
        );
        if self.errors > 0 {
            s += &format!(
                ", {} ERRORS (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        if self.misses > 0 {
            s += &format!(", {} ranges found NO key", self.misses);
        }
        if self.cut_short {
            s += &format!(", CUT SHORT after {PHASE_DEADLINE:?}");
        }
        s
    }
}

/// `total` requests of `op` by `clients` concurrent clients sharing `conns`
/// connections to `endpoint`.
async fn run(
    endpoint: &str,
    conns: usize,
    clients: usize,
    total: usize,
    op: Op,
    seed: u64,
) -> Stats {
    let mut channels = Vec::new();
    for _ in 0..conns {
        match connect(endpoint).await {
            Ok(ch) => channels.push(ch),
            Err(e) => {
                return Stats {
                    errors: total,
                    first_error: Some(e),
                    elapsed: Duration::from_secs(1),
                    ..Default::default()
                }
            }
        }
    }
    let value = vec![b'v'; VALUE_BYTES];
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + PHASE_DEADLINE;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let mut kv = KvClient::new(channels[c % conns].clone());
            let next = next.clone();
            let value = value.clone();
            let mut rng = common::Rng::new(seed * 1_000 + c as u64);
            tokio::spawn(async move {
                let mut s = Stats::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    if Instant::now() > deadline {
                        s.cut_short = true;
                        break;
                    }
                    let t = Instant::now();
                    let res = match op {
                        Op::Put | Op::PutReadKey => {
                            let k = match op {
                                Op::Put => rng.below(KEY_SPACE),
                                _ => (i % READ_KEYS) as u64,
                            };
                            kv.put(PutRequest {
                                key: key(k),
                                value: value.clone(),
                                ..Default::default()
                            })
                            .await
                            .map(|_| true)
                        }
                        Op::Get { serializable } => kv
                            .range(RangeRequest {
                                key: key(rng.below(READ_KEYS as u64)),
                                serializable,
                                ..Default::default()
                            })
                            .await
                            .map(|r| !r.into_inner().kvs.is_empty()),
                    };
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    match res {
                        Ok(found) => {
                            s.ok += 1;
                            s.lat_ms.push(ms);
                            if !found {
                                s.misses += 1;
                            }
                        }
                        Err(e) => {
                            s.errors += 1;
                            if s.first_error.is_none() {
                                s.first_error = Some(format!("{:?}: {}", e.code(), e.message()));
                            }
                        }
                    }
                }
                s
            })
        })
        .collect();
    let mut all = Stats::default();
    for t in tasks {
        let s = t.await.unwrap();
        all.ok += s.ok;
        all.errors += s.errors;
        all.misses += s.misses;
        all.cut_short |= s.cut_short;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
        all.lat_ms.extend(s.lat_ms);
    }
    all.elapsed = start.elapsed();
    all.lat_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    all
}

struct Results {
    put: Stats,
    seq: Stats,
    lin_follower: Stats,
    lin_leader: Stats,
    ser_follower: Stats,
}

fn bench(rt: &tokio::runtime::Runtime, kind: &'static str, bin: &str) -> Results {
    let t = Instant::now();
    let mut cl = start_cluster(rt, kind, bin);
    let leader = cl.members[cl.leader].endpoint.clone();
    let follower = cl.members[cl.follower()].endpoint.clone();
    println!(
        "  {kind}: 3 members up in {:.1} s, leader {} ({:x}), follower used {} ({:x})",
        t.elapsed().as_secs_f64(),
        cl.members[cl.leader].name,
        cl.ids[cl.leader],
        cl.members[cl.follower()].name,
        cl.ids[cl.follower()],
    );
    let r = rt.block_on(async {
        // Warm-up: write the keys the ranges read, and read them through
        // both read endpoints.
        let w = run(&leader, CONNS, CLIENTS, WARMUP, Op::PutReadKey, 1).await;
        let wf = run(&follower, CONNS, CLIENTS, WARMUP, lin(), 2).await;
        let wl = run(&leader, CONNS, CLIENTS, WARMUP, lin(), 3).await;
        println!(
            "    warm-up: {}; {}; {}",
            w.note("puts", WARMUP),
            wf.note("follower gets", WARMUP),
            wl.note("leader gets", WARMUP)
        );
        let put = run(&leader, CONNS, CLIENTS, PUTS, Op::Put, 4).await;
        println!("    (a) {}", put.note("puts", PUTS));
        let seq = run(&leader, 1, 1, SEQ_PUTS, Op::Put, 5).await;
        println!("    (b) {}", seq.note("sequential puts", SEQ_PUTS));
        let lin_follower = run(&follower, CONNS, CLIENTS, RANGES, lin(), 6).await;
        println!(
            "    (c) {}",
            lin_follower.note("linearizable ranges, follower", RANGES)
        );
        let lin_leader = run(&leader, CONNS, CLIENTS, RANGES, lin(), 7).await;
        println!(
            "    (c) {}",
            lin_leader.note("linearizable ranges, leader", RANGES)
        );
        let ser_follower = run(
            &follower,
            CONNS,
            CLIENTS,
            RANGES,
            Op::Get { serializable: true },
            8,
        )
        .await;
        println!(
            "    (d) {}",
            ser_follower.note("serializable ranges, follower", RANGES)
        );
        Results {
            put,
            seq,
            lin_follower,
            lin_leader,
            ser_follower,
        }
    });
    // Did the cluster stay healthy and keep its leader?
    let errors = [
        &r.put,
        &r.seq,
        &r.lin_follower,
        &r.lin_leader,
        &r.ser_follower,
    ]
    .iter()
    .any(|s| s.errors > 0 || s.misses > 0 || s.cut_short);
    let healthy = cl.report_health(false);
    match rt.block_on(ids_and_leader(&cl.members)) {
        Ok((_, l)) if l == cl.leader => println!("    leader unchanged"),
        Ok((ids, l)) => println!(
            "    !! leader CHANGED during the run: {:x} -> {:x}",
            cl.ids[cl.leader], ids[l]
        ),
        Err(e) => println!("    !! after the run: {e}"),
    }
    if healthy && errors {
        cl.report_health(true);
    }
    println!("    {kind} done in {:.1} s", t.elapsed().as_secs_f64());
    r
    // `cl` dropped here: every member killed and reaped.
}

fn lin() -> Op {
    Op::Get {
        serializable: false,
    }
}

fn cairn_bin() -> String {
    if let Ok(b) = std::env::var("CAIRN_BIN") {
        return b;
    }
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        let p = PathBuf::from(dir).join("release").join("cairn");
        if p.exists() {
            return p.display().to_string();
        }
    }
    common::CAIRN_BIN.to_string()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cairn = cairn_bin();
    println!(
        "cluster: {MEMBERS} members each, etcd {} vs cairn {cairn}",
        common::ETCD_BIN
    );
    let e = bench(&rt, "etcd", common::ETCD_BIN);
    let c = bench(&rt, "cairn", &cairn);

    println!();
    println!(
        "{:<58} {:>10} {:>10} {:>11}",
        "", "etcd", "cairn", "cairn/etcd"
    );
    // `higher`: a throughput (ratio > 1 is cairn ahead); else a latency
    // (ratio < 1 is cairn ahead).
    let row = |label: &str, higher: bool, a: f64, b: f64| {
        let ratio = if a.abs() < 1e-9 || !a.is_finite() || !b.is_finite() {
            "-".to_string()
        } else {
            format!("{:.2}", b / a)
        };
        let label = format!(
            "{label} [{}]",
            if higher {
                "higher is better"
            } else {
                "lower is better"
            }
        );
        let prec = if higher { 0 } else { 2 };
        println!("{label:<58} {a:>10.prec$} {b:>10.prec$} {ratio:>11}");
    };
    row(
        "(a) put, 100 clients -> leader: puts/s",
        true,
        e.put.rate(),
        c.put.rate(),
    );
    row("(a)   avg latency ms", false, e.put.avg(), c.put.avg());
    row("(a)   p99 latency ms", false, e.put.p99(), c.put.p99());
    row(
        "(b) put, 1 client: avg latency ms",
        false,
        e.seq.avg(),
        c.seq.avg(),
    );
    row("(b)   p99 latency ms", false, e.seq.p99(), c.seq.p99());
    for (label, a, b) in [
        ("(c) lin. range, follower", &e.lin_follower, &c.lin_follower),
        ("(c) lin. range, leader", &e.lin_leader, &c.lin_leader),
        ("(d) ser. range, follower", &e.ser_follower, &c.ser_follower),
    ] {
        row(&format!("{label}: req/s"), true, a.rate(), b.rate());
        row("      avg latency ms", false, a.avg(), b.avg());
        row("      p99 latency ms", false, a.p99(), b.p99());
    }
}
