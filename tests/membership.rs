//! Cluster membership through the real `etcdctl` (3.4.23): member list and
//! endpoint status, learners joining and being promoted, membership errors
//! with etcd's exact texts, removing followers and leaders, changing a
//! member's peer URLs, moving the leader, and a new member catching up from a
//! snapshot.
//!
//! Runs against cairn, or against the real etcd with
//! `CAIRN_CLUSTER_TARGET=etcd`; the etcd run is the reference these tests
//! were checked against. Everything that legitimately differs between runs
//! (member and cluster ids, ports) is taken from the servers themselves.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::{HashKvRequest, PutRequest};
use common::join::{initial_cluster_with, NewMember};
use common::{etcdctl, free_port, Kind, Server};
use serde_json::Value;

fn target() -> Kind {
    common::target_from_env("CAIRN_CLUSTER_TARGET")
}

// ---------------------------------------------------------------------------
// etcdctl helpers
// ---------------------------------------------------------------------------

fn describe(out: &Output) -> String {
    let cut = |b: &[u8]| {
        let s = String::from_utf8_lossy(b).into_owned();
        if s.len() > 4000 {
            let mut from = s.len() - 4000;
            while !s.is_char_boundary(from) {
                from += 1;
            }
            format!("…{}", &s[from..])
        } else {
            s
        }
    };
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        cut(&out.stdout),
        cut(&out.stderr)
    )
}

/// `etcdctl --endpoints=EP ARGS...`, which must succeed; its stdout.
fn ctl_ok(ep: &str, args: &[&str]) -> String {
    let out = etcdctl(ep, args, None);
    assert!(
        out.status.success(),
        "etcdctl --endpoints={ep} {}: {}",
        args.join(" "),
        describe(&out)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// `ctl_ok` with `-w json`, parsed.
fn ctl_json(ep: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-w", "json"]);
    let s = ctl_ok(ep, &a);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("etcdctl {a:?}: {e}: {s}"))
}

/// How etcdctl reported a failure.
#[derive(Debug)]
struct Failure {
    exit: Option<i32>,
    /// The one stderr line that starts with `Error: `.
    error: String,
    /// `error` of every "retrying of unary invoker failed" warning the
    /// client library logged: `rpc error: code = C desc = D`.
    rpc_errors: Vec<String>,
}

fn failure(out: &Output) -> Failure {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        describe(out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("Error: "))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one `Error: ` line: {}",
        describe(out)
    );
    let rpc_errors = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["msg"] == "retrying of unary invoker failed")
        .map(|v| v["error"].as_str().unwrap_or_default().to_string())
        .collect();
    Failure {
        exit: out.status.code(),
        error: errors[0].to_string(),
        rpc_errors,
    }
}

/// `etcdctl --endpoints=EP ARGS...` must fail with exit status 1, print
/// exactly `Error: etcdserver: ...` = `error`, and the RPC must have failed
/// with gRPC status `code` and the same text (as the client library logs
/// it). Retried for a while as long as it fails with `etcdserver: unhealthy
/// cluster` instead: etcd's `--strict-reconfig-check` refuses membership
/// changes with that, before validating them, until the member handling the
/// request has been connected to every voting member for 5 s.
fn assert_server_error(ep: &str, args: &[&str], code: &str, error: &str) {
    let what = format!("etcdctl --endpoints={ep} {}", args.join(" "));
    let deadline = Instant::now() + Duration::from_secs(15);
    let (out, f) = loop {
        let out = etcdctl(ep, args, None);
        assert!(
            !out.status.success(),
            "{what}: expected `{error}`: {}",
            describe(&out)
        );
        let f = failure(&out);
        if f.error == UNHEALTHY && error != UNHEALTHY && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        break (out, f);
    };
    assert_eq!(f.error, error, "{what}: {}", describe(&out));
    assert_eq!(f.exit, Some(1), "{what}: {}", describe(&out));
    let desc = error.strip_prefix("Error: ").unwrap();
    let rpc = format!("rpc error: code = {code} desc = {desc}");
    assert!(
        !f.rpc_errors.is_empty() && f.rpc_errors.iter().all(|e| *e == rpc),
        "{what}: expected every attempt to fail with `{rpc}`: {}",
        describe(&out)
    );
}

const UNHEALTHY: &str = "Error: etcdserver: unhealthy cluster";

/// Polls `f` every 50 ms until it gives `Ok`, for at most `within`.
fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(t) => return t,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{what}: not within {within:?}; last: {e}"),
        }
    }
}

/// A membership change (`member add/remove/promote ...`) on `ep`, retried
/// while the server refuses it with one of `transient` (error lines) — etcd's
/// `--strict-reconfig-check` answers `etcdserver: unhealthy cluster` until
/// the member handling the request has been connected to every voting
/// member for 5 s, e.g. right after the cluster started. Its stdout.
fn reconfigure(ep: &str, args: &[&str], transient: &[&str]) -> String {
    eventually(
        &format!("etcdctl {}", args.join(" ")),
        Duration::from_secs(15),
        || {
            let out = etcdctl(ep, args, None);
            if out.status.success() {
                return Ok(String::from_utf8(out.stdout).unwrap());
            }
            let f = failure(&out);
            let transient_ok = f.error == UNHEALTHY || transient.contains(&f.error.as_str());
            assert!(
                transient_ok,
                "etcdctl {}: {}",
                args.join(" "),
                describe(&out)
            );
            Err(f.error)
        },
    )
}

