//! Moving the replicated state to a member that is behind the leader's log
//! (a lagging follower, or a member that just joined).
//!
//! The leader reads a consistent view of its database (a RocksDB snapshot)
//! and streams it family by family, in key order, in chunks of about
//! [`CHUNK_BYTES`]. The receiver writes each family into an SST file in a
//! staging directory as the chunks arrive, so neither side ever holds the
//! whole store in memory. Once everything has arrived, the raft message is
//! handed to raft; if raft takes the snapshot, the apply step installs the
//! staged files: each family is cleared and the file ingested.
//!
//! An install interrupted by a crash is finished at the next start: a
//! marker file names the staged directory until the install is complete,
//! and installing is repeatable (files are copied in, not moved).
//!
//! **Invariant:** records that say who *this* member is (the `identity` key
//! of `meta`) are never sent and never replaced.

use std::path::{Path, PathBuf};

use rocksdb::{IngestExternalFileOptions, Options, SstFileWriter, WriteBatch};

use crate::error::{Error, Result};
use crate::storage::{Storage, CF_INDEX, CF_KV, CF_LEASE, CF_META};

/// The replicated families, in the order they are sent.
pub const FAMILIES: [&str; 4] = [CF_KV, CF_INDEX, CF_LEASE, CF_META];

/// Keys of `meta` that belong to this member, not to the replicated state.
const LOCAL_META: &[&[u8]] = &[b"identity"];

/// Bytes of records per chunk, roughly.
pub const CHUNK_BYTES: usize = 1024 * 1024;

const MARKER: &str = "installing";
/// Written into a staging directory once every record has arrived.
const COMPLETE: &str = "complete";

/// Records of one family, in key order.
pub struct Records {
    pub family: String,
    pub keys: Vec<Vec<u8>>,
    pub values: Vec<Vec<u8>>,
}

/// Reads a consistent view of the replicated state and hands it to `emit`
/// in chunks; stops early (with `Ok`) when `emit` returns false. Blocking.
pub fn read(storage: &Storage, mut emit: impl FnMut(Records) -> bool) -> Result<()> {
    let snap = storage.db().snapshot();
    for family in FAMILIES {
        let mut it = snap.raw_iterator_cf(storage.cf(family));
        it.seek_to_first();
        let mut chunk = Records {
            family: family.to_string(),
            keys: Vec::new(),
            values: Vec::new(),
        };
        let mut bytes = 0;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if family == CF_META && LOCAL_META.contains(&k) {
                it.next();
                continue;
            }
            bytes += k.len() + v.len();
            chunk.keys.push(k.to_vec());
            chunk.values.push(v.to_vec());
            if bytes >= CHUNK_BYTES {
                let full = std::mem::replace(
                    &mut chunk,
                    Records {
                        family: family.to_string(),
                        keys: Vec::new(),
                        values: Vec::new(),
                    },
                );
                bytes = 0;
                if !emit(full) {
                    return Ok(());
                }
            }
            it.next();
        }
        it.status()?;
        if !chunk.keys.is_empty() && !emit(chunk) {
            return Ok(());
        }
    }
    Ok(())
}

