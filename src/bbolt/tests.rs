//! Unit tests: writer → reader round trips, meta selection, writer input
//! checks, and damaged files (truncated, bytes flipped, forged metas) that
//! must give errors, never panics.

use std::io::{Cursor, Write};

use super::page::{
    encode_node, BucketHeader, Meta, LEAF_FLAG_BUCKET, MAGIC, PAGE_HEADER_SIZE, VERSION,
};
use super::*;

type Buckets = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn write_mem(opts: WriterOptions, buckets: &Buckets) -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new()), opts).unwrap();
    for (name, entries) in buckets {
        w.write_bucket(name, entries.iter().map(|(k, v)| (k, v)))
            .unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn temp_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn open_bytes(bytes: &[u8]) -> (tempfile::NamedTempFile, Result<Db>) {
    let f = temp_with(bytes);
    let db = Db::open(f.path());
    (f, db)
}

/// Everything in the file: bucket name → entries.
fn read_all(db: &Db) -> Buckets {
    let mut out = Vec::new();
    for e in db.root().iter() {
        let e = e.unwrap();
        assert!(e.is_bucket(), "root entry {:?} is not a bucket", e.key);
        let b = db.root().open(&e).unwrap();
        let entries = b
            .iter()
            .map(|r| r.map(|e| (e.key, e.value)))
            .collect::<Result<Vec<_>>>()
            .unwrap();
        out.push((e.key, entries));
    }
    out
}

fn rev_key(main: u64, sub: u64) -> Vec<u8> {
    let mut k = main.to_be_bytes().to_vec();
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    k
}

/// A mix: empty bucket, tiny (inline) buckets, a many-key bucket (branch
/// levels) and big values (overflow pages).
fn sample(n_keys: u64, seed: u64) -> Buckets {
    let mut rng = Rng(seed | 1);
    let mut key = Vec::new();
    for i in 0..n_keys {
        let len = rng.below(120) as usize;
        let v: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
        key.push((rev_key(i + 2, 0), v));
    }
    let mut big = Vec::new();
    for (i, size) in [10usize, 5000, 4080, 100_000, 3, 70_000, 4096 * 3]
        .iter()
        .enumerate()
    {
        big.push((
            format!("big{i:02}").into_bytes(),
            vec![(i as u8).wrapping_mul(31); *size],
        ));
    }
    vec![
        (b"alarm".to_vec(), vec![]),
        (b"big".to_vec(), big),
        (
            b"cluster".to_vec(),
            vec![(b"clusterVersion".to_vec(), b"3.4.0".to_vec())],
        ),
        (b"key".to_vec(), key),
        (
            b"wide".to_vec(),
            (0..40u32)
                .map(|i| (vec![b'k'; 30_000 + i as usize], i.to_le_bytes().to_vec()))
                .collect(),
        ),
    ]
}

#[test]
fn roundtrip_default_options() {
    let data = sample(5000, 1);
    let bytes = write_mem(WriterOptions::default(), &data);
    assert_eq!(bytes.len() % 4096, 0);
    let (_f, db) = open_bytes(&bytes);
    let db = db.unwrap();
    assert_eq!(db.page_size(), 4096);
    assert_eq!(db.meta().txid, 2);
    assert_eq!(db.meta().freelist, PGID_NO_FREELIST);
    assert_eq!(db.size(), bytes.len() as u64);
    assert_eq!(read_all(&db), data);
    assert_eq!(
        db.bucket_names().unwrap(),
        data.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    assert!(db.bucket(b"alarm").unwrap().unwrap().is_inline());
    assert!(db.bucket(b"cluster").unwrap().unwrap().is_inline());
    assert!(!db.bucket(b"key").unwrap().unwrap().is_inline());
    assert!(db.bucket(b"nope").unwrap().is_none());
}

#[test]
fn roundtrip_small_pages_deep_tree_and_options() {
    let data = sample(30_000, 2);
    for (ps, fill, freelist, inline) in [
        (1024, 1.0, FreelistMode::EmptyPage, false),
        (1024, 0.5, FreelistMode::None, true),
        (65536, 0.9, FreelistMode::EmptyPage, true),
    ] {
        let opts = WriterOptions {
            page_size: ps,
            fill_percent: fill,
            txid: 7,
            freelist,
            inline_buckets: inline,
        };
        let bytes = write_mem(opts, &data);
        let (_f, db) = open_bytes(&bytes);
        let db = db.unwrap();
        assert_eq!(db.page_size(), ps);
        assert_eq!(db.meta().txid, 7);
        assert_eq!(db.meta().freelist == 2, freelist == FreelistMode::EmptyPage);
        assert_eq!(db.bucket(b"alarm").unwrap().unwrap().is_inline(), inline);
        assert_eq!(read_all(&db), data, "page size {ps} fill {fill}");
    }
}

#[test]
fn get_and_iter_from() {
    let data = sample(20_000, 3);
    let opts = WriterOptions {
        page_size: 1024,
        ..WriterOptions::default()
    };
    let bytes = write_mem(opts, &data);
    let (_f, db) = open_bytes(&bytes);
    let db = db.unwrap();
    let (_, keys) = &data[3];
    let b = db.bucket(b"key").unwrap().unwrap();
    let mut rng = Rng(99);
    for _ in 0..300 {
        let i = rng.below(keys.len() as u64) as usize;
        let (k, v) = &keys[i];
        let e = b.get(k).unwrap().expect("present");
        assert_eq!(&e.value, v);
        // A key just above k (not present) starts at k's successor.
        let mut above = k.clone();
        above.push(0);
        assert!(b.get(&above).unwrap().is_none());
        let next: Vec<Vec<u8>> = b
            .iter_from(&above)
            .take(3)
            .map(|r| r.unwrap().key)
            .collect();
        let want: Vec<Vec<u8>> = keys[i + 1..]
            .iter()
            .take(3)
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(next, want);
        let from_k: Vec<Vec<u8>> = b.iter_from(k).take(2).map(|r| r.unwrap().key).collect();
        assert_eq!(from_k[0], *k);
    }
    // Before the first and after the last key.
    assert_eq!(b.iter_from(b"").count(), keys.len());
    assert_eq!(b.iter_from(&[0xff; 20]).count(), 0);
    assert_eq!(b.iter_from(&[0]).next().unwrap().unwrap().key, keys[0].0);
    // A plain value is not a bucket.
    let big = db.bucket(b"big").unwrap().unwrap();
    assert!(matches!(big.bucket(b"big00"), Err(Error::NotABucket(_))));
}

#[test]
fn nested_and_inline_buckets() {
    // An inline nested bucket built by hand, as bbolt stores one.
    let mut inline_page = Vec::new();
    let items: Vec<(u32, &[u8], &[u8])> = vec![(0, b"x", b"1"), (0, b"y", b"22")];
    encode_node(&mut inline_page, 0, true, 0, items.iter().copied());
    let mut value = BucketHeader {
        root: 0,
        sequence: 7,
    }
    .encode()
    .to_vec();
    value.extend_from_slice(&inline_page);

    let mut w = Writer::new(Cursor::new(Vec::new()), WriterOptions::default()).unwrap();
    let mut b = w.bucket(b"outer").unwrap();
    b.put(b"a", b"plain").unwrap();
    b.put_flagged(LEAF_FLAG_BUCKET, b"inner", &value).unwrap();
    b.set_sequence(42);
    b.finish().unwrap();
    let bytes = w.finish().unwrap().into_inner();

    let (_f, db) = open_bytes(&bytes);
    let db = db.unwrap();
    let outer = db.bucket(b"outer").unwrap().unwrap();
    assert_eq!(outer.sequence(), 42);
    let inner = outer.bucket(b"inner").unwrap().unwrap();
    assert!(inner.is_inline());
    assert_eq!(inner.sequence(), 7);
    let kv: Vec<(Vec<u8>, Vec<u8>)> = inner
        .iter()
        .map(|r| r.map(|e| (e.key, e.value)).unwrap())
        .collect();
    assert_eq!(
        kv,
        vec![
            (b"x".to_vec(), b"1".to_vec()),
            (b"y".to_vec(), b"22".to_vec())
        ]
    );
    assert!(matches!(outer.bucket(b"a"), Err(Error::NotABucket(_))));
    let entries: Vec<Entry> = outer.iter().map(|r| r.unwrap()).collect();
    assert!(!entries[0].is_bucket() && entries[1].is_bucket());
}

#[test]
fn empty_file_and_empty_buckets() {
    let bytes = write_mem(WriterOptions::default(), &vec![]);
    assert_eq!(bytes.len(), 3 * 4096);
    let (_f, db) = open_bytes(&bytes);
    assert!(read_all(&db.unwrap()).is_empty());

    let opts = WriterOptions {
        inline_buckets: false,
        ..WriterOptions::default()
    };
    let data: Buckets = vec![(b"a".to_vec(), vec![]), (b"b".to_vec(), vec![])];
    let bytes = write_mem(opts, &data);
    let (_f, db) = open_bytes(&bytes);
    assert_eq!(read_all(&db.unwrap()), data);
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = Writer::new(Cursor::new(Vec::new()), WriterOptions::default()).unwrap();
    let mut b = w.bucket(b"b").unwrap();
    b.put(b"b", b"").unwrap();
    assert!(matches!(b.put(b"a", b""), Err(Error::KeyOrder { .. })));
    assert!(matches!(b.put(b"b", b""), Err(Error::KeyOrder { .. })));
    assert!(matches!(b.put(b"", b""), Err(Error::EmptyKey(_))));
    assert!(matches!(
        b.put(&vec![b'z'; MAX_KEY_SIZE + 1], b""),
        Err(Error::KeyTooLarge(_))
    ));
    b.finish().unwrap();
    assert!(matches!(w.bucket(b"b"), Err(Error::DuplicateBucket(_))));
    assert!(matches!(w.bucket(b""), Err(Error::EmptyKey(_))));
    // Order is checked across leaf boundaries too.
    let mut b = w.bucket(b"c").unwrap();
    for i in 0..1000u32 {
        b.put(&i.to_be_bytes(), &[0; 50]).unwrap();
    }
    assert!(matches!(
        b.put(&5u32.to_be_bytes(), b""),
        Err(Error::KeyOrder { .. })
    ));
    for opts in [
        WriterOptions {
            page_size: 3000,
            ..WriterOptions::default()
        },
        WriterOptions {
            page_size: 512,
            ..WriterOptions::default()
        },
        WriterOptions {
            fill_percent: 0.0,
            ..WriterOptions::default()
        },
        WriterOptions {
            fill_percent: f64::NAN,
            ..WriterOptions::default()
        },
        WriterOptions {
            txid: 0,
            ..WriterOptions::default()
        },
    ] {
        assert!(matches!(
            Writer::new(Cursor::new(Vec::new()), opts),
            Err(Error::InvalidOption(_))
        ));
    }
}

#[test]
fn writer_to_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut w = Writer::create(&path, WriterOptions::default()).unwrap();
    w.write_bucket(b"k", [(b"a", b"1"), (b"b", b"2")]).unwrap();
    let pages = w.pages();
    let f = w.finish_sync().unwrap();
    let db = Db::open(&path).unwrap();
    // Metas + the bucket's (inline, so none) + the root bucket's leaf.
    assert_eq!(pages, 2);
    assert_eq!(db.meta().pgid, 3);
    assert_eq!(f.metadata().unwrap().len(), db.size());
    assert_eq!(read_all(&db)[0].1.len(), 2);
}

fn meta_at(bytes: &[u8], page: usize, ps: usize) -> Meta {
    Meta::parse(&bytes[page * ps + PAGE_HEADER_SIZE..]).unwrap()
}

fn put_meta(bytes: &mut [u8], page: usize, ps: usize, mut m: Meta, fix_checksum: bool) {
    if fix_checksum {
        m.checksum = m.compute_checksum();
    }
    let off = page * ps + PAGE_HEADER_SIZE;
    bytes[off..off + 64].copy_from_slice(&m.encode());
}

#[test]
fn meta_selection() {
    let data = sample(100, 4);
    let bytes = write_mem(WriterOptions::default(), &data);
    let m0 = meta_at(&bytes, 0, 4096);
    let m1 = meta_at(&bytes, 1, 4096);
    assert_eq!((m0.txid, m1.txid), (2, 1));
    assert_eq!(m0.magic, MAGIC);
    assert_eq!(m0.version, VERSION);

    // Meta 1 with a higher txid wins.
    let mut b = bytes.clone();
    put_meta(&mut b, 1, 4096, Meta { txid: 9, ..m1 }, true);
    let (_f, db) = open_bytes(&b);
    assert_eq!(db.unwrap().meta().txid, 9);

    // A damaged meta 0 falls back to meta 1.
    let mut b = bytes.clone();
    b[PAGE_HEADER_SIZE + 20] ^= 0xff;
    let (_f, db) = open_bytes(&b);
    let db = db.unwrap();
    assert_eq!(db.meta().txid, 1);
    assert_eq!(read_all(&db), data);

    // Meta 1 is also found at other page sizes when meta 0 is damaged.
    let opts = WriterOptions {
        page_size: 16384,
        ..WriterOptions::default()
    };
    let mut b = write_mem(opts, &data);
    b[PAGE_HEADER_SIZE] ^= 1;
    let (_f, db) = open_bytes(&b);
    assert_eq!(db.unwrap().page_size(), 16384);

    // Both damaged: not a bbolt file.
    let mut b = bytes.clone();
    b[PAGE_HEADER_SIZE + 20] ^= 0xff;
    b[4096 + PAGE_HEADER_SIZE + 20] ^= 0xff;
    let (_f, db) = open_bytes(&b);
    assert!(matches!(db, Err(Error::InvalidFile(_))));

    // A higher-txid meta with a bad checksum is skipped.
    let mut b = bytes.clone();
    put_meta(&mut b, 1, 4096, Meta { txid: 9, ..m1 }, false);
    let (_f, db) = open_bytes(&b);
    assert_eq!(db.unwrap().meta().txid, 2);

    // A trailer after the last page (etcdctl's sha256) is ignored.
    let mut b = bytes.clone();
    b.extend_from_slice(&[0xab; 32]);
    let (_f, db) = open_bytes(&b);
    assert_eq!(read_all(&db.unwrap()), data);
}

/// Opens and walks everything; any error is fine, a panic is not.
fn walk(bytes: &[u8]) -> std::result::Result<usize, Error> {
    let f = temp_with(bytes);
    let db = Db::open(f.path())?;
    let mut n = 0;
    walk_bucket(&db, &db.root(), &mut n, 0)?;
    Ok(n)
}

fn walk_bucket(db: &Db, b: &Bucket<'_>, n: &mut usize, depth: usize) -> Result<()> {
    for e in b.iter() {
        let e = e?;
        *n += 1;
        if e.is_bucket() && depth < 4 {
            let child = b.open(&e)?;
            walk_bucket(db, &child, n, depth + 1)?;
            let _ = child.get(&e.key)?;
        }
    }
    let _ = b.get(b"\x00\x00\x00\x00\x00\x00\x00\x05_")?;
    let _ = db.bucket_names()?;
    Ok(())
}

fn small_file() -> Vec<u8> {
    // Small pages so that a few KiB hold branches, overflow and inline
    // buckets.
    let opts = WriterOptions {
        page_size: 1024,
        freelist: FreelistMode::EmptyPage,
        ..WriterOptions::default()
    };
    let mut data = sample(300, 5);
    data[1].1.truncate(3);
    data[1].1[1].1.truncate(3000);
    data.pop();
    write_mem(opts, &data)
}

#[test]
fn truncated_files_fail_cleanly() {
    let bytes = small_file();
    let full = walk(&bytes).unwrap();
    assert!(full > 300);
    let mut cut = 0;
    while cut < bytes.len() {
        let r = walk(&bytes[..cut]);
        if cut < 2048 {
            assert!(r.is_err(), "cut at {cut} opened");
        }
        cut += if cut % 1024 < 40 || cut % 1024 > 1000 {
            1
        } else {
            61
        };
    }
}

#[test]
fn corrupted_files_fail_cleanly() {
    let bytes = small_file();
    let pages = bytes.len() / 1024;
    let mut rng = Rng(0x5eed);
    let mut ok = 0;
    for round in 0..4000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            // Mostly hit page headers and element headers.
            let page = 2 + rng.below(pages as u64 - 2) as usize;
            let off = if round % 3 == 0 {
                rng.below(bytes.len() as u64) as usize
            } else {
                page * 1024 + rng.below(80) as usize
            };
            b[off] ^= 1 << rng.below(8);
        }
        if walk(&b).is_ok() {
            ok += 1;
        }
    }
    // Many flips land in values and go unnoticed; many must be caught.
    assert!(ok < 4000);
}

