//! Snapshot catch-up benchmark: a member of a 3-member cluster misses a
//! large batch of writes and catches up from a snapshot, first with the real
//! etcd, then with cairn.
//!
//! For each server:
//!
//! 1. start 3 members (default `--snapshot-count`: etcd 3.4's is 100,000 and
//!    it keeps 5,000 entries after a snapshot; cairn compacts its log every
//!    `--snapshot-count` entries keeping min(snapshot-count / 2, 5000)), find
//!    the leader, and kill -9 one follower;
//! 2. write `SNAP_KEYS` distinct keys (`snap/00000000`, ...) with 1 KiB
//!    incompressible values through the leader, by 64 concurrent clients over
//!    8 gRPC connections; reported: writes/s;
//! 3. restart the follower and measure the time from its spawn until its
//!    `Status` applied index (`raftAppliedIndex`, or `raftIndex` if the server
//!    reports no applied index) reaches the leader's and a serializable
//!    count-only range of `snap/` on it returns as many keys as the leader
//!    holds (`SNAP_KEYS`, unless some puts failed);
//! 4. meanwhile sample `VmRSS` of the leader (the snapshot sender) and of the
//!    catching-up member (the receiver) every 50 ms, and read their `VmHWM`
//!    at the end (the leader's peak is reset through `/proc/<pid>/clear_refs`
//!    just before the restart, so both are peaks of the catch-up; printed
//!    with the max sampled `VmRSS` and `RssAnon` — the latter without
//!    file-backed pages such as etcd's mmapped bbolt file — and a
//!    timeline), and the CPU time both use; after catch-up, `du` of every
//!    member's data dir;
//! 5. look in the logs (since the restart) for evidence that a snapshot was
//!    used — cairn: "installing a snapshot from the leader" on the receiver,
//!    "sent a snapshot" on the leader; etcd: "applied snapshot", "received
//!    and saved database snapshot", "restored snapshot" on the receiver,
//!    "sent database snapshot" on the leader — and print the lines, plus
//!    any error/warning/panic lines.
//!
//! Then a table etcd vs cairn with ratios. With the default `SNAP_KEYS`
//! (200,000 keys, ~200 MiB of values) the whole run takes about a minute on
//! a 2-core machine (writes ~20 s per server; each phase has a 150 s cap).
//!
//! Run (a plain `main`, no harness):
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/cairn/target
//! cargo build --release --bin cairn
//! cargo bench --bench snapshot_catchup
//! SNAP_KEYS=50000 SNAP_COUNT=10000 cargo bench --bench snapshot_catchup   # quick run
//! SNAP_ONLY=cairn cargo bench --bench snapshot_catchup                     # one server only
//! CAIRN_BIN=/path/to/cairn cargo bench --bench snapshot_catchup
//! ```
//!
//! Environment:
//! - `SNAP_KEYS`: number of keys written while the follower is down
//!   (default 200000).
//! - `SNAP_COUNT`: if set, `--snapshot-count` passed to every member of both
//!   servers; otherwise each server's default. Note that with etcd's default
//!   (100,000) fewer than ~105,000 keys never make etcd's leader compact its
//!   log past the follower, so etcd then catches up from the log, not from
//!   a snapshot (the benchmark says so); set e.g. `SNAP_COUNT=10000` for
//!   small runs.
//! - `SNAP_ONLY`: `etcd` or `cairn` to run only that server.
//! - `CAIRN_BIN`: the cairn binary; else `$CARGO_TARGET_DIR/release/cairn`
//!   if it exists, else the binary Cargo built alongside this benchmark (as
//!   `benches/cluster.rs`). The one used is printed: compare release with
//!   release. etcd is `/usr/bin/etcd`.
//!
//! Members get the same flags as `benches/cluster.rs` (and `tests/common`'s
//! `Server::cluster`), each a fresh data dir under the temp dir; every
//! member is killed and reaped when its part ends (`Drop`, and
//! `PR_SET_PDEATHSIG` should the benchmark itself be killed), and the data
//! dirs removed. The client runs on 2 tokio worker threads on the same
//! machine as the members, so the figures include the contention between
//! them (and with whatever else runs on the machine).

