//! Backups, the operator's way (issue 5): `etcdctl snapshot save` against
//! cairn or the real etcd (3.4, /usr/bin), `cairn snapshot status` and
//! `cairn snapshot restore` against etcdctl's, through the real binaries.
//!
//! - the way back: a cairn snapshot restored by `etcdctl snapshot restore`
//!   into the real etcd serves the same store (keys, revisions, versions,
//!   history since the compaction, leases);
//! - migration: an etcd snapshot restored by `cairn snapshot restore` into
//!   cairn, likewise, with etcd's new member id;
//! - a 3-member cairn cluster restored from one member's snapshot onto new
//!   members;
//! - `snapshot status` output (every format, table layout, humanized sizes)
//!   and errors byte for byte as etcdctl prints them, also on damaged files
//!   (where etcdctl itself may crash), and restore's errors.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cairn::backup::status::{render, status, SnapshotStatus};
use cairn::bbolt::{Db, Meta, Writer, WriterOptions};
use common::check::assert_same_kv_hash;
use common::{etcdctl, Kind, Server, CAIRN_BIN};
use etcd_client::{
    Client, CompactionOptions, DeleteOptions, GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn,
    TxnOp,
};
use sha1::{Digest, Sha1};

const FORMATS: [&str; 4] = ["simple", "json", "table", "fields"];

// ---------------------------------------------------------------------------
// Running the tools
// ---------------------------------------------------------------------------

/// etcdctl for the offline `snapshot` subcommands (no server involved).
fn ctl(args: &[&str]) -> Output {
    etcdctl("http://127.0.0.1:1", args, None)
}

