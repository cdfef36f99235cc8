//! The real `etcdctl` (ETCDCTL_API=3, Debian's 3.4.23) against cairn.
//!
//! Every command runs against a real etcd and against cairn (one shared pair
//! for the whole file; tests take turns through a lock so both servers see
//! the same writes in the same order and so the same revisions). Outputs —
//! exit status, stdout, stderr — must be identical after these
//! normalizations, and only these:
//!
//! - the server's own cluster id and member id (decimal in JSON and
//!   `-w fields`, hex in tables and simple output) → `<CLUSTER_ID>`,
//!   `<MEMBER_ID>` (taken from each server's `Status` header, so a member id
//!   printed by `member list` must equal the header's);
//! - the server's client and peer addresses (the ports differ) →
//!   `<CLIENT_ADDR>`, `<PEER_ADDR>`;
//! - `endpoint status` only: VERSION → `<VERSION>` (cairn's is checked on its
//!   own: semver ≥ 3.5.13, CONTRACT.md §5), DB SIZE / dbSize / dbSizeInUse →
//!   `<DB_SIZE>`, RAFT INDEX / RAFT APPLIED INDEX / raftIndex /
//!   raftAppliedIndex → `<RAFT_INDEX>` (the raft logs legitimately hold
//!   different entries); the raft term is compared as is;
//! - `endpoint health`: the measured duration ("took") → `<DURATION>`;
//! - stderr: etcdctl's own client retry log lines (JSON lines starting with
//!   `{"level":`, which carry timestamps and random client ids) are dropped;
//!   the `Error: ...` lines are kept;
//! - tables are compared cell by cell (column widths follow the cell
//!   contents, which the normalizations above change); JSON is compared
//!   parsed (etcdctl, not the server, decides key order and spacing).
//!
//! `CAIRN_ETCDCTL_TARGET=etcd` runs the same tests against two etcds (to
//! validate the normalizations).

mod common;

use std::sync::{Mutex, MutexGuard, OnceLock};

use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::StatusRequest;
use common::{etcdctl, start_pair, Kind, Server};
use serde_json::Value;

// ---------------------------------------------------------------------------
// The shared pair
// ---------------------------------------------------------------------------

struct Member {
    server: Server,
    cluster_id: u64,
    member_id: u64,
}

struct Pair {
    etcd: Member,
    other: Member,
    /// Pass `--endpoints=127.0.0.1:P` instead of `http://127.0.0.1:P`.
    schemeless: bool,
}

/// The shared etcd + cairn pair, locked for the caller's whole test.
fn pair() -> MutexGuard<'static, Pair> {
    static PAIR: OnceLock<Mutex<Pair>> = OnceLock::new();
    PAIR.get_or_init(|| {
        let kind = common::target_from_env("CAIRN_ETCDCTL_TARGET");
        let (e, o) = start_pair(Kind::Etcd, kind);
        Mutex::new(Pair {
            etcd: member(e),
            other: member(o),
            schemeless: false,
        })
    })
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

fn member(server: Server) -> Member {
    let st = status(&server.endpoint());
    let h = st.header.expect("Status without a header");
    Member {
        server,
        cluster_id: h.cluster_id,
        member_id: h.member_id,
    }
}

fn status(endpoint: &str) -> cairn::pb::etcdserverpb::StatusResponse {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        MaintenanceClient::connect(endpoint.to_string())
            .await
            .unwrap()
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
    })
}

/// One etcdctl run, normalized.
#[derive(Debug, PartialEq, Clone)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// `header.revision` of a `-w json` output.
    fn revision(&self) -> i64 {
        self.json()["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no header.revision in {}", self.stdout))
    }
}

impl Pair {
    /// `--endpoints` for a member: `http://127.0.0.1:P`, or with
    /// `SCHEMELESS` set, `127.0.0.1:P`.
    fn endpoint(&self, m: &Member) -> String {
        let e = m.server.endpoint();
        if self.schemeless {
            e.trim_start_matches("http://").to_string()
        } else {
            e
        }
    }

    fn run(&self, m: &Member, args: &[&str], stdin: Option<&str>) -> Out {
        let o = etcdctl(&self.endpoint(m), args, stdin);
        normalize(m, args, &o)
    }

