//! Backup benchmark: `etcdctl snapshot save`, `snapshot status` and
//! `snapshot restore` of a single member holding ~1 GiB, first with the real
//! etcd (3.4, `/usr/bin/etcd`, `/usr/bin/etcdctl`), then with cairn, then
//! across the two.
//!
//! For each server:
//!
//! 1. start one member and write `BACKUP_MIB` x 1024 distinct keys
//!    (`bench/00000000`, ...) with 1 KiB incompressible values, by 64
//!    concurrent clients over 8 gRPC connections; reported: puts/s, the
//!    server's `dbSize`, its RSS;
//! 2. start a background writer (one client, sequential puts of 1 KiB values
//!    to `bg/...` keys) and after a 3 s baseline run
//!    `etcdctl snapshot save F` (timed, `--command-timeout=600s`); reported:
//!    the save's wall time, the file size, the server's `VmHWM` (reset through
//!    `/proc/<pid>/clear_refs` just before the save) and max sampled `VmRSS`
//!    / `RssAnon` (every 50 ms; `RssAnon` leaves out file-backed pages such
//!    as etcd's mmapped bbolt file) against their values just before — the
//!    growth is what the save costs in memory and should not depend on the
//!    store size (compare `BACKUP_MIB=64` with the default) — and the
//!    background writer's puts: how many succeeded during the save, their
//!    rate, p50/p99/max latency, against the baseline (a save that blocks
//!    writes shows as a max latency close to the save's duration; the three
//!    slowest are printed with when they started); the size of etcdctl's
//!    output file is sampled too, for when the first byte arrived (cairn
//!    writes the whole database to a temp file in its data dir before it
//!    streams, etcd streams from a read transaction at once);
//! 3. `etcdctl snapshot status F -w json` (timed);
//! 4. stop the server, `etcdctl snapshot restore F --data-dir D ...` (etcd)
//!    or `cairn snapshot restore F --data-dir D ...` (cairn) — the wall time
//!    and the restore process's peak RSS (`wait4`) — then start the server
//!    on D and time from its spawn until a linearizable get answers; the
//!    serializable count of `bench/` (etcdctl
//!    `get bench/ --prefix --keys-only --limit=1 -w json`, its `count`) must
//!    equal the count before the save, and the revision the restored server
//!    reports is compared with the snapshot's.
//!
//! Then, across: `cairn snapshot status F -w json` must print exactly what
//! `etcdctl snapshot status F -w json` prints, for etcd's file and for
//! cairn's; `cairn snapshot restore` of etcd's file (migration) and
//! `etcdctl snapshot restore` of cairn's (the way back), each timed and the
//! restored server started and counted as above. Finally a table etcd vs
//! cairn with ratios.
//!
//! With the default 1 GiB (1,048,576 keys) a run takes roughly five minutes
//! on a 2-core machine, dominated by the two write phases (each capped at
//! 600 s; a cut-short phase says so and the rest uses what was written);
//! `BACKUP_MIB=64` takes well under a minute. The temp dir needs about
//! 8 GiB free at the default size (data dirs, two ~1.4 GiB snapshot files,
//! restored copies, cairn's temp export).
//!
//! Run (a plain `main`, no harness):
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/cairn/target
//! cargo build --release --bin cairn
//! cargo bench --bench backup
//! BACKUP_MIB=64 cargo bench --bench backup          # quick run
//! BACKUP_ONLY=cairn cargo bench --bench backup      # one server only (no cross checks)
//! CAIRN_BIN=/path/to/cairn cargo bench --bench backup
//! ```
//!
//! Environment:
//! - `BACKUP_MIB`: MiB of values written (1 KiB each), default 1024.
//! - `BACKUP_ONLY`: `etcd` or `cairn` to run only that server.
//! - `CAIRN_BIN`: the cairn binary; else `$CARGO_TARGET_DIR/release/cairn`
//!   if it exists, else the binary Cargo built alongside this benchmark. The
//!   one used is printed: compare release with release.
//!
//! Both servers get the flags of `benches/cluster.rs` for one member, plus
//! `--quota-backend-bytes=8 GiB` (etcd's default 2 GiB quota is too close to
//! a 1 GiB store's database). Everything lives under one temp dir, removed
//! at the end; servers are killed and reaped when their part ends (`Drop`,
//! and `PR_SET_PDEATHSIG` should the benchmark itself be killed). The client
//! runs on 2 tokio worker threads on the same machine as the server, so the
//! figures include the contention between them (and with whatever else runs
//! on the machine).

#[path = "harness/mod.rs"]
mod harness;

use std::ffi::{c_int, c_long};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::Channel;

use harness::{
    command, connect, cut, du_mib, free_port, mib, proc_kib, reset_hwm, status_on, Load, Rng,
    Sampler, ETCD_BIN,
};