/// `cairn ARGS...` (the binary built with this test crate).
fn cairn(args: &[&str]) -> Output {
    let mut cmd = Command::new(CAIRN_BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(&k);
        }
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cairn")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The `Error: ...` part of a failed command's stderr (etcdctl also logs
/// JSON lines there).
fn error_text(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} succeeded: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let err = text(&out.stderr);
    match err.find("Error: ") {
        Some(i) => err[i..]
            .lines()
            .take_while(|l| !l.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n"),
        None => panic!("{what}: no `Error: ` in stderr:\n{err}"),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `etcdctl snapshot save FILE` from `endpoint`, checking its output.
fn save(endpoint: &str, file: &Path) {
    let out = etcdctl(endpoint, &["snapshot", "save", s(file)], None);
    assert_eq!(
        ok(&out, "etcdctl snapshot save"),
        format!("Snapshot saved at {}\n", file.display())
    );
}

/// `cairn snapshot restore FILE` into `srv`'s (not yet existing) data dir
/// as member `srv.name` of `srv.initial_cluster()`.
fn cairn_restore(file: &Path, srv: &Server, token: Option<&str>) {
    let data = srv.data_dir();
    let initial = srv.initial_cluster();
    let peer = srv.peer_url();
    let mut args = vec![
        "snapshot",
        "restore",
        s(file),
        "--data-dir",
        s(&data),
        "--name",
        &srv.name,
        "--initial-cluster",
        &initial,
        "--initial-advertise-peer-urls",
        &peer,
    ];
    if let Some(t) = token {
        args.extend(["--initial-cluster-token", t]);
    }
    ok(&cairn(&args), "cairn snapshot restore");
    assert!(data.join("member").is_dir(), "no member dir after restore");
}

/// `etcdctl snapshot restore FILE` into `srv`'s (not yet existing) data
/// dir as member `srv.name` of `srv.initial_cluster()`.
fn etcdctl_restore(file: &Path, srv: &Server) {
    let (initial, peer) = (srv.initial_cluster(), srv.peer_url());
    ok(
        &ctl(&[
            "snapshot",
            "restore",
            s(file),
            "--data-dir",
            s(&srv.data_dir()),
            "--name",
            &srv.name,
            "--initial-cluster",
            &initial,
            "--initial-advertise-peer-urls",
            &peer,
        ]),
        "etcdctl snapshot restore",
    );
}

// ---------------------------------------------------------------------------
// etcd's ids
// ---------------------------------------------------------------------------

/// etcd's member id: sha1 of the sorted peer URLs and the cluster token.
fn etcd_member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    u64::from_be_bytes(h.finalize()[..8].try_into().unwrap())
}

/// etcd's cluster id: sha1 of the sorted member ids, big-endian.
fn etcd_cluster_id(ids: &[u64]) -> u64 {
    let mut ids = ids.to_vec();
    ids.sort();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    u64::from_be_bytes(h.finalize()[..8].try_into().unwrap())
}

/// (cluster id, [(member id, name, peer URLs)]) from `etcdctl member list`.
fn member_list(endpoint: &str) -> (u64, Vec<(u64, String, Vec<String>)>) {
    let out = etcdctl(endpoint, &["member", "list", "-w", "json"], None);
    let v: serde_json::Value = serde_json::from_str(ok(&out, "member list").trim()).unwrap();
    let members = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["ID"].as_u64().unwrap(),
                m["name"].as_str().unwrap_or("").to_string(),
                m["peerURLs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|u| u.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    (v["header"]["cluster_id"].as_u64().unwrap(), members)
}

// ---------------------------------------------------------------------------
// The store: writes and what is read back
// ---------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(endpoint: &str) -> Client {
    Client::connect([endpoint.to_string()], None).await.unwrap()
}

/// What the writes left: the compaction revision and the lease.
struct Written {
    compact_rev: i64,
    lease: i64,
}

const LEASE_TTL: i64 = 600;

/// Puts (some keys overwritten, some deleted, one range-deleted), keys on
/// a lease, a compaction in the middle, a txn with 2 puts, and more writes
/// after the compaction.
async fn write_workload(endpoint: &str) -> Written {
    let mut c = connect(endpoint).await;
    for k in ["a", "b", "c", "d/1", "d/2", "e"] {
        c.put(k, format!("{k}-1"), None).await.unwrap();
    }
    for (k, v) in [("a", "a-2"), ("a", "a-3"), ("b", "b-2")] {
        c.put(k, v, None).await.unwrap();
    }
    c.delete("c", None).await.unwrap();
    let r = c
        .delete("d/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(r.deleted(), 2);
    let lease = c.lease_grant(LEASE_TTL, None).await.unwrap().id();
    for k in ["leased/x", "leased/y"] {
        c.put(k, "on a lease", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
    }
    let r = c.put("f", "f-1", None).await.unwrap();
    let compact_rev = r.header().unwrap().revision() - 2;
    c.compact(compact_rev, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let r = c
        .txn(Txn::new().and_then([
            TxnOp::put("t/1", "in a txn", None),
            TxnOp::put("t/2", "in a txn", None),
        ]))
        .await
        .unwrap();
    assert!(r.succeeded());
    c.put("a", "a-4", None).await.unwrap();
    c.delete("e", None).await.unwrap();
    c.put("c", "c-again", None).await.unwrap();
    c.put("empty", "", None).await.unwrap();
    Written { compact_rev, lease }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Kv {
    key: String,
    value: String,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
}

/// Everything a client can see of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    revision: i64,
    kvs: Vec<Kv>,
    /// All keys at every revision from the compaction on.
    history: Vec<(i64, Vec<Kv>)>,
    /// (id, granted TTL, attached keys).
    leases: Vec<(i64, i64, Vec<String>)>,
}

async fn all_kvs(c: &mut Client, revision: i64) -> (i64, Vec<Kv>) {
    let mut opts = GetOptions::new().with_all_keys();
    if revision > 0 {
        opts = opts.with_revision(revision);
    }
    let r = c.get("", Some(opts)).await.unwrap();
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| Kv {
            key: kv.key_str().unwrap().to_string(),
            value: kv.value_str().unwrap().to_string(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        })
        .collect();
    (r.header().unwrap().revision(), kvs)
}

/// The remaining TTL of `lease`.
async fn lease_ttl(endpoint: &str, lease: i64) -> i64 {
    let mut c = connect(endpoint).await;
    c.lease_time_to_live(lease, None).await.unwrap().ttl()
}

/// Reads the whole store; checks that a read below the compaction fails
/// as compacted.
async fn capture(endpoint: &str, compact_rev: i64) -> State {
    let mut c = connect(endpoint).await;
    let (revision, kvs) = all_kvs(&mut c, 0).await;
    let mut history = Vec::new();
    for rev in compact_rev..=revision {
        history.push((rev, all_kvs(&mut c, rev).await.1));
    }
    let err = c
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_revision(compact_rev - 1),
            ),
        )
        .await
        .expect_err("read below the compaction");
    assert!(
        err.to_string()
            .contains("required revision has been compacted"),
        "read at {} on {endpoint}: {err}",
        compact_rev - 1
    );
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    let mut leases = Vec::new();
    for id in ids {
        let r = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        let mut keys: Vec<String> = r.keys().iter().map(|k| text(k)).collect();
        keys.sort();
        leases.push((id, r.granted_ttl(), keys));
    }
    State {
        revision,
        kvs,
        history,
        leases,
    }
}

/// A restored member keeps going: a put lands at the next revision, and
/// revoking the lease deletes its keys.
async fn continues(endpoint: &str, state: &State, lease: i64) {
    let mut c = connect(endpoint).await;
    let r = c.put("after/restore", "yes", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), state.revision + 1);
    let r = c.lease_revoke(lease).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), state.revision + 2);
    let g = c
        .get("leased/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(g.count(), 0, "the lease's keys went with it");
}

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseRecord {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// The TTL a lease of the snapshot `file` starts with after a restore, as
/// etcd does it: the remaining TTL the file recorded (a checkpoint), else
/// the full granted TTL.
fn ttl_after_restore(file: &Path, lease: i64) -> i64 {
    use prost::Message;
    let db = Db::open(file).unwrap();
    let bucket = db.bucket(b"lease").unwrap().expect("lease bucket");
    let e = bucket
        .get(&lease.to_be_bytes())
        .unwrap()
        .expect("the lease is in the snapshot");
    let r = LeaseRecord::decode(e.value.as_slice()).unwrap();
    assert_eq!((r.id, r.ttl), (lease, LEASE_TTL));
    if r.remaining_ttl > 0 {
        r.remaining_ttl
    } else {
        r.ttl
    }
}

/// The lease's TTL on a member started from `file` a moment ago.
fn assert_restored_ttl(endpoint: &str, file: &Path, lease: i64, ttl_at_save: i64) {
    let want = ttl_after_restore(file, lease);
    let ttl = runtime().block_on(lease_ttl(endpoint, lease));
    eprintln!("lease TTL: {ttl_at_save} at save, {want} in the file, {ttl} after restore");
    assert!(
        ttl <= want && ttl >= want - 4,
        "lease TTL after restore {ttl}, want {want} (at save {ttl_at_save})"
    );
}

// ---------------------------------------------------------------------------
// snapshot status
// ---------------------------------------------------------------------------

/// `etcdctl snapshot status FILE -w FORMAT` and ours (the library, and
/// `cairn snapshot status` when `cli`) print the same bytes; the parsed
/// status.
fn same_status_output(file: &Path, cli: bool) -> SnapshotStatus {
    let ours = status(file).unwrap_or_else(|e| panic!("status of {}: {e}", file.display()));
    for fmt in FORMATS {
        let theirs = ok(
            &ctl(&["snapshot", "status", s(file), "-w", fmt]),
            "etcdctl snapshot status",
        );
        assert_eq!(
            render(&ours, fmt).unwrap(),
            theirs,
            "-w {fmt} of {}",
            file.display()
        );
        if cli {
            let out = cairn(&["snapshot", "status", s(file), "-w", fmt]);
            assert_eq!(
                ok(&out, "cairn snapshot status"),
                theirs,
                "cairn snapshot status -w {fmt}"
            );
        }
    }
    if cli {
        // etcdctl's default format is simple.
        let theirs = ok(&ctl(&["snapshot", "status", s(file)]), "etcdctl status");
        let out = cairn(&["snapshot", "status", s(file)]);
        assert_eq!(ok(&out, "cairn snapshot status"), theirs);
    }
    ours
}

// ---------------------------------------------------------------------------
// a. cairn → etcd
// ---------------------------------------------------------------------------

#[test]
fn etcdctl_snapshot_of_cairn_restores_into_etcd() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn.db");
    let src = Server::cairn();
    let w = rt.block_on(write_workload(&src.endpoint()));
    let before = rt.block_on(capture(&src.endpoint(), w.compact_rev));
    assert_eq!(before.leases.len(), 1);
    // Let the lease's remaining TTL drop: a restore gives it the full TTL.
    std::thread::sleep(Duration::from_secs(5));
    let ttl_at_save = rt.block_on(lease_ttl(&src.endpoint(), w.lease));
    assert!(ttl_at_save <= LEASE_TTL - 5, "ttl {ttl_at_save}");
    save(&src.endpoint(), &file);
    drop(src);

    let st = same_status_output(&file, false);
    assert_eq!(st.revision, before.revision, "status revision is cairn's");

    // The real etcd on a data dir `etcdctl snapshot restore` built.
    let mut etcd = Server::unstarted(Kind::Etcd, "default");
    let peer = etcd.peer_url();
    etcdctl_restore(&file, &etcd);
    etcd.start_on_data_dir();
    assert_restored_ttl(&etcd.endpoint(), &file, w.lease, ttl_at_save);
    let after = rt.block_on(capture(&etcd.endpoint(), w.compact_rev));
    assert_eq!(after, before, "etcd restored from cairn's snapshot");
    let (cluster, members) = member_list(&etcd.endpoint());
    let id = etcd_member_id(std::slice::from_ref(&peer), "etcd-cluster");
    assert_eq!(members, vec![(id, "default".to_string(), vec![peer])]);
    assert_eq!(cluster, etcd_cluster_id(&[id]));
    rt.block_on(continues(&etcd.endpoint(), &before, w.lease));
    // `cairn snapshot status` prints what etcdctl prints.
    same_status_output(&file, true);
}

// ---------------------------------------------------------------------------
// b. etcd → cairn
// ---------------------------------------------------------------------------

#[test]
fn etcd_snapshot_restores_into_cairn() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.db");
    let src = Server::etcd();
    let w = rt.block_on(write_workload(&src.endpoint()));
    let before = rt.block_on(capture(&src.endpoint(), w.compact_rev));
    std::thread::sleep(Duration::from_secs(5));
    let ttl_at_save = rt.block_on(lease_ttl(&src.endpoint(), w.lease));
    assert!(ttl_at_save <= LEASE_TTL - 5, "ttl {ttl_at_save}");
    save(&src.endpoint(), &file);
    drop(src);
    let st = same_status_output(&file, false);
    assert_eq!(st.revision, before.revision);

    let mut srv = Server::unstarted(Kind::Cairn, "x");
    cairn_restore(&file, &srv, None);
    srv.start_on_data_dir();
    // etcd records no remaining TTL (checkpoints are off): the full TTL.
    assert_eq!(ttl_after_restore(&file, w.lease), LEASE_TTL);
    assert_restored_ttl(&srv.endpoint(), &file, w.lease, ttl_at_save);
    let after = rt.block_on(capture(&srv.endpoint(), w.compact_rev));
    assert_eq!(after, before, "cairn restored from etcd's snapshot");
    let (cluster, members) = member_list(&srv.endpoint());
    let peer = srv.peer_url();
    let id = etcd_member_id(std::slice::from_ref(&peer), "etcd-cluster");
    assert_eq!(members, vec![(id, "x".to_string(), vec![peer])]);
    assert_eq!(cluster, etcd_cluster_id(&[id]));
    rt.block_on(continues(&srv.endpoint(), &before, w.lease));
    // And after a restart on the restored dir.
    srv.restart();
    let (rev, _) = rt.block_on(async {
        let mut c = connect(&srv.endpoint()).await;
        all_kvs(&mut c, 0).await
    });
    assert_eq!(rev, before.revision + 2);
    same_status_output(&file, true);
}

