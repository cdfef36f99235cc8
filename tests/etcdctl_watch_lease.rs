//! The real `etcdctl` (ETCDCTL_API=3, Debian's 3.4.23) watch and lease
//! commands against cairn.
//!
//! As in `tests/etcdctl.rs`: every command runs against a real etcd and
//! against cairn (one shared pair for the whole file; tests take turns
//! through a lock so that both servers see the same writes in the same order
//! and so the same revisions), and the outputs — exit status, stdout,
//! stderr — must be identical after these normalizations, and only these:
//!
//! - the server's cluster id and member id (decimal and hex) →
//!   `<CLUSTER_ID>`, `<MEMBER_ID>`; its client and peer addresses →
//!   `<CLIENT_ADDR>`, `<PEER_ADDR>`;
//! - lease ids (the server chooses them): every id a `lease grant` printed
//!   becomes `<LEASE_n>` (n = grant order, the same on both servers) where
//!   etcdctl prints a lease id — the word after `lease ` at the start of a
//!   line (hex), a `lease list` line (hex), and the JSON fields `ID`, `id`
//!   and `lease` (decimal);
//! - `lease timetolive`: the remaining TTL (`remaining(Ns)`, JSON `ttl`) →
//!   `<REMAINING>`, checked separately to differ by at most 1 s; the
//!   attached keys are sorted (etcd 3.4 lists them in Go map order);
//! - stderr: etcdctl's own client retry log lines (JSON lines starting with
//!   `{"level":`) are dropped;
//! - JSON is compared parsed.
//!
//! Long-running `etcdctl watch` processes run against both servers at once;
//! the test waits until each has printed the last expected event, kills it,
//! and compares what it printed. A watch without `--rev` only sees writes
//! made after its watcher exists, so the test first "pings" until both
//! watchers show a ping — the same number of pings on both servers, so their
//! revisions stay equal — and compares only what comes after the last ping.
//! `watch -i` instead waits for the answer to a `progress` request sent
//! after the watch.
//!
//! `CAIRN_ETCDCTL_TARGET=etcd` runs the same tests against two etcds (to
//! validate the normalizations); `CAIRN_ETCDCTL_TRACE=1` prints every
//! command with etcd's normalized output.

mod common;

use std::io::{Read, Write};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::StatusRequest;
use common::{etcdctl, etcdctl_spawn, start_pair, Kind, Server};
use serde_json::Value;

/// How long a watching etcdctl gets to print what the test waits for.
const WATCH_DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The shared pair
// ---------------------------------------------------------------------------

struct Member {
    server: Server,
    cluster_id: u64,
    member_id: u64,
    /// Lease ids granted through `lease grant`, in order.
    leases: Vec<i64>,
}

impl Member {
    /// The n-th granted lease id as etcdctl takes it (hex).
    fn lease(&self, n: usize) -> String {
        format!("{:x}", self.leases[n])
    }
}

struct Pair {
    etcd: Member,
    other: Member,
}

fn pair() -> MutexGuard<'static, Pair> {
    static PAIR: OnceLock<Mutex<Pair>> = OnceLock::new();
    PAIR.get_or_init(|| {
        let kind = common::target_from_env("CAIRN_ETCDCTL_TARGET");
        let (e, o) = start_pair(Kind::Etcd, kind);
        Mutex::new(Pair {
            etcd: member(e),
            other: member(o),
        })
    })
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

fn member(server: Server) -> Member {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let st = rt.block_on(async {
        MaintenanceClient::connect(server.endpoint())
            .await
            .unwrap()
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
    });
    let h = st.header.expect("Status without a header");
    Member {
        server,
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        leases: Vec::new(),
    }
}

/// One etcdctl run, normalized.
#[derive(Debug, PartialEq, Clone)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn render(o: &Out) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.code, o.stdout, o.stderr
    )
}

fn is_json(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| (w[0] == "-w" || w[0] == "--write-out") && w[1] == "json")
        || args
            .iter()
            .any(|a| a == "--write-out=json" || a == "-w=json")
}

impl Pair {
    fn members(&mut self) -> [&mut Member; 2] {
        [&mut self.etcd, &mut self.other]
    }