const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
const CLIENTS: usize = 64;
const CONNS: usize = 8;
const VALUE_BYTES: usize = 1024;
const DEFAULT_MIB: usize = 1024;
const PREFIX: &[u8] = b"bench/";
/// The range end covering every key under `PREFIX`.
const PREFIX_END: &[u8] = b"bench0";
const BG_PREFIX: &str = "bg/";
const QUOTA_BYTES: u64 = 8 << 30;
const TOKEN: &str = "cairn-test";
/// RSS sampling and readiness polling period.
const SAMPLE: Duration = Duration::from_millis(50);
/// The write phase stops early (and says so) after this long.
const WRITE_DEADLINE: Duration = Duration::from_secs(600);
/// A (restored) server not serving after this long has failed.
const READY_DEADLINE: Duration = Duration::from_secs(300);
/// Background writes alone before the save, for a baseline.
const BASELINE: Duration = Duration::from_secs(3);
/// Background writes go on this long after the save.
const AFTER_SAVE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// `struct rusage` on Linux (64-bit): two `timeval`s, then 14 longs, the
/// first of which is `ru_maxrss` (KiB).
#[repr(C)]
#[derive(Default)]
struct Rusage {
    utime: [c_long; 2],
    stime: [c_long; 2],
    maxrss: c_long,
    rest: [c_long; 13],
}

extern "C" {
    fn wait4(pid: c_int, status: *mut c_int, options: c_int, rusage: *mut Rusage) -> c_int;
}

/// How a command ran.
struct Ran {
    ok: bool,
    how: String,
    stdout: String,
    stderr: String,
    wall_s: f64,
    /// Peak RSS of the process, MiB.
    maxrss: f64,
    cpu_s: f64,
}

impl Ran {
    /// A one-line account of a failure, with the end of its stderr.
    fn failure(&self) -> String {
        let err = self.stderr.trim();
        let tail = &err[err.len().saturating_sub(600)..];
        format!("{} ({}): {}", self.how, self.stdout.trim(), tail)
    }
}

/// Runs `cmd` to completion (output to files in `scratch`), reaping it with
/// `wait4` for its peak RSS and CPU time.
fn run(mut cmd: Command, scratch: &Path) -> Ran {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let out_path = scratch.join(format!("cmd{n}.out"));
    let err_path = scratch.join(format!("cmd{n}.err"));
    let out = std::fs::File::create(&out_path).unwrap();
    let err = std::fs::File::create(&err_path).unwrap();
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let t = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut status: c_int = 0;
    let mut ru = Rusage::default();
    let r = unsafe { wait4(child.id() as c_int, &mut status, 0, &mut ru) };
    let wall_s = t.elapsed().as_secs_f64();
    // Reaped here: `child` must not be waited for again (dropping it does
    // not wait).
    drop(child);
    let read = |p: &Path| {
        let s = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        let _ = std::fs::remove_file(p);
        s
    };
    let (ok, how) = if r < 0 {
        (false, format!("wait4: {}", std::io::Error::last_os_error()))
    } else if status & 0x7f == 0 {
        let code = (status >> 8) & 0xff;
        (code == 0, format!("exit status {code}"))
    } else {
        (false, format!("killed by signal {}", status & 0x7f))
    };
    let tv = |t: [c_long; 2]| t[0] as f64 + t[1] as f64 / 1e6;
    Ran {
        ok,
        how,
        stdout: read(&out_path),
        stderr: read(&err_path),
        wall_s,
        maxrss: ru.maxrss as f64 / 1024.0,
        cpu_s: tv(ru.utime) + tv(ru.stime),
    }
}

fn etcdctl(endpoint: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = command(ETCDCTL_BIN);
    cmd.env("ETCDCTL_API", "3");
    if let Some(ep) = endpoint {
        cmd.arg(format!("--endpoints={ep}"));
    }
    cmd.args(args);
    cmd
}

