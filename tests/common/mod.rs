//! Shared test harness: start cairn or the real etcd on fresh loopback ports
//! with a fresh data dir, wait until it answers `Maintenance.Status` with a
//! leader, kill -9 and restart it, and run the real `etcdctl`.
//!
//! Every child is stopped: `Drop` kills (SIGKILL) and reaps it; servers kept
//! in statics (never dropped) are killed and their data dirs removed by an
//! `atexit` hook; and every child gets `PR_SET_PDEATHSIG = SIGKILL`, spawned
//! from one long-lived thread, so it dies with the test process even when
//! that is killed by a signal.
#![allow(dead_code)]

pub mod check;
pub mod daemon;
pub mod http;
pub mod join;
pub mod proxy;
pub mod restore;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_int, c_ulong};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::StatusRequest;

/// The real etcd and etcdctl (Debian's etcd-server / etcd-client, 3.4.23).
pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
pub const CAIRN_BIN: &str = env!("CARGO_BIN_EXE_cairn");

/// How long a server gets to answer `Status` with a leader.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1 (bind port 0, read it, drop the socket),
/// never one this process handed out before.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cairn,
    Etcd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cairn => "cairn",
            Kind::Etcd => "etcd",
        }
    }
}

/// One single-member server process (cairn or etcd).
pub struct Server {
    kind: Kind,
    /// Registry key for the atexit cleanup.
    id: u64,
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Holds `data/` (the data dir) and `server.log` (stdout + stderr).
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra command-line flags, passed on every (re)start.
    extra_args: Vec<String>,
    /// `--initial-cluster` of a member of a multi-member cluster; a single
    /// member names only itself.
    initial_cluster: Option<String>,
}

impl Server {
    /// Starts cairn (the binary built with this test crate).
    pub fn cairn() -> Server {
        Server::start(Kind::Cairn)
    }

    /// Starts the real etcd.
    pub fn etcd() -> Server {
        Server::start(Kind::Etcd)
    }

    pub fn start(kind: Kind) -> Server {
        Server::start_with(kind, &[])
    }

    /// Starts a server with extra flags (e.g. `--max-request-bytes=4096`),
    /// appended after the harness's own and kept across restarts.
    pub fn start_with(kind: Kind, extra_args: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-test-", kind.name()))
            .tempdir()
            .expect("temp dir");
        let client_port = free_port();
        let peer_port = free_port();
        let mut s = Server {
            kind,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: "default".to_string(),
            client_port,
            peer_port,
            dir,
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            initial_cluster: None,
        };
        s.spawn_and_wait();
        s
    }