    /// Runs on both; the normalized outputs must be equal. Returns etcd's.
    fn same_in(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let a = self.run(&self.etcd, args, stdin);
        let b = self.run(&self.other, args, stdin);
        assert_eq!(
            a,
            b,
            "etcdctl {} differs{}\n--- etcd:\n{}\n--- {}:\n{}",
            args.join(" "),
            stdin.map(|s| format!(" (stdin {s:?})")).unwrap_or_default(),
            render(&a),
            self.other.server.kind().name(),
            render(&b)
        );
        a
    }

    fn same(&self, args: &[&str]) -> Out {
        self.same_in(args, None)
    }

    /// Like `same`, and the command must succeed.
    fn ok(&self, args: &[&str]) -> Out {
        let o = self.same(args);
        assert_eq!(o.code, Some(0), "etcdctl {} failed: {o:?}", args.join(" "));
        o
    }

    /// Like `same`, and the command must fail with this `Error:` line.
    fn err(&self, args: &[&str], error: &str) -> Out {
        let o = self.same(args);
        assert_ne!(o.code, Some(0), "etcdctl {} succeeded", args.join(" "));
        assert!(
            o.stderr.contains(error),
            "etcdctl {}: expected {error:?} in {:?}",
            args.join(" "),
            o.stderr
        );
        o
    }
}

fn render(o: &Out) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.code, o.stdout, o.stderr
    )
}

// ---------------------------------------------------------------------------
// Normalization (see the module doc)
// ---------------------------------------------------------------------------

fn normalize(m: &Member, args: &[&str], o: &std::process::Output) -> Out {
    let is_json = args
        .windows(2)
        .any(|w| (w[0] == "-w" || w[0] == "--write-out") && w[1] == "json")
        || args.contains(&"--write-out=json")
        || args.contains(&"-w=json");
    let is_status = args.starts_with(&["endpoint", "status"]);
    let is_health = args.starts_with(&["endpoint", "health"]);
    let raw = String::from_utf8_lossy(&o.stdout);
    let mut stdout = text_ids(m, &raw);
    if is_json {
        if let Ok(mut v) = serde_json::from_str::<Value>(&raw) {
            json_ids(m, &mut v, is_status);
            stdout = text_ids(m, &serde_json::to_string_pretty(&v).unwrap());
        }
    } else if args.contains(&"protobuf") && args[0] == "get" {
        // The marshalled RangeResponse: decode it, clear the ids.
        use prost::Message;
        if let Ok(mut r) = cairn::pb::etcdserverpb::RangeResponse::decode(&o.stdout[..]) {
            if let Some(h) = &mut r.header {
                assert_eq!(h.cluster_id, m.cluster_id);
                assert_eq!(h.member_id, m.member_id);
                h.cluster_id = 0;
                h.member_id = 0;
            }
            stdout = format!("{r:?}\n");
        }
    } else if stdout.starts_with("+-") {
        stdout = table(&stdout, is_status, is_health);
    } else if is_status {
        // Simple output: ENDPOINT, ID, VERSION, DB SIZE, IS LEADER,
        // IS LEARNER, RAFT TERM, RAFT INDEX, RAFT APPLIED INDEX, ERRORS
        stdout = stdout
            .lines()
            .map(|l| {
                let mut f: Vec<String> = l.split(", ").map(str::to_string).collect();
                if f.len() >= 9 {
                    f[2] = "<VERSION>".into();
                    f[3] = "<DB_SIZE>".into();
                    f[7] = "<RAFT_INDEX>".into();
                    f[8] = "<RAFT_INDEX>".into();
                }
                f.join(", ") + "\n"
            })
            .collect();
    }
    let mut stderr: String = text_ids(m, &String::from_utf8_lossy(&o.stderr))
        .lines()
        .filter(|l| !l.starts_with("{\"level\":"))
        .map(|l| format!("{l}\n"))
        .collect();
    if is_health {
        // etcdctl 3.4 prints the simple form on stderr.
        for text in [&mut stdout, &mut stderr] {
            *text = text
                .lines()
                .map(|l| match l.find("took = ") {
                    Some(i) => format!("{}took = <DURATION>\n", &l[..i]),
                    None => format!("{l}\n"),
                })
                .collect();
        }
    }
    Out {
        code: o.status.code(),
        stdout,
        stderr,
    }
}

