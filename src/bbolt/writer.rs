//! Writing a bbolt file by bulk loading: each bucket's entries arrive in key
//! order, leaves go to the file as soon as they are full, and each branch
//! level keeps only its unfinished right-most page in memory. The tree is
//! thus built bottom-up in one pass; memory is a few pages per tree level
//! plus the largest single entry, whatever the number of keys.
//!
//! File layout: pages 0 and 1 are the metas (written last, once the root is
//! known), page 2 the optional empty freelist, then the pages of the
//! buckets in the order they were written, then the root bucket's pages.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use super::page::{
    encode_node, BucketHeader, Meta, PageHeader, BRANCH_ELEMENT_SIZE, FLAG_FREELIST, FLAG_META,
    LEAF_ELEMENT_SIZE, LEAF_FLAG_BUCKET, MAGIC, MAX_KEY_SIZE, MAX_VALUE_SIZE, PAGE_HEADER_SIZE,
    PGID_NO_FREELIST, VERSION,
};
use super::{show, Error, Result};

/// Whether the file gets a freelist page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreelistMode {
    /// `meta.freelist = PGID_NO_FREELIST`, as etcd (which opens bbolt with
    /// `NoFreelistSync`) writes its files; bbolt rebuilds the free list by
    /// walking the tree when it opens the file.
    None,
    /// An empty freelist at page 2, as a fresh bbolt file has.
    EmptyPage,
}

/// How the file is laid out.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Page size in bytes: a power of two from 1024 to 65536 (etcd: 4096).
    pub page_size: usize,
    /// How full a page is filled before the next one is started, in
    /// (0.1, 1.0]. 0.9 is what etcd uses for its append-mostly `key`
    /// bucket and for defragmentation.
    pub fill_percent: f64,
    /// The transaction id of meta page 0; meta page 1 gets `txid - 1`
    /// (like bbolt's `Tx.WriteTo`). At least 1.
    pub txid: u64,
    pub freelist: FreelistMode,
    /// Store buckets that fit in a quarter page inline in the root bucket's
    /// leaf, as bbolt does.
    pub inline_buckets: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            page_size: 4096,
            fill_percent: 0.9,
            txid: 2,
            freelist: FreelistMode::None,
            inline_buckets: true,
        }
    }
}

/// Writes a bbolt file. Buckets are written one at a time with
/// [`Writer::bucket`] (or [`Writer::write_bucket`]), in any order of names;
/// [`Writer::finish`] writes the root bucket and the meta pages.
///
/// Only top-level buckets of plain key/value pairs are written (all that
/// etcd uses); nested buckets are not.
pub struct Writer<W: Write + Seek> {
    sink: Sink<W>,
    opts: WriterOptions,
    threshold: usize,
    /// Top-level bucket name → bucket value (header, plus page if inline).
    root_entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The output and page allocation (pages are only ever appended).
struct Sink<W> {
    out: W,
    next_pgid: u64,
    page_size: usize,
    buf: Vec<u8>,
}

impl<W: Write> Sink<W> {
    /// Writes one branch or leaf node of `size` serialized bytes at the next
    /// free page (with overflow pages if it needs more than one); its id.
    fn write_node<'a>(
        &mut self,
        leaf: bool,
        size: usize,
        items: impl ExactSizeIterator<Item = (u32, &'a [u8], &'a [u8])> + Clone,
    ) -> Result<u64> {
        let pages = size.div_ceil(self.page_size).max(1);
        let overflow = u32::try_from(pages - 1).map_err(|_| Error::ValueTooLarge(size))?;
        let pgid = self.next_pgid;
        self.buf.clear();
        encode_node(&mut self.buf, pgid, leaf, overflow, items);
        debug_assert_eq!(self.buf.len(), size);
        self.buf.resize(pages * self.page_size, 0);
        self.out.write_all(&self.buf)?;
        self.next_pgid += pages as u64;
        if self.buf.capacity() > 16 * self.page_size {
            // Do not keep a huge value's buffer around.
            self.buf = Vec::new();
        }
        Ok(pgid)
    }

    fn write_raw_page(&mut self, header: PageHeader, body: &[u8]) -> Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&header.encode());
        self.buf.extend_from_slice(body);
        self.buf.resize(self.page_size, 0);
        self.out.write_all(&self.buf)?;
        Ok(())
    }
}