    fn other_name(&self) -> &'static str {
        self.other.server.kind().name()
    }

    /// Runs `args(member)` on both; the normalized outputs must be equal
    /// (remaining TTLs within 1 s). Returns etcd's.
    fn same_f(&mut self, args: impl Fn(&Member) -> Vec<String>, stdin: Option<&str>) -> Out {
        let mut outs = Vec::new();
        let mut shown = Vec::new();
        for m in self.members() {
            let a = args(m);
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            let o = etcdctl(&m.server.endpoint(), &refs, stdin);
            if a.starts_with(&["lease".into(), "grant".into()]) && o.status.success() {
                register_lease(m, &o.stdout, is_json(&a));
            }
            outs.push(normalize(m, &a, &o.stdout, &o.stderr, o.status.code()));
            shown.push(a.join(" "));
        }
        let (b, rb) = outs.pop().unwrap();
        let (a, ra) = outs.pop().unwrap();
        trace(&shown[0], &a);
        assert_eq!(
            a,
            b,
            "etcdctl {} differs{}\n--- etcd:\n{}\n--- {} (etcdctl {}):\n{}",
            shown[0],
            stdin.map(|s| format!(" (stdin {s:?})")).unwrap_or_default(),
            render(&a),
            self.other_name(),
            shown[1],
            render(&b)
        );
        assert_eq!(ra.len(), rb.len(), "remaining TTLs: {ra:?} vs {rb:?}");
        for (x, y) in ra.iter().zip(&rb) {
            assert!(
                (x - y).abs() <= 1,
                "etcdctl {}: remaining TTL {x} (etcd) vs {y} ({})",
                shown[0],
                self.other_name()
            );
        }
        a
    }

    fn same(&mut self, args: &[&str]) -> Out {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.same_f(|_| args.clone(), None)
    }

    fn ok(&mut self, args: &[&str]) -> Out {
        let o = self.same(args);
        assert_eq!(o.code, Some(0), "etcdctl {} failed: {o:?}", args.join(" "));
        o
    }

    fn ok_f(&mut self, args: impl Fn(&Member) -> Vec<String>) -> Out {
        let o = self.same_f(args, None);
        assert_eq!(o.code, Some(0), "etcdctl failed: {o:?}");
        o
    }

    /// The current revision (same on both, checked).
    fn revision(&mut self) -> i64 {
        let o = self.ok(&["get", "ctl-wl/none", "-w", "json"]);
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    }
}

/// Records the id `lease grant` printed.
fn register_lease(m: &mut Member, stdout: &[u8], json: bool) {
    let s = String::from_utf8_lossy(stdout);
    let id = if json {
        let v: Value = serde_json::from_str(&s).expect("lease grant -w json");
        v["ID"].as_i64().expect("ID in lease grant -w json")
    } else {
        // lease 694d77aa9e38260f granted with TTL(60s)
        let hex = s
            .strip_prefix("lease ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("lease grant printed {s:?}"));
        u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("lease id in {s:?}")) as i64
    };
    m.leases.push(id);
}

// ---------------------------------------------------------------------------
// Normalization (see the module doc)
// ---------------------------------------------------------------------------

/// (normalized output, remaining TTLs found)
fn normalize(
    m: &Member,
    args: &[String],
    stdout: &[u8],
    stderr: &[u8],
    code: Option<i32>,
) -> (Out, Vec<i64>) {
    let mut remaining = Vec::new();
    let raw = String::from_utf8_lossy(stdout);
    let stdout = if is_json(args) {
        // One JSON document, or one per line (watch).
        let docs: Option<Vec<Value>> = serde_json::Deserializer::from_str(&raw)
            .into_iter::<Value>()
            .map(|v| v.ok())
            .collect();
        match docs {
            Some(docs) if !docs.is_empty() => docs
                .into_iter()
                .map(|mut v| {
                    json_ids(m, &mut v, &mut remaining);
                    serde_json::to_string_pretty(&v).unwrap() + "\n"
                })
                .collect(),
            _ => text(m, &raw, &mut remaining),
        }
    } else {
        text(m, &raw, &mut remaining)
    };
    let stderr: String = text(m, &String::from_utf8_lossy(stderr), &mut remaining)
        .lines()
        .filter(|l| !l.starts_with("{\"level\":"))
        .map(|l| format!("{l}\n"))
        .collect();
    (
        Out {
            code,
            stdout,
            stderr,
        },
        remaining,
    )
}