fn text_ids(m: &Member, s: &str) -> String {
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

fn json_ids(m: &Member, v: &mut Value, is_status: bool) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let id = v.as_u64();
                match k.as_str() {
                    "cluster_id" | "ClusterID" if id == Some(m.cluster_id) => {
                        *v = "<CLUSTER_ID>".into()
                    }
                    "member_id" | "MemberID" | "ID" | "leader" if id == Some(m.member_id) => {
                        *v = "<MEMBER_ID>".into()
                    }
                    "version" if is_status && v.is_string() => *v = "<VERSION>".into(),
                    "dbSize" | "dbSizeInUse" if is_status => *v = "<DB_SIZE>".into(),
                    "raftIndex" | "raftAppliedIndex" if is_status => *v = "<RAFT_INDEX>".into(),
                    "took" => *v = "<DURATION>".into(),
                    _ => json_ids(m, v, is_status),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| json_ids(m, v, is_status)),
        _ => {}
    }
}

/// A `-w table` output as rows of trimmed cells, with the status columns
/// that legitimately differ replaced.
fn table(s: &str, is_status: bool, is_health: bool) -> String {
    let rows: Vec<Vec<String>> = s
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    let Some(header) = rows.first().cloned() else {
        return s.to_string();
    };
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(j, c)| {
                let col = header.get(j).map(String::as_str).unwrap_or("");
                match col {
                    "VERSION" if is_status && i > 0 => "<VERSION>".into(),
                    "DB SIZE" if is_status && i > 0 => "<DB_SIZE>".into(),
                    "RAFT INDEX" | "RAFT APPLIED INDEX" if is_status && i > 0 => {
                        "<RAFT_INDEX>".into()
                    }
                    "TOOK" if is_health && i > 0 => "<DURATION>".into(),
                    _ => c.clone(),
                }
            })
            .collect();
        out.push_str(&cells.join(" | "));
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn put_and_get() {
    let p = pair();
    p.ok(&["put", "ctl/pg/foo", "bar"]);
    p.ok(&["put", "ctl/pg/sp", "a value with spaces"]);
    p.ok(&["put", "ctl/pg/empty", ""]);
    p.ok(&["put", "ctl/pg/foo", "bar2", "--prev-kv"]);
    p.ok(&["put", "ctl/pg/j", "v", "-w", "json"]);
    p.ok(&["put", "ctl/pg/j", "v2", "--prev-kv", "-w", "json"]);
    p.ok(&["put", "ctl/pg/j", "--ignore-value", "-w", "json"]);
    p.ok(&["get", "ctl/pg/foo"]);
    p.ok(&["get", "ctl/pg/empty"]);
    p.ok(&["get", "ctl/pg/missing"]);
    p.ok(&["get", "ctl/pg/missing", "-w", "json"]);
    p.ok(&["get", "ctl/pg/foo", "-w", "json"]);
    p.ok(&["get", "ctl/pg/foo", "-w", "fields"]);
    p.ok(&["get", "ctl/pg/foo", "-w", "protobuf"]);
    p.ok(&["get", "ctl/pg/foo", "--print-value-only"]);
    p.ok(&["get", "ctl/pg/sp", "--hex"]);
    p.ok(&["get", "ctl/pg/foo", "--consistency=s", "-w", "json"]);
    p.err(&["get", ""], "Error: etcdserver: key is not provided");
    p.err(&["put", "", "v"], "Error: etcdserver: key is not provided");
    p.err(
        &["put", "ctl/pg/nokey", "--ignore-value"],
        "Error: etcdserver: key not found",
    );
    // The value comes from stdin when not on the command line; 1.6 MiB is
    // over --max-request-bytes.
    let big = "x".repeat(1_677_722);
    let o = p.same_in(&["put", "ctl/pg/big"], Some(&big));
    assert!(
        o.stderr.contains("Error: etcdserver: request is too large"),
        "{o:?}"
    );
    p.ok(&["get", "ctl/pg/", "--prefix", "-w", "json"]);
}

