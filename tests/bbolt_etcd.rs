//! `cairn::bbolt` against the real etcd 3.4 (Debian's etcd-server and
//! etcdctl at /usr/bin):
//!
//! - a snapshot saved by `etcdctl snapshot save` from a real etcd (puts,
//!   overwrites, deletes, a range delete, transactions, leases, a revoked
//!   lease, values big enough for overflow pages, enough keys for branch
//!   pages) is read by our reader: every revision of the `key` bucket is
//!   the one the writes produced, and our own computation of `etcdctl
//!   snapshot status` (hash, revision, total keys, size) matches etcdctl's;
//! - the same buckets re-written by our writer give the same status, and
//!   `etcdctl snapshot restore` of that file gives a data dir the real etcd
//!   starts from, serving the same keys, leases and revision;
//! - a large synthetic file (100k revisions) round-trips through writer and
//!   reader, passes etcdctl's integrity check and restores into a real etcd
//!   that then takes writes.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use cairn::bbolt::{Db, FreelistMode, Writer, WriterOptions};
use cairn::pb::mvccpb::KeyValue;
use common::{etcdctl, Server};
use etcd_client::{Client, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use prost::Message;

/// etcdctl for the offline `snapshot` subcommands (no server involved).
fn ctl(args: &[&str]) -> Output {
    etcdctl("http://127.0.0.1:1", args, None)
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `etcdctl snapshot status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Status {
    hash: u32,
    revision: i64,
    total_key: u64,
    total_size: u64,
}

fn etcdctl_status(path: &Path) -> Status {
    let out = ctl(&["snapshot", "status", path.to_str().unwrap(), "-w", "json"]);
    let text = ok(&out, "snapshot status");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("status json");
    Status {
        hash: v["hash"].as_u64().unwrap() as u32,
        revision: v["revision"].as_i64().unwrap(),
        total_key: v["totalKey"].as_u64().unwrap(),
        total_size: v["totalSize"].as_u64().unwrap(),
    }
}

/// `etcdctl snapshot status` recomputed with our reader: CRC-32C
/// (Castagnoli) over every top-level bucket name followed by each of its
/// keys and values, in order; the revision is the main revision of the
/// last key of the `key` bucket; the total counts every entry of every
/// bucket; the size is the high-water mark times the page size.
fn our_status(db: &Db) -> Status {
    let mut crc = 0u32;
    let mut revision = 0;
    let mut total_key = 0;
    for b in db.root().iter() {
        let b = b.unwrap();
        crc = crc32c::crc32c_append(crc, &b.key);
        let bucket = db.root().open(&b).unwrap();
        for e in bucket.iter() {
            let e = e.unwrap();
            crc = crc32c::crc32c_append(crc, &e.key);
            // A nested bucket's value counts as nil.
            if !e.is_bucket() {
                crc = crc32c::crc32c_append(crc, &e.value);
            }
            if b.key == b"key" {
                revision = i64::from_be_bytes(e.key[..8].try_into().unwrap());
            }
            total_key += 1;
        }
    }
    Status {
        hash: crc,
        revision,
        total_key,
        total_size: db.size(),
    }
}

fn sha256_of(path: &Path, len: u64) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {len} '{}' | sha256sum",
            path.to_str().unwrap()
        ))
        .output()
        .expect("sha256sum");
    let hex = String::from_utf8(out.stdout).unwrap();
    let hex = hex.split_whitespace().next().unwrap();
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Copies `src` to `dst` with the sha256 trailer `etcdctl snapshot restore`
/// checks (what Maintenance.Snapshot appends to the stream).
fn with_trailer(src: &Path, dst: &Path) {
    let len = fs::metadata(src).unwrap().len();
    let sha = sha256_of(src, len);
    let mut bytes = fs::read(src).unwrap();
    bytes.extend_from_slice(&sha);
    fs::write(dst, bytes).unwrap();
}

/// Re-writes every bucket of `db` with our writer.
fn rewrite(db: &Db, path: &Path, opts: WriterOptions) {
    let mut w = Writer::create(path, opts).unwrap();
    for b in db.root().iter() {
        let b = b.unwrap();
        let src = db.root().open(&b).unwrap();
        let mut dst = w.bucket(&b.key).unwrap();
        dst.set_sequence(src.sequence());
        for e in src.iter() {
            let e = e.unwrap();
            assert!(!e.is_bucket(), "etcd has no nested buckets");
            dst.put(&e.key, &e.value).unwrap();
        }
        dst.finish().unwrap();
    }
    w.finish_sync().unwrap();
}

/// etcd's revision key: main and sub revision, big-endian, joined by '_',
/// plus 't' for a tombstone.
fn rev_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut k = main.to_be_bytes().to_vec();
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// The writes and what they must leave in the `key` bucket.
#[derive(Default)]
struct Model {
    live: BTreeMap<Vec<u8>, KeyValue>,
    /// Every revision: rev key → KeyValue.
    history: BTreeMap<Vec<u8>, KeyValue>,
}

impl Model {
    fn put(&mut self, rev: i64, sub: i64, key: &[u8], value: &[u8], lease: i64) {
        let prev = self.live.get(key);
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.map_or(1, |p| p.version + 1),
            value: value.to_vec(),
            lease,
        };
        self.history.insert(rev_key(rev, sub, false), kv.clone());
        self.live.insert(key.to_vec(), kv);
    }

    fn delete(&mut self, rev: i64, sub: i64, key: &[u8]) {
        assert!(self.live.remove(key).is_some());
        // A tombstone's value holds only the key.
        let kv = KeyValue {
            key: key.to_vec(),
            ..KeyValue::default()
        };
        self.history.insert(rev_key(rev, sub, true), kv);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writes a varied history to the server; the model of it, the final
/// revision and the two lease ids (kept, revoked).
async fn write_history(endpoint: String) -> (Model, i64, i64, i64) {
    let mut c = Client::connect([endpoint], None).await.unwrap();
    let mut m = Model::default();
    let rev = |h: Option<&etcd_client::ResponseHeader>| h.unwrap().revision();

    // Many keys, 100 per transaction (sub-revisions 0..99), for branches.
    for t in 0..40 {
        let ops: Vec<TxnOp> = (0..100)
            .map(|i| {
                let n = t * 100 + i;
                TxnOp::put(
                    format!("k/{n:05}"),
                    format!("value-{n}-{}", "x".repeat(n % 50)),
                    None,
                )
            })
            .collect();
        let r = c.txn(Txn::new().and_then(ops)).await.unwrap();
        let r_rev = rev(r.header());
        for i in 0..100 {
            let n = t * 100 + i;
            let value = format!("value-{n}-{}", "x".repeat(n % 50));
            m.put(
                r_rev,
                i as i64,
                format!("k/{n:05}").as_bytes(),
                value.as_bytes(),
                0,
            );
        }
    }
    // Single puts, overwrites.
    for n in 0..60 {
        let key = format!("k/{n:05}");
        let value = format!("overwritten-{n}");
        let r = c.put(key.clone(), value.clone(), None).await.unwrap();
        m.put(rev(r.header()), 0, key.as_bytes(), value.as_bytes(), 0);
    }
    for n in 0..5 {
        let key = "k/00003".to_string();
        let value = format!("again-{n}");
        let r = c.put(key.clone(), value.clone(), None).await.unwrap();
        m.put(rev(r.header()), 0, key.as_bytes(), value.as_bytes(), 0);
    }
    // Single deletes.
    for n in 100..120 {
        let key = format!("k/{n:05}");
        let r = c.delete(key.clone(), None).await.unwrap();
        assert_eq!(r.deleted(), 1);
        m.delete(rev(r.header()), 0, key.as_bytes());
    }
    // A range delete: one revision, sub-revisions in key order.
    let r = c
        .delete("k/021", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(r.deleted(), 100);
    let dr = rev(r.header());
    for (sub, n) in (2100..2200).enumerate() {
        m.delete(dr, sub as i64, format!("k/{n:05}").as_bytes());
    }
    // A re-created key (new create revision, version 1).
    let r = c.put("k/00105", "reborn", None).await.unwrap();
    m.put(rev(r.header()), 0, b"k/00105", b"reborn", 0);

    // Leases: one kept, one revoked (its key is deleted by the revoke).
    let kept = c.lease_grant(3600, None).await.unwrap().id();
    let revoked = c.lease_grant(3600, None).await.unwrap().id();
    for (key, lease) in [("lease/a", kept), ("lease/b", revoked), ("lease/c", kept)] {
        let r = c
            .put(
                key,
                format!("on {lease:x}"),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
        m.put(
            rev(r.header()),
            0,
            key.as_bytes(),
            format!("on {lease:x}").as_bytes(),
            lease,
        );
    }
    let r = c.lease_revoke(revoked).await.unwrap();
    m.delete(rev(r.header()), 0, b"lease/b");

    // Big values: overflow pages.
    for (i, size) in [5000usize, 40_000, 1_000_000].iter().enumerate() {
        let key = format!("big/{i}");
        let value: Vec<u8> = (0..*size).map(|j| (j * 7 + i) as u8).collect();
        let r = c.put(key.clone(), value.clone(), None).await.unwrap();
        m.put(rev(r.header()), 0, key.as_bytes(), &value, 0);
    }
    let r = c.put("last", "", None).await.unwrap();
    let last = rev(r.header());
    m.put(last, 0, b"last", b"", 0);

    // The server agrees with the model.
    let g = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(rev(g.header()), last);
    let got: Vec<KeyValue> = g.kvs().iter().map(kv_of).collect();
    assert_eq!(got, m.live.values().cloned().collect::<Vec<_>>());
    (m, last, kept, revoked)
}

fn kv_of(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        value: kv.value().to_vec(),
        lease: kv.lease(),
    }
}

async fn all_keys(endpoint: String) -> (i64, Vec<KeyValue>, Vec<i64>) {
    let mut c = Client::connect([endpoint], None).await.unwrap();
    let g = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let leases = c.leases().await.unwrap();
    let mut ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
    ids.sort();
    (
        g.header().unwrap().revision(),
        g.kvs().iter().map(kv_of).collect(),
        ids,
    )
}

/// Restores `snapshot` into `srv`'s data dir (replacing it) with
/// `etcdctl snapshot restore`, then restarts `srv` on it.
fn restore_into(srv: &mut Server, snapshot: &Path, extra: &[&str]) {
    srv.kill9();
    let data = srv.data_dir();
    fs::remove_dir_all(&data).unwrap();
    let peer = srv.peer_url();
    let cluster = format!("default={peer}");
    let mut args = vec![
        "snapshot",
        "restore",
        snapshot.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--name",
        "default",
        "--initial-cluster",
        &cluster,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster-token",
        "cairn-test",
    ];
    args.extend_from_slice(extra);
    ok(&ctl(&args), "snapshot restore");
    srv.restart();
}

#[test]
fn etcd_snapshot_read_rewrite_restore() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let srv = Server::etcd();
    let (model, last_rev, kept, revoked) = rt.block_on(write_history(srv.endpoint()));
    let (_, live_before, leases_before) = rt.block_on(all_keys(srv.endpoint()));
    assert_eq!(leases_before, vec![kept]);

    // --- etcdctl snapshot save: the raw db plus a sha256 trailer.
    let snap = dir.path().join("etcd.db");
    ok(
        &etcdctl(
            &srv.endpoint(),
            &["snapshot", "save", snap.to_str().unwrap()],
            None,
        ),
        "snapshot save",
    );
    drop(srv);
    let len = fs::metadata(&snap).unwrap().len();
    assert_eq!(len % 512, 32, "snapshot file ends with a 32-byte trailer");
    let trailer = fs::read(&snap).unwrap()[len as usize - 32..].to_vec();
    assert_eq!(sha256_of(&snap, len - 32), trailer, "trailer is the sha256");

    // --- our reader on etcd's file.
    let db = Db::open(&snap).unwrap();
    assert_eq!(db.page_size(), 4096);
    assert_eq!(db.size(), len - 32);
    let meta = *db.meta();
    eprintln!("etcd snapshot meta: {meta:?}");
    let names: Vec<String> = db
        .bucket_names()
        .unwrap()
        .into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect();
    eprintln!("etcd buckets: {names:?}");
    for want in [
        "alarm",
        "auth",
        "authRoles",
        "authUsers",
        "cluster",
        "key",
        "lease",
        "members",
        "members_removed",
        "meta",
    ] {
        assert!(names.iter().any(|n| n == want), "bucket {want} missing");
    }
    for name in &names {
        let b = db.bucket(name.as_bytes()).unwrap().unwrap();
        eprintln!(
            "  {name}: inline {} entries {}",
            b.is_inline(),
            b.iter().count()
        );
    }

    // The key bucket: every revision, exactly as written.
    let key_bucket = db.bucket(b"key").unwrap().unwrap();
    assert!(!key_bucket.is_inline());
    let mut got = BTreeMap::new();
    for e in key_bucket.iter() {
        let e = e.unwrap();
        assert!(
            e.key.len() == 17 || (e.key.len() == 18 && e.key[17] == b't'),
            "revision key {:?}",
            e.key
        );
        assert_eq!(e.key[8], b'_');
        let kv = KeyValue::decode(e.value.as_slice()).unwrap();
        got.insert(e.key, kv);
    }
    assert_eq!(got.len(), model.history.len());
    for ((gk, gv), (wk, wv)) in got.iter().zip(model.history.iter()) {
        assert_eq!(gk, wk);
        assert_eq!(gv, wv, "revision {gk:?}");
    }
    // Point lookups through the branch pages.
    for (k, v) in model.history.iter().step_by(97) {
        let e = key_bucket.get(k).unwrap().unwrap();
        assert_eq!(&KeyValue::decode(e.value.as_slice()).unwrap(), v);
    }
    // The lease bucket: the kept lease only, keyed by its big-endian id.
    let lease_keys: Vec<Vec<u8>> = db
        .bucket(b"lease")
        .unwrap()
        .unwrap()
        .iter()
        .map(|e| e.unwrap().key)
        .collect();
    assert_eq!(lease_keys, vec![kept.to_be_bytes().to_vec()]);
    assert!(!lease_keys.contains(&revoked.to_be_bytes().to_vec()));
    let meta_bucket = db.bucket(b"meta").unwrap().unwrap();
    assert!(meta_bucket.get(b"consistent_index").unwrap().is_some());

    // Our status computation equals etcdctl's.
    let theirs = etcdctl_status(&snap);
    let ours = our_status(&db);
    eprintln!("etcdctl status {theirs:?}, ours {ours:?}");
    assert_eq!(ours, theirs);
    assert_eq!(theirs.revision, last_rev);

    // --- re-written by our writer: same status (but the size), both
    // freelist modes.
    let ours_none = dir.path().join("ours.db");
    let t = Instant::now();
    rewrite(&db, &ours_none, WriterOptions::default());
    eprintln!("rewrite took {:?}", t.elapsed());
    let ours_free = dir.path().join("ours-freelist.db");
    rewrite(
        &db,
        &ours_free,
        WriterOptions {
            freelist: FreelistMode::EmptyPage,
            ..WriterOptions::default()
        },
    );
    for path in [&ours_none, &ours_free] {
        let st = etcdctl_status(path);
        let rdb = Db::open(path).unwrap();
        eprintln!(
            "{}: status {st:?} (etcd's file {} bytes, ours {} bytes)",
            path.display(),
            len - 32,
            rdb.size()
        );
        assert_eq!(st.revision, theirs.revision);
        assert_eq!(st.total_key, theirs.total_key);
        assert_eq!(st.hash, theirs.hash, "same content, same hash");
        assert_eq!(st.total_size, rdb.size());
        assert_eq!(our_status(&rdb), st);
    }

    // --- restore: without a trailer only with --skip-hash-check.
    let out = ctl(&[
        "snapshot",
        "restore",
        ours_none.to_str().unwrap(),
        "--data-dir",
        dir.path().join("never").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("snapshot missing hash"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With the trailer appended, as Maintenance.Snapshot will stream it.
    let ours_sha = dir.path().join("ours-sha.db");
    with_trailer(&ours_none, &ours_sha);
    for (file, extra) in [
        (&ours_sha, &[][..]),
        (&ours_free, &["--skip-hash-check"][..]),
    ] {
        let mut srv2 = Server::etcd();
        restore_into(&mut srv2, file, extra);
        let (rev2, live2, leases2) = rt.block_on(all_keys(srv2.endpoint()));
        assert_eq!(rev2, last_rev, "restored revision");
        assert_eq!(live2, live_before, "restored keys");
        assert_eq!(leases2, vec![kept], "restored leases");
        // The restored member takes writes (bbolt modifies our tree).
        let out = etcdctl(&srv2.endpoint(), &["put", "after", "restore"], None);
        ok(&out, "put after restore");
        let out = etcdctl(&srv2.endpoint(), &["del", "--prefix", "k/039"], None);
        assert_eq!(ok(&out, "del after restore").trim(), "100");
        let (rev3, live3, _) = rt.block_on(all_keys(srv2.endpoint()));
        assert_eq!(rev3, last_rev + 2);
        assert_eq!(live3.len(), live_before.len() + 1 - 100);
    }
}

/// A synthetic etcd-like store: `n` revisions of distinct keys (some
/// values large), then a `meta` bucket.
fn synthetic_entry(i: u64) -> (Vec<u8>, Vec<u8>) {
    let rev = i as i64 + 2;
    let size = match i % 1000 {
        0 => 9000,
        500 => 70_000,
        n => (n % 200) as usize,
    };
    let kv = KeyValue {
        key: format!("syn/{i:07}").into_bytes(),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        value: (0..size).map(|j| (j as u64 ^ i) as u8).collect(),
        lease: 0,
    };
    (rev_key(rev, 0, false), kv.encode_to_vec())
}

#[test]
fn synthetic_100k_roundtrip_status_and_restore() {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syn.db");
    let t = Instant::now();
    let mut w = Writer::create(&path, WriterOptions::default()).unwrap();
    w.write_bucket(b"key", (0..N).map(synthetic_entry)).unwrap();
    let mut consistent_index = 0u64.to_be_bytes();
    consistent_index[7] = 5;
    w.write_bucket(
        b"meta",
        [(b"consistent_index".as_slice(), consistent_index)],
    )
    .unwrap();
    w.finish_sync().unwrap();
    let size = fs::metadata(&path).unwrap().len();
    eprintln!("wrote {N} revisions, {size} bytes in {:?}", t.elapsed());

    // Reader round trip, streaming on both sides.
    let t = Instant::now();
    let db = Db::open(&path).unwrap();
    assert_eq!(db.size(), size);
    let mut n = 0;
    for (i, e) in db.bucket(b"key").unwrap().unwrap().iter().enumerate() {
        let e = e.unwrap();
        let (k, v) = synthetic_entry(i as u64);
        assert_eq!(e.key, k);
        assert_eq!(e.value, v);
        n += 1;
    }
    assert_eq!(n, N);
    eprintln!("read back in {:?}", t.elapsed());
    let k = db.bucket(b"key").unwrap().unwrap();
    for i in (0..N).step_by(9973) {
        let (key, value) = synthetic_entry(i);
        assert_eq!(k.get(&key).unwrap().unwrap().value, value);
    }

    // bbolt's own integrity check (inside snapshot status) accepts it.
    let st = etcdctl_status(&path);
    eprintln!("etcdctl status of the synthetic file: {st:?}");
    assert_eq!(st, our_status(&db));
    assert_eq!(st.revision, N as i64 + 1);
    assert_eq!(st.total_key, N + 1);

    // etcd restores it (creating its other buckets) and serves it.
    let sha = dir.path().join("syn-sha.db");
    with_trailer(&path, &sha);
    let mut srv = Server::etcd();
    restore_into(&mut srv, &sha, &[]);
    let out = etcdctl(
        &srv.endpoint(),
        &["get", "--prefix", "syn/", "--limit=1", "-w", "json"],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(ok(&out, "count").trim()).unwrap();
    assert_eq!(v["count"].as_u64(), Some(N));
    assert_eq!(v["header"]["revision"].as_i64(), Some(N as i64 + 1));
    let out = etcdctl(
        &srv.endpoint(),
        &["get", "syn/0000500", "--print-value-only"],
        None,
    );
    let (_, value) = synthetic_entry(500);
    let kv = KeyValue::decode(value.as_slice()).unwrap();
    ok(&out, "get");
    let mut want = kv.value.clone();
    want.push(b'\n');
    assert!(out.stdout == want, "value of syn/0000500 after restore");
    ok(
        &etcdctl(&srv.endpoint(), &["put", "syn/new", "x"], None),
        "put",
    );
    let out = etcdctl(&srv.endpoint(), &["compact", &(N as i64).to_string()], None);
    ok(&out, "compact");
    let out = etcdctl(&srv.endpoint(), &["defrag"], None);
    ok(&out, "defrag");
    let _ = std::io::stderr().flush();
}
