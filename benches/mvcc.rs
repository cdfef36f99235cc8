//! Micro-benchmarks of the MVCC store: the costs under every request.
//!
//! `cargo bench --bench mvcc`. Ratios against etcd belong to the load tool
//! (whole-server numbers); these track our own store from change to change.

use cairn::mvcc::{MvccStore, RangeOptions};
use cairn::storage::Storage;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

fn filled(keys: usize) -> (tempfile::TempDir, Storage, std::sync::Arc<MvccStore>) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let store = MvccStore::open(storage.clone()).unwrap();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let mut w = store.write();
        for i in chunk {
            w.put(
                format!("/registry/pods/ns/pod-{i:08}").as_bytes(),
                vec![7u8; 256],
                0,
            )
            .unwrap();
        }
        let out = w.finish();
        storage.write(out.batch, false).unwrap();
        store.publish(out.rev);
    }
    (dir, storage, store)
}

fn bench(c: &mut Criterion) {
    let (_dir, storage, store) = filled(100_000);
    c.bench_function("put 1 key (apply path, unsynced)", |b| {
        let mut i = 0u64;
        b.iter(|| {
            let mut w = store.write();
            w.put(format!("/bench/{i}").as_bytes(), vec![1u8; 128], 0)
                .unwrap();
            i += 1;
            let out = w.finish();
            storage.write(out.batch, false).unwrap();
            store.publish(out.rev);
        })
    });
    c.bench_function("get 1 key of 100k", |b| {
        b.iter(|| {
            store
                .range(
                    b"/registry/pods/ns/pod-00054321",
                    &[],
                    &RangeOptions::default(),
                )
                .unwrap()
        })
    });
    c.bench_function("range 100 keys of 100k (limit)", |b| {
        let opts = RangeOptions {
            limit: 100,
            ..Default::default()
        };
        b.iter_batched(
            || opts.clone(),
            |o| {
                store
                    .range(
                        b"/registry/pods/ns/pod-0005",
                        b"/registry/pods/ns/pod-0006",
                        &o,
                    )
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("count 100k keys (count_only)", |b| {
        let opts = RangeOptions {
            count_only: true,
            ..Default::default()
        };
        b.iter(|| store.range(b"/registry/", b"/registry0", &opts).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
