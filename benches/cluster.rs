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

#[path = "harness/mod.rs"]
mod harness;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::{PutRequest, RangeRequest};

use harness::{connect, ids_and_leader, Cluster};

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

/// Starts `MEMBERS` members (`tests/common`'s cluster flags) and waits
/// until every member answers and agrees on a leader.
fn start_cluster(rt: &tokio::runtime::Runtime, kind: &'static str, bin: &str) -> Cluster {
    harness::start_cluster(rt, kind, bin, MEMBERS, "bench", &[])
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

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let rt = harness::runtime();
    let cairn = harness::cairn_bin();
    println!(
        "cluster: {MEMBERS} members each, etcd {} vs cairn {cairn}",
        common::ETCD_BIN
    );
    let e = bench(&rt, "etcd", common::ETCD_BIN);
    let c = bench(&rt, "cairn", &cairn);

    println!();
    harness::print_header(58);
    // `higher`: a throughput (ratio > 1 is cairn ahead); else a latency
    // (ratio < 1 is cairn ahead).
    let row = |label: &str, higher: bool, a: f64, b: f64| {
        let prec = if higher { 0 } else { 2 };
        harness::print_row(58, label, Some(higher), prec, a, b);
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