#[test]
fn get_ranges() {
    let p = pair();
    for k in ["a", "b", "c", "d", "e"] {
        p.ok(&["put", &format!("ctl/r/{k}"), &format!("v-{k}")]);
    }
    p.ok(&["put", "ctl/r0", "outside"]);
    p.ok(&["get", "ctl/r/", "--prefix"]);
    p.ok(&["get", "ctl/r/", "--prefix", "-w", "json"]);
    p.ok(&["get", "ctl/r/", "--prefix", "--keys-only"]);
    p.ok(&["get", "ctl/r/", "--prefix", "--keys-only", "-w", "json"]);
    p.ok(&["get", "ctl/r/", "--prefix", "--print-value-only"]);
    p.ok(&["get", "ctl/r/", "--prefix", "--limit", "2"]);
    // more and count in JSON.
    p.ok(&["get", "ctl/r/", "--prefix", "--limit", "2", "-w", "json"]);
    p.ok(&["get", "ctl/r/", "--prefix", "--limit", "5", "-w", "json"]);
    p.ok(&["get", "ctl/r/b", "ctl/r/d"]);
    p.ok(&["get", "ctl/r/b", "ctl/r/d", "-w", "json"]);
    p.ok(&["get", "ctl/r/c", "--from-key"]);
    p.ok(&["get", "ctl/r/c", "--from-key", "--limit", "3", "-w", "json"]);
    p.ok(&[
        "get",
        "ctl/r/c",
        "--from-key",
        "--keys-only",
        "--limit",
        "4",
    ]);
    p.ok(&[
        "get",
        "ctl/r/",
        "--prefix",
        "--consistency=s",
        "--keys-only",
    ]);
    p.ok(&["get", "ctl/r/", "--prefix", "-w", "fields"]);
}

#[test]
fn get_sorted() {
    let p = pair();
    // Creation order c, a, b; updates make mod order a, b, c and versions
    // distinct.
    for (k, v) in [
        ("c", "1"),
        ("a", "3"),
        ("b", "2"),
        ("c", "11"),
        ("c", "0"),
        ("a", "33"),
        ("b", "22"),
        ("c", "111"),
    ] {
        p.ok(&["put", &format!("ctl/s/{k}"), v]);
    }
    for by in ["KEY", "CREATE", "MODIFY", "VALUE", "VERSION"] {
        p.ok(&["get", "ctl/s/", "--prefix", "--sort-by", by]);
        for order in ["ASCEND", "DESCEND"] {
            p.ok(&[
                "get",
                "ctl/s/",
                "--prefix",
                "--sort-by",
                by,
                "--order",
                order,
            ]);
        }
        p.ok(&[
            "get",
            "ctl/s/",
            "--prefix",
            "--sort-by",
            by,
            "--order",
            "DESCEND",
            "--limit",
            "2",
            "-w",
            "json",
        ]);
    }
    p.ok(&["get", "ctl/s/", "--prefix", "--order", "DESCEND"]);
    p.ok(&[
        "get",
        "ctl/s/",
        "--prefix",
        "--order",
        "DESCEND",
        "--keys-only",
    ]);
}

#[test]
fn get_at_revision() {
    let p = pair();
    let r1 = p.ok(&["put", "ctl/rev/k", "v1", "-w", "json"]).revision();
    let r2 = p.ok(&["put", "ctl/rev/k", "v2", "-w", "json"]).revision();
    p.ok(&["put", "ctl/rev/k", "v3"]);
    p.ok(&["put", "ctl/rev/other", "o"]);
    p.ok(&["get", "ctl/rev/k", &format!("--rev={r1}")]);
    p.ok(&["get", "ctl/rev/k", "--rev", &r2.to_string(), "-w", "json"]);
    p.ok(&["get", "ctl/rev/", "--prefix", &format!("--rev={r2}")]);
    p.ok(&["get", "ctl/rev/", "--prefix", "--rev=0", "-w", "json"]);
    let cur = p.ok(&["get", "ctl/rev/k", "-w", "json"]).revision();
    p.err(
        &["get", "ctl/rev/k", &format!("--rev={}", cur + 10)],
        "Error: etcdserver: mvcc: required revision is a future revision",
    );
}