#[path = "harness/mod.rs"]
mod harness;

use std::ffi::c_int;
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::StatusResponse;
use tonic::transport::Channel;

use harness::{
    connect, cut, du_mib, mib, proc_kib, reset_hwm, status, status_on, Cluster, Load, Sampler,
    ETCD_BIN,
};

const MEMBERS: usize = 3;
const CLIENTS: usize = 64;
const CONNS: usize = 8;
const VALUE_BYTES: usize = 1024;
const DEFAULT_KEYS: usize = 200_000;
const PREFIX: &[u8] = b"snap/";
/// The range end covering every key under `PREFIX`.
const PREFIX_END: &[u8] = b"snap0";
/// RSS sampling and catch-up polling period.
const SAMPLE: Duration = Duration::from_millis(50);
/// The write phase stops early (and says so) after this long.
const WRITE_DEADLINE: Duration = Duration::from_secs(150);
/// Catch-up is declared failed after this long.
const CATCHUP_DEADLINE: Duration = Duration::from_secs(150);

// ---------------------------------------------------------------------------
// Cluster processes
// ---------------------------------------------------------------------------

extern "C" {
    fn sysconf(name: c_int) -> std::ffi::c_long;
}

const SC_CLK_TCK: c_int = 2;

fn snapshot_count() -> Option<u64> {
    std::env::var("SNAP_COUNT").ok().map(|s| {
        s.parse()
            .unwrap_or_else(|_| panic!("SNAP_COUNT={s}: not a number"))
    })
}

/// Starts `MEMBERS` members of `bin` with `benches/cluster.rs`'s flags
/// (plus `--snapshot-count` if `SNAP_COUNT` is set) and waits until every
/// member answers and agrees on a leader.
fn start_cluster(rt: &tokio::runtime::Runtime, kind: &'static str, bin: &str) -> Cluster {
    let extra: Vec<String> = snapshot_count()
        .map(|n| format!("--snapshot-count={n}"))
        .into_iter()
        .collect();
    harness::start_cluster(rt, kind, bin, MEMBERS, "snapbench", &extra)
}

/// The applied index a `Status` reports: `raftAppliedIndex`, or `raftIndex`
/// for a server that leaves the former at 0.
fn applied(s: &StatusResponse) -> u64 {
    if s.raft_applied_index != 0 {
        s.raft_applied_index
    } else {
        s.raft_index
    }
}

/// Serializable count-only range of every benchmark key.
async fn count_on(ch: Channel) -> Result<i64, String> {
    harness::count_range(ch, PREFIX, PREFIX_END)
        .await
        .map(|(count, _)| count)
}

// ---------------------------------------------------------------------------
// Memory and disk
// ---------------------------------------------------------------------------

/// CPU seconds (user + system) the process has used so far.
fn cpu_s(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let tck = unsafe { sysconf(SC_CLK_TCK) }.max(1) as f64;
    if f.len() == 2 {
        (f[0] + f[1]) as f64 / tck
    } else {
        f64::NAN
    }
}

/// `VmRSS` and `RssAnon` (KiB) of one process at one moment. `RssAnon`
/// leaves out file-backed pages (etcd's mmapped bbolt file, the binary).
type Rss = [Option<u64>; 2];

fn rss(pid: u32) -> Rss {
    [proc_kib(pid, "VmRSS"), proc_kib(pid, "RssAnon")]
}

/// Samples the RSS of a set of processes every `SAMPLE` until stopped:
/// (seconds since start, one `Rss` per process).
fn sample_rss(pids: Vec<u32>) -> Sampler<(f64, Vec<Rss>)> {
    Sampler::start(SAMPLE, move |t| (t, pids.iter().map(|p| rss(*p)).collect()))
}

// ---------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------