// ---------------------------------------------------------------------------
// c. a cluster restored onto new members
// ---------------------------------------------------------------------------

#[test]
fn cairn_operator_routine_three_members() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.db");
    let old = Server::cluster(Kind::Cairn, 3);
    let w = rt.block_on(write_workload(&old[0].endpoint()));
    let before = rt.block_on(capture(&old[1].endpoint(), w.compact_rev));
    save(&old[1].endpoint(), &file);
    rt.block_on(async {
        let mut c = connect(&old[0].endpoint()).await;
        for i in 0..5 {
            c.put(format!("later/{i}"), "lost", None).await.unwrap();
        }
    });
    let (_, old_members) = member_list(&old[0].endpoint());
    let old_ids: Vec<u64> = old_members.iter().map(|m| m.0).collect();
    drop(old);

    let st = same_status_output(&file, false);
    assert_eq!(st.revision, before.revision);

    const TOKEN: &str = "restored-cluster";
    let mut new = Server::unstarted_cluster(Kind::Cairn, 3, "n");
    for m in &new {
        cairn_restore(&file, m, Some(TOKEN));
    }
    for m in &mut new {
        m.spawn_on_data_dir();
    }
    for m in &mut new {
        m.await_ready();
    }
    assert_restored_ttl(&new[0].endpoint(), &file, w.lease, 0);
    for m in &new {
        let after = rt.block_on(capture(&m.endpoint(), w.compact_rev));
        assert_eq!(after, before, "{} restored", m.name);
    }
    let want: Vec<(u64, String, Vec<String>)> = new
        .iter()
        .map(|m| {
            (
                etcd_member_id(&[m.peer_url()], TOKEN),
                m.name.clone(),
                vec![m.peer_url()],
            )
        })
        .collect();
    let ids: Vec<u64> = want.iter().map(|m| m.0).collect();
    for m in &new {
        let (cluster, mut members) = member_list(&m.endpoint());
        members.sort();
        let mut want = want.clone();
        want.sort();
        assert_eq!(members, want, "member list on {}", m.name);
        assert_eq!(cluster, etcd_cluster_id(&ids));
        assert!(members.iter().all(|(id, _, _)| !old_ids.contains(id)));
    }
    let endpoints: Vec<String> = new.iter().map(|m| m.endpoint()).collect();
    rt.block_on(async {
        let mut c = connect(&new[2].endpoint()).await;
        let r = c.put("after/restore", "yes", None).await.unwrap();
        assert_eq!(r.header().unwrap().revision(), before.revision + 1);
        for e in &endpoints {
            let mut c = connect(e).await;
            let g = c.get("after/restore", None).await.unwrap();
            assert_eq!(g.kvs().len(), 1, "{e}");
        }
        let (rev, _) = assert_same_kv_hash(&endpoints, Duration::from_secs(30)).await;
        assert_eq!(rev, before.revision + 1);
    });
    same_status_output(&file, true);
}