#[test]
fn del() {
    let p = pair();
    for k in ["a", "b", "c", "d", "e"] {
        p.ok(&["put", &format!("ctl/d/{k}"), k]);
    }
    p.ok(&["put", "ctl/d0", "outside"]);
    p.ok(&["put", "ctl/dz/1", "z"]);
    p.ok(&["del", "ctl/d/a"]);
    p.ok(&["del", "ctl/d/a"]);
    p.ok(&["del", "ctl/d/b", "--prev-kv"]);
    p.ok(&["del", "ctl/d/c", "--prev-kv", "-w", "json"]);
    p.ok(&["del", "ctl/d/missing", "--prev-kv", "-w", "json"]);
    p.ok(&["del", "ctl/d/", "--prefix", "--prev-kv"]);
    p.ok(&["put", "ctl/d/x", "x"]);
    p.ok(&["del", "ctl/d/", "--prefix", "-w", "json"]);
    p.ok(&["del", "ctl/d0", "ctl/dz/2", "--prev-kv"]);
    p.ok(&["put", "ctl/dzz", "zz"]);
    p.ok(&["del", "ctl/dz", "--from-key", "--prev-kv", "-w", "json"]);
    p.ok(&["get", "ctl/d", "--prefix"]);
}

#[test]
fn txn_from_stdin() {
    let p = pair();
    p.ok(&["put", "ctl/t/k", "v"]);
    p.ok(&["put", "ctl/t/n", "1"]);
    let run = |input: &str, json: bool| {
        let mut args = vec!["txn"];
        if json {
            args.extend(["-w", "json"]);
        }
        let o = p.same_in(&args, Some(input));
        assert_eq!(o.code, Some(0), "txn {input:?}: {o:?}");
        o
    };
    // compares, blank line, success ops, blank line, failure ops, blank line
    let o = run(
        "value(\"ctl/t/k\") = \"v\"\n\nput ctl/t/k v2\nget ctl/t/k\n\nput ctl/t/fail x\n\n",
        false,
    );
    assert!(o.stdout.starts_with("SUCCESS"), "{o:?}");
    let o = run(
        "value(\"ctl/t/k\") = \"v\"\n\nput ctl/t/k v3\n\nget ctl/t/k\nget ctl/t/ --prefix\n\n",
        false,
    );
    assert!(o.stdout.starts_with("FAILURE"), "{o:?}");
    run(
        "version(\"ctl/t/k\") = \"2\"\nmod(\"ctl/t/n\") > \"0\"\ncreate(\"ctl/t/missing\") = \"0\"\n\n\
         put ctl/t/a 1\ndel ctl/t/n\nget ctl/t/ --prefix --keys-only\n\nget ctl/t/k\n\n",
        true,
    );
    run(
        "mod(\"ctl/t/missing\") = \"0\"\n\nput ctl/t/created yes\n\n\n",
        false,
    );
    run(
        "mod(\"ctl/t/created\") = \"0\"\n\nput ctl/t/created again\n\nget ctl/t/created\n\n",
        true,
    );
    run(
        "value(\"ctl/t/k\") != \"zz\"\nversion(\"ctl/t/k\") < \"10\"\n\n\
         del ctl/t/ --prefix --prev-kv\n\n\n",
        false,
    );
    run("\n\nput ctl/t/nocmp 1\n\n\n", true);
    run("\nget ctl/t/nocmp\n\n\n", false);
    // A duplicate key is refused by the server.
    let o = p.same_in(&["txn"], Some("\n\nput ctl/t/dup 1\nput ctl/t/dup 2\n\n\n"));
    assert!(
        o.stderr
            .contains("Error: etcdserver: duplicate key given in txn request"),
        "{o:?}"
    );
    p.ok(&["get", "ctl/t/", "--prefix", "-w", "json"]);
}

#[test]
fn compaction() {
    let p = pair();
    let r1 = p.ok(&["put", "ctl/c/k", "1", "-w", "json"]).revision();
    p.ok(&["put", "ctl/c/k", "2"]);
    let r3 = p.ok(&["put", "ctl/c/k", "3", "-w", "json"]).revision();
    p.ok(&["put", "ctl/c/k", "4"]);
    let r5 = p.ok(&["put", "ctl/c/k", "5", "-w", "json"]).revision();
    p.ok(&["compaction", &r3.to_string()]);
    p.err(
        &["get", "ctl/c/k", &format!("--rev={r1}")],
        "Error: etcdserver: mvcc: required revision has been compacted",
    );
    p.ok(&["get", "ctl/c/k", &format!("--rev={r3}")]);
    p.err(
        &["compaction", &r3.to_string()],
        "Error: etcdserver: mvcc: required revision has been compacted",
    );
    p.err(
        &["compaction", &(r5 + 100).to_string()],
        "Error: etcdserver: mvcc: required revision is a future revision",
    );
    p.ok(&["compaction", "--physical", &r5.to_string()]);
    p.ok(&["get", "ctl/c/k", &format!("--rev={r5}"), "-w", "json"]);
    p.err(
        &["get", "ctl/c/k", &format!("--rev={r3}")],
        "Error: etcdserver: mvcc: required revision has been compacted",
    );
}

