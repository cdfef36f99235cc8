//! Reading a bbolt file: meta selection, page reads with `pread`, and a
//! streaming cursor over a bucket's entries.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::page::{
    BucketHeader, Meta, PageHeader, PageView, BUCKET_HEADER_SIZE, META_SIZE, PAGE_HEADER_SIZE,
    PGID_NO_FREELIST,
};
use super::{show, Error, Result};

/// Deeper trees than this are treated as corrupt (a 4 KiB-page tree of this
/// depth would hold more keys than any disk).
const MAX_DEPTH: usize = 64;

/// Page sizes tried for meta page 1 when meta page 0 is unusable.
const CANDIDATE_PAGE_SIZES: [usize; 9] =
    [4096, 8192, 16384, 32768, 65536, 1024, 2048, 512, 1 << 20];

/// An open bbolt file (read-only). Pages are read on demand with `pread`;
/// nothing but the chosen meta is kept in memory.
#[derive(Debug)]
pub struct Db {
    file: File,
    meta: Meta,
    page_size: usize,
    file_len: u64,
}

/// One entry of a bucket: a key and its value, or a nested bucket (whose
/// value is the bucket header, see [`Bucket::open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Leaf element flags; bit 0 marks a nested bucket.
    pub flags: u32,
}

impl Entry {
    pub fn is_bucket(&self) -> bool {
        self.flags & super::page::LEAF_FLAG_BUCKET != 0
    }
}

/// Where a bucket's tree starts.
#[derive(Debug, Clone)]
enum Root {
    Page(u64),
    /// An inline bucket's leaf page (the bytes after the bucket header).
    Inline(Vec<u8>),
}

/// A bucket of an open [`Db`]: the root bucket, a top-level bucket or a
/// nested one.
#[derive(Debug, Clone)]
pub struct Bucket<'db> {
    db: &'db Db,
    header: BucketHeader,
    root: Root,
}

fn corrupt(pgid: u64, what: impl Into<String>) -> Error {
    Error::Corrupt {
        pgid,
        what: what.into(),
    }
}

fn sane_page_size(ps: u32) -> bool {
    ps.is_power_of_two() && (512..=(1 << 20)).contains(&ps)
}