    /// Starts an `n`-member cluster on loopback (all members at once, since
    /// none is ready before a quorum is up) and waits until every member
    /// knows a leader.
    pub fn cluster(kind: Kind, n: usize) -> Vec<Server> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Server> = ports
            .into_iter()
            .enumerate()
            .map(|(i, (client_port, peer_port))| {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("{}-member-", kind.name()))
                    .tempdir()
                    .expect("temp dir");
                let mut s = Server {
                    kind,
                    id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                    name: format!("m{i}"),
                    client_port,
                    peer_port,
                    dir,
                    child: None,
                    extra_args: Vec::new(),
                    initial_cluster: Some(initial.clone()),
                };
                s.spawn();
                s
            })
            .collect();
        for m in &mut members {
            m.wait_ready();
        }
        members
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `http://127.0.0.1:P`, the client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The last `lines` lines of the server's output.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM the server and wait (up to `within`) for it to exit; its exit
    /// status, or `None` if it had to be killed.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        let status = loop {
            if let Ok(Some(s)) = c.try_wait() {
                break Some(s);
            }
            if start.elapsed() > within {
                let _ = c.kill();
                let _ = c.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        registry().lock().unwrap().remove(&self.id);
        status
    }

    /// SIGKILL the server and reap it. The data dir is kept.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        registry().lock().unwrap().remove(&self.id);
    }

    /// Starts the server again on the same data dir and ports (after
    /// `kill9`, or kills it first) and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn_and_wait();
    }

    fn args(&self) -> Vec<String> {
        let client = self.endpoint();
        let peer = self.peer_url();
        let mut a = vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir().display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!(
                "--initial-cluster={}",
                self.initial_cluster
                    .clone()
                    .unwrap_or_else(|| format!("{}={peer}", self.name))
            ),
            "--initial-cluster-token=cairn-test".to_string(),
        ];
        if self.kind == Kind::Etcd {
            a.push("--logger=zap".into());
            a.push("--log-outputs=stderr".into());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    fn spawn_and_wait(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    fn spawn(&mut self) {
        let bin = match self.kind {
            Kind::Cairn => CAIRN_BIN,
            Kind::Etcd => ETCD_BIN,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open server log");
        let mut header = log.try_clone().unwrap();
        let _ = writeln!(header, "=== {} {}", bin, self.args().join(" "));
        let mut cmd = Command::new(bin);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        clear_etcd_env(&mut cmd);
        let child = spawn_child(cmd).unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        registry()
            .lock()
            .unwrap()
            .insert(self.id, (child.id(), self.dir.path().to_path_buf()));
        self.child = Some(child);
    }

    /// Polls `Maintenance.Status` until it answers with a leader.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        let mut last;
        loop {
            if let Some(c) = &mut self.child {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "{} exited during startup ({status}); log:\n{}",
                        self.kind.name(),
                        self.log_tail(60)
                    );
                }
            }
            match probe_status(&self.endpoint()) {
                Ok(leader) if leader != 0 => return,
                Ok(_) => last = "Status answered without a leader".into(),
                Err(e) => last = e,
            }
            if start.elapsed() > READY_DEADLINE {
                let tail = self.log_tail(60);
                self.kill9();
                panic!(
                    "{} at {} not ready after {:?} ({last}); log:\n{tail}",
                    self.kind.name(),
                    self.endpoint(),
                    READY_DEADLINE
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts an etcd and a cairn at the same time (each takes a second or so).
pub fn start_pair(a: Kind, b: Kind) -> (Server, Server) {
    let ta = std::thread::spawn(move || Server::start(a));
    let tb = std::thread::spawn(move || Server::start(b));
    let sa = ta.join();
    let sb = tb.join();
    match (sa, sb) {
        (Ok(sa), Ok(sb)) => (sa, sb),
        (Err(e), _) | (_, Err(e)) => std::panic::resume_unwind(e),
    }
}

/// Like `start_pair`, with the same extra flags for both servers.
pub fn start_pair_with(a: Kind, b: Kind, extra_args: &[&str]) -> (Server, Server) {
    let ea: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
    let eb = ea.clone();
    let ta = std::thread::spawn(move || {
        Server::start_with(a, &ea.iter().map(String::as_str).collect::<Vec<_>>())
    });
    let tb = std::thread::spawn(move || {
        Server::start_with(b, &eb.iter().map(String::as_str).collect::<Vec<_>>())
    });
    let sa = ta.join();
    let sb = tb.join();
    match (sa, sb) {
        (Ok(sa), Ok(sb)) => (sa, sb),
        (Err(e), _) | (_, Err(e)) => std::panic::resume_unwind(e),
    }
}

/// One Status call on a throwaway runtime in its own thread, so that it works
/// from sync code and from inside any tokio runtime. Ok(leader id).
fn probe_status(endpoint: &str) -> Result<u64, String> {
    let endpoint = endpoint.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let ch = tonic::transport::Endpoint::from_shared(endpoint)
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(2))
                .connect()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let st = MaintenanceClient::new(ch)
                .status(StatusRequest {})
                .await
                .map_err(|e| format!("status: {e}"))?;
            Ok(st.into_inner().leader)
        })
    })
    .join()
    .unwrap_or_else(|_| Err("probe thread panicked".into()))
}

fn clear_etcd_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(&k);
        }
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `/usr/bin/etcdctl --endpoints=ENDPOINT ARGS...` with `ETCDCTL_API=3`,
/// feeding `stdin` if given (for `txn`).
pub fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(ETCDCTL_BIN);
    clear_etcd_env(&mut cmd);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn etcdctl");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes())
            .expect("write etcdctl stdin");
        drop(pipe);
    }
    child.wait_with_output().expect("wait etcdctl")
}