#[test]
fn forged_metas_fail_cleanly() {
    let bytes = small_file();
    let m0 = meta_at(&bytes, 0, 1024);
    let forged = [
        Meta {
            pgid: u64::MAX,
            ..m0
        },
        Meta {
            pgid: u64::MAX,
            root: BucketHeader {
                root: u64::MAX - 1,
                sequence: 0,
            },
            ..m0
        },
        Meta {
            pgid: 1 << 40,
            root: BucketHeader {
                root: 1 << 39,
                sequence: 0,
            },
            ..m0
        },
        Meta { page_size: 0, ..m0 },
        Meta {
            page_size: 1000,
            ..m0
        },
        Meta {
            page_size: 1 << 31,
            ..m0
        },
        Meta {
            root: BucketHeader {
                root: 0,
                sequence: 0,
            },
            ..m0
        },
        Meta {
            root: BucketHeader {
                root: 1,
                sequence: 0,
            },
            ..m0
        },
        Meta { freelist: 0, ..m0 },
        Meta { pgid: 2, ..m0 },
        Meta { version: 1, ..m0 },
        Meta { magic: 0, ..m0 },
    ];
    for m in forged {
        let mut b = bytes.clone();
        put_meta(&mut b, 0, 1024, m, true);
        put_meta(&mut b, 1, 1024, m, true);
        let _ = walk(&b);
    }
    // Root pointing at a meta page or at the freelist page.
    for root in [0u64, 1, 2] {
        let mut b = bytes.clone();
        let m = Meta {
            root: BucketHeader { root, sequence: 0 },
            ..m0
        };
        put_meta(&mut b, 0, 1024, m, true);
        put_meta(&mut b, 1, 1024, m, true);
        assert!(walk(&b).is_err());
    }
    // A branch page pointing at itself.
    let mut b = bytes.clone();
    let root = m0.root.root as usize;
    let off = root * 1024;
    let flags = u16::from_le_bytes([b[off + 8], b[off + 9]]);
    assert!(flags == 1 || flags == 2);
    b[off + 8] = 1; // make it a branch
    b[off + 16 + 8..off + 16 + 16].copy_from_slice(&(root as u64).to_le_bytes());
    assert!(walk(&b).is_err());
}