impl Db {
    /// Opens the file at `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Db> {
        Db::from_file(File::open(path)?)
    }

    /// Uses an already open file. Picks the meta page bbolt would pick: the
    /// valid one (magic, version, checksum) with the higher txid.
    pub fn from_file(file: File) -> Result<Db> {
        let file_len = file.metadata()?.len();
        let read_meta = |page_off: u64| -> Result<Option<Meta>> {
            let mut buf = [0u8; PAGE_HEADER_SIZE + META_SIZE];
            if page_off + buf.len() as u64 > file_len {
                return Ok(None);
            }
            file.read_exact_at(&mut buf, page_off)?;
            Ok(Meta::parse(&buf[PAGE_HEADER_SIZE..]))
        };
        // A meta is usable if bbolt would accept it and its pointers make
        // sense; `page_size` is the offset it was found at, for meta 1.
        let usable = |m: &Meta, page_size: Option<usize>| -> Result<(), String> {
            m.validate().map_err(str::to_string)?;
            if !sane_page_size(m.page_size) {
                return Err(format!("unsupported page size {}", m.page_size));
            }
            if let Some(ps) = page_size {
                if m.page_size as usize != ps {
                    return Err("page size does not match the meta's position".into());
                }
            }
            if m.root.root < 2 || m.root.root >= m.pgid {
                return Err(format!(
                    "root page {} outside 2..{} (high-water mark)",
                    m.root.root, m.pgid
                ));
            }
            if m.freelist != PGID_NO_FREELIST && (m.freelist < 2 || m.freelist >= m.pgid) {
                return Err(format!("freelist page {} out of range", m.freelist));
            }
            Ok(())
        };

        if file_len < (PAGE_HEADER_SIZE + META_SIZE) as u64 {
            return Err(Error::InvalidFile(format!(
                "file of {file_len} bytes is too short"
            )));
        }
        let m0 = read_meta(0)?;
        let m0_check = match &m0 {
            Some(m) => usable(m, None),
            None => Err("unreadable".into()),
        };
        let mut valid: Vec<Meta> = Vec::new();
        let page_size;
        if let (Some(m), Ok(())) = (m0, &m0_check) {
            valid.push(m);
            page_size = m.page_size as usize;
            if let Some(m1) = read_meta(page_size as u64)? {
                if usable(&m1, Some(page_size)).is_ok() {
                    valid.push(m1);
                }
            }
        } else {
            // Meta 0 is damaged: look for meta 1 at the usual page sizes.
            let mut found = None;
            for ps in CANDIDATE_PAGE_SIZES {
                if let Some(m1) = read_meta(ps as u64)? {
                    if usable(&m1, Some(ps)).is_ok() {
                        found = Some((m1, ps));
                        break;
                    }
                }
            }
            match found {
                Some((m1, ps)) => {
                    valid.push(m1);
                    page_size = ps;
                }
                None => {
                    return Err(Error::InvalidFile(format!(
                        "meta page 0: {}; no valid meta page 1",
                        m0_check.unwrap_err()
                    )))
                }
            }
        }
        // Highest txid wins; on a tie, meta 0 (as bbolt does).
        let mut meta = valid[0];
        for m in &valid[1..] {
            if m.txid > meta.txid {
                meta = *m;
            }
        }
        Ok(Db {
            file,
            meta,
            page_size,
            file_len,
        })
    }

    /// The meta page in use.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Bytes in use: high-water mark × page size (bbolt's `Tx.Size`, the
    /// "total size" of `etcdctl snapshot status`).
    pub fn size(&self) -> u64 {
        self.meta.pgid.saturating_mul(self.page_size as u64)
    }

    /// Length of the file, which may exceed [`Db::size`] (free space at the
    /// end, or the sha256 trailer of a snapshot file).
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The root bucket, whose entries are the top-level buckets.
    pub fn root(&self) -> Bucket<'_> {
        Bucket {
            db: self,
            header: self.meta.root,
            root: Root::Page(self.meta.root.root),
        }
    }

    /// A top-level bucket by name.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket<'_>>> {
        self.root().bucket(name)
    }

    /// Names of the top-level buckets, in order.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        for e in self.root().iter() {
            let e = e?;
            if e.is_bucket() {
                names.push(e.key);
            }
        }
        Ok(names)
    }

    /// Opens a bucket from a bucket entry's value (its 16-byte header, plus
    /// the inline page for an inline bucket).
    pub fn open_bucket_value(&self, value: &[u8]) -> Result<Bucket<'_>> {
        let header = BucketHeader::parse(value)
            .ok_or_else(|| corrupt(0, format!("bucket value of {} bytes", value.len())))?;
        let root = if header.root == 0 {
            let page = &value[BUCKET_HEADER_SIZE..];
            let view = PageView::new(page, 0)?;
            if !view.is_leaf() {
                return Err(corrupt(0, "inline bucket page is not a leaf"));
            }
            Root::Inline(page.to_vec())
        } else {
            Root::Page(header.root)
        };
        Ok(Bucket {
            db: self,
            header,
            root,
        })
    }

    /// Reads page `pgid` with its overflow pages and checks that it is a
    /// branch or leaf page.
    fn read_node(&self, pgid: u64) -> Result<Vec<u8>> {
        let hwm = self.meta.pgid;
        if pgid < 2 || pgid >= hwm {
            return Err(corrupt(
                pgid,
                format!("page id outside 2..{hwm} (high-water mark)"),
            ));
        }
        let ps = self.page_size as u64;
        let end = pgid
            .checked_mul(ps)
            .and_then(|off| off.checked_add(ps))
            .filter(|&e| e <= self.file_len)
            .ok_or_else(|| corrupt(pgid, "page beyond the end of the file"))?;
        let off = end - ps;
        let mut buf = vec![0u8; ps as usize];
        self.file.read_exact_at(&mut buf, off)?;
        let header = PageHeader::parse(&buf).ok_or_else(|| corrupt(pgid, "short page"))?;
        if header.id != pgid {
            return Err(corrupt(pgid, format!("page header says id {}", header.id)));
        }
        if header.overflow > 0 {
            let last = pgid.checked_add(u64::from(header.overflow));
            if last.is_none_or(|l| l >= hwm) {
                return Err(corrupt(
                    pgid,
                    format!(
                        "{} overflow pages run past the high-water mark",
                        header.overflow
                    ),
                ));
            }
            let total = (u64::from(header.overflow) + 1) * ps;
            if off + total > self.file_len {
                return Err(corrupt(pgid, "overflow pages beyond the end of the file"));
            }
            buf.resize(total as usize, 0);
            self.file.read_exact_at(&mut buf[ps as usize..], off + ps)?;
        }
        PageView::new(&buf, pgid)?;
        Ok(buf)
    }
}

impl<'db> Bucket<'db> {
    pub fn header(&self) -> BucketHeader {
        self.header
    }

    /// The bucket's sequence number (bbolt's `Bucket.Sequence`).
    pub fn sequence(&self) -> u64 {
        self.header.sequence
    }

    /// Whether the bucket is stored inline in its parent's leaf.
    pub fn is_inline(&self) -> bool {
        matches!(self.root, Root::Inline(_))
    }