// ---------------------------------------------------------------------------
// d. errors
// ---------------------------------------------------------------------------

/// A small cairn snapshot (with its sha256 trailer).
fn small_cairn_snapshot(dir: &Path) -> PathBuf {
    let file = dir.join("small.db");
    let srv = Server::cairn();
    for i in 0..10 {
        ok(
            &etcdctl(&srv.endpoint(), &["put", &format!("k{i}"), "v"], None),
            "put",
        );
    }
    save(&srv.endpoint(), &file);
    file
}

#[test]
fn restore_errors_match_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let file = small_cairn_snapshot(dir.path());
    let bytes = fs::read(&file).unwrap();
    let restore_both = |file: &Path, extra: &[&str]| -> (Output, Output, PathBuf) {
        let ours = d("ours.etcd");
        let theirs = d("theirs.etcd");
        let _ = fs::remove_dir_all(&ours);
        let _ = fs::remove_dir_all(&theirs);
        let mut a = vec!["snapshot", "restore", s(file), "--data-dir", s(&ours)];
        a.extend_from_slice(extra);
        let mut b = vec!["snapshot", "restore", s(file), "--data-dir", s(&theirs)];
        b.extend_from_slice(extra);
        (cairn(&a), ctl(&b), ours)
    };

    // Into an existing data dir (the same one for both: it is in the text).
    let existing = d("existing");
    fs::create_dir(&existing).unwrap();
    let args = ["snapshot", "restore", s(&file), "--data-dir", s(&existing)];
    let (ours, theirs) = (cairn(&args), ctl(&args));
    assert_eq!(
        error_text(&ours, "cairn restore into an existing dir"),
        error_text(&theirs, "etcdctl restore into an existing dir")
    );
    assert_eq!(
        error_text(&ours, "restore"),
        format!("Error: data-dir {:?} exists", s(&existing))
    );
    assert_eq!(ours.status.code(), theirs.status.code());
    assert_eq!(fs::read_dir(&existing).unwrap().count(), 0, "left alone");

    // A damaged trailer, and a damaged body: the sha256 does not match.
    for at in [bytes.len() - 1, bytes.len() - 32, 4096 * 2 + 100] {
        let mut b = bytes.clone();
        b[at] ^= 0x5a;
        let bad = d("bad.db");
        fs::write(&bad, &b).unwrap();
        let (ours, theirs, dir) = restore_both(&bad, &[]);
        let e = error_text(&ours, "cairn restore of a damaged file");
        assert_eq!(e, error_text(&theirs, "etcdctl restore of a damaged file"));
        assert!(e.starts_with("Error: expected sha256 ["), "{e}");
        assert_eq!(ours.status.code(), theirs.status.code());
        assert!(!dir.exists(), "no data dir left behind");
    }

    // No trailer: refused unless --skip-hash-check.
    let cut = d("no-trailer.db");
    fs::write(&cut, &bytes[..bytes.len() - 32]).unwrap();
    let (ours, theirs, dir) = restore_both(&cut, &[]);
    let e = error_text(&ours, "cairn restore without a trailer");
    assert_eq!(e, error_text(&theirs, "etcdctl restore without a trailer"));
    assert_eq!(
        e,
        "Error: snapshot missing hash but --skip-hash-check=false"
    );
    assert!(!dir.exists());
    let (ours, theirs, dir) = restore_both(&cut, &["--skip-hash-check"]);
    ok(&ours, "cairn restore --skip-hash-check");
    ok(&theirs, "etcdctl restore --skip-hash-check");
    assert!(dir.join("member").is_dir());
}