/// `CLIENTS` clients over `CONNS` connections put keys `snap/00000000`, ...
const LOAD: Load = Load::new(PREFIX, CLIENTS, CONNS, VALUE_BYTES, WRITE_DEADLINE);

// ---------------------------------------------------------------------------
// One server's run
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Results {
    writes_per_s: f64,
    /// Seconds from the follower's restart until it had every key.
    catchup_s: Option<f64>,
    /// MiB: VmHWM during catch-up, max sampled VmRSS and RssAnon.
    leader_hwm: f64,
    leader_max_rss: f64,
    leader_max_anon: f64,
    leader_rss_before: f64,
    leader_anon_before: f64,
    recv_hwm: f64,
    recv_max_rss: f64,
    recv_max_anon: f64,
    recv_rss_after: f64,
    /// CPU seconds used during catch-up.
    leader_cpu: f64,
    recv_cpu: f64,
    /// MiB, after catch-up.
    leader_du: f64,
    recv_du: f64,
    snapshot_used: bool,
}

/// Lines of `log` containing any of `patterns`, each cut to 300 chars.
fn grep<'a>(log: &'a str, patterns: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| patterns.iter().any(|p| l.contains(p)))
        .map(|l| cut(l, 300))
        .collect()
}

fn print_lines(what: &str, lines: &[&str], max: usize) {
    println!("    {what}: {} line(s)", lines.len());
    for l in lines.iter().take(max) {
        println!("      | {l}");
    }
    if lines.len() > max {
        println!("      | ... ({} more)", lines.len() - max);
    }
}

