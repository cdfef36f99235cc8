//! Model test of the MVCC store: random sequences of puts, deletes,
//! transactions, compactions and reads at any revision must agree with a
//! plain in-memory history.

use std::collections::BTreeMap;

use cairn::error::Error;
use cairn::mvcc::{MvccStore, RangeOptions};
use cairn::storage::Storage;
use proptest::prelude::*;

/// One version of a key in the model: `None` is a deletion.
type Version = (i64, Option<Live>);

#[derive(Debug, Clone, PartialEq)]
struct Live {
    value: Vec<u8>,
    create: i64,
    version: i64,
}

#[derive(Default)]
struct Model {
    history: BTreeMap<Vec<u8>, Vec<Version>>,
    rev: i64,
    compacted: i64,
}

impl Model {
    fn new() -> Model {
        Model {
            rev: 1,
            compacted: -1,
            ..Default::default()
        }
    }

    fn at(&self, key: &[u8], rev: i64) -> Option<Live> {
        self.history
            .get(key)?
            .iter()
            .rev()
            .find(|(r, _)| *r <= rev)
            .and_then(|(_, v)| v.clone())
    }

    fn mod_rev(&self, key: &[u8], rev: i64) -> i64 {
        self.history
            .get(key)
            .and_then(|h| h.iter().rev().find(|(r, _)| *r <= rev))
            .filter(|(_, v)| v.is_some())
            .map_or(0, |(r, _)| *r)
    }

    fn live_in(&self, key: &[u8], end: &[u8], rev: i64) -> Vec<(Vec<u8>, i64, Live)> {
        self.history
            .keys()
            .filter(|k| cairn::mvcc::in_range(k, key, end))
            .filter_map(|k| {
                self.at(k, rev)
                    .map(|l| (k.clone(), self.mod_rev(k, rev), l))
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>, Vec<u8>),
    /// If the key's mod revision equals the model's guess (or 0 when
    /// `absent`), put; else delete `other`.
    CasPut(Vec<u8>, bool, Vec<u8>),
    Compact(u8),
    Range(Vec<u8>, Vec<u8>, u8, usize, bool),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"a".to_vec()),
        Just(b"a\0".to_vec()),
        Just(b"a\0b".to_vec()),
        Just(b"ab".to_vec()),
        Just(b"b".to_vec()),
        Just(b"c".to_vec()),
        Just(vec![0xff, 0x00]),
    ]
}

fn end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(vec![0]),
        Just(b"b".to_vec()),
        Just(b"c".to_vec()),
        Just(b"a\x01".to_vec()),
        Just(vec![0xff, 0xff]),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), proptest::collection::vec(any::<u8>(), 0..4)).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (key(), end()).prop_map(|(k, e)| Op::Delete(k, e)),
        1 => (key(), any::<bool>(), key()).prop_map(|(k, a, o)| Op::CasPut(k, a, o)),
        1 => any::<u8>().prop_map(Op::Compact),
        3 => (key(), end(), any::<u8>(), 0usize..3, any::<bool>())
            .prop_map(|(k, e, r, l, ko)| Op::Range(k, e, r, l, ko)),
    ]
}