/// `put KEY VALUE` through `ep`, retried for a while (elections).
fn put(ep: &str, key: &str, value: &str) {
    eventually(
        &format!("put {key} via {ep}"),
        Duration::from_secs(15),
        || {
            let out = etcdctl(ep, &["put", key, value], None);
            if out.status.success() {
                assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
                Ok(())
            } else {
                Err(describe(&out))
            }
        },
    )
}

/// A linearizable `get KEY --print-value-only` through `ep`, retried for a
/// while (elections); the value, if the key exists.
fn get(ep: &str, key: &str) -> Option<String> {
    eventually(
        &format!("get {key} via {ep}"),
        Duration::from_secs(15),
        || {
            let out = etcdctl(ep, &["get", key, "--print-value-only"], None);
            if out.status.success() {
                let s = String::from_utf8(out.stdout).unwrap();
                Ok(s.strip_suffix('\n').map(str::to_string))
            } else {
                Err(describe(&out))
            }
        },
    )
}

// ---------------------------------------------------------------------------
// Parsed `member list` and `endpoint status`
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Member {
    id: u64,
    name: String,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    learner: bool,
}

impl Member {
    fn from_json(v: &Value) -> Member {
        let urls = |f: &str| -> Vec<String> {
            v[f].as_array()
                .map(|a| a.iter().map(|u| u.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        Member {
            id: v["ID"]
                .as_u64()
                .unwrap_or_else(|| panic!("member ID in {v}")),
            name: v["name"].as_str().unwrap_or_default().to_string(),
            peer_urls: urls("peerURLs"),
            client_urls: urls("clientURLs"),
            learner: v["isLearner"].as_bool().unwrap_or(false),
        }
    }
}

/// `member list -w json` on `ep`: (cluster id, id of the member that
/// answered, members in the order listed).
fn member_list(ep: &str) -> (u64, u64, Vec<Member>) {
    let v = ctl_json(ep, &["member", "list"]);
    let cluster = v["header"]["cluster_id"].as_u64().expect("cluster_id");
    let me = v["header"]["member_id"].as_u64().expect("member_id");
    let members = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(Member::from_json)
        .collect();
    (cluster, me, members)
}

/// Polls `member list` on `ep` until it is `want` (members apply a change
/// at their own pace).
fn wait_member_list(ep: &str, want: &[Member]) {
    eventually(
        &format!("member list from {ep} is {want:?}"),
        Duration::from_secs(10),
        || {
            let (_, _, l) = member_list(ep);
            if l == want {
                Ok(())
            } else {
                Err(format!("{l:?}"))
            }
        },
    )
}

#[derive(Debug, Clone)]
struct EpStatus {
    endpoint: String,
    cluster: u64,
    id: u64,
    leader: u64,
    learner: bool,
}

fn parse_statuses(v: &Value) -> Vec<EpStatus> {
    v.as_array()
        .unwrap_or_else(|| panic!("endpoint status: {v}"))
        .iter()
        .map(|e| {
            let s = &e["Status"];
            EpStatus {
                endpoint: e["Endpoint"].as_str().unwrap().to_string(),
                cluster: s["header"]["cluster_id"].as_u64().unwrap(),
                id: s["header"]["member_id"].as_u64().unwrap(),
                leader: s["leader"].as_u64().unwrap_or(0),
                learner: s["isLearner"].as_bool().unwrap_or(false),
            }
        })
        .collect()
}

/// `endpoint status -w json` for every endpoint in `eps` (one call).
fn statuses(eps: &[String]) -> Vec<EpStatus> {
    parse_statuses(&ctl_json(&eps.join(","), &["endpoint", "status"]))
}

/// Polls `endpoint status` on `eps` until every one answers, all name the
/// same leader, and that leader is one of them (exactly one says it is
/// itself); the statuses and the index of the leader in `eps`.
fn agreed_leader(eps: &[String], within: Duration) -> (Vec<EpStatus>, usize) {
    eventually("one leader all agree on", within, || {
        let out = etcdctl(&eps.join(","), &["endpoint", "status", "-w", "json"], None);
        if !out.status.success() {
            return Err(describe(&out));
        }
        let st = parse_statuses(
            &serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", describe(&out)))?,
        );
        if st.len() != eps.len() {
            return Err(format!("{} answers: {st:?}", st.len()));
        }
        let leader = st[0].leader;
        if leader == 0 || st.iter().any(|s| s.leader != leader) {
            return Err(format!("no agreed leader: {st:?}"));
        }
        let selves: Vec<usize> = (0..st.len()).filter(|&i| st[i].id == leader).collect();
        if selves.len() != 1 {
            return Err(format!("leader {leader:x} not among the endpoints: {st:?}"));
        }
        Ok((st.clone(), selves[0]))
    })
}

/// The data rows of an etcdctl `-w table` output, as trimmed cells; the
/// first row is the header.
fn table_rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// What etcdctl prints after `member promote/remove/update`, e.g.
/// `Member ID removed from cluster CID` — both ids as Go's `%16x`
/// (space-padded to 16 characters).
fn done(id: u64, verb: &str, cluster: u64) -> String {
    format!("Member {id:16x} {verb} cluster {cluster:16x}\n")
}

/// Checks `member add` output: `Member ID added to cluster CID`, then the
/// environment for the new member; `initial_cluster` compared as a set.
/// The new member's id.
/// `etcdctl member add NAME --peer-urls=URL [--learner]` through `ep`,
/// with its output checked: the new member's id and the `--initial-cluster`
/// it must start with.
fn announce(
    ep: &str,
    refs: &[&Server],
    cluster: u64,
    new: &NewMember,
    learner: bool,
) -> (u64, String) {
    let initial = initial_cluster_with(refs, new);
    let url = format!("--peer-urls={}", new.peer_url());
    let mut args = vec!["member", "add", new.name.as_str(), url.as_str()];
    if learner {
        args.push("--learner");
    }
    let out = reconfigure(ep, &args, &[]);
    (
        check_member_add_output(&out, cluster, new, &initial),
        initial,
    )
}

fn check_member_add_output(out: &str, cluster: u64, new: &NewMember, initial_cluster: &str) -> u64 {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "member add printed:\n{out}");
    // `Member %16x added to cluster %16x`: ids space-padded to 16.
    let id = lines[0]
        .strip_prefix("Member ")
        .and_then(|r| r.get(..16))
        .and_then(|h| u64::from_str_radix(h.trim_start(), 16).ok())
        .unwrap_or_else(|| panic!("member add printed:\n{out}"));
    assert_eq!(
        lines[0],
        format!("Member {id:16x} added to cluster {cluster:16x}"),
        "member add printed:\n{out}"
    );
    assert_eq!(lines[1], "");
    assert_eq!(lines[2], format!("ETCD_NAME=\"{}\"", new.name));
    let printed = lines[3]
        .strip_prefix("ETCD_INITIAL_CLUSTER=\"")
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_else(|| panic!("member add printed:\n{out}"));
    let set = |s: &str| s.split(',').map(str::to_string).collect::<BTreeSet<_>>();
    assert_eq!(set(printed), set(initial_cluster), "ETCD_INITIAL_CLUSTER");
    assert_eq!(
        lines[4],
        format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{}\"", new.peer_url())
    );
    assert_eq!(lines[5], "ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
    id
}

fn endpoints(members: &[&Server]) -> Vec<String> {
    members.iter().map(|m| m.endpoint()).collect()
}

/// A u64 that is none of `ids`.
fn unknown_id(ids: &[u64]) -> u64 {
    let mut id = 0x1234_5678_9abc_def0;
    while ids.contains(&id) {
        id += 1;
    }
    id
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Every member lists the same members (ids, names, peer and client URLs)
/// in the same order (by id); `endpoint status` on all three shows one
/// leader they agree on, with the member list's ids; the table and simple
/// formats say the same.
#[test]
fn member_list_and_endpoint_status_agree() {
    let members = Server::cluster(target(), 3);
    let refs: Vec<&Server> = members.iter().collect();
    let eps = endpoints(&refs);

    let (cluster, _, list) = member_list(&eps[0]);
    assert_eq!(list.len(), 3, "{list:?}");
    let ids: Vec<u64> = list.iter().map(|m| m.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "members listed by id, as etcd does: {list:?}"
    );
    let by_name: BTreeMap<&str, &Member> = list.iter().map(|m| (m.name.as_str(), m)).collect();
    for s in &members {
        let m = by_name
            .get(s.name.as_str())
            .unwrap_or_else(|| panic!("{} not listed: {list:?}", s.name));
        assert_eq!(m.peer_urls, vec![s.peer_url()], "{}", s.name);
        assert_eq!(m.client_urls, vec![s.endpoint()], "{}", s.name);
        assert!(!m.learner, "{}", s.name);
    }

    let (st, leader_at) = agreed_leader(&eps, Duration::from_secs(10));
    for (i, s) in st.iter().enumerate() {
        assert_eq!(s.endpoint, eps[i]);
        assert_eq!(s.cluster, cluster, "{}", eps[i]);
        assert!(!s.learner, "{}", eps[i]);
        // The member at this endpoint is the one listed with this name.
        assert_eq!(
            by_name[members[i].name.as_str()].id,
            s.id,
            "{}",
            members[i].name
        );
    }
    let status_ids: BTreeSet<u64> = st.iter().map(|s| s.id).collect();
    assert_eq!(status_ids, ids.iter().copied().collect::<BTreeSet<_>>());
    let leader = st[leader_at].id;
    assert_eq!(st.iter().filter(|s| s.id == s.leader).count(), 1);

    // The same list from every member, and each answers as itself.
    for (i, ep) in eps.iter().enumerate() {
        let (c, me, l) = member_list(ep);
        assert_eq!(c, cluster, "{ep}");
        assert_eq!(me, st[i].id, "member list header from {ep}");
        assert_eq!(l, list, "member list from {ep}");
    }

    let table = table_rows(&ctl_ok(&eps[1], &["member", "list", "-w", "table"]));
    assert_eq!(
        table[0],
        [
            "ID",
            "STATUS",
            "NAME",
            "PEER ADDRS",
            "CLIENT ADDRS",
            "IS LEARNER"
        ]
    );
    let expect: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            vec![
                format!("{:x}", m.id),
                "started".into(),
                m.name.clone(),
                m.peer_urls.join(","),
                m.client_urls.join(","),
                "false".into(),
            ]
        })
        .collect();
    assert_eq!(table[1..], expect[..], "member list -w table");

    let simple = ctl_ok(&eps[2], &["member", "list"]);
    let expect: String = list
        .iter()
        .map(|m| {
            format!(
                "{:x}, started, {}, {}, {}, false\n",
                m.id,
                m.name,
                m.peer_urls.join(","),
                m.client_urls.join(",")
            )
        })
        .collect();
    assert_eq!(simple, expect, "member list");

    let table = table_rows(&ctl_ok(
        &eps.join(","),
        &["endpoint", "status", "-w", "table"],
    ));
    assert_eq!(
        table[0][..6],
        [
            "ENDPOINT",
            "ID",
            "VERSION",
            "DB SIZE",
            "IS LEADER",
            "IS LEARNER"
        ]
    );
    assert_eq!(table.len(), 4);
    for (i, row) in table[1..].iter().enumerate() {
        assert_eq!(row[0], eps[i]);
        assert_eq!(row[1], format!("{:x}", st[i].id));
        assert_eq!(
            row[4],
            (st[i].id == leader).to_string(),
            "IS LEADER of {}",
            eps[i]
        );
        assert_eq!(row[5], "false", "IS LEARNER of {}", eps[i]);
    }
}

/// A learner joins a cluster that has data, catches up, refuses writes and
/// linearizable reads but answers serializable reads and Status, and is
/// promoted once in sync; then it takes writes as a voter.
#[test]
fn learner_joins_and_is_promoted() {
    let kind = target();
    let members = Server::cluster(kind, 3);
    let refs: Vec<&Server> = members.iter().collect();
    let eps = endpoints(&refs);
    let mut expect = String::new();
    for i in 0..5 {
        let (k, v) = (format!("pre/{i}"), format!("value {i}"));
        put(&eps[i % 3], &k, &v);
        expect.push_str(&format!("{k}\n{v}\n"));
    }
    let (cluster, _, before) = member_list(&eps[0]);

    let new = NewMember::new("m3");
    let (id, initial) = announce(&eps[0], &refs, cluster, &new, true);
    let hex = format!("{id:x}");

    // Announced but not started: listed as an unstarted learner, by every
    // voter.
    let mut want = before.clone();
    want.push(Member {
        id,
        name: String::new(),
        peer_urls: vec![new.peer_url()],
        client_urls: vec![],
        learner: true,
    });
    want.sort();
    for ep in &eps {
        wait_member_list(ep, &want);
    }
    let table = table_rows(&ctl_ok(&eps[1], &["member", "list", "-w", "table"]));
    let row = table.iter().find(|r| r[0] == hex).expect("new member row");
    assert_eq!(row[1..], ["unstarted", "", &new.peer_url(), "", "true"]);

    let learner = Server::join(kind, &new, &initial, &[]);
    let lep = learner.endpoint();
    // Written after it joined: replicated to it like to any follower.
    put(&eps[2], "pre/5", "value 5");
    expect.push_str("pre/5\nvalue 5\n");

    // Serializable reads are served from its own (caught-up) store.
    eventually("learner has the keys", Duration::from_secs(15), || {
        let out = etcdctl(&lep, &["get", "pre/", "--prefix", "--consistency=s"], None);
        let got = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && got == expect {
            Ok(())
        } else {
            Err(describe(&out))
        }
    });

    // Started: the voters list it with its name and client URL, still a
    // learner.
    for m in &mut want {
        if m.id == id {
            m.name = "m3".into();
            m.client_urls = vec![lep.clone()];
        }
    }
    for ep in &eps {
        wait_member_list(ep, &want);
    }

    // Writes and linearizable reads are refused.
    let refused = "Error: etcdserver: rpc not supported for learner";
    assert_server_error(&lep, &["put", "pre/x", "y"], "Unavailable", refused);
    assert_server_error(&lep, &["get", "pre/0"], "Unavailable", refused);
    // So is promoting itself.
    assert_server_error(&lep, &["member", "promote", &hex], "Unavailable", refused);

    // Status works and says it is a learner; it knows the voters' leader.
    let (vst, leader_at) = agreed_leader(&eps, Duration::from_secs(10));
    let st = statuses(std::slice::from_ref(&lep));
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].id, id);
    assert_eq!(st[0].cluster, cluster);
    assert!(st[0].learner, "endpoint status of the learner: {st:?}");
    assert_eq!(st[0].leader, vst[leader_at].id);
    let table = table_rows(&ctl_ok(&lep, &["endpoint", "status", "-w", "table"]));
    assert_eq!(table.len(), 2, "{table:?}");
    assert_eq!(
        (&table[1][0], &table[1][1], &table[1][4], &table[1][5]),
        (&lep, &hex, &"false".to_string(), &"true".to_string()),
        "endpoint status -w table of the learner (IS LEADER, IS LEARNER)"
    );

    // Promote through a voter (retried until the learner is in sync).
    let out = reconfigure(
        &eps[(leader_at + 1) % 3],
        &["member", "promote", &hex],
        &["Error: etcdserver: can only promote a learner member which is in sync with leader"],
    );
    assert_eq!(out, done(id, "promoted in", cluster));

    // A voter now: takes writes and linearizable reads.
    put(&lep, "post/1", "after promotion");
    assert_eq!(get(&lep, "post/1").as_deref(), Some("after promotion"));
    assert_eq!(get(&eps[0], "post/1").as_deref(), Some("after promotion"));

    // Four started voters, the same list everywhere.
    for m in &mut want {
        m.learner = false;
    }
    for ep in eps.iter().chain(std::iter::once(&lep)) {
        wait_member_list(ep, &want);
    }
    let all: Vec<String> = eps
        .iter()
        .cloned()
        .chain(std::iter::once(lep.clone()))
        .collect();
    let (st, _) = agreed_leader(&all, Duration::from_secs(10));
    assert!(st.iter().all(|s| !s.learner), "{st:?}");
}

