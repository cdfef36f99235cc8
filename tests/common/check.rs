//! Checks on a running cluster over gRPC, each RPC with a client deadline.

use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::{HashKvRequest, StatusRequest};
use tonic::transport::{Channel, Endpoint};

/// A channel to `endpoint` that connects on first use (1 s to connect) and
/// gives every RPC `timeout`; it reconnects by itself after failures.
pub fn channel(endpoint: &str, timeout: Duration) -> Channel {
    Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint URL")
        .connect_timeout(Duration::from_secs(1))
        .timeout(timeout)
        .connect_lazy()
}

/// One member's `HashKV` at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvHash {
    pub endpoint: String,
    pub hash: u32,
    pub compact_revision: i64,
}

/// Waits (up to `within`) until every member at `endpoints` has applied
/// the highest revision any of them reports, takes `Maintenance.HashKV` at
/// that revision on each, and panics unless hash and compact revision are
/// the same everywhere. Returns (revision, hash). Writes may go on meanwhile:
/// the hash covers revisions up to the chosen one only.
pub async fn assert_same_kv_hash(endpoints: &[String], within: Duration) -> (i64, u32) {
    let deadline = Instant::now() + within;
    let mut rev = 0;
    for e in endpoints {
        rev = rev.max(revision(e, deadline).await);
    }
    let mut hashes = Vec::new();
    for e in endpoints {
        hashes.push(hash_at(e, rev, deadline).await);
    }
    assert!(
        hashes
            .iter()
            .all(|h| (h.hash, h.compact_revision) == (hashes[0].hash, hashes[0].compact_revision)),
        "members' stores differ at revision {rev}: {hashes:#?}"
    );
    (rev, hashes[0].hash)
}

/// A member's current revision (Status, serializable), retried until
/// `deadline`.
async fn revision(endpoint: &str, deadline: Instant) -> i64 {
    let mut m = MaintenanceClient::new(channel(endpoint, Duration::from_secs(2)));
    loop {
        match m.status(StatusRequest {}).await {
            Ok(r) => return r.into_inner().header.map_or(0, |h| h.revision),
            Err(e) if Instant::now() < deadline => {
                eprintln!("status on {endpoint}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("status on {endpoint}: {e}"),
        }
    }
}

/// `HashKV{rev}` on `endpoint`, once it has applied `rev`.
async fn hash_at(endpoint: &str, rev: i64, deadline: Instant) -> KvHash {
    let mut m = MaintenanceClient::new(channel(endpoint, Duration::from_secs(5)));
    loop {
        let at = revision(endpoint, deadline).await;
        if at >= rev {
            match m.hash_kv(HashKvRequest { revision: rev }).await {
                Ok(r) => {
                    let r = r.into_inner();
                    return KvHash {
                        endpoint: endpoint.to_string(),
                        hash: r.hash,
                        compact_revision: r.compact_revision,
                    };
                }
                Err(e) if e.code() == tonic::Code::Unimplemented => {
                    panic!("HashKV on {endpoint}: {e}")
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("HashKV({rev}) on {endpoint}: {e}; retrying")
                }
                Err(e) => panic!("HashKV({rev}) on {endpoint}: {e}"),
            }
        } else {
            assert!(
                Instant::now() < deadline,
                "{endpoint} is at revision {at}, never reached {rev}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
