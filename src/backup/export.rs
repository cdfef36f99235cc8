//! The store as an etcd database file: what `Maintenance.Snapshot` streams,
//! so that `etcdctl snapshot status` reads a cairn backup and etcd's own
//! `snapshot restore` takes it (the way back from cairn to etcd).
//!
//! The file has etcd's ten buckets with etcd's encodings (see
//! `docs/etcd-backup-format.md`): every revision in `key`, leases in
//! `lease`, members as JSON in `members`, and in `meta` the consistent index
//! (our applied index), the raft term, the compaction state and the
//! configuration. Everything is read from one RocksDB snapshot, so the file
//! is one point in time while writes go on.
//!
//! **Invariant:** memory does not grow with the store: records go from the
//! RocksDB iterator to the bbolt writer, which writes leaves as they fill.

use std::path::Path;

use prost::Message;

use super::LeaseRecord;
use crate::bbolt::{Writer, WriterOptions};
use crate::error::{Error, Result};
use crate::membership::MemberInfo;
use crate::storage::Storage;

/// What went into the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// Bytes of the database file.
    pub size: u64,
    /// The store's revision in it.
    pub revision: i64,
    /// The raft index it is at (etcd's consistent index).
    pub applied_index: u64,
}

/// The cluster version written into the file. etcd 3.4 refuses to start
/// on a database whose cluster version is above its own, and later
/// versions upgrade it themselves, so the lowest version we can speak for
/// keeps every way back open.
const CLUSTER_VERSION: &str = "3.4.0";

/// Writes the store, as it is now, to `path` as an etcd (bbolt) database.
/// `members` stands in when no member list is stored yet; `term` is the
/// raft term to record. Blocking.
pub fn write_etcd_db(
    storage: &Storage,
    path: &Path,
    members: &[MemberInfo],
    term: u64,
) -> Result<Exported> {
    let mut w = Writer::create(path, WriterOptions::default()).map_err(Error::internal)?;
    let (revision, applied_index) = visit_etcd_db(storage, members, term, &mut w)?;
    // Not synced: the file is read back at once and then removed, and
    // forcing it to disk would stall the member's own log syncs.
    let file = w
        .finish()
        .map_err(bolt)?
        .into_inner()
        .map_err(|e| Error::internal(e.error()))?;
    let size = file.metadata().map_err(Error::internal)?.len();
    Ok(Exported {
        size,
        revision,
        applied_index,
    })
}

/// etcd's `Maintenance.Hash`: CRC-32C over every bucket of the database
/// `write_etcd_db` would write now — each bucket's name, then its keys and
/// values in order — leaving out `meta`'s `consistent_index` and `term`,
/// which differ between members holding the same data. The same on every
/// member at the same revision; with the store's revision. Blocking.
pub fn hash_etcd_db(storage: &Storage, members: &[MemberInfo]) -> Result<(u32, i64)> {
    let mut h = DbHasher::default();
    let (revision, _) = visit_etcd_db(storage, members, 0, &mut h)?;
    Ok((h.crc, revision))
}

/// Where the buckets of an etcd database go, in the root's byte order.
trait DbSink {
    type Bucket<'a>: BucketSink
    where
        Self: 'a;
    fn bucket(&mut self, name: &[u8]) -> Result<Self::Bucket<'_>>;
}

/// One bucket's entries, in strictly increasing key order.
trait BucketSink {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    fn finish(self) -> Result<()>;
}

fn bolt(e: crate::bbolt::Error) -> Error {
    Error::Internal(format!("writing the snapshot: {e}"))
}

impl<W: std::io::Write + std::io::Seek> DbSink for Writer<W> {
    type Bucket<'a>
        = crate::bbolt::BucketWriter<'a, W>
    where
        W: 'a;
    fn bucket(&mut self, name: &[u8]) -> Result<Self::Bucket<'_>> {
        Writer::bucket(self, name).map_err(bolt)
    }
}

impl<W: std::io::Write + std::io::Seek> BucketSink for crate::bbolt::BucketWriter<'_, W> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        crate::bbolt::BucketWriter::put(self, key, value).map_err(bolt)
    }
    fn finish(self) -> Result<()> {
        crate::bbolt::BucketWriter::finish(self).map_err(bolt)
    }
}

/// The hash etcd's backend computes over its buckets.
#[derive(Default)]
struct DbHasher {
    crc: u32,
}

struct BucketHasher<'a> {
    crc: &'a mut u32,
    meta: bool,
}

impl DbSink for DbHasher {
    type Bucket<'a> = BucketHasher<'a>;
    fn bucket(&mut self, name: &[u8]) -> Result<BucketHasher<'_>> {
        self.crc = crc32c::crc32c_append(self.crc, name);
        Ok(BucketHasher {
            crc: &mut self.crc,
            meta: name == b"meta",
        })
    }
}

impl BucketSink for BucketHasher<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        // etcd's default ignores: what is per member, not per store.
        if self.meta && (key == b"consistent_index" || key == b"term") {
            return Ok(());
        }
        *self.crc = crc32c::crc32c_append(*self.crc, key);
        *self.crc = crc32c::crc32c_append(*self.crc, value);
        Ok(())
    }
    fn finish(self) -> Result<()> {
        Ok(())
    }
}

fn whole_bucket<S: DbSink, K: AsRef<[u8]>, V: AsRef<[u8]>>(
    sink: &mut S,
    name: &[u8],
    entries: impl IntoIterator<Item = (K, V)>,
) -> Result<()> {
    let mut b = sink.bucket(name)?;
    for (k, v) in entries {
        b.put(k.as_ref(), v.as_ref())?;
    }
    b.finish()
}

