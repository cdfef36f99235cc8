//! Crash safety: kill -9 the server while several clients write, restart it,
//! and check that every acknowledged write is there with its revision and
//! that revisions go on without reuse — twenty times over.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use std::time::Duration;
use tokio::sync::Mutex;

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use common::Server;

const WRITERS: usize = 4;
const CYCLES: usize = 20;

/// What clients were told about a key.
enum Fate {
    /// Put with this value at this revision.
    Put(Vec<u8>, i64),
    /// Put as above, then a delete was sent and got no answer: either state
    /// is allowed.
    PutThenMaybeDeleted(Vec<u8>, i64),
    Deleted,
}

#[derive(Default)]
struct Acked {
    keys: BTreeMap<Vec<u8>, Fate>,
    revisions: HashSet<i64>,
}

impl Acked {
    fn record(&mut self, key: Vec<u8>, fate: Fate, rev: i64) {
        assert!(
            self.revisions.insert(rev),
            "revision {rev} acknowledged twice"
        );
        self.keys.insert(key, fate);
    }

    /// A delete of `key` is about to be sent.
    fn deleting(&mut self, key: &[u8]) {
        if let Some(Fate::Put(v, rev)) = self.keys.remove(key) {
            self.keys
                .insert(key.to_vec(), Fate::PutThenMaybeDeleted(v, rev));
        }
    }

    fn max_rev(&self) -> i64 {
        self.revisions.iter().copied().max().unwrap_or(1)
    }
}

async fn writer(endpoint: String, id: usize, cycle: usize, acked: Arc<Mutex<Acked>>) {
    let Ok(mut kv) = KvClient::connect(endpoint).await else {
        return;
    };
    let mut last: Option<Vec<u8>> = None;
    for seq in 0.. {
        // Every seventh step deletes this writer's previous key.
        if seq % 7 == 6 {
            if let Some(k) = last.take() {
                acked.lock().await.deleting(&k);
                let req = DeleteRangeRequest {
                    key: k.clone(),
                    ..Default::default()
                };
                match kv.delete_range(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        assert_eq!(r.deleted, 1, "deleting our own key {k:?}");
                        let rev = r.header.unwrap().revision;
                        acked.lock().await.record(k, Fate::Deleted, rev);
                    }
                    Err(_) => return,
                }
                continue;
            }
        }
        let key = format!("crash/{id}/{cycle:02}/{seq:06}").into_bytes();
        let value = format!("v{id}-{cycle}-{seq}").into_bytes();
        let req = PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        };
        match kv.put(req).await {
            Ok(r) => {
                let rev = r.into_inner().header.unwrap().revision;
                acked
                    .lock()
                    .await
                    .record(key.clone(), Fate::Put(value, rev), rev);
                last = Some(key);
            }
            // The server died under us: this write's fate is unknown.
            Err(_) => return,
        }
    }
}

/// Every acknowledged write is in the store, nothing reuses a revision.
async fn verify(endpoint: &str, acked: &Acked) {
    let mut kv = KvClient::connect(endpoint.to_string()).await.unwrap();
    let resp = kv
        .range(RangeRequest {
            key: b"crash/".to_vec(),
            range_end: b"crash0".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let header_rev = resp.header.unwrap().revision;
    assert!(
        header_rev >= acked.max_rev(),
        "store at revision {header_rev} after acknowledging {}",
        acked.max_rev()
    );
    let stored: BTreeMap<Vec<u8>, (Vec<u8>, i64)> = resp
        .kvs
        .into_iter()
        .map(|kv| (kv.key, (kv.value, kv.mod_revision)))
        .collect();
    // Each write here is a one-key request, so one key per revision.
    let mut seen = HashSet::new();
    for (k, (_, rev)) in &stored {
        assert!(seen.insert(*rev), "two keys at revision {rev} ({k:?})");
    }
    for (k, fate) in &acked.keys {
        let key = String::from_utf8_lossy(k);
        match (fate, stored.get(k)) {
            (Fate::Put(v, rev) | Fate::PutThenMaybeDeleted(v, rev), Some((sv, srev))) => {
                assert_eq!(sv, v, "value of {key}");
                assert_eq!(srev, rev, "revision of {key}");
            }
            (Fate::Put(_, rev), None) => panic!(
                "acknowledged put of {key} at {rev} lost (store at {header_rev}, acked up to {})",
                acked.max_rev()
            ),
            (Fate::Deleted, Some(_)) => panic!("acknowledged delete of {key} lost"),
            (Fate::PutThenMaybeDeleted(..) | Fate::Deleted, None) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_writes_loses_nothing_acknowledged() {
    let mut server = Server::cairn();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut total = 0;
    for cycle in 0..CYCLES {
        verify(&server.endpoint(), &*acked.lock().await).await;
        let before = acked.lock().await.revisions.len();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|id| tokio::spawn(writer(server.endpoint(), id, cycle, acked.clone())))
            .collect();
        // Let the writers run for a while that differs from cycle to cycle,
        // so the kill lands at different points of the write path.
        tokio::time::sleep(Duration::from_millis(150 + (cycle as u64 * 37) % 250)).await;
        server.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        let after = acked.lock().await.revisions.len();
        assert!(after > before, "cycle {cycle}: no write was acknowledged");
        total += after - before;
        server.restart();
    }
    let acked = acked.lock().await;
    verify(&server.endpoint(), &acked).await;
    // Revisions go on from where they were: the next write is newer than
    // everything acknowledged before the crashes.
    let mut kv = KvClient::connect(server.endpoint()).await.unwrap();
    let rev = kv
        .put(PutRequest {
            key: b"crash/after".to_vec(),
            value: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    assert!(rev > acked.max_rev());
    eprintln!("{CYCLES} kill -9 cycles, {total} acknowledged writes, all present");
}