/// One running member: `--name=m0`, alone in its cluster.
struct Server {
    kind: &'static str,
    endpoint: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Starts `kind` (`etcd` or `cairn`, binary `bin`) on `data_dir` (new
    /// or restored), logging to `log`, with peer URL `peer` (that of the
    /// restore) or a fresh one.
    fn spawn(
        kind: &'static str,
        bin: &str,
        data_dir: &Path,
        log: &Path,
        peer: Option<&str>,
    ) -> Server {
        let endpoint = format!("http://127.0.0.1:{}", free_port());
        let peer = peer.map_or_else(
            || format!("http://127.0.0.1:{}", free_port()),
            str::to_string,
        );
        let mut args = harness::member_args(
            "m0",
            data_dir,
            &endpoint,
            &peer,
            &format!("m0={peer}"),
            TOKEN,
        );
        args.push(format!("--quota-backend-bytes={QUOTA_BYTES}"));
        let child = harness::spawn_logged(kind, bin, &args, log);
        Server {
            kind,
            endpoint,
            log: log.to_path_buf(),
            child: Some(child),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// `None` while running, else how it exited.
    fn exited(&mut self) -> Option<String> {
        harness::exited(&mut self.child)
    }

    fn log_tail(&self, lines: usize) -> String {
        harness::log_tail(&self.log, lines)
    }

    /// Error, warning and panic lines of the log (etcd's routine ones left
    /// out), cut to 300 chars.
    fn log_problems(&self) -> Vec<String> {
        let s = String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned();
        let bad = [
            "\"level\":\"error\"",
            "\"level\":\"fatal\"",
            "\"level\":\"panic\"",
            "\"level\":\"warn\"",
            "\"level\":\"ERROR\"",
            "\"level\":\"WARN\"",
            "panicked",
        ];
        let noise = [
            "simple token is not cryptographically signed",
            "Running http and grpc server on single port",
        ];
        s.lines()
            .filter(|l| bad.iter().any(|b| l.contains(b)) && !noise.iter().any(|n| l.contains(n)))
            .map(|l| cut(l, 300).to_string())
            .collect()
    }

    /// Prints the log's problem lines, if any.
    fn report_log(&self, what: &str) {
        let p = self.log_problems();
        if !p.is_empty() {
            println!("    {what} log: {} error/warning line(s):", p.len());
            for l in p.iter().take(8) {
                println!("      | {l}");
            }
            if p.len() > 8 {
                println!("      | ... ({} more)", p.len() - 8);
            }
        }
    }

    /// SIGKILL and reap; the data dir is kept.
    fn kill(&mut self) {
        harness::kill(&mut self.child);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------

/// Serializable count-only range of every benchmark key, and the revision.
async fn count_on(ch: Channel) -> Result<(i64, i64), String> {
    harness::count_range(ch, PREFIX, PREFIX_END).await
}

/// A linearizable get of the first benchmark key: the revision, and
/// whether the key was there.
async fn linearizable_get(ch: Channel) -> Result<(i64, bool), String> {
    KvClient::new(ch)
        .range(RangeRequest {
            key: key(0),
            ..Default::default()
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.header.map_or(0, |h| h.revision), !r.kvs.is_empty())
        })
        .map_err(|e| format!("range: {:?}: {}", e.code(), e.message()))
}

/// Waits until `srv` answers a linearizable get: seconds since `t0`, the
/// revision, whether the first key was there.
fn wait_serving(
    rt: &tokio::runtime::Runtime,
    srv: &mut Server,
    t0: Instant,
) -> Result<(f64, i64, bool), String> {
    let mut last = String::from("never connected");
    let mut ch: Option<Channel> = None;
    loop {
        if t0.elapsed() > READY_DEADLINE {
            return Err(format!("not serving after {READY_DEADLINE:?} ({last})"));
        }
        if let Some(st) = srv.exited() {
            return Err(format!("{} EXITED: {st}", srv.kind));
        }
        let r = rt.block_on(async {
            if ch.is_none() {
                ch = Some(connect(&srv.endpoint).await?);
            }
            linearizable_get(ch.clone().unwrap()).await
        });
        match r {
            Ok((rev, found)) => return Ok((t0.elapsed().as_secs_f64(), rev, found)),
            Err(e) => {
                if e.starts_with("connect") {
                    ch = None;
                }
                last = e;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Memory and disk
// ---------------------------------------------------------------------------

/// One sample: seconds since the sampler started, `VmRSS` and `RssAnon`
/// (KiB) of the server, bytes of the snapshot file etcdctl is writing.
struct Sample {
    t: f64,
    rss: Option<u64>,
    anon: Option<u64>,
    out: u64,
}

/// Samples a process and a growing file (`F` or etcdctl's `F.part`) every
/// `SAMPLE` until stopped.
fn sample(pid: u32, file: PathBuf) -> Sampler<Sample> {
    let part = PathBuf::from(format!("{}.part", file.display()));
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    Sampler::start(SAMPLE, move |t| Sample {
        t,
        rss: proc_kib(pid, "VmRSS"),
        anon: proc_kib(pid, "RssAnon"),
        out: size(&file).max(size(&part)),
    })
}

// ---------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------

fn key(i: usize) -> Vec<u8> {
    harness::prefixed_key(PREFIX, i)
}

/// `CLIENTS` clients over `CONNS` connections put keys `bench/00000000`, ...
const LOAD: Load = Load::new(PREFIX, CLIENTS, CONNS, VALUE_BYTES, WRITE_DEADLINE);

/// One background put: when it started (seconds since the writer's `t0`),
/// how long it took, whether it succeeded.
struct Put {
    start: f64,
    lat: f64,
    ok: bool,
}

/// Sequential puts to `bg/...` keys on their own connection until `stop`.
async fn background_writer(
    endpoint: String,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> (Vec<Put>, Option<String>) {
    let mut puts = Vec::new();
    let mut first_error = None;
    let mut rng = Rng::new(0xb6);
    let mut kv: Option<KvClient<Channel>> = None;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let start = t0.elapsed().as_secs_f64();
        if kv.is_none() {
            match connect(&endpoint).await {
                Ok(ch) => kv = Some(KvClient::new(ch)),
                Err(e) => {
                    first_error.get_or_insert(e);
                    puts.push(Put {
                        start,
                        lat: t0.elapsed().as_secs_f64() - start,
                        ok: false,
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let res = kv
            .as_mut()
            .unwrap()
            .put(PutRequest {
                key: format!("{BG_PREFIX}{i:08}").into_bytes(),
                value: rng.value(VALUE_BYTES),
                ..Default::default()
            })
            .await;
        i += 1;
        let lat = t0.elapsed().as_secs_f64() - start;
        if let Err(e) = &res {
            first_error.get_or_insert(format!("{:?}: {}", e.code(), e.message()));
        }
        puts.push(Put {
            start,
            lat,
            ok: res.is_ok(),
        });
    }
    (puts, first_error)
}

/// Background puts over a window of time.
#[derive(Clone, Copy)]
struct PutStats {
    /// Successful puts that completed within the window.
    ok: usize,
    /// Failed puts that completed within the window.
    errors: usize,
    per_s: f64,
    /// Latencies (ms) of the puts completed within the window.
    p50_ms: f64,
    p99_ms: f64,
    /// Max latency (ms) of every put overlapping the window.
    max_ms: f64,
}

fn put_stats(puts: &[Put], from: f64, to: f64) -> PutStats {
    let mut lats: Vec<f64> = Vec::new();
    let (mut ok, mut errors, mut max) = (0, 0, 0.0f64);
    for p in puts {
        let end = p.start + p.lat;
        if p.start < to && end > from {
            max = max.max(p.lat);
        }
        if end >= from && end < to {
            if p.ok {
                ok += 1;
                lats.push(p.lat);
            } else {
                errors += 1;
            }
        }
    }
    lats.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |q: f64| {
        if lats.is_empty() {
            f64::NAN
        } else {
            lats[((lats.len() - 1) as f64 * q).round() as usize] * 1e3
        }
    };
    PutStats {
        ok,
        errors,
        per_s: ok as f64 / (to - from).max(1e-9),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: max * 1e3,
    }
}

// ---------------------------------------------------------------------------
// Snapshot files
// ---------------------------------------------------------------------------

/// `snapshot status F -w json` as etcdctl prints it.
#[derive(Clone, Default)]
struct SnapStatus {
    raw: String,
    revision: i64,
    total_key: i64,
    total_size: i64,
    secs: f64,
}

fn parse_status(raw: &str, secs: f64) -> Result<SnapStatus, String> {
    let v: serde_json::Value =
        serde_json::from_str(raw.trim()).map_err(|e| format!("{e}: {raw:?}"))?;
    let int = |k: &str| v.get(k).and_then(|x| x.as_i64()).unwrap_or(-1);
    Ok(SnapStatus {
        raw: raw.to_string(),
        revision: int("revision"),
        total_key: int("totalKey"),
        total_size: int("totalSize"),
        secs,
    })
}

/// `etcdctl snapshot status FILE -w json` (with `cairn`: the cairn
/// binary's).
fn snapshot_status(file: &Path, cairn: Option<&str>, scratch: &Path) -> Result<SnapStatus, String> {
    let args = ["snapshot", "status", file.to_str().unwrap(), "-w", "json"];
    let cmd = match cairn {
        Some(bin) => {
            let mut c = command(bin);
            c.args(args);
            c
        }
        None => etcdctl(None, &args),
    };
    let r = run(cmd, scratch);
    if !r.ok {
        return Err(r.failure());
    }
    parse_status(&r.stdout, r.wall_s)
}

/// A restore into a fresh data dir and the server started on it.
#[derive(Clone, Copy)]
struct Restored {
    /// Wall time of the restore command.
    restore_s: f64,
    /// Its peak RSS (MiB) and CPU seconds.
    restore_rss: f64,
    restore_cpu: f64,
    /// From the server's spawn to its first linearizable get.
    start_s: f64,
    /// Serializable count of `bench/` through etcdctl.
    count: i64,
    /// The revision the restored server reports.
    revision: i64,
    /// `du` of the restored data dir (before the server started), MiB.
    du: f64,
}

/// Restores `file` with `tool` (`etcd`: etcdctl; `cairn`: `cairn snapshot
/// restore`) into a new data dir under `dir`, starts `server` (`bin`) on it
/// and counts; `expected` is the count of `bench/` the file holds.
#[allow(clippy::too_many_arguments)]
fn restore_and_start(
    rt: &tokio::runtime::Runtime,
    tool: &str,
    cairn_bin: &str,
    file: &Path,
    dir: &Path,
    server: &'static str,
    expected: i64,
    snap_revision: i64,
) -> Result<Restored, String> {
    std::fs::create_dir_all(dir).unwrap();
    let data = dir.join("data");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let initial = format!("m0={peer}");
    let args = [
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--name",
        "m0",
        "--initial-cluster",
        &initial,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster-token",
        TOKEN,
    ];
    let cmd = if tool == "etcd" {
        etcdctl(None, &args)
    } else {
        let mut c = command(cairn_bin);
        c.args(args);
        c
    };
    let r = run(cmd, dir);
    if !r.ok {
        return Err(format!("{tool} snapshot restore FAILED: {}", r.failure()));
    }
    let du = du_mib(&data);
    println!(
        "    {tool} snapshot restore: {:.2} s, peak RSS {:.0} MiB, CPU {:.2} s; data dir {du:.0} MiB",
        r.wall_s, r.maxrss, r.cpu_s
    );
    let bin = if server == "etcd" {
        ETCD_BIN
    } else {
        cairn_bin
    };
    let t0 = Instant::now();
    let mut srv = Server::spawn(server, bin, &data, &dir.join("server.log"), Some(&peer));
    let outcome = wait_serving(rt, &mut srv, t0);
    let (start_s, revision, found) = match outcome {
        Ok(x) => x,
        Err(e) => {
            println!("    --- log tail:\n{}\n    ---", srv.log_tail(30));
            return Err(format!("restored {server}: {e}"));
        }
    };
    let rss = mib(proc_kib(srv.pid(), "VmRSS"));
    let c = run(
        etcdctl(
            Some(&srv.endpoint),
            &[
                "get",
                std::str::from_utf8(PREFIX).unwrap(),
                "--prefix",
                "--keys-only",
                "--limit=1",
                "-w",
                "json",
                "--consistency=s",
            ],
        ),
        dir,
    );
    let count = if c.ok {
        serde_json::from_str::<serde_json::Value>(c.stdout.trim())
            .ok()
            .and_then(|v| v.get("count").and_then(|x| x.as_i64()))
            .unwrap_or(0)
    } else {
        println!("    !! etcdctl get FAILED: {}", c.failure());
        -1
    };
    println!(
        "    restored {server}: serving (linearizable get) {start_s:.2} s after its spawn, \
         RSS then {rss:.0} MiB; revision {revision} (snapshot's {snap_revision}){}; \
         {count} keys under bench/ (etcdctl, serializable){}",
        if found { "" } else { "; !! FIRST KEY MISSING" },
        if count == expected {
            " = as written".to_string()
        } else {
            format!(" !! MISMATCH: expected {expected}")
        }
    );
    if revision != snap_revision {
        println!("    !! the restored server's revision differs from the snapshot's");
    }
    srv.report_log(&format!("restored {server}"));
    srv.kill();
    drop(srv);
    let _ = std::fs::remove_dir_all(&data);
    Ok(Restored {
        restore_s: r.wall_s,
        restore_rss: r.maxrss,
        restore_cpu: r.cpu_s,
        start_s,
        count,
        revision,
        du,
    })
}

// ---------------------------------------------------------------------------
// One server's run
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Results {
    writes_per_s: f64,
    write_s: f64,
    expected: i64,
    db_size: f64,
    du_before: f64,
    du_after: f64,
    save_s: f64,
    first_byte: f64,
    file_mib: f64,
    etcdctl_rss: f64,
    rss_before: f64,
    anon_before: f64,
    hwm_load: f64,
    hwm: f64,
    hwm_reset: bool,
    max_rss: f64,
    max_anon: f64,
    baseline: PutStats,
    during: PutStats,
    status: SnapStatus,
    restored: Option<Restored>,
    file: PathBuf,
}

fn bench(
    rt: &tokio::runtime::Runtime,
    kind: &'static str,
    bin: &str,
    cairn_bin: &str,
    n: usize,
    root: &Path,
) -> Result<Results, String> {
    let t = Instant::now();
    let dir = root.join(kind);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let mut srv = Server::spawn(kind, bin, &data, &dir.join("server.log"), None);
    let up = wait_serving(rt, &mut srv, Instant::now())
        .map_err(|e| format!("{kind} did not start: {e}\n{}", srv.log_tail(30)))?;
    println!("  {kind}: up in {:.1} s", up.0);

    // (1) writes.
    let w = rt.block_on(harness::write_keys(&srv.endpoint, n, &LOAD));
    print!(
        "    writes: {}/{n} ok in {:.1} s = {:.0}/s ({:.1} MiB/s of values)",
        w.ok,
        w.elapsed.as_secs_f64(),
        w.rate(),
        w.rate() * VALUE_BYTES as f64 / (1 << 20) as f64
    );
    w.finish_line(WRITE_DEADLINE);
    let (st, (expected, rev)) = rt.block_on(async {
        let ch = connect(&srv.endpoint).await?;
        Ok::<_, String>((status_on(ch.clone()).await?, count_on(ch).await?))
    })?;
    if expected != n as i64 {
        println!("    !! the server holds {expected} keys under bench/, not {n}");
    }
    let pid = srv.pid();
    let du_before = du_mib(&data);
    println!(
        "    store: {expected} keys, revision {rev}, dbSize {:.1} MiB (in use {:.1}), data dir {du_before:.0} MiB",
        st.db_size as f64 / (1 << 20) as f64,
        st.db_size_in_use as f64 / (1 << 20) as f64,
    );

    // (2) the save, under background writes.
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = rt.spawn(background_writer(srv.endpoint.clone(), t0, stop.clone()));
    std::thread::sleep(BASELINE);
    let hwm_load = mib(proc_kib(pid, "VmHWM"));
    let rss_before = mib(proc_kib(pid, "VmRSS"));
    let anon_before = mib(proc_kib(pid, "RssAnon"));
    let hwm_reset = reset_hwm(pid);
    if !hwm_reset {
        println!("    !! could not reset VmHWM: its peak is since the server's start");
    }
    let file = root.join(format!("{kind}.db"));
    let sampler = sample(pid, file.clone());
    let save_from = t0.elapsed().as_secs_f64();
    let save = run(
        etcdctl(
            Some(&srv.endpoint),
            &[
                "--command-timeout=600s",
                "snapshot",
                "save",
                file.to_str().unwrap(),
            ],
        ),
        &dir,
    );
    let save_to = t0.elapsed().as_secs_f64();
    let hwm = mib(proc_kib(pid, "VmHWM"));
    std::thread::sleep(AFTER_SAVE);
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.finish();
    let (puts, bg_error) = rt.block_on(writer).unwrap();
    let saved_ok = save.ok && save.stdout.contains("Snapshot saved at");
    if !saved_ok {
        println!("    !! etcdctl snapshot save FAILED: {}", save.failure());
        println!("    --- server log tail:\n{}\n    ---", srv.log_tail(30));
    }
    let file_mib = std::fs::metadata(&file).map_or(f64::NAN, |m| m.len() as f64 / (1 << 20) as f64);
    let du_after = du_mib(&data);
    let max_of = |f: fn(&Sample) -> Option<u64>| {
        samples
            .iter()
            .filter_map(f)
            .max()
            .map_or(f64::NAN, |k| k as f64 / 1024.0)
    };
    let max_rss = max_of(|s| s.rss);
    let max_anon = max_of(|s| s.anon);
    // The first sample with bytes in etcdctl's file: when the server began
    // to stream (cairn first writes the whole file on its side).
    let first_byte = samples.iter().find(|s| s.out > 0).map_or(f64::NAN, |s| s.t);
    println!(
        "    snapshot save: {:.2} s, file {file_mib:.1} MiB ({:.0} MiB/s), first byte in the file \
         after ~{first_byte:.2} s; etcdctl peak RSS {:.0} MiB; data dir {du_before:.0} -> \
         {du_after:.0} MiB after the save",
        save.wall_s,
        file_mib / save.wall_s,
        save.maxrss
    );
    println!(
        "    server memory: before the save RSS {rss_before:.0} MiB (anon {anon_before:.0}), \
         peak during the load {hwm_load:.0}; during the save VmHWM {hwm:.0} MiB (+{:.0}), \
         max sampled RSS {max_rss:.0} (+{:.0}), RssAnon {max_anon:.0} (+{:.0})",
        hwm - rss_before,
        max_rss - rss_before,
        max_anon - anon_before
    );
    let every = (Duration::from_secs(1).as_millis() / SAMPLE.as_millis()).max(1) as usize;
    let line: Vec<String> = samples
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0 || *i == samples.len() - 1)
        .map(|(_, s)| {
            format!(
                "{:.0}s:{:.0}({:.0})/{:.0}",
                s.t,
                mib(s.rss),
                mib(s.anon),
                s.out as f64 / (1 << 20) as f64
            )
        })
        .collect();
    println!(
        "    timeline (MiB, server RSS(anon)/bytes in etcdctl's file): {}",
        line.join(" ")
    );
    let baseline = put_stats(&puts, 0.0, save_from);
    let during = put_stats(&puts, save_from, save_to);
    for (what, s) in [("before the save", baseline), ("during the save", during)] {
        println!(
            "    background puts {what}: {} ok ({:.0}/s), {} failed; latency p50 {:.1} ms, \
             p99 {:.1} ms, max {:.1} ms",
            s.ok, s.per_s, s.errors, s.p50_ms, s.p99_ms, s.max_ms
        );
    }
    // When the slowest puts of the save happened.
    let mut slow: Vec<&Put> = puts
        .iter()
        .filter(|p| p.start < save_to && p.start + p.lat > save_from)
        .collect();
    slow.sort_by(|a, b| b.lat.partial_cmp(&a.lat).unwrap());
    let slow: Vec<String> = slow
        .iter()
        .take(3)
        .map(|p| format!("{:.0} ms at +{:.2} s", p.lat * 1e3, p.start - save_from))
        .collect();
    println!(
        "    slowest background puts of the save ({:.2} s long): {}",
        save_to - save_from,
        slow.join(", ")
    );
    if let Some(e) = bg_error {
        println!("    !! background writer error (first): {e}");
    }
    if during.ok == 0 || during.max_ms > 0.5e3 * (save_to - save_from) {
        println!("    !! writes looked BLOCKED during the save");
    }
    srv.report_log(kind);
    srv.kill();
    drop(srv);
    let _ = std::fs::remove_dir_all(&data);
    if !saved_ok {
        return Err(format!("{kind}: snapshot save failed"));
    }

    // (3) status.
    let status = snapshot_status(&file, None, &dir)?;
    println!(
        "    etcdctl snapshot status: {:.2} s: {}",
        status.secs,
        status.raw.trim()
    );

    // (4) restore with the server's own tool.
    let restored = match restore_and_start(
        rt,
        kind,
        cairn_bin,
        &file,
        &dir.join("restore"),
        kind,
        expected,
        status.revision,
    ) {
        Ok(r) => Some(r),
        Err(e) => {
            println!("    !! {e}");
            None
        }
    };
    println!("    {kind} done in {:.1} s", t.elapsed().as_secs_f64());
    Ok(Results {
        writes_per_s: w.rate(),
        write_s: w.elapsed.as_secs_f64(),
        expected,
        db_size: st.db_size as f64 / (1 << 20) as f64,
        du_before,
        du_after,
        save_s: save.wall_s,
        first_byte,
        file_mib,
        etcdctl_rss: save.maxrss,
        rss_before,
        anon_before,
        hwm_load,
        hwm,
        hwm_reset,
        max_rss,
        max_anon,
        baseline,
        during,
        status,
        restored,
        file,
    })
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let total = Instant::now();
    let mb: usize = std::env::var("BACKUP_MIB")
        .ok()
        .map(|s| {
            s.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("BACKUP_MIB={s}: not a number"))
        })
        .unwrap_or(DEFAULT_MIB);
    let n = mb * (1 << 20) / VALUE_BYTES;
    let only = std::env::var("BACKUP_ONLY").ok();
    let rt = harness::runtime();
    let cairn = harness::cairn_bin();
    let root = tempfile::Builder::new()
        .prefix("backup-bench-")
        .tempdir()
        .expect("temp dir");
    println!(
        "backup: one member, {n} keys x {VALUE_BYTES} B ({mb} MiB of values), {CLIENTS} clients / \
         {CONNS} connections; etcd {ETCD_BIN} vs cairn {cairn}; under {}",
        root.path().display()
    );
    let go = |kind: &'static str, bin: &str| -> Option<Results> {
        if only.as_deref().is_some_and(|o| o != kind) {
            return None;
        }
        match bench(&rt, kind, bin, &cairn, n, root.path()) {
            Ok(r) => Some(r),
            Err(e) => {
                println!("  !! {kind}: {e}");
                None
            }
        }
    };
    let e = go("etcd", ETCD_BIN);
    let c = go("cairn", &cairn);

    // Across: status of both files by both tools, migration, the way back.
    let mut status_same: Vec<(String, bool)> = Vec::new();
    let mut cairn_status_s = [f64::NAN; 2];
    let mut migration: Option<Restored> = None;
    let mut way_back: Option<Restored> = None;
    if e.is_some() || c.is_some() {
        println!("  across:");
    }
    for (i, r) in [&e, &c].into_iter().enumerate() {
        let Some(r) = r else { continue };
        let whose = if i == 0 { "etcd's" } else { "cairn's" };
        match snapshot_status(&r.file, Some(&cairn), root.path()) {
            Ok(s) => {
                let same = s.raw == r.status.raw;
                cairn_status_s[i] = s.secs;
                println!(
                    "    cairn snapshot status of {whose} file: {:.2} s, {}",
                    s.secs,
                    if same {
                        "same output as etcdctl's".to_string()
                    } else {
                        format!(
                            "!! DIFFERS: cairn {:?} vs etcdctl {:?}",
                            s.raw.trim(),
                            r.status.raw.trim()
                        )
                    }
                );
                status_same.push((whose.to_string(), same));
            }
            Err(err) => {
                println!("    !! cairn snapshot status of {whose} file FAILED: {err}");
                status_same.push((whose.to_string(), false));
            }
        }
    }
    if let Some(r) = &e {
        if only.is_none() {
            println!("    migration: cairn snapshot restore of etcd's file");
            match restore_and_start(
                &rt,
                "cairn",
                &cairn,
                &r.file,
                &root.path().join("migration"),
                "cairn",
                r.expected,
                r.status.revision,
            ) {
                Ok(m) => migration = Some(m),
                Err(err) => println!("    !! {err}"),
            }
        }
    }
    if let Some(r) = &c {
        if only.is_none() {
            println!("    the way back: etcdctl snapshot restore of cairn's file");
            match restore_and_start(
                &rt,
                "etcd",
                &cairn,
                &r.file,
                &root.path().join("wayback"),
                "etcd",
                r.expected,
                r.status.revision,
            ) {
                Ok(m) => way_back = Some(m),
                Err(err) => println!("    !! {err}"),
            }
        }
    }

    // The table.
    println!();
    println!(
        "backup, {mb} MiB ({n} keys), total run {:.0} s",
        total.elapsed().as_secs_f64()
    );
    harness::print_header(62);
    // `higher`: a throughput (ratio > 1 is cairn ahead); `Some(false)` a
    // cost (ratio < 1 is cairn ahead); `None` neither.
    let row = |label: &str, higher: Option<bool>, prec: usize, get: &dyn Fn(&Results) -> f64| {
        let a = e.as_ref().map_or(f64::NAN, get);
        let b = c.as_ref().map_or(f64::NAN, get);
        harness::print_row(62, label, higher, prec, a, b);
    };
    let rs = |f: fn(&Restored) -> f64| move |r: &Results| r.restored.as_ref().map_or(f64::NAN, f);
    row("writes/s (64 clients)", Some(true), 0, &|r| r.writes_per_s);
    row("  write phase s", Some(false), 1, &|r| r.write_s);
    row("  dbSize MiB (Status)", Some(false), 0, &|r| r.db_size);
    row(
        "  data dir MiB (du) before the save",
        Some(false),
        0,
        &|r| r.du_before,
    );
    row("snapshot save s (etcdctl)", Some(false), 2, &|r| r.save_s);
    row(
        "  first byte in etcdctl's file after s",
        Some(false),
        2,
        &|r| r.first_byte,
    );
    row("  snapshot file MiB", None, 1, &|r| r.file_mib);
    row("  etcdctl peak RSS MiB", None, 0, &|r| r.etcdctl_rss);
    row("  data dir MiB (du) after the save", Some(false), 0, &|r| {
        r.du_after
    });
    row("server RSS before the save MiB", Some(false), 0, &|r| {
        r.rss_before
    });
    row("  RssAnon before the save MiB", Some(false), 0, &|r| {
        r.anon_before
    });
    row("  VmHWM during the load MiB", Some(false), 0, &|r| {
        r.hwm_load
    });
    let hwm_label = if [&e, &c]
        .iter()
        .any(|r| r.as_ref().is_some_and(|r| !r.hwm_reset))
    {
        "server VmHWM (NOT RESET: since start) MiB"
    } else {
        "server VmHWM during the save MiB"
    };
    row(hwm_label, Some(false), 0, &|r| r.hwm);
    row("  growth: VmHWM - RSS before MiB", Some(false), 0, &|r| {
        r.hwm - r.rss_before
    });
    row("  max sampled RSS MiB", Some(false), 0, &|r| r.max_rss);
    row("  max sampled RssAnon MiB", Some(false), 0, &|r| r.max_anon);
    row("  growth: RssAnon max - before MiB", Some(false), 0, &|r| {
        r.max_anon - r.anon_before
    });
    row("bg puts ok during the save", None, 0, &|r| {
        r.during.ok as f64
    });
    row("  bg puts failed during the save", Some(false), 0, &|r| {
        r.during.errors as f64
    });
    row("  bg puts/s during the save", Some(true), 0, &|r| {
        r.during.per_s
    });
    row("  bg puts/s before the save", Some(true), 0, &|r| {
        r.baseline.per_s
    });
    row("  bg put p50 ms during the save", Some(false), 2, &|r| {
        r.during.p50_ms
    });
    row("  bg put p50 ms before the save", Some(false), 2, &|r| {
        r.baseline.p50_ms
    });
    row("  bg put p99 ms during the save", Some(false), 1, &|r| {
        r.during.p99_ms
    });
    row("  bg put max ms during the save", Some(false), 1, &|r| {
        r.during.max_ms
    });
    row("  bg put max ms before the save", Some(false), 1, &|r| {
        r.baseline.max_ms
    });
    row("snapshot status s (etcdctl)", Some(false), 2, &|r| {
        r.status.secs
    });
    row("  revision", None, 0, &|r| r.status.revision as f64);
    row("  totalKey", None, 0, &|r| r.status.total_key as f64);
    row("  totalSize MiB", None, 1, &|r| {
        r.status.total_size as f64 / (1 << 20) as f64
    });
    println!(
        "{:<62} {:>10.2} {:>10.2} {:>11}",
        "  cairn snapshot status s (of this file)", cairn_status_s[0], cairn_status_s[1], "-"
    );
    let same = |whose: &str| {
        status_same
            .iter()
            .find(|(w, _)| w == whose)
            .map_or("-", |(_, s)| if *s { "same" } else { "DIFFERS" })
    };
    println!(
        "{:<62} {:>10} {:>10}",
        "  cairn status -w json vs etcdctl's",
        same("etcd's"),
        same("cairn's")
    );
    row("restore s (own tool)", Some(false), 2, &rs(|r| r.restore_s));
    row(
        "  restore peak RSS MiB",
        Some(false),
        0,
        &rs(|r| r.restore_rss),
    );
    row("  restore CPU s", Some(false), 2, &rs(|r| r.restore_cpu));
    row(
        "  restored data dir MiB (du)",
        Some(false),
        0,
        &rs(|r| r.du),
    );
    row(
        "restored server: spawn -> linearizable get s",
        Some(false),
        2,
        &rs(|r| r.start_s),
    );
    row(
        "restore + start s",
        Some(false),
        2,
        &rs(|r| r.restore_s + r.start_s),
    );
    let count_ok = |r: &Option<Results>| match r {
        None => "-".to_string(),
        Some(r) => match &r.restored {
            None => "FAILED".to_string(),
            Some(x) if x.count == r.expected && x.revision == r.status.revision => "ok".into(),
            Some(x) => format!("!! {}", x.count),
        },
    };
    println!(
        "{:<62} {:>10} {:>10}",
        "  key count and revision after restore",
        count_ok(&e),
        count_ok(&c)
    );
    let cross = |what: &str, x: &Option<Restored>, src: &Option<Results>| {
        let Some(src) = src else { return };
        match x {
            Some(x) => println!(
                "{what}: restore {:.2} s (peak RSS {:.0} MiB), start -> linearizable get {:.2} s, \
                 {} keys ({}), revision {}",
                x.restore_s,
                x.restore_rss,
                x.start_s,
                x.count,
                if x.count == src.expected && x.revision == src.status.revision {
                    "ok"
                } else {
                    "!! MISMATCH"
                },
                x.revision
            ),
            None => println!("{what}: FAILED (see above)"),
        }
    };
    if only.is_none() {
        cross(
            "migration (cairn snapshot restore of etcd's file)",
            &migration,
            &e,
        );
        cross(
            "the way back (etcdctl snapshot restore of cairn's file)",
            &way_back,
            &c,
        );
    }
}