#[test]
fn member_list() {
    let p = pair();
    p.ok(&["member", "list"]);
    let t = p.ok(&["member", "list", "-w", "table"]);
    assert!(
        t.stdout.contains(
            "<MEMBER_ID> | started | default | http://<PEER_ADDR> | http://<CLIENT_ADDR> | false"
        ),
        "{t:?}"
    );
    p.ok(&["member", "list", "-w", "json"]);
}

/// `endpoint status` as the operator runs it (CONTRACT.md §6), with
/// `--endpoints=http://...`. etcdctl 3.4 dials each endpoint of `endpoint
/// status` (and `hashkv`) on its own, with the gRPC `:authority` set to the
/// whole URL (`http://127.0.0.1:P`).
#[test]
fn endpoint_status() {
    let p = pair();
    let t = p.ok(&["endpoint", "status", "-w", "table"]);
    assert!(
        t.stdout.contains(
            "http://<CLIENT_ADDR> | <MEMBER_ID> | <VERSION> | <DB_SIZE> | true | false | "
        ),
        "{t:?}"
    );
    p.ok(&["endpoint", "status"]);
    p.ok(&["endpoint", "status", "-w", "json"]);
}

/// The same with `--endpoints=127.0.0.1:P` (a plain `host:port`
/// `:authority`), so that the content is checked even where the above fails
/// on the authority; and the version and db size that the comparison hides.
#[test]
fn endpoint_status_schemeless() {
    let mut p = pair();
    p.schemeless = true;
    let t = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = p.ok(&["endpoint", "status", "-w", "table"]);
        p.ok(&["endpoint", "status", "-w", "json"]);
        t
    }));
    p.schemeless = false;
    let t = t.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(
        t.stdout
            .contains("<CLIENT_ADDR> | <MEMBER_ID> | <VERSION> | <DB_SIZE> | true | false | "),
        "{t:?}"
    );
    if p.other.server.kind() == Kind::Cairn {
        let st = status(&p.other.server.endpoint());
        let version = st.version.clone();
        let parts: Vec<u64> = version
            .split(['.', '-', '+'])
            .take(3)
            .map(|s| s.parse().unwrap_or_else(|_| panic!("version {version:?}")))
            .collect();
        assert_eq!(parts.len(), 3, "version {version:?} is not semver");
        assert!(
            (parts[0], parts[1], parts[2]) >= (3, 5, 13),
            "cairn's version {version:?} is below 3.5.13 (CONTRACT.md §5)"
        );
        assert!(st.db_size > 0, "cairn's dbSize is {}", st.db_size);
    }
}

#[test]
fn endpoint_health() {
    let p = pair();
    let o = p.ok(&["endpoint", "health"]);
    assert!(
        o.stderr.contains(
            "http://<CLIENT_ADDR> is healthy: successfully committed proposal: took = <DURATION>"
        ),
        "{o:?}"
    );
    p.ok(&["endpoint", "health", "-w", "json"]);
    p.ok(&["endpoint", "health", "-w", "table"]);
}