#[test]
fn restore_of_a_missing_file_errors_like_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.db");
    let ours = cairn(&[
        "snapshot",
        "restore",
        s(&missing),
        "--data-dir",
        s(&dir.path().join("ours")),
    ]);
    let theirs = ctl(&[
        "snapshot",
        "restore",
        s(&missing),
        "--data-dir",
        s(&dir.path().join("theirs")),
    ]);
    let want = error_text(&theirs, "etcdctl restore of a missing file");
    assert_eq!(
        want,
        format!(
            "Error: open {}: no such file or directory",
            missing.display()
        )
    );
    assert_eq!(error_text(&ours, "cairn restore of a missing file"), want);
    assert_eq!(ours.status.code(), theirs.status.code());
    assert!(!dir.path().join("ours").exists());
}

#[test]
fn status_errors_match_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let good = d("good.db");
    write_store(&good, WriterOptions::default(), 300, 0);
    let bytes = fs::read(&good).unwrap();
    let mut files: Vec<(PathBuf, &str)> = vec![(d("missing.db"), "missing")];
    let mut add = |name: &str, content: Vec<u8>, what: &'static str| {
        fs::write(d(name), content).unwrap();
        files.push((d(name), what));
    };
    add("text", b"not a snapshot\n".to_vec(), "a text file");
    add(
        "noise",
        (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        "noise",
    );
    add("zeros", vec![0; 16384], "zeros");
    add("h4096", bytes[..4096].to_vec(), "one page");
    add("h6000", bytes[..6000].to_vec(), "a page and a half");
    let mut b = bytes.clone();
    b[16 + 40] ^= 1;
    b[4096 + 16 + 40] ^= 1;
    add("checksums", b, "both meta checksums wrong");
    let mut b = bytes.clone();
    b[16 + 4] = 7;
    b[4096 + 16 + 4] = 7;
    add("version", b, "another version");
    let mut b = bytes.clone();
    b[16] ^= 0xff;
    b[4096 + 16] ^= 0xff;
    add("magic", b, "no magic");
    files.push((dir.path().to_path_buf(), "a directory"));

    for (file, what) in &files {
        let theirs = ctl(&["snapshot", "status", s(file), "-w", "json"]);
        let want = error_text(&theirs, &format!("etcdctl status of {what}"));
        let lib = status(file).expect_err(what);
        assert_eq!(format!("Error: {lib}"), want, "{what}");
        let ours = cairn(&["snapshot", "status", s(file), "-w", "json"]);
        assert_eq!(error_text(&ours, what), want, "{what}");
        assert_eq!(text(&ours.stderr), format!("{want}\n"), "{what}: stderr");
        assert_eq!(ours.status.code(), theirs.status.code(), "{what}");
        assert!(ours.stdout.is_empty());
    }
    // etcdctl's text for an empty file is an accident of bbolt trying to
    // initialise it ("write X: bad file descriptor"); ours says why.
    fs::write(d("empty"), b"").unwrap();
    assert_eq!(status(&d("empty")).unwrap_err(), "file size too small");
}

/// `-w` errors: an unknown format fails before the file is read (even a
/// missing one), `protobuf` after; both with etcdctl's exit status 4.
#[test]
fn status_format_errors_match_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.db");
    write_store(&good, WriterOptions::default(), 30, 0);
    let missing = dir.path().join("missing.db");
    for (fmt, file) in [("yaml", &good), ("JSON", &good), ("yaml", &missing)] {
        let theirs = ctl(&["snapshot", "status", s(file), "-w", fmt]);
        let want = error_text(&theirs, &format!("etcdctl -w {fmt}"));
        assert_eq!(want, "Error: unsupported output format");
        let ours = cairn(&["snapshot", "status", s(file), "-w", fmt]);
        assert_eq!(
            error_text(&ours, fmt),
            want,
            "-w {fmt} on {}",
            file.display()
        );
        assert_eq!(ours.status.code(), theirs.status.code(), "exit status");
    }
    let theirs = ctl(&["snapshot", "status", s(&good), "-w", "protobuf"]);
    let want = error_text(&theirs, "etcdctl -w protobuf");
    let st = status(&good).unwrap();
    assert_eq!(
        format!("Error: {}", render(&st, "protobuf").unwrap_err()),
        want
    );
    let ours = cairn(&["snapshot", "status", s(&good), "-w", "protobuf"]);
    assert_eq!(error_text(&ours, "-w protobuf"), want);
    assert_eq!(ours.status.code(), theirs.status.code(), "exit status");
    assert!(ours.stdout.is_empty());
}