fn lease_name(m: &Member, id: i64) -> Option<String> {
    m.leases
        .iter()
        .position(|l| *l == id)
        .map(|i| format!("<LEASE_{}>", i + 1))
}

fn lease_hex(m: &Member, hex: &str) -> Option<String> {
    u64::from_str_radix(hex, 16)
        .ok()
        .and_then(|id| lease_name(m, id as i64))
}

fn ids(m: &Member, s: &str) -> String {
    s.replace(
        &format!("127.0.0.1:{}", m.server.client_port),
        "<CLIENT_ADDR>",
    )
    .replace(&format!("127.0.0.1:{}", m.server.peer_port), "<PEER_ADDR>")
    .replace(&m.cluster_id.to_string(), "<CLUSTER_ID>")
    .replace(&m.member_id.to_string(), "<MEMBER_ID>")
    .replace(&format!("{:x}", m.cluster_id), "<CLUSTER_ID>")
    .replace(&format!("{:x}", m.member_id), "<MEMBER_ID>")
}

/// Simple output, line by line.
fn text(m: &Member, s: &str, remaining: &mut Vec<i64>) -> String {
    let mut out = String::new();
    for line in ids(m, s).lines() {
        let mut l = line.to_string();
        // "lease <hex> granted ...", "... revoked", "... keepalived ...",
        // "... already expired"
        if let Some(rest) = l.strip_prefix("lease ") {
            if let Some(hex) = rest.split_whitespace().next() {
                if let Some(name) = lease_hex(m, hex) {
                    l = format!("lease {name}{}", &rest[hex.len()..]);
                }
            }
        }
        // a `lease list` line
        if let Some(name) = lease_hex(m, l.trim()) {
            if l.trim().len() >= 2 {
                l = name;
            }
        }
        // `-w fields`: "Lease" : 7587862003532449295
        for field in ["\"Lease\" : ", "\"ID\" : "] {
            if let Some(dec) = l.strip_prefix(field) {
                if let Some(name) = dec.parse().ok().and_then(|id| lease_name(m, id)) {
                    l = format!("{field}{name}");
                }
            }
        }
        // "..., remaining(59s), attached keys([b a])"
        if let Some(i) = l.find("remaining(") {
            let from = i + "remaining(".len();
            if let Some(j) = l[from..].find("s)") {
                if let Ok(n) = l[from..from + j].parse::<i64>() {
                    remaining.push(n);
                    l = format!("{}<REMAINING>{}", &l[..from], &l[from + j..]);
                }
            }
        }
        if let Some(i) = l.find("attached keys([") {
            let from = i + "attached keys([".len();
            if let Some(j) = l[from..].find("])") {
                let mut keys: Vec<&str> = l[from..from + j].split(' ').collect();
                keys.sort();
                l = format!("{}{}{}", &l[..from], keys.join(" "), &l[from + j..]);
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn json_ids(m: &Member, v: &mut Value, remaining: &mut Vec<i64>) {
    match v {
        Value::Object(map) => {
            let is_ttl_response = map.contains_key("granted-ttl");
            for (k, v) in map.iter_mut() {
                let num = v.as_u64();
                match k.as_str() {
                    "cluster_id" if num == Some(m.cluster_id) => *v = "<CLUSTER_ID>".into(),
                    "member_id" if num == Some(m.member_id) => *v = "<MEMBER_ID>".into(),
                    "ID" | "id" | "lease" => {
                        if let Some(name) = v.as_i64().and_then(|id| lease_name(m, id)) {
                            *v = name.into();
                        }
                    }
                    "ttl" if is_ttl_response => {
                        if let Some(n) = v.as_i64() {
                            remaining.push(n);
                            *v = "<REMAINING>".into();
                        }
                    }
                    "keys" if is_ttl_response => {
                        if let Value::Array(a) = v {
                            a.sort_by_key(|x| x.to_string());
                        }
                    }
                    _ => json_ids(m, v, remaining),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| json_ids(m, v, remaining)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Long-running etcdctl processes
// ---------------------------------------------------------------------------

/// Output collected by a reader thread.
type Buffer = Arc<Mutex<Vec<u8>>>;

/// A running `etcdctl watch ...` whose output is collected by threads.
struct Running {
    child: Child,
    stdout: Buffer,
    stderr: Buffer,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(endpoint: &str, args: &[String]) -> Running {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = etcdctl_spawn(endpoint, &refs);
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let pipes: [(Box<dyn Read + Send>, Buffer); 2] = [
            (Box::new(child.stdout.take().unwrap()), stdout.clone()),
            (Box::new(child.stderr.take().unwrap()), stderr.clone()),
        ];
        for (mut pipe, buf) in pipes {
            readers.push(std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            }));
        }
        Running {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stdin(&mut self, s: &str) {
        let pipe = self.child.stdin.as_mut().unwrap();
        pipe.write_all(s.as_bytes()).unwrap();
        pipe.flush().unwrap();
    }

    /// Waits until stdout contains `needle` `times` times; false on timeout
    /// or exit.
    fn wait_for(&mut self, needle: &str, times: usize, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            if self.output().matches(needle).count() >= times {
                return true;
            }
            if Instant::now() > until || !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process and returns (stdout, stderr, exit code).
    fn finish(mut self) -> (Vec<u8>, Vec<u8>, Option<i32>) {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let out = self.stdout.lock().unwrap().clone();
        let err = self.stderr.lock().unwrap().clone();
        // Killed by the test: the exit status says only that.
        let code = status.and_then(|s| s.code());
        (out, err, code)
    }
}

/// One `etcdctl watch` per server, started together.
struct Watches {
    args: Vec<Vec<String>>,
    running: Vec<Running>,
}

impl Pair {
    fn watch_f(&mut self, args: impl Fn(&Member) -> Vec<String>) -> Watches {
        let mut all = Vec::new();
        let mut running = Vec::new();
        for m in self.members() {
            let a = args(m);
            running.push(Running::start(&m.server.endpoint(), &a));
            all.push(a);
        }
        Watches { args: all, running }
    }

    fn watch(&mut self, args: &[&str]) -> Watches {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.watch_f(|_| args.clone())
    }

    /// Puts `KEY=ping-N` on both servers (N = 1, 2, ...) until both
    /// watchers have printed a ping; returns how many were sent.
    fn ping_until_watching(&mut self, w: &mut Watches, key: &str) -> usize {
        let until = Instant::now() + WATCH_DEADLINE;
        for n in 1.. {
            self.ok(&["put", key, &format!("ping-{n}")]);
            let seen = w
                .running
                .iter_mut()
                .all(|r| r.wait_for("ping-", 1, Duration::from_millis(300)));
            if seen {
                return n;
            }
            assert!(
                Instant::now() < until,
                "etcdctl {} printed no ping within {WATCH_DEADLINE:?}: etcd {:?}, {} {:?}",
                w.args[0].join(" "),
                w.running[0].output(),
                self.other_name(),
                w.running[1].output()
            );
        }
        unreachable!()
    }

    /// Waits until each watcher printed `needle` `times` times, kills them,
    /// and compares their normalized output (from the line after the last
    /// line containing `after`, if given). Returns etcd's.
    fn finish_watch(&mut self, w: Watches, needle: &str, times: usize, after: Option<&str>) -> Out {
        let mut outs = Vec::new();
        let Watches { args, running } = w;
        let mut running: Vec<Running> = running;
        let mut waited = Vec::new();
        for r in running.iter_mut() {
            waited.push(r.wait_for(needle, times, WATCH_DEADLINE));
        }
        // Anything unexpected after the awaited output shows up too.
        std::thread::sleep(Duration::from_millis(300));
        let members = [&self.etcd, &self.other];
        for ((r, m), a) in running.into_iter().zip(members).zip(&args) {
            let (out, err, _code) = r.finish();
            let mut out = String::from_utf8_lossy(&out).into_owned();
            if let Some(after) = after {
                let lines: Vec<&str> = out.lines().collect();
                if let Some(i) = lines.iter().rposition(|l| l.contains(after)) {
                    out = lines[i + 1..].iter().map(|l| format!("{l}\n")).collect();
                }
            }
            // The exit status is the kill's: not compared.
            let (o, _) = normalize(m, a, out.as_bytes(), &err, None);
            outs.push(o);
        }
        let b = outs.pop().unwrap();
        let a = outs.pop().unwrap();
        trace(&args[0].join(" "), &a);
        assert_eq!(
            a,
            b,
            "etcdctl {} printed differently (waited for {times}× {needle:?}: etcd {}, {} {})\n--- \
             etcd:\n{}\n--- {}:\n{}",
            args[0].join(" "),
            waited[0],
            self.other_name(),
            waited[1],
            render(&a),
            self.other_name(),
            render(&b)
        );
        assert!(
            waited[0],
            "etcd's etcdctl {} never printed {times}× {needle:?}:\n{}",
            args[0].join(" "),
            render(&a)
        );
        a
    }
}

/// `CAIRN_ETCDCTL_TRACE=1`: print every command with etcd's normalized
/// output.
fn trace(cmd: &str, o: &Out) {
    if std::env::var("CAIRN_ETCDCTL_TRACE").is_ok_and(|v| v == "1") {
        eprintln!("$ etcdctl {cmd}\n{}\n", render(o));
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------

/// `watch KEY`: events after the watcher exists (puts, delete, re-create).
#[test]
fn watch_key() {
    let mut p = pair();
    let mut w = p.watch(&["watch", "ctl-wl/wk/k"]);
    p.ping_until_watching(&mut w, "ctl-wl/wk/k");
    p.ok(&["put", "ctl-wl/wk/k", "v1"]);
    p.ok(&["put", "ctl-wl/wk/other", "x"]);
    p.ok(&["put", "ctl-wl/wk/k", "v2"]);
    p.ok(&["del", "ctl-wl/wk/k"]);
    p.ok(&["put", "ctl-wl/wk/k", "end"]);
    let o = p.finish_watch(w, "end", 1, Some("ping-"));
    assert!(
        o.stdout.starts_with("PUT\nctl-wl/wk/k\nv1\n") && !o.stdout.contains("other"),
        "{o:?}"
    );
}

/// `watch --prefix P` and `watch --prefix --prev-kv P`, with a txn.
#[test]
fn watch_prefix() {
    let mut p = pair();
    for prev in [false, true] {
        let mut args = vec!["watch", "--prefix", "ctl-wl/wp/"];
        if prev {
            args.push("--prev-kv");
        }
        let mut w = p.watch(&args);
        p.ping_until_watching(&mut w, "ctl-wl/wp/ping");
        p.ok(&["put", "ctl-wl/wp/a", "1"]);
        p.ok(&["put", "ctl-wl/wp/a", "2"]);
        p.ok(&["put", "ctl-wl/wpx", "outside"]);
        let o = p.same_f(
            |_| strings(&["txn"]),
            Some("\n\nput ctl-wl/wp/b 1\nput ctl-wl/wp/c 1\ndel ctl-wl/wp/a\n\n\n"),
        );
        assert_eq!(o.code, Some(0), "{o:?}");
        // Not the ping key: its prev_kv would print a ping.
        p.ok(&["del", "ctl-wl/wp/a", "ctl-wl/wp/d"]);
        p.ok(&["put", "ctl-wl/wp/z", "end"]);
        p.finish_watch(w, "end", 1, Some("ping-"));
    }
}

/// `watch --rev N` (replay from a past revision), with `--prev-kv`,
/// `--prefix`, `-w json`, and a range `watch KEY END`.
#[test]
fn watch_from_revision() {
    let mut p = pair();
    let r0 = p.revision();
    p.ok(&["put", "ctl-wl/wr/k", "v1"]);
    p.ok(&["put", "ctl-wl/wr/k", "v2"]);
    p.ok(&["put", "ctl-wl/wr/j", "j1"]);
    p.ok(&["del", "ctl-wl/wr/k"]);
    p.ok(&["put", "ctl-wl/wr/k", "v3"]);
    p.ok(&["put", "ctl-wl/wr/z", "end"]);
    let rev = format!("--rev={}", r0 + 1);
    // (command, what its last replayed event prints; JSON has base64)
    for (args, last) in [
        (vec!["watch", &rev, "ctl-wl/wr/k"], "v3"),
        (vec!["watch", &rev, "--prev-kv", "ctl-wl/wr/k"], "v3"),
        (vec!["watch", "--rev", "1", "--prefix", "ctl-wl/wr/"], "end"),
        (
            vec!["watch", &rev, "--prefix", "--prev-kv", "ctl-wl/wr/"],
            "end",
        ),
        (vec!["watch", &rev, "ctl-wl/wr/a", "ctl-wl/wr/l"], "v3"),
        (
            vec!["watch", &rev, "--prefix", "ctl-wl/wr/", "-w", "json"],
            "ZW5k",
        ),
        (
            vec!["watch", &rev, "--prev-kv", "ctl-wl/wr/k", "-w", "json"],
            "djM=",
        ),
    ] {
        let w = p.watch(&args);
        p.finish_watch(w, last, 1, None);
    }
    // Live events after the replay.
    let mut w = p.watch(&["watch", &rev, "ctl-wl/wr/k"]);
    for r in w.running.iter_mut() {
        assert!(r.wait_for("v3", 1, WATCH_DEADLINE), "no replay");
    }
    p.ok(&["put", "ctl-wl/wr/k", "live"]);
    p.finish_watch(w, "live", 1, None);
}

/// `watch -i`: `watch` and `progress` commands on stdin.
#[test]
fn watch_interactive() {
    let mut p = pair();
    for cmd in [
        "watch ctl-wl/wi/k",
        "watch --prefix ctl-wl/wi/",
        "watch --prev-kv ctl-wl/wi/k",
    ] {
        let mut w = p.watch(&["watch", "-i"]);
        for r in w.running.iter_mut() {
            r.stdin(&format!("{cmd}\nprogress\n"));
        }
        for (r, name) in w.running.iter_mut().zip(["etcd", "other"]) {
            assert!(
                r.wait_for("progress notify", 1, WATCH_DEADLINE),
                "{name}: no progress notification for `{cmd}`: {:?}",
                r.output()
            );
        }
        p.ok(&["put", "ctl-wl/wi/k", "1"]);
        p.ok(&["put", "ctl-wl/wi/k", "2"]);
        p.ok(&["put", "ctl-wl/wi/j", "j"]);
        p.ok(&["del", "ctl-wl/wi/k"]);
        p.ok(&["put", "ctl-wl/wi/k", "end"]);
        for r in w.running.iter_mut() {
            r.stdin("progress\n");
        }
        let o = p.finish_watch(w, "progress notify", 2, None);
        assert!(o.stdout.contains("end"), "{o:?}");
    }
}

// ---------------------------------------------------------------------------
// Lease
// ---------------------------------------------------------------------------

#[test]
fn lease_lifecycle() {
    let mut p = pair();
    let l = p.etcd.leases.len();
    p.ok(&["lease", "grant", "60"]);
    p.ok(&["lease", "grant", "120", "-w", "json"]);
    p.ok(&["lease", "list"]);
    p.ok(&["lease", "list", "-w", "json"]);
    p.ok_f(|m| strings(&["put", &format!("--lease={}", m.lease(l)), "ctl-wl/l/a", "1"]));
    p.ok_f(|m| strings(&["put", &format!("--lease={}", m.lease(l)), "ctl-wl/l/b", "1"]));
    p.ok_f(|m| {
        strings(&[
            "put",
            &format!("--lease={}", m.lease(l + 1)),
            "ctl-wl/l/c",
            "1",
        ])
    });
    p.ok(&["get", "ctl-wl/l/a", "-w", "json"]);
    p.ok(&["get", "ctl-wl/l/", "--prefix", "-w", "json"]);
    p.ok(&["get", "ctl-wl/l/a", "-w", "fields"]);
    p.ok_f(|m| strings(&["lease", "timetolive", &m.lease(l)]));
    p.ok_f(|m| strings(&["lease", "timetolive", &m.lease(l), "--keys"]));
    p.ok_f(|m| strings(&["lease", "timetolive", &m.lease(l), "--keys", "-w", "json"]));
    p.ok_f(|m| strings(&["lease", "timetolive", &m.lease(l + 1), "--keys"]));
    p.ok_f(|m| strings(&["lease", "keep-alive", "--once", &m.lease(l)]));
    p.ok_f(|m| strings(&["lease", "keep-alive", "--once", &m.lease(l), "-w", "json"]));
    // A put without --lease detaches the key.
    p.ok(&["put", "ctl-wl/l/b", "2"]);
    p.ok_f(|m| strings(&["lease", "timetolive", &m.lease(l), "--keys"]));
    p.ok_f(|m| strings(&["lease", "revoke", &m.lease(l)]));
    p.ok(&["get", "ctl-wl/l/", "--prefix", "-w", "json"]);
    p.ok_f(|m| strings(&["lease", "timetolive", &m.lease(l)]));
    p.ok_f(|m| strings(&["lease", "timetolive", &m.lease(l), "-w", "json"]));
    let o = p.same_f(|m| strings(&["lease", "revoke", &m.lease(l)]), None);
    assert_ne!(o.code, Some(0), "{o:?}");
    p.ok(&["lease", "list"]);
    p.ok_f(|m| strings(&["lease", "revoke", &m.lease(l + 1), "-w", "json"]));
    p.ok(&["get", "ctl-wl/l/", "--prefix"]);
    p.ok(&["lease", "list"]);
}

#[test]
fn lease_errors() {
    let mut p = pair();
    let o = p.same(&["put", "--lease=1234abcd", "ctl-wl/le/k", "v"]);
    assert!(
        o.stderr
            .contains("Error: etcdserver: requested lease not found"),
        "{o:?}"
    );
    let o = p.same(&["lease", "revoke", "1234abcd"]);
    assert_ne!(o.code, Some(0), "{o:?}");
    p.ok(&["lease", "timetolive", "1234abcd"]);
    p.ok(&["lease", "timetolive", "1234abcd", "-w", "json"]);
    let o = p.same(&["lease", "keep-alive", "--once", "1234abcd"]);
    assert_ne!(o.code, Some(0), "{o:?}");
    let o = p.same(&["lease", "grant", "9000000001"]);
    assert!(
        o.stderr
            .contains("Error: failed to grant lease (etcdserver: too large lease TTL)"),
        "{o:?}"
    );
    let l = p.etcd.leases.len();
    // Below the minimum TTL: raised to it.
    p.ok(&["lease", "grant", "1"]);
    p.ok_f(|m| strings(&["lease", "revoke", &m.lease(l)]));
}

/// `lease keep-alive ID` (not `--once`): its first renewal.
#[test]
fn lease_keep_alive_stream() {
    let mut p = pair();
    let l = p.etcd.leases.len();
    p.ok(&["lease", "grant", "30"]);
    let w = p.watch_f(|m| strings(&["lease", "keep-alive", &m.lease(l)]));
    p.finish_watch(w, "keepalived", 1, None);
    p.ok_f(|m| strings(&["lease", "timetolive", &m.lease(l)]));
    p.ok_f(|m| strings(&["lease", "revoke", &m.lease(l)]));
}

/// Keys of a revoked lease disappear from a watcher's view in one revision.
#[test]
fn lease_revoke_seen_by_watch() {
    let mut p = pair();
    let l = p.etcd.leases.len();
    p.ok(&["lease", "grant", "300"]);
    for k in ["a", "b", "c"] {
        p.ok_f(|m| {
            strings(&[
                "put",
                &format!("--lease={}", m.lease(l)),
                &format!("ctl-wl/lw/{k}"),
                "v",
            ])
        });
    }
    let r = p.revision();
    let w = p.watch(&[
        "watch",
        &format!("--rev={}", r + 1),
        "--prefix",
        "--prev-kv",
        "ctl-wl/lw/",
        "-w",
        "json",
    ]);
    p.ok_f(|m| strings(&["lease", "revoke", &m.lease(l)]));
    // The third delete's key, base64("ctl-wl/lw/c").
    let o = p.finish_watch(w, "Y3RsLXdsL2x3L2M=", 2, None);
    let docs: Vec<Value> = serde_json::Deserializer::from_str(&o.stdout)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect();
    assert_eq!(docs.len(), 1, "one response: {o:?}");
    assert_eq!(docs[0]["Events"].as_array().unwrap().len(), 3, "{o:?}");
}