const NONE: [(&[u8], &[u8]); 0] = [];

/// Feeds the store, from one RocksDB snapshot, to `sink` as etcd's ten
/// buckets; the store's revision and applied index in it.
fn visit_etcd_db<S: DbSink>(
    storage: &Storage,
    members: &[MemberInfo],
    term: u64,
    sink: &mut S,
) -> Result<(i64, u64)> {
    let snap = storage.db().snapshot();
    let applied_index = crate::apply::applied_index_at(storage, &snap)?;
    let (scheduled, finished) = crate::mvcc::store::compaction_at(storage, &snap)?;
    let members = crate::membership::members_at(storage, &snap, members)?;

    // The root bucket's entries in byte order, as bbolt keeps them. Alarms
    // are keyed by their protobuf encoding with empty values, as etcd does.
    let mut alarms: Vec<Vec<u8>> = crate::alarm::alarms_at(storage, &snap)?
        .iter()
        .map(|a| a.encode_to_vec())
        .collect();
    alarms.sort();
    whole_bucket(sink, b"alarm", alarms.iter().map(|k| (k, b"")))?;
    whole_bucket(sink, b"auth", [(b"authRevision", 1u64.to_be_bytes())])?;
    whole_bucket(sink, b"authRoles", NONE)?;
    whole_bucket(sink, b"authUsers", NONE)?;
    whole_bucket(sink, b"cluster", [(b"clusterVersion", CLUSTER_VERSION)])?;

    // The store's own revision, not the newest record's: a compaction may
    // have removed the newest tombstones.
    let revision = crate::mvcc::store::revision_at(storage, &snap)?;
    {
        let mut key = sink.bucket(b"key")?;
        crate::mvcc::store::etcd_key_bucket(storage, &snap, |k, v| key.put(k, v))?;
        key.finish()?;
    }
    {
        let mut lease = sink.bucket(b"lease")?;
        crate::lease::leases_at(storage, &snap, |id, ttl, remaining| {
            let record = LeaseRecord {
                id,
                ttl,
                remaining_ttl: remaining,
            };
            lease.put(&id.to_be_bytes(), &record.encode_to_vec())
        })?;
        lease.finish()?;
    }
    let mut by_key: Vec<(String, String)> = members
        .iter()
        .map(|m| (format!("{:x}", m.id), member_json(m)))
        .collect();
    by_key.sort();
    whole_bucket(sink, b"members", by_key)?;
    whole_bucket(sink, b"members_removed", NONE)?;

    // `meta`, in byte order of its keys.
    let voters: Vec<String> = members
        .iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id.to_string())
        .collect();
    let learners: Vec<String> = members
        .iter()
        .filter(|m| m.is_learner)
        .map(|m| m.id.to_string())
        .collect();
    let conf_state = if learners.is_empty() {
        format!(r#"{{"voters":[{}],"auto_leave":false}}"#, voters.join(","))
    } else {
        format!(
            r#"{{"voters":[{}],"learners":[{}],"auto_leave":false}}"#,
            voters.join(","),
            learners.join(",")
        )
    };
    let mut meta: Vec<(&[u8], Vec<u8>)> = vec![
        (b"confState", conf_state.into_bytes()),
        (b"consistent_index", applied_index.to_be_bytes().to_vec()),
    ];
    if finished >= 0 {
        meta.push((b"finishedCompactRev", etcd_revision(finished)));
    }
    if scheduled >= 0 {
        meta.push((b"scheduledCompactRev", etcd_revision(scheduled)));
    }
    meta.push((b"term", term.to_be_bytes().to_vec()));
    whole_bucket(sink, b"meta", meta)?;
    Ok((revision, applied_index))
}

/// etcd's 17-byte revision key for `main` (sub revision 0).
fn etcd_revision(main: i64) -> Vec<u8> {
    let mut v = (main as u64).to_be_bytes().to_vec();
    v.push(b'_');
    v.extend_from_slice(&0u64.to_be_bytes());
    v
}

/// A member as etcd stores it: its JSON, fields in etcd's order, empty
/// optional ones left out.
fn member_json(m: &MemberInfo) -> String {
    let text = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let list = |v: &[String]| {
        let items: Vec<String> = v.iter().map(|s| text(s)).collect();
        format!("[{}]", items.join(","))
    };
    let mut out = format!(r#"{{"id":{},"peerURLs":{}"#, m.id, list(&m.peer_urls));
    if m.is_learner {
        out.push_str(r#","isLearner":true"#);
    }
    if !m.name.is_empty() {
        out.push_str(&format!(r#","name":{}"#, text(&m.name)));
    }
    if !m.client_urls.is_empty() {
        out.push_str(&format!(r#","clientURLs":{}"#, list(&m.client_urls)));
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_written_as_etcd_writes_them() {
        let m = MemberInfo {
            id: 0x8e9e05c52164694d,
            name: "default".into(),
            peer_urls: vec!["http://localhost:2380".into()],
            client_urls: vec!["http://localhost:2379".into()],
            is_learner: false,
        };
        assert_eq!(
            member_json(&m),
            r#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"name":"default","clientURLs":["http://localhost:2379"]}"#
        );
        let unstarted = MemberInfo {
            name: String::new(),
            client_urls: Vec::new(),
            is_learner: true,
            ..m
        };
        assert_eq!(
            member_json(&unstarted),
            r#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"isLearner":true}"#
        );
    }
}