/// The Rust client (`etcd-client`) against both servers: same calls, same
/// answers (ids aside), and the values cairn gives are the expected ones.
#[test]
fn etcd_client_crate() {
    use etcd_client::{
        Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn,
        TxnOp, TxnOpResponse,
    };
    let p = pair();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Every call's answer as text without cluster/member ids.
    async fn script(endpoint: String) -> Vec<String> {
        let mut c = Client::connect([endpoint], None).await.unwrap();
        let mut log = Vec::new();
        let r = c
            .put("ctl/ec/a", "1", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        let rev_a = r.header().unwrap().revision();
        log.push(format!("put a: rev {rev_a} prev {:?}", r.prev_key()));
        let r = c
            .put("ctl/ec/a", "2", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        let prev = r.prev_key().expect("prev kv");
        assert_eq!(prev.value(), b"1");
        log.push(format!(
            "put a again: rev {} prev {:?}",
            r.header().unwrap().revision(),
            prev
        ));
        c.put("ctl/ec/b", "x", None).await.unwrap();
        let r = c
            .get("ctl/ec/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(r.count(), 2);
        assert_eq!(r.kvs()[0].value(), b"2");
        assert_eq!(r.kvs()[0].version(), 2);
        log.push(format!(
            "get prefix: rev {} count {} more {} kvs {:?}",
            r.header().unwrap().revision(),
            r.count(),
            r.more(),
            r.kvs()
        ));
        let r = c
            .get(
                "ctl/ec/",
                Some(GetOptions::new().with_prefix().with_limit(1)),
            )
            .await
            .unwrap();
        assert!(r.more());
        log.push(format!(
            "get limit 1: more {} count {}",
            r.more(),
            r.count()
        ));
        let r = c
            .get("ctl/ec/a", Some(GetOptions::new().with_revision(rev_a)))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), b"1");
        log.push(format!("get a at {rev_a}: {:?}", r.kvs()));

        let t = Txn::new()
            .when([Compare::value("ctl/ec/a", CompareOp::Equal, "2")])
            .and_then([
                TxnOp::put("ctl/ec/c", "3", None),
                TxnOp::get("ctl/ec/", Some(GetOptions::new().with_prefix())),
            ])
            .or_else([TxnOp::get("ctl/ec/a", None)]);
        let r = c.txn(t).await.unwrap();
        assert!(r.succeeded());
        log.push(format!(
            "txn: rev {} succeeded {} {}",
            r.header().unwrap().revision(),
            r.succeeded(),
            ops(&r.op_responses())
        ));
        let create = || {
            Txn::new()
                .when([Compare::mod_revision("ctl/ec/new", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("ctl/ec/new", "n", None)])
        };
        let r = c.txn(create()).await.unwrap();
        assert!(r.succeeded());
        let r2 = c.txn(create()).await.unwrap();
        assert!(!r2.succeeded());
        log.push(format!(
            "create-if-absent twice: {} {} revs {} {}",
            r.succeeded(),
            r2.succeeded(),
            r.header().unwrap().revision(),
            r2.header().unwrap().revision()
        ));

        let r = c
            .delete("ctl/ec/a", Some(DeleteOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!(r.deleted(), 1);
        log.push(format!(
            "delete a: rev {} deleted {} prev {:?}",
            r.header().unwrap().revision(),
            r.deleted(),
            r.prev_kvs()
        ));
        let r = c
            .delete("ctl/ec/", Some(DeleteOptions::new().with_prefix()))
            .await
            .unwrap();
        log.push(format!(
            "delete prefix: rev {} deleted {}",
            r.header().unwrap().revision(),
            r.deleted()
        ));
        let cur = r.header().unwrap().revision();
        let r = c
            .compact(cur, Some(CompactionOptions::new().with_physical()))
            .await
            .unwrap();
        log.push(format!(
            "compact {cur}: rev {}",
            r.header().unwrap().revision()
        ));
        let e = c
            .get("ctl/ec/a", Some(GetOptions::new().with_revision(rev_a)))
            .await
            .unwrap_err();
        log.push(format!("get below compaction: {}", status(e)));
        let e = c.compact(cur, None).await.unwrap_err();
        log.push(format!("compact again: {}", status(e)));
        log
    }
    fn status(e: etcd_client::Error) -> String {
        match e {
            etcd_client::Error::GRpcStatus(s) => format!("{:?} {}", s.code(), s.message()),
            other => panic!("not a gRPC status: {other}"),
        }
    }
    fn ops(rs: &[TxnOpResponse]) -> String {
        rs.iter()
            .map(|r| match r {
                TxnOpResponse::Put(p) => format!("put(rev {})", p.header().unwrap().revision()),
                TxnOpResponse::Get(g) => format!("get({:?})", g.kvs()),
                TxnOpResponse::Delete(d) => format!("delete({})", d.deleted()),
                TxnOpResponse::Txn(t) => format!("txn({})", t.succeeded()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
    let a = rt.block_on(script(p.etcd.server.endpoint()));
    let b = rt.block_on(script(p.other.server.endpoint()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "etcd-client call {i} differs");
    }
    assert_eq!(a.len(), b.len());
    assert!(
        b.last()
            .unwrap()
            .contains("required revision has been compacted"),
        "{b:?}"
    );
}
