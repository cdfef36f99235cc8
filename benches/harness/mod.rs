//! What the plain-`main` benchmarks (`cluster`, `snapshot_catchup`,
//! `backup`) share: which cairn binary to run, launching etcd or cairn
//! members on free loopback ports with temp data dirs (killed with the
//! benchmark), waiting for a cluster to agree on a leader, gRPC helpers,
//! `/proc` memory figures and sampling, the concurrent put load, and the
//! etcd-vs-cairn table rows. Each benchmark includes it with
//! `#[path = "harness/mod.rs"] mod harness;`.

// Not every benchmark uses every helper.
#![allow(dead_code)]

use std::ffi::{c_int, c_ulong};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::{PutRequest, RangeRequest, StatusRequest, StatusResponse};
use tonic::transport::{Channel, Endpoint};

pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// Per-request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `$CAIRN_BIN` if set, else `$CARGO_TARGET_DIR/release/cairn` if it
/// exists, else the binary Cargo built alongside the benchmark.
pub fn cairn_bin() -> String {
    if let Ok(b) = std::env::var("CAIRN_BIN") {
        return b;
    }
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        let p = PathBuf::from(dir).join("release").join("cairn");
        if p.exists() {
            return p.display().to_string();
        }
    }
    env!("CARGO_BIN_EXE_cairn").to_string()
}

/// The client runtime: 2 tokio worker threads.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
}

const SIGKILL: c_int = 9;
const PR_SET_PDEATHSIG: c_int = 1;

/// A free TCP port on 127.0.0.1, never one this process handed out before.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A command without the caller's `ETCD*` variables, killed with the
/// benchmark (`PR_SET_PDEATHSIG`; spawned from the main thread, which
/// outlives every child).
pub fn command(bin: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(&k);
        }
    }
    unsafe {
        cmd.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong);
            Ok(())
        });
    }
    cmd
}