/// Membership requests etcd refuses, with its exact texts (as etcdctl
/// prints them: one `Error: ` line, exit status 1) and gRPC codes — each
/// sent to the leader and to a follower (which forwards promotions to the
/// leader).
#[test]
fn membership_errors() {
    let members = Server::cluster(target(), 3);
    let refs: Vec<&Server> = members.iter().collect();
    let eps = endpoints(&refs);
    let (cluster, _, list) = member_list(&eps[0]);
    let ids: Vec<u64> = list.iter().map(|m| m.id).collect();
    let unknown = format!("{:x}", unknown_id(&ids));
    let (_, leader_at) = agreed_leader(&eps, Duration::from_secs(10));
    let both = [eps[leader_at].as_str(), eps[(leader_at + 1) % 3].as_str()];
    let not_found = "Error: etcdserver: member not found";
    let exists = "Error: etcdserver: Peer URLs already exists";
    let taken = format!("--peer-urls={}", members[2].peer_url());
    let m0 = list.iter().find(|m| m.name == "m0").unwrap().id;
    let free_url = format!("--peer-urls=http://127.0.0.1:{}", free_port());

    for ep in both {
        // Promote a voter.
        assert_server_error(
            ep,
            &["member", "promote", &format!("{:x}", ids[0])],
            "FailedPrecondition",
            "Error: etcdserver: can only promote a learner member",
        );
        // Unknown ids.
        assert_server_error(ep, &["member", "promote", &unknown], "NotFound", not_found);
        assert_server_error(ep, &["member", "remove", &unknown], "NotFound", not_found);
        assert_server_error(
            ep,
            &["member", "update", &unknown, &free_url],
            "NotFound",
            not_found,
        );
        // Peer URLs in use: add (voter or learner), and update to another
        // member's URL.
        assert_server_error(
            ep,
            &["member", "add", "x", &taken],
            "FailedPrecondition",
            exists,
        );
        assert_server_error(
            ep,
            &["member", "add", "x", "--learner", &taken],
            "FailedPrecondition",
            exists,
        );
        assert_server_error(
            ep,
            &["member", "update", &format!("{m0:x}"), &taken],
            "FailedPrecondition",
            exists,
        );
    }

    // A learner is pending (announced, never started): a second one is too
    // many (--max-learners defaults to 1), and it cannot be promoted.
    let l1 = NewMember::new("l1");
    let (l1_id, _) = announce(both[1], &refs, cluster, &l1, true);
    let l1_hex = format!("{l1_id:x}");
    let l2 = NewMember::new("l2");
    let l2_url = format!("--peer-urls={}", l2.peer_url());
    for ep in both {
        assert_server_error(
            ep,
            &["member", "add", "l2", "--learner", &l2_url],
            "FailedPrecondition",
            "Error: etcdserver: too many learner members in cluster",
        );
        assert_server_error(
            ep,
            &["member", "promote", &l1_hex],
            "FailedPrecondition",
            "Error: etcdserver: can only promote a learner member which is in sync with leader",
        );
    }

    // Removing it makes room for another; a removed id is not found again.
    let out = reconfigure(both[0], &["member", "remove", &l1_hex], &[]);
    assert_eq!(out, done(l1_id, "removed from", cluster));
    for ep in both {
        assert_server_error(ep, &["member", "remove", &l1_hex], "NotFound", not_found);
        assert_server_error(
            ep,
            &["member", "update", &l1_hex, &free_url],
            "NotFound",
            not_found,
        );
    }
    // Promoting a removed id: only through the leader. (etcd 3.4's follower
    // forwards the promotion over HTTP, gets a 500 for "ID removed" and
    // retries until etcdctl's 5 s deadline: `context deadline exceeded`.)
    let (_, leader_at) = agreed_leader(&eps, Duration::from_secs(10));
    assert_server_error(
        &eps[leader_at],
        &["member", "promote", &l1_hex],
        "NotFound",
        not_found,
    );
    let (l2_id, _) = announce(both[1], &refs, cluster, &l2, true);
    let out = reconfigure(both[1], &["member", "remove", &format!("{l2_id:x}")], &[]);
    assert_eq!(out, done(l2_id, "removed from", cluster));

    // Back to the three members it started with, on every member.
    for e in &eps {
        wait_member_list(e, &list);
    }
}