// ---------------------------------------------------------------------------
// snapshot status output on many files
// ---------------------------------------------------------------------------

/// A file like etcd's: `n` revisions in `key` from `first_rev` on (values
/// varied by `seed`), a `meta` bucket.
fn write_store(path: &Path, opts: WriterOptions, n: u64, seed: u64) {
    write_store_from(path, opts, n, seed, 2);
}

fn write_store_from(path: &Path, opts: WriterOptions, n: u64, seed: u64, first_rev: u64) {
    let mut w = Writer::create(path, opts).unwrap();
    w.write_bucket(b"cluster", [(b"clusterVersion", b"3.4.0")])
        .unwrap();
    let mut key = w.bucket(b"key").unwrap();
    for i in 0..n {
        let mut k = (first_rev + i).to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&0u64.to_be_bytes());
        let v = format!("value {seed} {i} {}", "x".repeat((i % 90) as usize));
        key.put(&k, v.as_bytes()).unwrap();
    }
    key.finish().unwrap();
    w.write_bucket(b"meta", [(b"consistent_index", 5u64.to_be_bytes())])
        .unwrap();
    w.finish_sync().unwrap();
}

/// Sets the high-water mark of both metas to `pages` (the file's pages
/// stay; bbolt never reads the unreachable ones beyond them), so the status
/// reports `pages × page size` bytes.
fn set_high_water(path: &Path, pages: u64) {
    let ps = Db::open(path).unwrap().page_size();
    let mut bytes = fs::read(path).unwrap();
    for page in [0usize, 1] {
        let at = page * ps + 16;
        let mut meta = Meta::parse(&bytes[at..at + 64]).unwrap();
        assert!(pages >= meta.pgid);
        meta.pgid = pages;
        meta.checksum = meta.compute_checksum();
        bytes[at..at + 64].copy_from_slice(&meta.encode());
    }
    fs::write(path, bytes).unwrap();
}

#[test]
fn status_output_matches_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut next = || {
        n += 1;
        dir.path().join(format!("f{n}.db"))
    };
    // Hashes of 8, 7 and 6 hex digits (the table's first column narrows).
    for digits in [8u32, 7, 6] {
        let (lo, hi) = (1u64 << (4 * (digits - 1)), 1u64 << (4 * digits));
        let mut found = false;
        for seed in 0..20_000 {
            let f = next();
            write_store(&f, WriterOptions::default(), 3, seed);
            let h = u64::from(status(&f).unwrap().hash);
            if (lo..hi).contains(&h) {
                let st = same_status_output(&f, false);
                assert_eq!(format!("{:x}", st.hash).len(), digits as usize);
                found = true;
                break;
            }
            fs::remove_file(&f).unwrap();
        }
        assert!(found, "no file with a {digits}-digit hash");
    }
    // Revisions wider than the header.
    for first in [123_456_789u64, 12_345_678_901, 1_234_567_890_123] {
        let f = next();
        write_store_from(&f, WriterOptions::default(), 2, 0, first);
        assert_eq!(same_status_output(&f, false).revision, first as i64 + 1);
    }
    // Page sizes, an empty freelist page, trees with branch pages.
    for (ps, keys) in [(8192, 2000), (16384, 50), (4096, 5000)] {
        let f = next();
        let opts = WriterOptions {
            page_size: ps,
            freelist: cairn::bbolt::FreelistMode::EmptyPage,
            ..WriterOptions::default()
        };
        write_store(&f, opts, keys, 1);
        same_status_output(&f, false);
    }
    // Humanized sizes around the unit boundaries.
    for pages in [
        3, 24, 25, 244, 245, 2440, 2441, 24_414, 24_415, 244_141, 262_144, 2_441_406, 2_441_407,
    ] {
        let f = next();
        write_store(&f, WriterOptions::default(), 3, 0);
        set_high_water(&f, pages);
        let st = same_status_output(&f, false);
        assert_eq!(st.total_size, pages * 4096);
    }
    // A trailer after the pages changes nothing.
    let f = next();
    write_store(&f, WriterOptions::default(), 100, 0);
    let before = status(&f).unwrap();
    let mut b = fs::read(&f).unwrap();
    b.extend_from_slice(&[7; 32]);
    fs::write(&f, b).unwrap();
    assert_eq!(same_status_output(&f, false), before);
}

#[test]
fn status_cli_prints_what_etcdctl_prints() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.db");
    write_store(&f, WriterOptions::default(), 500, 3);
    same_status_output(&f, true);
    // An etcd snapshot with etcd's own buckets, freshly saved.
    let etcd = Server::etcd();
    let g = dir.path().join("etcd.db");
    save(&etcd.endpoint(), &g);
    same_status_output(&g, true);
}

