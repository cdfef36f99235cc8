//! `cairn snapshot restore`: a fresh data dir from an etcd-format snapshot
//! file — one saved from cairn or from a real etcd 3.4–3.6 — with new
//! member and cluster ids, as `etcdctl snapshot restore` builds one for
//! etcd.
//!
//! The store comes back exactly: every revision of the `key` bucket, the
//! current revision, the compaction state, the leases (with the keys
//! attached to them) and the alarms (as etcd: a full store restored is
//! still full until disarmed). The membership does not: the new members are the ones
//! named on the command line, and the raft log starts afresh.
//!
//! **Invariant:** the snapshot is read record by record and written in
//! bounded batches; nothing holds the store in memory.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use prost::Message;
use rocksdb::WriteBatch;
use sha2::{Digest, Sha256};

use super::LeaseRecord;
use crate::bbolt::Db;
use crate::pb::etcdserverpb::AlarmMember;
use crate::server::identity::{Identity, InitialMember};
use crate::storage::Storage;

/// Records per write batch.
const BATCH_RECORDS: usize = 10_000;

/// What to restore, with etcdctl's flags.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub file: PathBuf,
    pub name: String,
    pub data_dir: PathBuf,
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub skip_hash_check: bool,
}

/// What was restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub member_id: u64,
    pub cluster_id: u64,
    pub revision: i64,
    pub records: u64,
    pub leases: u64,
}

/// Restores `opts.file` into the new data dir `opts.data_dir`. Errors are
/// etcdctl's texts, for the command to print.
pub fn restore(opts: &RestoreOptions, progress: &mut dyn FnMut(u64)) -> Result<Restored, String> {
    verify_bootstrap(opts)?;
    if opts.data_dir.exists() {
        return Err(format!(
            "data-dir {:?} exists",
            opts.data_dir.display().to_string()
        ));
    }
    verify_hash(&opts.file, opts.skip_hash_check)?;
    let db = Db::open(&opts.file).map_err(|e| e.to_string())?;
    let storage = Storage::open(&opts.data_dir.join("member")).map_err(|e| e.to_string())?;
    let restored = import(&db, &storage, opts, progress).map_err(|e| e.to_string());
    if restored.is_err() {
        // No half-built data dir left behind (etcdctl leaves one, and a
        // retry then fails with "exists").
        drop(storage);
        let _ = std::fs::remove_dir_all(&opts.data_dir);
    }
    restored
}

fn import(
    db: &Db,
    storage: &Storage,
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<Restored> {
    let mut batch = WriteBatch::default();
    let mut records = 0u64;
    let mut revision = 1i64;
    if let Some(key) = db.bucket(b"key")? {
        for entry in key.iter() {
            let entry = entry?;
            revision = crate::mvcc::store::import_etcd_record(
                storage,
                &mut batch,
                &entry.key,
                &entry.value,
            )?;
            records += 1;
            if batch.len() >= 2 * BATCH_RECORDS {
                storage.write(std::mem::take(&mut batch), false)?;
                progress(records);
            }
        }
    }
    let mut leases = 0u64;
    if let Some(lease) = db.bucket(b"lease")? {
        for entry in lease.iter() {
            let entry = entry?;
            let l = LeaseRecord::decode(entry.value.as_slice())?;
            crate::lease::import_lease(storage, &mut batch, l.id, l.ttl, l.remaining_ttl);
            leases += 1;
        }
    }
    if let Some(alarm) = db.bucket(b"alarm")? {
        let mut alarms = Vec::new();
        for entry in alarm.iter() {
            alarms.push(AlarmMember::decode(entry?.key.as_slice())?);
        }
        crate::alarm::import(storage, &mut batch, alarms);
    }
    let (mut scheduled, mut finished) = (-1, -1);
    if let Some(meta) = db.bucket(b"meta")? {
        let main = |v: &[u8]| -> anyhow::Result<i64> {
            let b: [u8; 8] = v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| anyhow::anyhow!("bad compaction revision in meta"))?;
            Ok(i64::from_be_bytes(b))
        };
        if let Some(e) = meta.get(b"scheduledCompactRev")? {
            scheduled = main(&e.value)?;
        }
        if let Some(e) = meta.get(b"finishedCompactRev")? {
            finished = main(&e.value)?;
        }
    }
    let revision = revision.max(scheduled).max(finished);
    crate::mvcc::store::import_revisions(storage, &mut batch, revision, scheduled, finished);
    storage.write(std::mem::take(&mut batch), false)?;
    // Attachments follow from the keys as they are now: what lease each
    // live key carries.
    crate::mvcc::store::live_leases(storage, |key, lease| {
        crate::lease::import_attachment(storage, &mut batch, lease, key);
        if batch.len() >= BATCH_RECORDS {
            storage.write(std::mem::take(&mut batch), false)?;
        }
        Ok(())
    })?;
    storage.write(batch, true)?;
    // New members, new ids: stored as the identity a new member derives.
    let identity = Identity::load_or_create(
        storage,
        &opts.name,
        &opts.initial_cluster,
        &opts.initial_cluster_token,
    )?;
    storage.db().flush()?;
    progress(records);
    Ok(Restored {
        member_id: identity.member_id,
        cluster_id: identity.cluster_id,
        revision,
        records,
        leases,
    })
}

/// etcd's check: this member is in `--initial-cluster` with exactly its
/// `--initial-advertise-peer-urls`.
fn verify_bootstrap(opts: &RestoreOptions) -> Result<(), String> {
    let Some(own) = opts.initial_cluster.iter().find(|m| m.name == opts.name) else {
        return Err(format!(
            "couldn't find local name {:?} in the initial cluster configuration",
            opts.name
        ));
    };
    let mut a = own.peer_urls.clone();
    let mut b = opts.initial_advertise_peer_urls.clone();
    a.sort();
    b.sort();
    if a != b {
        return Err(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
            opts.name,
            own.peer_urls.join(","),
            opts.initial_advertise_peer_urls.join(",")
        ));
    }
    Ok(())
}

/// A saved snapshot ends with the sha256 of what precedes it (its length
/// is then 32 past a multiple of 512, which is how etcd tells).
fn verify_hash(file: &Path, skip: bool) -> Result<(), String> {
    let mut f =
        std::fs::File::open(file).map_err(|e| super::status::go_path_error("open", file, &e))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len % 512 != 32 {
        if skip {
            return Ok(());
        }
        return Err("snapshot missing hash but --skip-hash-check=false".into());
    }
    if skip {
        return Ok(());
    }
    let mut hasher = Sha256::new();
    let mut left = len - 32;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = buf.len().min(left as usize);
        f.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut want = [0u8; 32];
    f.seek(SeekFrom::Start(len - 32))
        .and_then(|_| f.read_exact(&mut want))
        .map_err(|e| e.to_string())?;
    let got = hasher.finalize();
    if got.as_slice() != want {
        // Go prints byte slices as [1 2 3].
        let go = |b: &[u8]| {
            let items: Vec<String> = b.iter().map(|x| x.to_string()).collect();
            format!("[{}]", items.join(" "))
        };
        return Err(format!("expected sha256 {}, got {}", go(&want), go(&got)));
    }
    Ok(())
}