/// One branch level under construction: its right-most, unfinished page.
#[derive(Default)]
struct Level {
    /// (first key of the child, child page id).
    entries: Vec<(Vec<u8>, u64)>,
    size: usize,
    /// Whether a page of this level was already written.
    flushed: bool,
}

/// The result of building one tree.
enum Built {
    /// The root page id.
    Root(u64),
    /// An inline bucket's leaf page bytes.
    Inline(Vec<u8>),
}

/// Bottom-up construction of one bucket's B+tree.
struct TreeBuilder {
    bucket: Vec<u8>,
    /// The unfinished leaf: (flags, key, value).
    leaf: Vec<(u32, Vec<u8>, Vec<u8>)>,
    leaf_size: usize,
    levels: Vec<Level>,
    threshold: usize,
    /// The previous key (empty before the first), for the order check: the
    /// leaf buffer may have just been flushed.
    last_key: Option<Vec<u8>>,
}

/// A page holds at most this many elements (`count` is a u16; bbolt
/// refuses 0xFFFF).
const MAX_ELEMENTS: usize = 0xFFFE;

impl TreeBuilder {
    fn new(bucket: &[u8], threshold: usize) -> TreeBuilder {
        TreeBuilder {
            bucket: bucket.to_vec(),
            leaf: Vec::new(),
            leaf_size: PAGE_HEADER_SIZE,
            levels: Vec::new(),
            threshold,
            last_key: None,
        }
    }

    fn add<W: Write>(
        &mut self,
        sink: &mut Sink<W>,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        if key.is_empty() {
            return Err(Error::EmptyKey(show(&self.bucket)));
        }
        if key.len() > MAX_KEY_SIZE {
            return Err(Error::KeyTooLarge(key.len()));
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(Error::ValueTooLarge(value.len()));
        }
        let last = self.last_key.get_or_insert_with(Vec::new);
        if !last.is_empty() && key <= last.as_slice() {
            return Err(Error::KeyOrder {
                bucket: show(&self.bucket),
                key: show(key),
            });
        }
        last.clear();
        last.extend_from_slice(key);
        let size = LEAF_ELEMENT_SIZE + key.len() + value.len();
        if !self.leaf.is_empty()
            && (self.leaf_size + size > self.threshold || self.leaf.len() >= MAX_ELEMENTS)
        {
            self.flush_leaf(sink)?;
        }
        self.leaf.push((flags, key.to_vec(), value.to_vec()));
        self.leaf_size += size;
        Ok(())
    }

    /// Writes the unfinished leaf and hands its first key to the level
    /// above.
    fn flush_leaf<W: Write>(&mut self, sink: &mut Sink<W>) -> Result<()> {
        let pgid = sink.write_node(
            true,
            self.leaf_size,
            self.leaf
                .iter()
                .map(|(f, k, v)| (*f, k.as_slice(), v.as_slice())),
        )?;
        let first = match self.leaf.first_mut() {
            Some(e) => std::mem::take(&mut e.1),
            None => Vec::new(),
        };
        self.leaf.clear();
        self.leaf_size = PAGE_HEADER_SIZE;
        self.push_child(sink, 0, first, pgid)
    }

    fn push_child<W: Write>(
        &mut self,
        sink: &mut Sink<W>,
        level: usize,
        key: Vec<u8>,
        pgid: u64,
    ) -> Result<()> {
        if self.levels.len() == level {
            self.levels.push(Level {
                size: PAGE_HEADER_SIZE,
                ..Level::default()
            });
        }
        let size = BRANCH_ELEMENT_SIZE + key.len();
        let l = &self.levels[level];
        // A branch page holds at least two children (bbolt's
        // MinKeysPerPage), even with keys too big for one page: otherwise
        // the levels above would not get any narrower.
        if l.entries.len() >= 2
            && (l.size + size > self.threshold || l.entries.len() >= MAX_ELEMENTS)
        {
            self.flush_level(sink, level)?;
        }
        let l = &mut self.levels[level];
        l.entries.push((key, pgid));
        l.size += size;
        Ok(())
    }