/// A new file name for a backup being written (see `crate::backup`), in
/// the staging directory, which the next start clears.
pub fn export_path(storage: &Storage) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let root = staging_root(storage);
    let _ = std::fs::create_dir_all(&root);
    root.join(format!(
        "export-{}-{}.db",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Where incoming snapshots are staged: beside the database.
pub fn staging_root(storage: &Storage) -> PathBuf {
    let db = storage.db().path();
    db.parent().unwrap_or(db).join("snap")
}

/// Writes a snapshot's records, as `next` yields them, into SST files (one
/// per family) in a new staging directory named `name`, and returns that
/// directory, ready for [`install`]. Blocking.
pub fn stage(
    storage: &Storage,
    name: &str,
    mut next: impl FnMut() -> Option<Records>,
) -> Result<PathBuf> {
    let dir = staging_root(storage).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(Error::internal)?;
    let opts = Options::default();
    // The family being written and its file, once it has a record.
    let mut current: Option<&'static str> = None;
    let mut writer: Option<SstFileWriter> = None;
    while let Some(Records {
        family,
        keys,
        values,
    }) = next()
    {
        let family = FAMILIES
            .iter()
            .copied()
            .find(|f| *f == family)
            .ok_or_else(|| Error::Internal(format!("snapshot names unknown family {family:?}")))?;
        if keys.len() != values.len() {
            return Err(Error::Internal(
                "snapshot chunk: keys and values differ".into(),
            ));
        }
        if current != Some(family) {
            if let Some(mut w) = writer.take() {
                w.finish()?;
            }
            current = Some(family);
        }
        for (k, v) in keys.iter().zip(&values) {
            if family == CF_META && LOCAL_META.contains(&k.as_slice()) {
                continue;
            }
            let w = match writer.as_mut() {
                Some(w) => w,
                None => {
                    let w = SstFileWriter::create(&opts);
                    w.open(dir.join(format!("{family}.sst")))?;
                    writer.insert(w)
                }
            };
            w.put(k, v)?;
        }
    }
    if let Some(mut w) = writer.take() {
        w.finish()?;
    }
    let complete = dir.join(COMPLETE);
    std::fs::write(&complete, b"").map_err(Error::internal)?;
    sync_file(&complete)?;
    sync_dir(&dir)?;
    Ok(dir)
}

/// Whether `dir` holds a whole staged snapshot.
pub fn is_complete(dir: &Path) -> bool {
    dir.join(COMPLETE).is_file()
}

/// Replaces the replicated state with the snapshot staged in `dir`. Not
/// atomic across families, so it is made repeatable: until it completes, a
/// marker names `dir`, and [`resume`] finishes it after a crash.
pub fn install(storage: &Storage, dir: &Path) -> Result<()> {
    // Checked before anything is cleared: without its files, an install
    // would leave the store empty where raft believes it full.
    if !is_complete(dir) {
        return Err(Error::Internal(format!(
            "snapshot staged in {} is incomplete",
            dir.display()
        )));
    }
    let root = staging_root(storage);
    let marker = root.join(MARKER);
    std::fs::write(&marker, dir.as_os_str().as_encoded_bytes()).map_err(Error::internal)?;
    sync_file(&marker)?;
    sync_dir(&root)?;
    for family in FAMILIES {
        clear_family(storage, family)?;
        let file = dir.join(format!("{family}.sst"));
        if file.exists() {
            let mut opts = IngestExternalFileOptions::default();
            // Copied, so that a repeated install finds the file again.
            opts.set_move_files(false);
            storage
                .db()
                .ingest_external_file_cf_opts(storage.cf(family), &opts, vec![file])?;
        }
        crash_here_if_asked();
    }
    // Everything of the new state must be durable before the marker goes.
    storage.db().flush_wal(true)?;
    std::fs::remove_file(&marker).map_err(Error::internal)?;
    sync_dir(&root)?;
    // This one and older ones; a newer one may be arriving right now.
    remove_staged(storage, |p| p.file_name() <= dir.file_name());
    Ok(())
}

/// Test hook: with `CAIRN_FAILPOINT_SNAPSHOT_INSTALL` set, the process dies
/// (abort, no cleanup) after the first family of an install, leaving the
/// store half replaced — as a crash or power cut at that moment would.
fn crash_here_if_asked() {
    if std::env::var_os(FAILPOINT).is_some() {
        tracing::error!("failpoint {FAILPOINT}: crashing in the middle of a snapshot install");
        std::process::abort();
    }
}

/// The environment variable that arms [`crash_here_if_asked`].
pub const FAILPOINT: &str = "CAIRN_FAILPOINT_SNAPSHOT_INSTALL";

/// Finishes an install a crash interrupted; removes abandoned staging
/// directories. Run at start, before anything reads the store.
pub fn resume(storage: &Storage) -> Result<()> {
    let root = staging_root(storage);
    let marker = root.join(MARKER);
    if let Ok(raw) = std::fs::read(&marker) {
        let dir = PathBuf::from(String::from_utf8_lossy(&raw).into_owned());
        tracing::warn!(dir = %dir.display(), "finishing a snapshot install interrupted by a crash");
        install(storage, &dir)?;
    }
    // Nothing is arriving before the member starts: all of them go.
    remove_staged(storage, |_| true);
    remove_exports(storage);
    Ok(())
}

/// Removes the staged snapshots `which` picks. Their directory names sort
/// by term, then index (zero-padded hexadecimal), so older sorts first.
fn remove_staged(storage: &Storage, which: impl Fn(&Path) -> bool) {
    let Ok(entries) = std::fs::read_dir(staging_root(storage)) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && which(&p) {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// Removes backup files a previous run left behind (it stopped while
/// streaming one).
fn remove_exports(storage: &Storage) {
    let Ok(entries) = std::fs::read_dir(staging_root(storage)) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_file() && e.file_name().to_string_lossy().starts_with("export-") {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Deletes every record of a family (in `meta`, every replicated one).
fn clear_family(storage: &Storage, family: &str) -> Result<()> {
    let cf = storage.cf(family);
    let db = storage.db();
    let mut batch = WriteBatch::default();
    if family == CF_META {
        let mut it = db.raw_iterator_cf(cf);
        it.seek_to_first();
        while let Some(k) = it.key() {
            if !LOCAL_META.contains(&k) {
                batch.delete_cf(cf, k);
            }
            it.next();
        }
        it.status()?;
    } else {
        let mut it = db.raw_iterator_cf(cf);
        it.seek_to_first();
        let first = it.key().map(<[u8]>::to_vec);
        it.seek_to_last();
        let last = it.key().map(<[u8]>::to_vec);
        it.status()?;
        if let (Some(first), Some(last)) = (first, last) {
            // The range's end is exclusive: the last key goes on its own.
            batch.delete_range_cf(cf, &first, &last);
            batch.delete_cf(cf, &last);
        }
    }
    storage.write(batch, true)
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::internal)
}

fn sync_dir(path: &Path) -> Result<()> {
    sync_file(path)
}