/// Damaged copies of a real etcd snapshot: where etcdctl reads the file
/// we print what it prints, where it refuses it (exit status 1) we refuse
/// it with the same first line, and where it crashes (bbolt panics, exit
/// status 2) we report a failed integrity check.
#[test]
fn status_of_damaged_etcd_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.db");
    {
        let etcd = Server::etcd();
        for i in 0..400 {
            ok(
                &etcdctl(
                    &etcd.endpoint(),
                    &["put", &format!("key/{i:04}"), &"v".repeat(i % 300)],
                    None,
                ),
                "put",
            );
        }
        save(&etcd.endpoint(), &file);
    }
    let bytes = fs::read(&file).unwrap();
    let pages = (bytes.len() - 32) / 4096;
    let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [8192, 12288, 4096 * (pages / 2), bytes.len() - 32 - 4096] {
        variants.push((format!("cut at {cut}"), bytes[..cut].to_vec()));
    }
    for page in 2..pages {
        for (off, x) in [
            (8, 0x03u8),
            (10, 0x40),
            (16, 0x01),
            (28, 0x80),
            (2000, 0x11),
        ] {
            let mut b = bytes.clone();
            b[page * 4096 + off] ^= x;
            variants.push((format!("page {page} byte {off} ^ {x:#x}"), b));
        }
    }
    let f = dir.path().join("damaged.db");
    let (mut same, mut refused, mut crashed) = (0, 0, 0);
    for (what, content) in &variants {
        fs::write(&f, content).unwrap();
        let theirs = ctl(&["snapshot", "status", s(&f), "-w", "json"]);
        let ours = status(&f);
        match theirs.status.code() {
            Some(0) => {
                let st = ours.unwrap_or_else(|e| panic!("{what}: etcdctl reads it, we fail: {e}"));
                assert_eq!(render(&st, "json").unwrap(), text(&theirs.stdout), "{what}");
                same += 1;
            }
            Some(1) => {
                let want = error_text(&theirs, what);
                let e = ours.expect_err(what);
                let first = |t: &str| t.lines().next().unwrap_or("").to_string();
                assert_eq!(first(&format!("Error: {e}")), first(&want), "{what}");
                refused += 1;
            }
            _ => {
                let e = ours.expect_err(what);
                assert!(
                    e.starts_with("snapshot file integrity check failed. "),
                    "{what}: {e}"
                );
                crashed += 1;
            }
        }
    }
    eprintln!(
        "{} damaged files: {same} read alike, {refused} refused alike, {crashed} crash etcdctl",
        variants.len()
    );
}

// ---------------------------------------------------------------------------
// alarms travel with the backup, as in etcd
// ---------------------------------------------------------------------------