    fn flush_level<W: Write>(&mut self, sink: &mut Sink<W>, level: usize) -> Result<()> {
        let l = &mut self.levels[level];
        let mut entries = std::mem::take(&mut l.entries);
        let size = l.size;
        l.size = PAGE_HEADER_SIZE;
        l.flushed = true;
        let ids: Vec<[u8; 8]> = entries.iter().map(|(_, p)| p.to_le_bytes()).collect();
        let pgid = sink.write_node(
            false,
            size,
            entries
                .iter()
                .zip(ids.iter())
                .map(|((k, _), id)| (0u32, k.as_slice(), id.as_slice())),
        )?;
        let first = std::mem::take(&mut entries[0].0);
        entries.clear();
        self.levels[level].entries = entries; // keep the allocation
        self.push_child(sink, level + 1, first, pgid)
    }

    /// Writes what is left and returns the root (or the inline page).
    fn finish<W: Write>(
        mut self,
        sink: &mut Sink<W>,
        inline_limit: Option<usize>,
    ) -> Result<Built> {
        if let Some(limit) = inline_limit {
            if self.levels.is_empty()
                && self.leaf_size <= limit
                && self.leaf.iter().all(|(f, _, _)| f & LEAF_FLAG_BUCKET == 0)
            {
                let mut page = Vec::with_capacity(self.leaf_size);
                encode_node(
                    &mut page,
                    0,
                    true,
                    0,
                    self.leaf
                        .iter()
                        .map(|(f, k, v)| (*f, k.as_slice(), v.as_slice())),
                );
                return Ok(Built::Inline(page));
            }
        }
        self.flush_leaf(sink)?;
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            let l = &self.levels[level];
            if top && !l.flushed && l.entries.len() == 1 {
                return Ok(Built::Root(l.entries[0].1));
            }
            if !l.entries.is_empty() {
                self.flush_level(sink, level)?;
            }
            level += 1;
        }
    }
}

impl Writer<BufWriter<File>> {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: impl AsRef<Path>, opts: WriterOptions) -> Result<Self> {
        let f = File::create(path)?;
        Writer::new(BufWriter::with_capacity(1 << 20, f), opts)
    }

    /// [`Writer::finish`], then fsync; the file.
    pub fn finish_sync(self) -> Result<File> {
        let w = self.finish()?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(f)
    }
}

impl<W: Write + Seek> Writer<W> {
    /// Starts a file at the beginning of `out`.
    pub fn new(mut out: W, opts: WriterOptions) -> Result<Self> {
        let ps = opts.page_size;
        if !ps.is_power_of_two() || !(1024..=65536).contains(&ps) {
            return Err(Error::InvalidOption(format!("page size {ps}")));
        }
        if !(opts.fill_percent > 0.1 && opts.fill_percent <= 1.0) {
            return Err(Error::InvalidOption(format!(
                "fill percent {}",
                opts.fill_percent
            )));
        }
        if opts.txid == 0 {
            return Err(Error::InvalidOption("txid 0".into()));
        }
        out.seek(SeekFrom::Start(0))?;
        let threshold = ((ps as f64 * opts.fill_percent) as usize).max(PAGE_HEADER_SIZE + 64);
        let mut sink = Sink {
            out,
            next_pgid: 0,
            page_size: ps,
            buf: Vec::with_capacity(ps),
        };
        // Placeholders for the metas, written for real by `finish`.
        for _ in 0..2 {
            sink.write_raw_page(
                PageHeader {
                    id: 0,
                    flags: 0,
                    count: 0,
                    overflow: 0,
                },
                &[],
            )?;
        }
        sink.next_pgid = 2;
        if opts.freelist == FreelistMode::EmptyPage {
            sink.write_raw_page(
                PageHeader {
                    id: 2,
                    flags: FLAG_FREELIST,
                    count: 0,
                    overflow: 0,
                },
                &[],
            )?;
            sink.next_pgid = 3;
        }
        Ok(Writer {
            sink,
            opts,
            threshold,
            root_entries: BTreeMap::new(),
        })
    }

    /// Pages written so far (the high-water mark if the file ended now).
    pub fn pages(&self) -> u64 {
        self.sink.next_pgid
    }