/// Spawns `bin` with `args` (and etcd's logger flags when `kind` is
/// `etcd`), stdout and stderr appended to `log`.
pub fn spawn_logged(kind: &str, bin: &str, args: &[String], log: &Path) -> Child {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = command(bin);
    cmd.args(args);
    if kind == "etcd" {
        cmd.args(["--logger=zap", "--log-outputs=stderr"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"))
}

/// The member flags of `tests/common`'s `Server::cluster`: `--name=<name>`
/// in `initial` (`m0=http://...,...`), data in `data_dir`.
pub fn member_args(
    name: &str,
    data_dir: &Path,
    client: &str,
    peer: &str,
    initial: &str,
    token: &str,
) -> Vec<String> {
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster={initial}"),
        format!("--initial-cluster-token={token}"),
    ]
}

/// `None` while running, else how it exited.
pub fn exited(child: &mut Option<Child>) -> Option<String> {
    match child {
        Some(c) => match c.try_wait() {
            Ok(None) => None,
            Ok(Some(st)) => Some(st.to_string()),
            Err(e) => Some(e.to_string()),
        },
        None => Some("not running".into()),
    }
}

/// SIGKILL and reap.
pub fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A log file from byte `from` on.
pub fn log_since(log: &Path, from: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `lines` lines of a log file (within its last 64 KiB).
pub fn log_tail(log: &Path, lines: usize) -> String {
    let len = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let s = log_since(log, len.saturating_sub(64 * 1024));
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One member of a cluster, in its own temp dir (`data/`, `server.log`).
pub struct Member {
    pub name: String,
    pub endpoint: String,
    pub kind: &'static str,
    pub bin: String,
    pub args: Vec<String>,
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Member {
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_path())
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// The log from byte `from` on.
    pub fn log_since(&self, from: u64) -> String {
        log_since(&self.log_path(), from)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Spawns the member (appending to its log).
    pub fn spawn(&mut self) {
        self.child = Some(spawn_logged(
            self.kind,
            &self.bin,
            &self.args,
            &self.log_path(),
        ));
    }

    /// SIGKILL and reap; the data dir is kept.
    pub fn kill9(&mut self) {
        kill(&mut self.child);
    }

    /// `None` while running, else how it exited.
    pub fn exited(&mut self) -> Option<String> {
        exited(&mut self.child)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Spawns `members` members of `bin` with `tests/common`'s cluster flags
/// plus `extra` args, each in a temp dir named `{kind}-{tag}-m{i}-...`.
pub fn spawn_cluster(
    kind: &'static str,
    bin: &str,
    members: usize,
    tag: &str,
    extra: &[String],
) -> Vec<Member> {
    let ports: Vec<(u16, u16)> = (0..members).map(|_| (free_port(), free_port())).collect();
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
            let dir = tempfile::Builder::new()
                .prefix(&format!("{kind}-{tag}-m{i}-"))
                .tempdir()
                .expect("temp dir");
            let name = format!("m{i}");
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let data = dir.path().join("data");
            let mut args = member_args(&name, &data, &client, &peer, &initial, "cairn-test");
            args.extend_from_slice(extra);
            let mut m = Member {
                name,
                endpoint: client,
                kind,
                bin: bin.to_string(),
                args,
                child: None,
                dir,
            };
            m.spawn();
            m
        })
        .collect()
}

pub struct Cluster {
    pub kind: &'static str,
    pub members: Vec<Member>,
    pub ids: Vec<u64>,
    pub leader: usize,
}

impl Cluster {
    pub fn follower(&self) -> usize {
        (self.leader + 1) % self.members.len()
    }

    /// Prints the log tail of every member that exited, or of all of them
    /// when `all`. True if every member is still running.
    pub fn report_health(&mut self, all: bool) -> bool {
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

/// Every member's id and the index of the leader they all agree on, or why
/// not.
pub async fn ids_and_leader(members: &[Member]) -> Result<(Vec<u64>, usize), String> {
    let mut ids = Vec::new();
    let mut leaders = Vec::new();
    for m in members {
        let s = status(&m.endpoint).await?;
        ids.push(s.header.map(|h| h.member_id).unwrap_or(0));
        leaders.push(s.leader);
    }
    if leaders[0] == 0 || leaders.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!("no agreed leader: {leaders:x?}"));
    }
    match ids.iter().position(|id| *id == leaders[0]) {
        Some(at) => Ok((ids, at)),
        None => Err(format!("leader {:x} is not among {ids:x?}", leaders[0])),
    }
}

/// Starts the cluster (as `spawn_cluster`) and waits until every member
/// answers and agrees on a leader.
pub fn start_cluster(
    rt: &tokio::runtime::Runtime,
    kind: &'static str,
    bin: &str,
    members: usize,
    tag: &str,
    extra: &[String],
) -> Cluster {
    let mut members = spawn_cluster(kind, bin, members, tag, extra);
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
// gRPC
// ---------------------------------------------------------------------------

pub async fn connect(endpoint: &str) -> Result<Channel, String> {
    Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("connect {endpoint}: {e}"))
}

pub async fn status_on(ch: Channel) -> Result<StatusResponse, String> {
    MaintenanceClient::new(ch)
        .status(StatusRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|e| format!("status: {:?}: {}", e.code(), e.message()))
}

pub async fn status(endpoint: &str) -> Result<StatusResponse, String> {
    status_on(connect(endpoint).await?).await
}

/// Serializable count-only range of `[key, range_end)`: the count and the
/// revision.
pub async fn count_range(ch: Channel, key: &[u8], range_end: &[u8]) -> Result<(i64, i64), String> {
    KvClient::new(ch)
        .range(RangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            count_only: true,
            serializable: true,
            ..Default::default()
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.count, r.header.map_or(0, |h| h.revision))
        })
        .map_err(|e| format!("range: {:?}: {}", e.code(), e.message()))
}

// ---------------------------------------------------------------------------
// Memory and disk
// ---------------------------------------------------------------------------

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`, `RssAnon`).
pub fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn mib(kib: Option<u64>) -> f64 {
    kib.map_or(f64::NAN, |k| k as f64 / 1024.0)
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS.
pub fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// `du -sk` of a path, in MiB.
pub fn du_mib(dir: &Path) -> f64 {
    Command::new("du")
        .arg("-sk")
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .map_or(f64::NAN, |k| k as f64 / 1024.0)
}

/// Calls a probe every `period` on a thread of its own until stopped, with
/// the seconds since the start; the probe's results in order.
pub struct Sampler<T> {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<T>>,
}

impl<T: Send + 'static> Sampler<T> {
    pub fn start(period: Duration, mut probe: impl FnMut(f64) -> T + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut out = Vec::new();
            while !s.load(Ordering::Relaxed) {
                out.push(probe(t0.elapsed().as_secs_f64()));
                std::thread::sleep(period);
            }
            out
        });
        Sampler { stop, handle }
    }

    pub fn finish(self) -> Vec<T> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

// ---------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------

/// xorshift64*, for incompressible values.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// `len` random bytes.
    pub fn value(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        buf
    }
}

/// `prefix` followed by `i` as 8 digits.
pub fn prefixed_key(prefix: &[u8], i: usize) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{i:08}").as_bytes());
    k
}

/// A put load: keys `prefix` + 0..total, `value_bytes` random bytes each,
/// by `clients` clients over `conns` connections, cut short at `deadline`.
pub struct Load {
    pub prefix: &'static [u8],
    pub clients: usize,
    pub conns: usize,
    pub value_bytes: usize,
    pub deadline: Duration,
}

impl Load {
    pub const fn new(
        prefix: &'static [u8],
        clients: usize,
        conns: usize,
        value_bytes: usize,
        deadline: Duration,
    ) -> Load {
        Load {
            prefix,
            clients,
            conns,
            value_bytes,
            deadline,
        }
    }
}

#[derive(Default)]
pub struct Writes {
    pub ok: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub cut_short: bool,
}

impl Writes {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Ends the line reporting the writes: the errors, if any, and whether
    /// the load was cut short at `deadline`.
    pub fn finish_line(&self, deadline: Duration) {
        if self.errors > 0 {
            print!(
                ", {} ERRORS (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        if self.cut_short {
            print!(", CUT SHORT after {deadline:?}");
        }
        println!();
    }
}

/// Puts keys 0..`total` through `endpoint` as `load` says.
pub async fn write_keys(endpoint: &str, total: usize, load: &Load) -> Writes {
    let mut channels = Vec::new();
    for _ in 0..load.conns {
        match connect(endpoint).await {
            Ok(ch) => channels.push(ch),
            Err(e) => {
                return Writes {
                    errors: total,
                    first_error: Some(e),
                    elapsed: Duration::from_secs(1),
                    ..Default::default()
                }
            }
        }
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + load.deadline;
    let (prefix, value_bytes) = (load.prefix, load.value_bytes);
    let tasks: Vec<_> = (0..load.clients)
        .map(|c| {
            let mut kv = KvClient::new(channels[c % load.conns].clone());
            let next = next.clone();
            let mut rng = Rng::new(c as u64 + 1);
            tokio::spawn(async move {
                let mut w = Writes::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    if Instant::now() > deadline {
                        w.cut_short = true;
                        break;
                    }
                    let res = kv
                        .put(PutRequest {
                            key: prefixed_key(prefix, i),
                            value: rng.value(value_bytes),
                            ..Default::default()
                        })
                        .await;
                    match res {
                        Ok(_) => w.ok += 1,
                        Err(e) => {
                            w.errors += 1;
                            if w.first_error.is_none() {
                                w.first_error = Some(format!("{:?}: {}", e.code(), e.message()));
                            }
                        }
                    }
                }
                w
            })
        })
        .collect();
    let mut all = Writes::default();
    for t in tasks {
        let w = t.await.unwrap();
        all.ok += w.ok;
        all.errors += w.errors;
        all.cut_short |= w.cut_short;
        if all.first_error.is_none() {
            all.first_error = w.first_error;
        }
    }
    all.elapsed = start.elapsed();
    all
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// `s` cut to at most `max` bytes, at a char boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let at = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap();
    &s[..at]
}

/// The table's header: a `width`-wide label column, then etcd, cairn and
/// their ratio.
pub fn print_header(width: usize) {
    println!(
        "{:<width$} {:>10} {:>10} {:>11}",
        "", "etcd", "cairn", "cairn/etcd"
    );
}

/// One table row: etcd's `a`, cairn's `b` and `b / a`. `higher`: a
/// throughput (ratio > 1 is cairn ahead); `Some(false)` a cost (ratio < 1
/// is cairn ahead); `None` neither.
pub fn print_row(width: usize, label: &str, higher: Option<bool>, prec: usize, a: f64, b: f64) {
    let ratio = if a.abs() < 1e-9 || !a.is_finite() || !b.is_finite() {
        "-".to_string()
    } else {
        format!("{:.2}", b / a)
    };
    let label = match higher {
        Some(true) => format!("{label} [higher is better]"),
        Some(false) => format!("{label} [lower is better]"),
        None => label.to_string(),
    };
    println!("{label:<width$} {a:>10.prec$} {b:>10.prec$} {ratio:>11}");
}