    /// All entries in key order.
    pub fn iter(&self) -> Iter<'db> {
        Iter::new(self, None)
    }

    /// Entries with keys `>= start`, in key order.
    pub fn iter_from(&self, start: &[u8]) -> Iter<'db> {
        Iter::new(self, Some(start.to_vec()))
    }

    /// The entry with exactly this key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        match self.iter_from(key).next() {
            Some(Ok(e)) if e.key == key => Ok(Some(e)),
            Some(Err(err)) => Err(err),
            _ => Ok(None),
        }
    }

    /// A nested bucket by name (`None` if there is no such key).
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket<'db>>> {
        match self.get(name)? {
            Some(e) => self.open(&e).map(Some),
            None => Ok(None),
        }
    }

    /// Opens the nested bucket of an entry of this bucket.
    pub fn open(&self, entry: &Entry) -> Result<Bucket<'db>> {
        if !entry.is_bucket() {
            return Err(Error::NotABucket(show(&entry.key)));
        }
        self.db.open_bucket_value(&entry.value)
    }
}

/// One page on the cursor's path: its bytes and the next element to visit.
struct Frame {
    data: Vec<u8>,
    pgid: u64,
    index: usize,
}

/// A streaming cursor over a bucket: yields entries in key order, holding
/// only the pages from the root to the current leaf. After an error it
/// yields nothing more.
pub struct Iter<'db> {
    db: &'db Db,
    root: Option<Root>,
    start: Option<Vec<u8>>,
    stack: Vec<Frame>,
    last_key: Option<Vec<u8>>,
    /// Pages read so far; more than the file holds means a cycle.
    pages_read: u64,
}

impl<'db> Iter<'db> {
    fn new(bucket: &Bucket<'db>, start: Option<Vec<u8>>) -> Iter<'db> {
        Iter {
            db: bucket.db,
            root: Some(bucket.root.clone()),
            start,
            stack: Vec::new(),
            last_key: None,
            pages_read: 0,
        }
    }

    fn load(&mut self, pgid: u64) -> Result<Vec<u8>> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(corrupt(
                pgid,
                format!("tree deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.pages_read += 1;
        if self.pages_read > self.db.meta.pgid {
            return Err(corrupt(pgid, "page visited twice (cycle in the tree)"));
        }
        self.db.read_node(pgid)
    }

    /// Pushes the root page and, with a start key, descends to the first
    /// entry `>= start`.
    fn begin(&mut self, root: Root) -> Result<()> {
        let (data, pgid) = match root {
            Root::Page(p) => (self.load(p)?, p),
            Root::Inline(data) => (data, 0),
        };
        self.stack.push(Frame {
            data,
            pgid,
            index: 0,
        });
        let Some(start) = self.start.take() else {
            return Ok(());
        };
        loop {
            let top = self.stack.last_mut().expect("pushed above");
            let view = PageView::new(&top.data, top.pgid)?;
            // First element whose key is >= start.
            let (mut lo, mut hi) = (0, view.count());
            while lo < hi {
                let mid = (lo + hi) / 2;
                if view.key(mid)? < start.as_slice() {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            if view.is_leaf() {
                top.index = lo;
                return Ok(());
            }
            if view.count() == 0 {
                return Ok(());
            }
            // The child that may hold `start`: the exact match, else the one
            // before the first greater key.
            let exact = lo < view.count() && view.key(lo)? == start.as_slice();
            let child = if exact || lo == 0 { lo } else { lo - 1 };
            let (_, child_pgid) = view.branch(child)?;
            top.index = child + 1;
            let data = self.load(child_pgid)?;
            self.stack.push(Frame {
                data,
                pgid: child_pgid,
                index: 0,
            });
        }
    }

    fn advance(&mut self) -> Result<Option<Entry>> {
        if let Some(root) = self.root.take() {
            self.begin(root)?;
        }
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            let view = PageView::new(&top.data, top.pgid)?;
            if top.index >= view.count() {
                self.stack.pop();
                continue;
            }
            let i = top.index;
            top.index += 1;
            if view.is_leaf() {
                let e = view.leaf(i)?;
                if let Some(last) = &self.last_key {
                    if e.key <= last.as_slice() {
                        return Err(corrupt(
                            top.pgid,
                            format!("key {:?} out of order", show(e.key)),
                        ));
                    }
                }
                let entry = Entry {
                    key: e.key.to_vec(),
                    value: e.value.to_vec(),
                    flags: e.flags,
                };
                let last = self.last_key.get_or_insert_with(Vec::new);
                last.clear();
                last.extend_from_slice(&entry.key);
                return Ok(Some(entry));
            }
            let (_, child) = view.branch(i)?;
            let data = self.load(child)?;
            self.stack.push(Frame {
                data,
                pgid: child,
                index: 0,
            });
        }
    }
}

impl Iterator for Iter<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        match self.advance() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.stack.clear();
                self.root = None;
                Some(Err(e))
            }
        }
    }
}