    /// Starts a top-level bucket; its entries are given with
    /// [`BucketWriter::put`] in strictly increasing key order, and it is
    /// added to the file by [`BucketWriter::finish`].
    pub fn bucket(&mut self, name: &[u8]) -> Result<BucketWriter<'_, W>> {
        if name.is_empty() {
            return Err(Error::EmptyKey("<root>".into()));
        }
        if name.len() > MAX_KEY_SIZE {
            return Err(Error::KeyTooLarge(name.len()));
        }
        if self.root_entries.contains_key(name) {
            return Err(Error::DuplicateBucket(show(name)));
        }
        let tree = TreeBuilder::new(name, self.threshold);
        Ok(BucketWriter {
            writer: self,
            name: name.to_vec(),
            tree,
            sequence: 0,
        })
    }

    /// Writes a whole bucket from an iterator of (key, value) in strictly
    /// increasing key order.
    pub fn write_bucket<I, K, V>(&mut self, name: &[u8], entries: I) -> Result<()>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut b = self.bucket(name)?;
        for (k, v) in entries {
            b.put(k.as_ref(), v.as_ref())?;
        }
        b.finish()
    }

    /// Writes the root bucket and both meta pages and flushes; the output.
    pub fn finish(mut self) -> Result<W> {
        let mut tree = TreeBuilder::new(b"<root>", self.threshold);
        let entries = std::mem::take(&mut self.root_entries);
        for (name, value) in &entries {
            tree.add(&mut self.sink, LEAF_FLAG_BUCKET, name, value)?;
        }
        let root = match tree.finish(&mut self.sink, None)? {
            Built::Root(p) => p,
            Built::Inline(_) => unreachable!("the root bucket is never inline"),
        };
        let mut meta = Meta {
            magic: MAGIC,
            version: VERSION,
            page_size: self.opts.page_size as u32,
            flags: 0,
            root: BucketHeader { root, sequence: 0 },
            freelist: match self.opts.freelist {
                FreelistMode::None => PGID_NO_FREELIST,
                FreelistMode::EmptyPage => 2,
            },
            pgid: self.sink.next_pgid,
            txid: self.opts.txid,
            checksum: 0,
        };
        self.sink.out.flush()?;
        self.sink.out.seek(SeekFrom::Start(0))?;
        for id in 0..2u64 {
            meta.txid = self.opts.txid - id;
            meta.checksum = meta.compute_checksum();
            self.sink.write_raw_page(
                PageHeader {
                    id,
                    flags: FLAG_META,
                    count: 0,
                    overflow: 0,
                },
                &meta.encode(),
            )?;
        }
        self.sink.out.flush()?;
        Ok(self.sink.out)
    }
}

/// A top-level bucket being written; see [`Writer::bucket`].
pub struct BucketWriter<'w, W: Write + Seek> {
    writer: &'w mut Writer<W>,
    name: Vec<u8>,
    tree: TreeBuilder,
    sequence: u64,
}

impl<W: Write + Seek> BucketWriter<'_, W> {
    /// Appends an entry; keys must be strictly increasing and non-empty.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree.add(&mut self.writer.sink, 0, key, value)
    }

    /// Appends an entry with leaf flags (tests: hand-made nested buckets).
    #[cfg(test)]
    pub(crate) fn put_flagged(&mut self, flags: u32, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree.add(&mut self.writer.sink, flags, key, value)
    }

    /// Bytes of entries held in memory for this bucket (the unfinished leaf
    /// and the unfinished page of each branch level, serialized size): a
    /// few pages per tree level, however many entries were put.
    pub fn buffered_bytes(&self) -> usize {
        self.tree.leaf_size + self.tree.levels.iter().map(|l| l.size).sum::<usize>()
    }

    /// Sets the bucket's sequence number (bbolt's `NextSequence` state).
    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence = sequence;
    }

    /// Writes the rest of the bucket's pages and records it in the root
    /// bucket. A bucket dropped without `finish` is left out of the file
    /// (its pages already written stay as unreachable garbage).
    pub fn finish(self) -> Result<()> {
        let w = self.writer;
        let inline_limit = w.opts.inline_buckets.then_some(w.opts.page_size / 4);
        let built = self.tree.finish(&mut w.sink, inline_limit)?;
        let mut value = Vec::new();
        match built {
            Built::Root(root) => {
                value.extend_from_slice(
                    &BucketHeader {
                        root,
                        sequence: self.sequence,
                    }
                    .encode(),
                );
            }
            Built::Inline(page) => {
                value.extend_from_slice(
                    &BucketHeader {
                        root: 0,
                        sequence: self.sequence,
                    }
                    .encode(),
                );
                value.extend_from_slice(&page);
            }
        }
        w.root_entries.insert(self.name, value);
        Ok(())
    }
}