#[test]
fn random_garbage_fails_cleanly() {
    let mut rng = Rng(7);
    for _ in 0..300 {
        let len = rng.below(20_000) as usize;
        let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert!(walk(&b).is_err());
    }
    // Valid metas in front of garbage pages.
    let bytes = small_file();
    for _ in 0..300 {
        let mut b = bytes.clone();
        for x in &mut b[2048..] {
            if rng.below(4) == 0 {
                *x = rng.next() as u8;
            }
        }
        let _ = walk(&b);
    }
}

/// Discards what is written (for memory measurements).
struct Discard(u64);

impl Write for Discard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for Discard {
    fn seek(&mut self, _: std::io::SeekFrom) -> std::io::Result<u64> {
        Ok(0)
    }
}

#[test]
fn writer_memory_is_bounded() {
    let mut w = Writer::new(Discard(0), WriterOptions::default()).unwrap();
    let mut b = w.bucket(b"key").unwrap();
    let mut max = 0;
    for i in 0..300_000u64 {
        b.put(&rev_key(i, 0), &[7u8; 60]).unwrap();
        max = max.max(b.buffered_bytes());
    }
    b.finish().unwrap();
    let pages = w.pages();
    let out = w.finish().unwrap();
    // ~27 MB written, at most one page per level (3 levels) plus an entry
    // buffered.
    assert!(out.0 > 25_000_000, "{}", out.0);
    assert!(pages > 6000);
    assert!(max <= 3 * 4096, "buffered up to {max} bytes");
}