fn bench(rt: &tokio::runtime::Runtime, kind: &'static str, bin: &str, n: usize) -> Results {
    let t = Instant::now();
    let mut r = Results::default();
    let mut cl = start_cluster(rt, kind, bin);
    let l = cl.leader;
    let f = (l + 1) % MEMBERS;
    let other = (l + 2) % MEMBERS;
    println!(
        "  {kind}: 3 members up in {:.1} s; leader {}, killing follower {} (kill -9)",
        t.elapsed().as_secs_f64(),
        cl.members[l].name,
        cl.members[f].name
    );
    cl.members[f].kill9();
    let leader_ep = cl.members[l].endpoint.clone();
    let recv_ep = cl.members[f].endpoint.clone();

    // (2) writes.
    let w = rt.block_on(harness::write_keys(&leader_ep, n, &LOAD));
    r.writes_per_s = w.rate();
    print!(
        "    writes: {}/{n} ok in {:.1} s = {:.0}/s",
        w.ok,
        w.elapsed.as_secs_f64(),
        w.rate()
    );
    w.finish_line(WRITE_DEADLINE);
    let (leader_status, expected) = rt.block_on(async {
        let ch = connect(&leader_ep).await.expect("leader");
        let s = status_on(ch.clone()).await.expect("leader status");
        let c = count_on(ch).await.expect("leader count");
        (s, c)
    });
    println!(
        "    leader: applied index {} (raftIndex {}, raftAppliedIndex {}), {} keys, db size {:.1} MiB",
        applied(&leader_status),
        leader_status.raft_index,
        leader_status.raft_applied_index,
        expected,
        leader_status.db_size as f64 / (1 << 20) as f64
    );
    if expected != n as i64 {
        println!("    !! the leader holds {expected} keys, not {n}");
    }
    // Let the live follower settle, so it does not compete with catch-up.
    rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(s) = status(&cl.members[other].endpoint).await {
                if applied(&s) >= applied(&leader_status) {
                    break;
                }
            }
            tokio::time::sleep(SAMPLE).await;
        }
    });

    // (3) restart the follower and wait until it has every key.
    let leader_pid = cl.members[l].pid().unwrap();
    let leader_log_from = cl.members[l].log_len();
    let recv_log_from = cl.members[f].log_len();
    r.leader_rss_before = mib(proc_kib(leader_pid, "VmRSS"));
    r.leader_anon_before = mib(proc_kib(leader_pid, "RssAnon"));
    let hwm_reset = reset_hwm(leader_pid);
    if !hwm_reset {
        println!("    !! could not reset the leader's VmHWM: its peak is since its start");
    }
    let leader_cpu_before = cpu_s(leader_pid);
    let t0 = Instant::now();
    cl.members[f].spawn();
    let recv_pid = cl.members[f].pid().unwrap();
    let sampler = sample_rss(vec![leader_pid, recv_pid]);
    let mut last = String::new();
    let outcome: Result<f64, String> = rt.block_on(async {
        let leader_ch = connect(&leader_ep).await?;
        let mut recv_ch: Option<Channel> = None;
        loop {
            if t0.elapsed() > CATCHUP_DEADLINE {
                return Err(format!("not caught up after {CATCHUP_DEADLINE:?} ({last})"));
            }
            if let Some(st) = cl.members[f].exited() {
                return Err(format!("the restarted member EXITED: {st}"));
            }
            tokio::time::sleep(SAMPLE).await;
            if recv_ch.is_none() {
                recv_ch = connect(&recv_ep).await.ok();
            }
            let Some(ch) = recv_ch.clone() else { continue };
            let s = match status_on(ch.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    last = e;
                    recv_ch = None;
                    continue;
                }
            };
            let target = match status_on(leader_ch.clone()).await {
                Ok(ls) => applied(&ls),
                Err(e) => return Err(format!("leader: {e}")),
            };
            last = format!("applied {} of {target}", applied(&s));
            if applied(&s) < target {
                continue;
            }
            match count_on(ch).await {
                Ok(c) if c == expected => return Ok(t0.elapsed().as_secs_f64()),
                Ok(c) => last = format!("applied {} of {target}, {c} keys", applied(&s)),
                Err(e) => last = e,
            }
        }
    });
    let samples = sampler.finish();
    r.leader_cpu = cpu_s(leader_pid) - leader_cpu_before;
    r.recv_cpu = cpu_s(recv_pid);
    r.leader_hwm = mib(proc_kib(leader_pid, "VmHWM"));
    r.recv_hwm = mib(proc_kib(recv_pid, "VmHWM"));
    r.recv_rss_after = mib(proc_kib(recv_pid, "VmRSS"));
    let max_of = |pid: usize, field: usize| {
        samples
            .iter()
            .filter_map(|(_, v)| v[pid][field])
            .max()
            .map_or(f64::NAN, |k| k as f64 / 1024.0)
    };
    r.leader_max_rss = max_of(0, 0);
    r.leader_max_anon = max_of(0, 1);
    r.recv_max_rss = max_of(1, 0);
    r.recv_max_anon = max_of(1, 1);
    match &outcome {
        Ok(s) => {
            r.catchup_s = Some(*s);
            println!("    caught up in {s:.2} s ({expected} keys on the restarted member)");
        }
        Err(e) => println!("    !! catch-up FAILED: {e}"),
    }
    println!(
        "    CPU used meanwhile: leader (sender) {:.2} s, receiver {:.2} s",
        r.leader_cpu, r.recv_cpu
    );

    // (4) memory and disk.
    println!(
        "    leader (sender) RSS: {:.0} MiB before ({:.0} anon), peak {:.0} MiB (VmHWM{}), \
         max sampled {:.0} MiB ({:.0} anon)",
        r.leader_rss_before,
        r.leader_anon_before,
        r.leader_hwm,
        if hwm_reset { "" } else { " since start" },
        r.leader_max_rss,
        r.leader_max_anon
    );
    println!(
        "    receiver RSS: peak {:.0} MiB (VmHWM), max sampled {:.0} MiB ({:.0} anon), \
         {:.0} MiB after catch-up",
        r.recv_hwm, r.recv_max_rss, r.recv_max_anon, r.recv_rss_after
    );
    // A timeline, about one sample a second.
    let every = (Duration::from_secs(1).as_millis() / SAMPLE.as_millis()).max(1) as usize;
    let line: Vec<String> = samples
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0 || *i == samples.len() - 1)
        .map(|(_, (ts, v))| {
            format!(
                "{ts:.0}s:{:.0}({:.0})/{:.0}({:.0})",
                mib(v[0][0]),
                mib(v[0][1]),
                mib(v[1][0]),
                mib(v[1][1])
            )
        })
        .collect();
    println!(
        "    RSS timeline (MiB, sender(anon)/receiver(anon)): {}",
        line.join(" ")
    );
    let dus: Vec<f64> = cl.members.iter().map(|m| du_mib(&m.data_dir())).collect();
    r.leader_du = dus[l];
    r.recv_du = dus[f];
    println!(
        "    data dirs after catch-up (du): leader {:.0} MiB, receiver {:.0} MiB, other follower {:.0} MiB",
        dus[l], dus[f], dus[other]
    );

    // (5) did a snapshot move?
    let (recv_pats, send_pats): (&[&str], &[&str]) = if kind == "etcd" {
        (
            &[
                "applied snapshot",
                "receive MsgSnap",
                "received and saved database snapshot",
                "restored snapshot",
                "receiving database snapshot",
            ],
            &["sent database snapshot", "sending database snapshot"],
        )
    } else {
        (&["installing a snapshot", "snapshot"], &["snapshot"])
    };
    let recv_log = cl.members[f].log_since(recv_log_from);
    let leader_log = cl.members[l].log_since(leader_log_from);
    let recv_snap = grep(&recv_log, recv_pats);
    let send_snap = grep(&leader_log, send_pats);
    r.snapshot_used = if kind == "etcd" {
        recv_snap
            .iter()
            .any(|l| l.contains("applied snapshot") || l.contains("restored snapshot"))
    } else {
        recv_snap
            .iter()
            .any(|l| l.contains("installing a snapshot from the leader"))
    };
    println!(
        "    snapshot used: {}",
        if r.snapshot_used {
            "YES"
        } else {
            "NO (no install in the receiver's log)"
        }
    );
    print_lines("receiver log, snapshot lines", &recv_snap, 8);
    print_lines("leader log, snapshot lines", &send_snap, 8);
    // Errors and warnings, less etcd's routine peer-connection chatter
    // (rafthttp's "established/lost TCP streaming connection", ...).
    let bad = [
        "\"level\":\"error\"",
        "\"level\":\"fatal\"",
        "\"level\":\"panic\"",
        "\"level\":\"warn\"",
        "\"level\":\"ERROR\"",
        "\"level\":\"WARN\"",
        "panicked",
    ];
    let noise = ["rafthttp/", "simple token is not cryptographically signed"];
    for (what, log) in [("receiver", &recv_log), ("leader", &leader_log)] {
        let all = grep(log, &bad);
        let shown: Vec<&str> = all
            .iter()
            .copied()
            .filter(|l| !noise.iter().any(|n| l.contains(n)))
            .collect();
        print_lines(
            &format!(
                "{what} log since restart, error/warning lines ({} routine peer-connection warnings left out)",
                all.len() - shown.len()
            ),
            &shown,
            10,
        );
    }

    let healthy = cl.report_health(false);
    if healthy && outcome.is_err() {
        cl.report_health(true);
    }
    println!("    {kind} done in {:.1} s", t.elapsed().as_secs_f64());
    r
    // `cl` dropped here: every member killed and reaped, data dirs removed.
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let n: usize = std::env::var("SNAP_KEYS")
        .ok()
        .map(|s| {
            s.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("SNAP_KEYS={s}: not a number"))
        })
        .unwrap_or(DEFAULT_KEYS);
    let only = std::env::var("SNAP_ONLY").ok();
    let rt = harness::runtime();
    let cairn = harness::cairn_bin();
    println!(
        "snapshot catch-up: {MEMBERS} members, {n} keys x {VALUE_BYTES} B ({:.0} MiB of values), \
         {CLIENTS} clients / {CONNS} connections, --snapshot-count {}; etcd {ETCD_BIN} vs cairn {cairn}",
        (n * VALUE_BYTES) as f64 / (1 << 20) as f64,
        snapshot_count().map_or("default".to_string(), |c| c.to_string()),
    );
    let run = |kind: &'static str, bin: &str| {
        if only.as_deref().is_some_and(|o| o != kind) {
            None
        } else {
            Some(bench(&rt, kind, bin, n))
        }
    };
    let e = run("etcd", ETCD_BIN);
    let c = run("cairn", &cairn);

    println!();
    harness::print_header(58);
    let nan = Results {
        writes_per_s: f64::NAN,
        catchup_s: None,
        leader_hwm: f64::NAN,
        leader_max_rss: f64::NAN,
        leader_max_anon: f64::NAN,
        leader_rss_before: f64::NAN,
        leader_anon_before: f64::NAN,
        recv_hwm: f64::NAN,
        recv_max_rss: f64::NAN,
        recv_max_anon: f64::NAN,
        recv_rss_after: f64::NAN,
        leader_cpu: f64::NAN,
        recv_cpu: f64::NAN,
        leader_du: f64::NAN,
        recv_du: f64::NAN,
        snapshot_used: false,
    };
    let used = |r: &Option<Results>| match r {
        None => "-",
        Some(r) if r.snapshot_used => "yes",
        Some(_) => "NO",
    };
    let (used_e, used_c) = (used(&e), used(&c));
    let e = e.as_ref().unwrap_or(&nan);
    let c = c.as_ref().unwrap_or(&nan);
    // `higher`: a throughput (ratio > 1 is cairn ahead); else a cost (ratio
    // < 1 is cairn ahead).
    let row = |label: &str, higher: bool, prec: usize, a: f64, b: f64| {
        harness::print_row(58, label, Some(higher), prec, a, b)
    };
    let secs = |r: &Results| r.catchup_s.unwrap_or(f64::NAN);
    row(
        "writes/s (64 clients -> leader)",
        true,
        0,
        e.writes_per_s,
        c.writes_per_s,
    );
    row(
        "catch-up s (restart -> all keys)",
        false,
        2,
        secs(e),
        secs(c),
    );
    row(
        "  sender CPU s during catch-up",
        false,
        2,
        e.leader_cpu,
        c.leader_cpu,
    );
    row(
        "  receiver CPU s during catch-up",
        false,
        2,
        e.recv_cpu,
        c.recv_cpu,
    );
    row(
        "sender (leader) peak RSS MiB",
        false,
        0,
        e.leader_hwm,
        c.leader_hwm,
    );
    row(
        "  sender max sampled RSS MiB",
        false,
        0,
        e.leader_max_rss,
        c.leader_max_rss,
    );
    row(
        "  sender max sampled RssAnon MiB",
        false,
        0,
        e.leader_max_anon,
        c.leader_max_anon,
    );
    row(
        "  sender RSS before catch-up MiB",
        false,
        0,
        e.leader_rss_before,
        c.leader_rss_before,
    );
    row(
        "  sender RssAnon before catch-up MiB",
        false,
        0,
        e.leader_anon_before,
        c.leader_anon_before,
    );
    row("receiver peak RSS MiB", false, 0, e.recv_hwm, c.recv_hwm);
    row(
        "  receiver max sampled RSS MiB",
        false,
        0,
        e.recv_max_rss,
        c.recv_max_rss,
    );
    row(
        "  receiver max sampled RssAnon MiB",
        false,
        0,
        e.recv_max_anon,
        c.recv_max_anon,
    );
    row(
        "leader data dir MiB (du)",
        false,
        0,
        e.leader_du,
        c.leader_du,
    );
    row("receiver data dir MiB (du)", false, 0, e.recv_du, c.recv_du);
    println!(
        "{:<58} {:>10} {:>10}",
        "snapshot used (from the logs)", used_e, used_c
    );
}