/// etcd's `--strict-reconfig-check` (on by default) while an announced
/// voter has never started: adding any member is refused as an unhealthy
/// cluster (no member is connected to the missing one); removing a started
/// voter is refused once the started voters left would not be a quorum;
/// removing the unstarted voter is fine.
#[test]
fn strict_reconfig_check_while_a_voter_is_missing() {
    let mut members = Server::cluster(target(), 3);
    let refs: Vec<&Server> = members.iter().collect();
    let eps = endpoints(&refs);
    let (cluster, _, list) = member_list(&eps[0]);

    let v = NewMember::new("v");
    let (v_id, _) = announce(&eps[0], &refs, cluster, &v, false);

    let w = NewMember::new("w");
    let w_url = format!("--peer-urls={}", w.peer_url());
    for ep in &eps {
        assert_server_error(
            ep,
            &["member", "add", "w", &w_url],
            "Unavailable",
            UNHEALTHY,
        );
        assert_server_error(
            ep,
            &["member", "add", "w", "--learner", &w_url],
            "Unavailable",
            UNHEALTHY,
        );
    }

    // Three started voters and v: removing one started voter leaves two of
    // three, a quorum; removing a second would leave one of two.
    let (st, leader_at) = agreed_leader(&eps, Duration::from_secs(10));
    let f = (leader_at + 1) % 3;
    let out = reconfigure(
        &eps[leader_at],
        &["member", "remove", &format!("{:x}", st[f].id)],
        &[],
    );
    assert_eq!(out, done(st[f].id, "removed from", cluster));
    assert_exits_after_removal(&mut members[f]);
    let other = 3 - leader_at - f;
    for (via, gone) in [(leader_at, other), (other, leader_at)] {
        assert_server_error(
            &eps[via],
            &["member", "remove", &format!("{:x}", st[gone].id)],
            // etcd 3.4 maps no gRPC code to this error.
            "Unknown",
            "Error: etcdserver: re-configuration failed due to not enough started members",
        );
    }

    let out = reconfigure(
        &eps[other],
        &["member", "remove", &format!("{v_id:x}")],
        &[],
    );
    assert_eq!(out, done(v_id, "removed from", cluster));
    let want: Vec<Member> = list.iter().filter(|m| m.id != st[f].id).cloned().collect();
    for i in [leader_at, other] {
        wait_member_list(&eps[i], &want);
    }
    put(&eps[other], "after", "remove");
    assert_eq!(get(&eps[leader_at], "after").as_deref(), Some("remove"));
}

