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
    let snap = storage.db().snapshot();
    let applied_index = crate::apply::applied_index_at(storage, &snap)?;
    let (scheduled, finished) = crate::mvcc::store::compaction_at(storage, &snap)?;
    let members = crate::membership::members_at(storage, &snap, members)?;
    let mut w = Writer::create(path, WriterOptions::default()).map_err(Error::internal)?;
    let bolt = |e: crate::bbolt::Error| Error::Internal(format!("writing the snapshot: {e}"));

    // The root bucket's entries in byte order, as bbolt keeps them.
    w.write_bucket::<[(&[u8], &[u8]); 0], &[u8], &[u8]>(b"alarm", [])
        .map_err(bolt)?;
    w.write_bucket(b"auth", [(b"authRevision", 1u64.to_be_bytes())])
        .map_err(bolt)?;
    w.write_bucket::<[(&[u8], &[u8]); 0], &[u8], &[u8]>(b"authRoles", [])
        .map_err(bolt)?;
    w.write_bucket::<[(&[u8], &[u8]); 0], &[u8], &[u8]>(b"authUsers", [])
        .map_err(bolt)?;
    w.write_bucket(b"cluster", [(b"clusterVersion", CLUSTER_VERSION)])
        .map_err(bolt)?;

    let mut revision = 1i64;
    {
        let mut key = w.bucket(b"key").map_err(bolt)?;
        crate::mvcc::store::etcd_key_bucket(storage, &snap, |k, v| {
            revision = i64::from_be_bytes(k[..8].try_into().unwrap_or([0; 8]));
            key.put(k, v).map_err(bolt)
        })?;
        key.finish().map_err(bolt)?;
    }
    {
        let mut lease = w.bucket(b"lease").map_err(bolt)?;
        crate::lease::leases_at(storage, &snap, |id, ttl, remaining| {
            let record = LeaseRecord {
                id,
                ttl,
                remaining_ttl: remaining,
            };
            lease
                .put(&id.to_be_bytes(), &record.encode_to_vec())
                .map_err(bolt)
        })?;
        lease.finish().map_err(bolt)?;
    }
    let mut by_key: Vec<(String, String)> = members
        .iter()
        .map(|m| (format!("{:x}", m.id), member_json(m)))
        .collect();
    by_key.sort();
    w.write_bucket(b"members", by_key).map_err(bolt)?;
    w.write_bucket::<[(&[u8], &[u8]); 0], &[u8], &[u8]>(b"members_removed", [])
        .map_err(bolt)?;

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
    w.write_bucket(b"meta", meta).map_err(bolt)?;

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