/// An alarm raised when the snapshot is saved is still raised after a
/// restore (etcd keeps its `alarm` bucket: a full store restored is still
/// full): from cairn and from etcd, restored by cairn and by etcdctl into
/// etcd, `alarm list` shows the same alarm, and writes are refused.
#[test]
fn alarms_survive_backup_and_restore() {
    use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
    use cairn::pb::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    for source in [Kind::Cairn, Kind::Etcd] {
        let file = dir.path().join(format!("{}.db", source.name()));
        let src = Server::start(source);
        let listed = rt.block_on(async {
            let mut m = MaintenanceClient::new(common::check::channel(
                &src.endpoint(),
                Duration::from_secs(10),
            ));
            let id = m
                .status(cairn::pb::etcdserverpb::StatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .header
                .unwrap()
                .member_id;
            m.alarm(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: id,
                alarm: AlarmType::Nospace as i32,
            })
            .await
            .expect("raise NOSPACE");
            format!("memberID:{id} alarm:NOSPACE \n")
        });
        assert_eq!(
            ok(
                &etcdctl(&src.endpoint(), &["alarm", "list"], None),
                "alarm list"
            ),
            listed
        );
        save(&src.endpoint(), &file);
        drop(src);

        let mut into_cairn = Server::unstarted(Kind::Cairn, "c");
        cairn_restore(&file, &into_cairn, None);
        into_cairn.start_on_data_dir();
        let mut into_etcd = Server::unstarted(Kind::Etcd, "e");
        etcdctl_restore(&file, &into_etcd);
        into_etcd.start_on_data_dir();
        for restored in [&into_cairn, &into_etcd] {
            let what = format!(
                "{} snapshot restored into {}",
                source.name(),
                restored.kind().name()
            );
            let ep = restored.endpoint();
            assert_eq!(
                ok(&etcdctl(&ep, &["alarm", "list"], None), &what),
                listed,
                "{what}"
            );
            assert_eq!(
                error_text(&etcdctl(&ep, &["put", "k", "v"], None), &what),
                "Error: etcdserver: mvcc: database space exceeded",
                "{what}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// the routine over TLS, as kubeadm clusters run it
// ---------------------------------------------------------------------------

/// The operator routine of CONTRACT section 6 word for word, on a cluster
/// with kubeadm's mutual TLS (one member, then three): etcdctl with
/// `--cacert --cert --key` writes (overwrites, a delete, a key on a lease),
/// `snapshot save`, `snapshot status -w table`, more writes, `cairn
/// snapshot restore` into new dirs with https peer URLs for every member,
/// the members started on them: the snapshot's keys, values and revision,
/// the later writes gone, new member ids, and the cluster takes writes.
#[test]
fn operator_routine_over_tls() {
    use common::tls::{etcdctl_tls, Pki, TlsMember};
    let pki = Pki::generate();
    let client = pki.pair("healthcheck-client");
    let ca = pki.ca_file();
    for n in [1usize, 3] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snapshotdb");
        let old = TlsMember::cluster(Kind::Cairn, n, &pki, &[]);
        let all = |ms: &[TlsMember]| {
            ms.iter()
                .map(|m| m.endpoint())
                .collect::<Vec<_>>()
                .join(",")
        };
        let ctl = |endpoints: &str, args: &[&str]| {
            ok(
                &etcdctl_tls(endpoints, &ca, Some(&client), args),
                &args.join(" "),
            )
        };
        let ep0 = old[0].endpoint();
        for (k, v) in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("d", "5")] {
            ctl(&ep0, &["put", k, v]);
        }
        ctl(&ep0, &["del", "c"]);
        let grant = ctl(&ep0, &["lease", "grant", "600"]);
        let lease = grant
            .split_whitespace()
            .nth(1)
            .expect("lease id")
            .to_string();
        ctl(&ep0, &["put", "leased", "x", "--lease", &lease]);
        let before = ctl(&ep0, &["get", "", "--from-key", "-w", "json"]);
        let before: serde_json::Value = serde_json::from_str(&before).unwrap();
        let old_ids = ctl(&all(&old), &["member", "list", "-w", "json"]);
        ctl(&all(&old), &["endpoint", "status", "-w", "table"]);

        let saved = ctl(&old[n - 1].endpoint(), &["snapshot", "save", s(&file)]);
        assert!(saved.contains("Snapshot saved at"), "{saved}");
        let table = ok(
            &ctl_cmd(&["snapshot", "status", s(&file), "-w", "table"]),
            "snapshot status",
        );
        let rev = before["header"]["revision"].as_i64().unwrap();
        let row: Vec<&str> = table
            .lines()
            .nth(3)
            .unwrap_or("")
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(row.get(2), Some(&rev.to_string().as_str()), "{table}");
        for i in 0..3 {
            ctl(&ep0, &["put", &format!("later/{i}"), "lost"]);
        }
        drop(old);

        // New members, new dirs, https peer URLs.
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (common::free_port(), common::free_port()))
            .collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("r{i}=https://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut new: Vec<TlsMember> = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| {
                TlsMember::unstarted(Kind::Cairn, &format!("r{i}"), *c, *p, &initial, &pki, &[])
            })
            .collect();
        for m in &new {
            ok(
                &cairn(&[
                    "snapshot",
                    "restore",
                    s(&file),
                    "--name",
                    &m.name,
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-token",
                    "cairn-tls-test",
                    "--initial-advertise-peer-urls",
                    &m.peer_url(),
                    "--data-dir",
                    s(&m.data_dir()),
                ]),
                "cairn snapshot restore",
            );
        }
        for m in &mut new {
            m.spawn();
        }
        for m in &mut new {
            m.wait_ready(&pki);
        }
        for m in &new {
            let after = ctl(&m.endpoint(), &["get", "", "--from-key", "-w", "json"]);
            let after: serde_json::Value = serde_json::from_str(&after).unwrap();
            assert_eq!(
                after["kvs"], before["kvs"],
                "{} restored, {n} members",
                m.name
            );
            assert_eq!(after["header"]["revision"], before["header"]["revision"]);
            let leases = ctl(&m.endpoint(), &["lease", "list"]);
            assert!(leases.contains(&lease), "{leases}");
        }
        let new_ids = ctl(&all(&new), &["member", "list", "-w", "json"]);
        let ids = |text: &str| -> Vec<u64> {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            v["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["ID"].as_u64().unwrap())
                .collect()
        };
        let (old_ids, new_ids) = (ids(&old_ids), ids(&new_ids));
        assert_eq!(new_ids.len(), n);
        assert!(
            new_ids.iter().all(|id| !old_ids.contains(id)),
            "{old_ids:?} {new_ids:?}"
        );
        let put = ctl(
            &new[n - 1].endpoint(),
            &["put", "after", "restore", "-w", "json"],
        );
        let put: serde_json::Value = serde_json::from_str(&put).unwrap();
        assert_eq!(put["header"]["revision"].as_i64(), Some(rev + 1));
        ctl(&all(&new), &["endpoint", "health"]);
    }
}

/// etcdctl for an offline command, by another name than `ctl` (which the
/// TLS test shadows).
fn ctl_cmd(args: &[&str]) -> Output {
    ctl(args)
}

/// A store whose newest records a compaction removed (a delete's
/// tombstone at the compacted revision) comes back at its revision, not at
/// its newest remaining record's: the next write gets the next revision,
/// in cairn restored by cairn and in etcd restored by etcdctl alike.
#[test]
fn restore_after_compacting_the_newest_tombstone() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compacted.db");
    let src = Server::cairn();
    let rev = rt.block_on(async {
        let mut c = connect(&src.endpoint()).await;
        c.put("a", "1", None).await.unwrap();
        c.put("k", "v", None).await.unwrap();
        let d = c.delete("k", None).await.unwrap();
        let rev = d.header().unwrap().revision();
        c.compact(rev, Some(CompactionOptions::new().with_physical()))
            .await
            .unwrap();
        rev
    });
    save(&src.endpoint(), &file);
    drop(src);
    let mut into_cairn = Server::unstarted(Kind::Cairn, "c");
    cairn_restore(&file, &into_cairn, None);
    into_cairn.start_on_data_dir();
    let mut into_etcd = Server::unstarted(Kind::Etcd, "e");
    etcdctl_restore(&file, &into_etcd);
    into_etcd.start_on_data_dir();
    for srv in [&into_cairn, &into_etcd] {
        rt.block_on(async {
            let mut c = connect(&srv.endpoint()).await;
            let r = c.put("next", "x", None).await.unwrap();
            assert_eq!(
                r.header().unwrap().revision(),
                rev + 1,
                "{} restored",
                srv.kind().name()
            );
        });
    }
}