/// The exit status of a member that was removed from the cluster and
/// stopped on its own (etcd exits 0).
fn assert_exits_after_removal(s: &mut Server) {
    let status = s.wait_exit(Duration::from_secs(10));
    let log = s.log_tail(30);
    let status = status.unwrap_or_else(|| {
        panic!(
            "{} still running 10 s after its removal; log:\n{log}",
            s.name
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "{} after its removal: {status}; log:\n{log}",
        s.name
    );
}

/// Removing a follower (through the leader) stops it and leaves two members
/// that take writes; removing the leader (through the other member) stops
/// it too, and the last member leads alone. (Through its own endpoint, etcd
/// removes the leader as well, but the answer races with its stop: either
/// `Member ... removed ...` or `Error: etcdserver: server stopped`.)
#[test]
fn remove_follower_and_leader() {
    let mut members = Server::cluster(target(), 3);
    let refs: Vec<&Server> = members.iter().collect();
    let eps = endpoints(&refs);
    let (cluster, _, list) = member_list(&eps[0]);
    put(&eps[0], "k/0", "three members");

    let (st, leader_at) = agreed_leader(&eps, Duration::from_secs(10));
    let f = (leader_at + 1) % 3;
    let out = reconfigure(
        &eps[leader_at],
        &["member", "remove", &format!("{:x}", st[f].id)],
        &[],
    );
    assert_eq!(out, done(st[f].id, "removed from", cluster));
    assert_exits_after_removal(&mut members[f]);

    let rest: Vec<usize> = (0..3).filter(|&i| i != f).collect();
    let rest_eps: Vec<String> = rest.iter().map(|&i| eps[i].clone()).collect();
    let want: Vec<Member> = list.iter().filter(|m| m.id != st[f].id).cloned().collect();
    for e in &rest_eps {
        wait_member_list(e, &want);
    }
    for (n, e) in rest_eps.iter().enumerate() {
        put(e, &format!("k/two/{n}"), "two members");
    }
    for e in &rest_eps {
        assert_eq!(get(e, "k/two/0").as_deref(), Some("two members"));
        assert_eq!(get(e, "k/0").as_deref(), Some("three members"));
    }

    // Now the leader, through the other member.
    let (st2, l2) = agreed_leader(&rest_eps, Duration::from_secs(10));
    let leader = rest[l2];
    let last = rest[1 - l2];
    let out = reconfigure(
        &eps[last],
        &["member", "remove", &format!("{:x}", st2[l2].id)],
        &[],
    );
    assert_eq!(out, done(st2[l2].id, "removed from", cluster));
    assert_exits_after_removal(&mut members[leader]);

    let (st3, _) = agreed_leader(&[eps[last].clone()], Duration::from_secs(15));
    assert_eq!(st3[0].leader, st2[1 - l2].id, "the last member leads");
    put(&eps[last], "k/one", "one member");
    assert_eq!(get(&eps[last], "k/one").as_deref(), Some("one member"));
    assert_eq!(get(&eps[last], "k/two/1").as_deref(), Some("two members"));
    let want: Vec<Member> = list
        .iter()
        .filter(|m| m.id == st2[1 - l2].id)
        .cloned()
        .collect();
    wait_member_list(&eps[last], &want);
}

/// `member update` moves a follower's peer URL; the follower restarted on
/// the new port (same data dir) is a working member again.
#[test]
fn member_update_peer_urls() {
    let mut members = Server::cluster(target(), 3);
    let refs: Vec<&Server> = members.iter().collect();
    let eps = endpoints(&refs);
    let (cluster, _, list) = member_list(&eps[0]);
    let (st, leader_at) = agreed_leader(&eps, Duration::from_secs(10));
    let f = (leader_at + 2) % 3;
    let f_id = st[f].id;
    let new_port = free_port();
    let new_url = format!("http://127.0.0.1:{new_port}");

    let out = ctl_ok(
        &eps[leader_at],
        &[
            "member",
            "update",
            &format!("{f_id:x}"),
            &format!("--peer-urls={new_url}"),
        ],
    );
    assert_eq!(out, done(f_id, "updated in", cluster));
    let mut want = list.clone();
    for m in &mut want {
        if m.id == f_id {
            m.peer_urls = vec![new_url.clone()];
        }
    }
    // The other members apply the change (the follower is checked after
    // its restart).
    for i in (0..3).filter(|&i| i != f) {
        wait_member_list(&eps[i], &want);
    }

    members[f].restart_on_peer_port(new_port);
    assert_eq!(members[f].peer_url(), new_url);

    let (st, leader_at) = agreed_leader(&eps, Duration::from_secs(15));
    put(&eps[leader_at], "upd/1", "via leader");
    assert_eq!(get(&eps[f], "upd/1").as_deref(), Some("via leader"));
    put(&eps[f], "upd/2", "via updated");
    for e in &eps {
        assert_eq!(get(e, "upd/2").as_deref(), Some("via updated"), "{e}");
    }
    for e in &eps {
        wait_member_list(e, &want);
    }
    assert_eq!(st[f].id, f_id);
}

/// `move-leader` through the leader hands leadership over (also to itself);
/// through a follower etcdctl finds no leader among the endpoints it was
/// given; an unknown target is a bad transferee.
#[test]
fn move_leader() {
    let members = Server::cluster(target(), 3);
    let refs: Vec<&Server> = members.iter().collect();
    let eps = endpoints(&refs);
    let (st, leader_at) = agreed_leader(&eps, Duration::from_secs(10));
    let ids: Vec<u64> = st.iter().map(|s| s.id).collect();
    let leader = ids[leader_at];
    let t = (leader_at + 1) % 3;
    let other = (leader_at + 2) % 3;

    // Through a follower: etcdctl asks each endpoint's Status for the
    // leader and gives up before any MoveLeader call.
    let out = etcdctl(&eps[t], &["move-leader", &format!("{leader:x}")], None);
    let f = failure(&out);
    assert_eq!(
        f.error,
        format!("Error: no leader endpoint given at [{}]", eps[t]),
        "{}",
        describe(&out)
    );
    assert_eq!(f.exit, Some(128), "{}", describe(&out));

    // An unknown target.
    assert_server_error(
        &eps[leader_at],
        &["move-leader", &format!("{:x}", unknown_id(&ids))],
        "FailedPrecondition",
        "Error: etcdserver: bad leader transferee",
    );

    // To itself: nothing to do, reported as a transfer.
    let out = ctl_ok(&eps[leader_at], &["move-leader", &format!("{leader:x}")]);
    assert_eq!(
        out,
        format!("Leadership transferred from {leader:x} to {leader:x}\n")
    );

    // To a follower, through the leader.
    let out = ctl_ok(&eps[leader_at], &["move-leader", &format!("{:x}", ids[t])]);
    assert_eq!(
        out,
        format!("Leadership transferred from {leader:x} to {:x}\n", ids[t])
    );
    let (_, now) = agreed_leader(&eps, Duration::from_secs(5));
    assert_eq!(now, t, "leader after move-leader");
    put(&eps[other], "ml/1", "after move");

    // With all endpoints given, etcdctl finds the (new) leader itself.
    let out = ctl_ok(
        &eps.join(","),
        &["move-leader", &format!("{:x}", ids[other])],
    );
    assert_eq!(
        out,
        format!(
            "Leadership transferred from {:x} to {:x}\n",
            ids[t], ids[other]
        )
    );
    let (_, now) = agreed_leader(&eps, Duration::from_secs(5));
    assert_eq!(now, other, "leader after the second move-leader");
    assert_eq!(get(&eps[leader_at], "ml/1").as_deref(), Some("after move"));
}

const SNAP_KEYS: usize = 7000;

/// Puts `snap/00000`.. `snap/06999` (100-byte values) through all `eps`,
/// 32 at a time; the highest revision acknowledged.
async fn write_snap_keys(eps: Vec<String>) -> i64 {
    let mut chans = Vec::new();
    for e in &eps {
        let ch = tonic::transport::Endpoint::from_shared(e.clone())
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap_or_else(|err| panic!("connect {e}: {err}"));
        chans.push(ch);
    }
    const TASKS: usize = 32;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut kv = KvClient::new(chans[t % chans.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut max_rev = 0;
            for k in (t..SNAP_KEYS).step_by(TASKS) {
                let req = PutRequest {
                    key: format!("snap/{k:05}").into_bytes(),
                    value: format!("{k:0>100}").into_bytes(),
                    ..Default::default()
                };
                let mut tries = 0;
                let rev = loop {
                    match kv.put(req.clone()).await {
                        Ok(r) => break r.into_inner().header.unwrap().revision,
                        Err(e) if tries < 20 => {
                            tries += 1;
                            eprintln!("put snap/{k:05}: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("put snap/{k:05}: {e}"),
                    }
                };
                max_rev = max_rev.max(rev);
            }
            max_rev
        }));
    }
    let mut max_rev = 0;
    for t in tasks {
        max_rev = max_rev.max(t.await.unwrap());
    }
    max_rev
}

/// `Maintenance.HashKV` at `revision` on `ep`: (hash, compact revision).
async fn hash_kv(ep: &str, revision: i64) -> Result<(u32, i64), String> {
    let ch = tonic::transport::Endpoint::from_shared(ep.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect {ep}: {e}"))?;
    let r = MaintenanceClient::new(ch)
        .hash_kv(HashKvRequest { revision })
        .await
        .map_err(|e| format!("HashKV on {ep}: {e}"))?
        .into_inner();
    Ok((r.hash, r.compact_revision))
}

/// With `--snapshot-count=1000`, 7000 writes leave the leader's log
/// compacted past its start, so a fourth voter added afterwards must be
/// caught up from a snapshot: it ends with every key and the same HashKV
/// as the others.
#[test]
fn fourth_member_catches_up_from_snapshot() {
    let kind = target();
    let extra = ["--snapshot-count=1000"];
    let members = Server::cluster_with(kind, 3, &extra);
    let refs: Vec<&Server> = members.iter().collect();
    let eps = endpoints(&refs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let max_rev = rt.block_on(write_snap_keys(eps.clone()));
    eprintln!(
        "{SNAP_KEYS} puts in {:?}, up to revision {max_rev}",
        started.elapsed()
    );

    // etcdctl 3.4 has no `--count-only`; a Range's count ignores its limit.
    let count = |ep: &str, consistency: &str| -> Result<(u64, i64), String> {
        let out = etcdctl(
            ep,
            &[
                "get",
                "snap/",
                "--prefix",
                "--keys-only",
                "--limit=1",
                consistency,
                "-w",
                "json",
            ],
            None,
        );
        if !out.status.success() {
            return Err(describe(&out));
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        Ok((
            v["count"].as_u64().unwrap_or(0),
            v["header"]["revision"].as_i64().unwrap(),
        ))
    };
    let (n, revision) = count(&eps[0], "--consistency=l").unwrap();
    assert_eq!(n, SNAP_KEYS as u64);
    assert!(revision >= max_rev);

    let (cluster, _, _) = member_list(&eps[0]);
    let new = NewMember::new("m3");
    let (id, initial) = announce(&eps[1], &refs, cluster, &new, false);
    let joined = Instant::now();
    let m3 = Server::join(kind, &new, &initial, &extra);
    let ep3 = m3.endpoint();

    eventually(
        "the new member has every key",
        Duration::from_secs(30),
        || match count(&ep3, "--consistency=s") {
            Ok((n, _)) if n == SNAP_KEYS as u64 => Ok(()),
            Ok((n, rev)) => Err(format!("{n} keys at revision {rev}")),
            Err(e) => Err(e),
        },
    );
    eprintln!("new member caught up {:?} after joining", joined.elapsed());

    let mut hashes = Vec::new();
    for e in eps.iter().chain(std::iter::once(&ep3)) {
        let h = eventually(
            &format!("HashKV({revision}) on {e}"),
            Duration::from_secs(15),
            || rt.block_on(hash_kv(e, revision)),
        );
        hashes.push(h);
    }
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "HashKV at revision {revision} differs: {hashes:?}"
    );

    // It is a voter: listed as such, and writes go through it.
    let (_, _, list) = member_list(&ep3);
    let me = list.iter().find(|m| m.id == id).expect("new member listed");
    assert_eq!(
        (me.name.as_str(), me.learner, me.client_urls.clone()),
        ("m3", false, vec![ep3.clone()])
    );
    assert_eq!(list.len(), 4);
    put(&ep3, "snap/after", "joined");
    assert_eq!(get(&eps[0], "snap/after").as_deref(), Some("joined"));
}

/// A member that has lost its leader still answers `Status`, with etcd's
/// `etcdserver: no leader` first in its errors (what `etcdctl endpoint
/// status` shows in its ERRORS column); the error goes once a leader is
/// back.
#[test]
fn status_of_a_member_without_a_leader() {
    let mut members = Server::cluster(target(), 3);
    let ep = members[0].endpoint();
    members[1].kill9();
    members[2].kill9();
    let errors = |ep: &str| -> Result<Vec<String>, String> {
        let v = ctl_json(ep, &["endpoint", "status"]);
        let s = &v[0]["Status"];
        Ok(s["errors"]
            .as_array()
            .map(|a| a.iter().map(|e| e.as_str().unwrap().to_string()).collect())
            .unwrap_or_default())
    };
    let got = eventually(
        "no leader in Status errors",
        Duration::from_secs(20),
        || {
            let e = errors(&ep)?;
            if e.is_empty() {
                Err("no errors yet".into())
            } else {
                Ok(e)
            }
        },
    );
    assert_eq!(got, vec!["etcdserver: no leader".to_string()]);
    let table = ctl_ok(&ep, &["endpoint", "status", "-w", "table"]);
    assert!(table.contains("etcdserver: no leader"), "{table}");

    members[1].restart();
    eventually(
        "the error gone with a leader",
        Duration::from_secs(20),
        || {
            let e = errors(&ep)?;
            if e.is_empty() {
                Ok(())
            } else {
                Err(format!("{e:?}"))
            }
        },
    );
}