struct Harness {
    _dir: tempfile::TempDir,
    storage: Storage,
    store: std::sync::Arc<MvccStore>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let store = MvccStore::open(storage.clone()).unwrap();
        Harness {
            _dir: dir,
            storage,
            store,
        }
    }

    fn commit(&self, out: cairn::mvcc::WriteOutcome) {
        self.storage.write(out.batch, false).unwrap();
        self.store.publish(out.rev);
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let h = Harness::new();
    let mut m = Model::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                let mut w = h.store.write();
                let prev = w.put(&k, v.clone(), 0).unwrap();
                prop_assert_eq!(prev.is_some(), m.at(&k, m.rev).is_some());
                let out = w.finish();
                m.rev += 1;
                prop_assert_eq!(out.rev, m.rev);
                h.commit(out);
                let live = match m.at(&k, m.rev - 1) {
                    Some(l) => Live {
                        value: v,
                        create: l.create,
                        version: l.version + 1,
                    },
                    None => Live {
                        value: v,
                        create: m.rev,
                        version: 1,
                    },
                };
                m.history.entry(k).or_default().push((m.rev, Some(live)));
            }
            Op::Delete(k, e) => {
                let doomed: Vec<Vec<u8>> = m
                    .live_in(&k, &e, m.rev)
                    .into_iter()
                    .map(|(k, _, _)| k)
                    .collect();
                let mut w = h.store.write();
                let deleted = w.delete_range(&k, &e).unwrap();
                let got: Vec<Vec<u8>> = deleted.iter().map(|kv| kv.key.clone()).collect();
                prop_assert_eq!(&got, &doomed);
                let out = w.finish();
                if doomed.is_empty() {
                    // Deleting nothing makes no revision.
                    prop_assert_eq!(out.rev, m.rev);
                } else {
                    m.rev += 1;
                    prop_assert_eq!(out.rev, m.rev);
                    for d in doomed {
                        m.history.entry(d).or_default().push((m.rev, None));
                    }
                }
                h.commit(out);
            }
            Op::CasPut(k, absent, other) => {
                let expect = if absent { 0 } else { m.mod_rev(&k, m.rev) };
                let mut w = h.store.write();
                let actual = w.get(&k).unwrap().map_or(0, |kv| kv.mod_revision);
                prop_assert_eq!(actual, m.mod_rev(&k, m.rev));
                if actual == expect {
                    w.put(&k, b"cas".to_vec(), 0).unwrap();
                    // A read inside the txn sees its own write.
                    let rr = w.range(&k, &[], &RangeOptions::default()).unwrap();
                    prop_assert_eq!(&rr.kvs[0].value, &b"cas".to_vec());
                    let out = w.finish();
                    m.rev += 1;
                    prop_assert_eq!(out.rev, m.rev);
                    h.commit(out);
                    let live = match m.at(&k, m.rev - 1) {
                        Some(l) => Live {
                            value: b"cas".to_vec(),
                            create: l.create,
                            version: l.version + 1,
                        },
                        None => Live {
                            value: b"cas".to_vec(),
                            create: m.rev,
                            version: 1,
                        },
                    };
                    m.history.entry(k).or_default().push((m.rev, Some(live)));
                } else {
                    let had = m.at(&other, m.rev).is_some();
                    let deleted = w.delete_range(&other, &[]).unwrap();
                    prop_assert_eq!(deleted.len(), had as usize);
                    let out = w.finish();
                    if had {
                        m.rev += 1;
                        m.history.entry(other).or_default().push((m.rev, None));
                    }
                    prop_assert_eq!(out.rev, m.rev);
                    h.commit(out);
                }
            }
            Op::Compact(r) => {
                let rev = 1 + (r as i64) % m.rev.max(1);
                let mut batch = rocksdb::WriteBatch::default();
                let res = h.store.schedule_compaction(rev, &mut batch);
                if rev <= m.compacted {
                    prop_assert_eq!(res, Err(Error::Compacted));
                    continue;
                }
                prop_assert_eq!(res, Ok(()));
                h.storage.write(batch, false).unwrap();
                let (tx, rx) = tokio::sync::oneshot::channel();
                h.store.start_compaction(rev, Some(tx));
                rx.blocking_recv().unwrap();
                m.compacted = rev;
            }
            Op::Range(k, e, r, limit, keys_only) => {
                // Revisions from 0 (latest) to a little past the current.
                let rev = (r as i64) % (m.rev + 3);
                let opts = RangeOptions {
                    limit,
                    rev,
                    keys_only,
                    count_only: false,
                };
                let got = h.store.range(&k, &e, &opts);
                let at = if rev == 0 { m.rev } else { rev };
                if at > m.rev {
                    prop_assert_eq!(got, Err(Error::FutureRevision));
                    continue;
                }
                if at < m.compacted {
                    prop_assert_eq!(got, Err(Error::Compacted));
                    continue;
                }
                let got = got.unwrap();
                let want = m.live_in(&k, &e, at);
                prop_assert_eq!(got.count, want.len() as i64);
                prop_assert_eq!(got.rev, m.rev);
                let n = if limit == 0 {
                    want.len()
                } else {
                    limit.min(want.len())
                };
                prop_assert_eq!(got.kvs.len(), n);
                for (kv, (wk, wmod, wl)) in got.kvs.iter().zip(want) {
                    prop_assert_eq!(&kv.key, &wk);
                    prop_assert_eq!(kv.mod_revision, wmod);
                    prop_assert_eq!(kv.create_revision, wl.create);
                    prop_assert_eq!(kv.version, wl.version);
                    if keys_only {
                        prop_assert!(kv.value.is_empty());
                    } else {
                        prop_assert_eq!(&kv.value, &wl.value);
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn store_agrees_with_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}

/// Reopening the store keeps revisions and the compaction point.
#[test]
fn reopen_keeps_revision_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(dir.path()).unwrap();
        let store = MvccStore::open(storage.clone()).unwrap();
        for i in 0..5 {
            let mut w = store.write();
            w.put(b"k", vec![i], 0).unwrap();
            let out = w.finish();
            storage.write(out.batch, false).unwrap();
            store.publish(out.rev);
        }
        let mut batch = rocksdb::WriteBatch::default();
        store.schedule_compaction(4, &mut batch).unwrap();
        storage.write(batch, false).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.start_compaction(4, Some(tx));
        rx.blocking_recv().unwrap();
    }
    let storage = Storage::open(dir.path()).unwrap();
    let store = MvccStore::open(storage).unwrap();
    assert_eq!(store.current_revision(), 6);
    assert_eq!(store.compacted_revision(), 4);
    let old = RangeOptions {
        rev: 3,
        ..Default::default()
    };
    assert_eq!(store.range(b"k", &[], &old), Err(Error::Compacted));
    let at4 = RangeOptions {
        rev: 4,
        ..Default::default()
    };
    let r = store.range(b"k", &[], &at4).unwrap();
    assert_eq!(r.kvs[0].value, vec![2]);
    assert_eq!(r.kvs[0].version, 3);
}