/// A long-running `/usr/bin/etcdctl --endpoints=ENDPOINT ARGS...` (e.g.
/// `watch`): stdin, stdout and stderr piped, and killed with the test
/// process like the servers (`PR_SET_PDEATHSIG`). The caller kills and reaps
/// it.
pub fn etcdctl_spawn(endpoint: &str, args: &[&str]) -> Child {
    let mut cmd = Command::new(ETCDCTL_BIN);
    clear_etcd_env(&mut cmd);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn_child(cmd).expect("spawn etcdctl")
}

// ---------------------------------------------------------------------------
// Process hygiene
// ---------------------------------------------------------------------------

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Live children: server id → (pid, temp dir), for the atexit cleanup.
fn registry() -> &'static Mutex<BTreeMap<u64, (u32, PathBuf)>> {
    static R: OnceLock<Mutex<BTreeMap<u64, (u32, PathBuf)>>> = OnceLock::new();
    R.get_or_init(|| {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| unsafe {
            atexit(cleanup_at_exit);
        });
        Mutex::new(BTreeMap::new())
    })
}

extern "C" {
    fn atexit(cb: extern "C" fn()) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn prctl(option: c_int, ...) -> c_int;
}

const SIGKILL: c_int = 9;
const PR_SET_PDEATHSIG: c_int = 1;

/// Servers that were never dropped (kept in statics): kill, reap, and remove
/// their temp dirs.
extern "C" fn cleanup_at_exit() {
    let Some(r) = registry().try_lock().ok() else {
        return;
    };
    for (pid, dir) in r.values() {
        unsafe {
            kill(*pid as c_int, SIGKILL);
            waitpid(*pid as c_int, std::ptr::null_mut(), 0);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Children are spawned from one thread that lives as long as the process:
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits.
fn spawn_child(mut cmd: Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("child-keeper".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .unwrap();
        Mutex::new(tx)
    });
    unsafe {
        cmd.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong);
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    keeper
        .lock()
        .unwrap()
        .send(Box::new(move || {
            let _ = tx.send(cmd.spawn());
        }))
        .unwrap();
    rx.recv().unwrap()
}

/// Which server a test that can run against either one targets: `etcd`
/// in the environment variable `var` for the real etcd, cairn otherwise
/// (so the same test validates itself against etcd).
pub fn target_from_env(var: &str) -> Kind {
    match std::env::var(var).as_deref() {
        Ok("etcd") => Kind::Etcd,
        Ok("cairn") | Ok("") | Err(_) => Kind::Cairn,
        Ok(other) => panic!("{var}={other}: expected cairn or etcd"),
    }
}

/// xorshift64*: reproducible choices without a dependency.
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
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// `Debug`, with byte vectors shown as `b"..."` and very long output cut.
pub fn pretty<T: std::fmt::Debug>(t: &T) -> String {
    let s = format!("{t:?}");
    let mut out = String::with_capacity(s.len().min(1 << 16));
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' {
            if let Some((bytes, next)) = parse_byte_list(&s, i) {
                out.push_str("b\"");
                let esc = bytes.escape_ascii().to_string();
                if esc.len() > 80 {
                    out.push_str(&format!("{}…({} bytes)", &esc[..40], bytes.len()));
                } else {
                    out.push_str(&esc);
                }
                out.push('"');
                i = next;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
        if out.len() > 16_000 {
            out.push_str(" …[cut]");
            break;
        }
    }
    out
}

/// `[1, 2, 3]` at `start` → (bytes, index after `]`), if all items are u8.
fn parse_byte_list(s: &str, start: usize) -> Option<(Vec<u8>, usize)> {
    let b = s.as_bytes();
    let mut j = start + 1;
    let mut vals = Vec::new();
    loop {
        let from = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j == from {
            return None;
        }
        let v: u32 = s[from..j].parse().ok()?;
        if v > 255 {
            return None;
        }
        vals.push(v as u8);
        if s[j..].starts_with(", ") {
            j += 2;
        } else if b.get(j) == Some(&b']') {
            return Some((vals, j + 1));
        } else {
            return None;
        }
    }
}
