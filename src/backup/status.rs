//! `snapshot status`: the hash, revision, key count and size of an etcd
//! (bbolt) snapshot file, computed and printed exactly as etcdctl 3.4 and
//! etcdutl 3.5 do.
//!
//! - hash: CRC-32C over every top-level bucket's name followed by each of
//!   its keys and values, in order;
//! - revision: the main revision of the last key of the `key` bucket
//!   (tombstones count), 0 when it is empty;
//! - total keys: every key/value of every bucket (the 3.4/3.5 meaning);
//! - total size: the high-water mark times the page size (bbolt's
//!   `Tx.Size`), not the file's length — a snapshot's 32-byte sha256
//!   trailer is ignored.
//!
//! Before that, the file gets bbolt's open checks (with bbolt's error texts:
//! `invalid database`, `file size too small`, `checksum error`, ...) and an
//! equivalent of bbolt's `Tx.Check` (every page below the high-water mark
//! reachable exactly once or free), reported as etcdctl reports it:
//! `snapshot file integrity check failed. N errors found.` and the errors.
//! A damaged file gives an error, never a panic (etcdctl itself crashes on
//! some).
//!
//! Error texts are without the `Error: ` prefix etcdctl prints before them.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::bbolt::{Db, Meta, PGID_NO_FREELIST};

/// What `etcdctl snapshot status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotStatus {
    pub hash: u32,
    pub revision: i64,
    pub total_key: u64,
    pub total_size: u64,
}

/// etcdctl's exit status for an output format it cannot print
/// (`ExitBadFeature`); other `snapshot status` failures exit with 1.
pub const EXIT_BAD_FEATURE: i32 = 4;

/// bbolt reads this much of the file to find the page size (and calls a
/// shorter file `invalid database`).
const FIRST_READ: u64 = 0x1000;
/// bbolt's page size when meta page 0 does not give one (the OS page).
const DEFAULT_PAGE_SIZE: u64 = 4096;
const PAGE_HEADER_SIZE: usize = 16;
const ELEMENT_SIZE: usize = 16;
const BUCKET_HEADER_SIZE: usize = 16;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
const LEAF_FLAG_BUCKET: u32 = 0x01;
/// Nesting of buckets and tree levels beyond this is treated as corrupt.
const MAX_DEPTH: usize = 64;
/// Integrity errors listed in the message (all are counted).
const MAX_LISTED: usize = 20;

/// Computes `snapshot status` of the file at `path`, as etcdctl does.
pub fn status(path: &Path) -> Result<SnapshotStatus, String> {
    let md = std::fs::metadata(path).map_err(|e| go_path_error("stat", path, &e))?;
    if md.is_dir() {
        return Err(format!("open {}: is a directory", path.display()));
    }
    let file = File::open(path).map_err(|e| go_path_error("open", path, &e))?;
    let len = md.len();
    // etcdctl fails on an empty file with a confusing `write X: bad file
    // descriptor` (bbolt tries to initialize it); say what it is.
    if len == 0 {
        return Err("file size too small".into());
    }
    if len < FIRST_READ {
        return Err("invalid database".into());
    }
    let read_err = |e: io::Error| go_path_error("read", path, &e);
    let meta_at = |off: u64| -> Result<Option<Meta>, String> {
        let mut buf = [0u8; PAGE_HEADER_SIZE + 64];
        if off + buf.len() as u64 > len {
            return Ok(None);
        }
        file.read_exact_at(&mut buf, off).map_err(read_err)?;
        Ok(Meta::parse(&buf[PAGE_HEADER_SIZE..]))
    };
    // bbolt's Open: the page size from meta 0 if it is valid, else the
    // default; two pages at least; an error only if both metas are bad
    // (then meta 0's).
    let m0 = meta_at(0)?;
    let m0_check = m0.as_ref().map_or(Err("bad magic"), Meta::validate);
    let page_size = match (&m0, m0_check) {
        (Some(m), Ok(())) => u64::from(m.page_size),
        _ => DEFAULT_PAGE_SIZE,
    };
    if len < page_size.saturating_mul(2) {
        return Err("file size too small".into());
    }
    if let Err(reason) = m0_check {
        let m1_ok = meta_at(page_size)?.is_some_and(|m| m.validate().is_ok());
        if !m1_ok {
            return Err(bbolt_meta_error(reason).into());
        }
    }

    let db = Db::open(path).map_err(|e| integrity_failed(vec![e.to_string()], 1))?;
    let (errors, count) = check(&db, &file, len);
    if count > 0 {
        return Err(integrity_failed(errors, count));
    }
    compute(&db)
}

/// etcdctl's message for a failed `Tx.Check`.
fn integrity_failed(mut errors: Vec<String>, count: u64) -> String {
    if count > errors.len() as u64 {
        errors.push(format!("... and {} more", count - errors.len() as u64));
    }
    format!(
        "snapshot file integrity check failed. {count} errors found.\n{}",
        errors.join("\n")
    )
}

/// bbolt's error for an invalid meta page.
fn bbolt_meta_error(reason: &str) -> &'static str {
    match reason {
        "bad magic" => "invalid database",
        "unsupported version" => "version mismatch",
        _ => "checksum error",
    }
}

/// An I/O error on `path` as Go's `os` package prints it (`open X: no
/// such file or directory`): for etcdctl's texts.
pub fn go_path_error(op: &str, path: &Path, e: &io::Error) -> String {
    format!("{op} {}: {}", path.display(), crate::error::go_os_error(e))
}

/// The hash, revision and count, with the reader (which checks key order
/// and every page it reads).
fn compute(db: &Db) -> Result<SnapshotStatus, String> {
    let corrupt = |e: crate::bbolt::Error| integrity_failed(vec![e.to_string()], 1);
    let mut crc = 0u32;
    let mut revision = 0i64;
    let mut total_key = 0u64;
    let root = db.root();
    for b in root.iter() {
        let b = b.map_err(corrupt)?;
        if !b.is_bucket() {
            return Err(format!(
                "cannot get hash of bucket {}",
                String::from_utf8_lossy(&b.key)
            ));
        }
        crc = crc32c::crc32c_append(crc, &b.key);
        let is_key = b.key == b"key";
        let bucket = root.open(&b).map_err(corrupt)?;
        for e in bucket.iter() {
            let e = e.map_err(corrupt)?;
            crc = crc32c::crc32c_append(crc, &e.key);
            // A nested bucket's value is nil to bbolt's ForEach.
            if !e.is_bucket() {
                crc = crc32c::crc32c_append(crc, &e.value);
            }
            if is_key {
                let main: [u8; 8] = e
                    .key
                    .get(..8)
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| format!("key bucket: revision key of {} bytes", e.key.len()))?;
                revision = i64::from_be_bytes(main);
            }
            total_key += 1;
        }
    }
    Ok(SnapshotStatus {
        hash: crc,
        revision,
        total_key,
        total_size: db.size(),
    })
}

/// bbolt's `Tx.Check` on the page level: every page reached from the root
/// once, within the high-water mark, a branch or leaf, not free; and, when
/// the file has a freelist, every page below the high-water mark reachable
/// or free (without one, bbolt counts every unreachable page as free).
/// Returns the first errors and how many there are.
fn check(db: &Db, file: &File, file_len: u64) -> (Vec<String>, u64) {
    let meta = *db.meta();
    let mut c = Checker {
        file,
        file_len,
        page_size: db.page_size() as u64,
        hwm: meta.pgid,
        reachable: Pages::new(file_len / db.page_size() as u64),
        freed: HashSet::new(),
        errors: Vec::new(),
        count: 0,
    };
    if meta.freelist != PGID_NO_FREELIST {
        c.load_freelist(meta.freelist);
    }
    c.bucket_tree(meta.root.root, 0);
    if meta.freelist != PGID_NO_FREELIST {
        // Unreachable pages: listed up to the limit, all counted (the
        // high-water mark of a damaged file may be huge).
        let mut listed = 0;
        let mut i = 0;
        while i < c.hwm && listed < MAX_LISTED {
            if !c.reachable.contains(i) && !c.freed.contains(&i) {
                c.errors.push(format!("page {i}: unreachable unfreed"));
                listed += 1;
            }
            i += 1;
        }
        let freed_only = c
            .freed
            .iter()
            .filter(|&&p| p < c.hwm && !c.reachable.contains(p))
            .count() as u64;
        let known = c.reachable.count_below(c.hwm) + freed_only;
        let unreachable = c.hwm - known;
        c.count += unreachable;
    }
    let Checker {
        mut errors, count, ..
    } = c;
    errors.truncate(MAX_LISTED);
    (errors, count)
}

/// A set of the file's pages (ids below its length in pages), as bits;
/// pages 0 and 1 (the metas) are in it from the start.
struct Pages {
    bits: Vec<u64>,
}

impl Pages {
    fn new(pages: u64) -> Pages {
        let mut p = Pages {
            bits: vec![0; pages.div_ceil(64) as usize],
        };
        p.insert(0);
        p.insert(1);
        p
    }

    fn contains(&self, id: u64) -> bool {
        self.bits
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Adds `id` (which must be a page of the file); false if it was in.
    fn insert(&mut self, id: u64) -> bool {
        match self.bits.get_mut((id / 64) as usize) {
            Some(w) => {
                let had = *w & (1 << (id % 64)) != 0;
                *w |= 1 << (id % 64);
                !had
            }
            None => false,
        }
    }

    fn count_below(&self, limit: u64) -> u64 {
        (0..limit.min(self.bits.len() as u64 * 64))
            .step_by(64)
            .map(|start| {
                let w = self.bits[(start / 64) as usize];
                let n = limit - start;
                let w = if n < 64 { w & ((1u64 << n) - 1) } else { w };
                u64::from(w.count_ones())
            })
            .sum()
    }
}

struct Checker<'a> {
    file: &'a File,
    file_len: u64,
    page_size: u64,
    hwm: u64,
    reachable: Pages,
    freed: HashSet<u64>,
    errors: Vec<String>,
    count: u64,
}

/// A page read from the file: its header fields and bytes (with overflow).
struct RawPage {
    flags: u16,
    count: usize,
    data: Vec<u8>,
}

impl Checker<'_> {
    fn error(&mut self, msg: String) {
        self.count += 1;
        if self.errors.len() < MAX_LISTED {
            self.errors.push(msg);
        }
    }

    /// Reads page `pgid` and its overflow pages, if they are inside the
    /// file and the high-water mark.
    fn read(&mut self, pgid: u64) -> Option<(RawPage, u32)> {
        let (ps, file_len) = (self.page_size, self.file_len);
        let in_file = |first: u64, pages: u64| {
            first
                .checked_add(pages)
                .and_then(|end| end.checked_mul(ps))
                .is_some_and(|end| end <= file_len)
        };
        if pgid >= self.hwm || !in_file(pgid, 1) {
            self.error(format!("page {pgid}: out of bounds: {}", self.hwm));
            return None;
        }
        let mut data = vec![0u8; ps as usize];
        if let Err(e) = self.file.read_exact_at(&mut data, pgid * ps) {
            self.error(format!("page {pgid}: {}", crate::error::go_os_error(&e)));
            return None;
        }
        let id = u64::from_le_bytes(data[0..8].try_into().unwrap_or([0; 8]));
        let flags = u16::from_le_bytes([data[8], data[9]]);
        let count = u16::from_le_bytes([data[10], data[11]]) as usize;
        let overflow = u32::from_le_bytes(data[12..16].try_into().unwrap_or([0; 4]));
        if id != pgid {
            self.error(format!("page {pgid}: page header says id {id}"));
            return None;
        }
        let pages = u64::from(overflow) + 1;
        if pgid + pages > self.hwm || !in_file(pgid, pages) {
            self.error(format!(
                "page {pgid}: out of bounds: {} ({overflow} overflow pages)",
                self.hwm
            ));
            return None;
        }
        if overflow > 0 {
            data.resize((pages * ps) as usize, 0);
            if let Err(e) = self
                .file
                .read_exact_at(&mut data[ps as usize..], (pgid + 1) * ps)
            {
                self.error(format!("page {pgid}: {}", crate::error::go_os_error(&e)));
                return None;
            }
        }
        Some((RawPage { flags, count, data }, overflow))
    }

    fn load_freelist(&mut self, pgid: u64) {
        let Some((page, overflow)) = self.read(pgid) else {
            return;
        };
        for i in 0..=u64::from(overflow) {
            self.reachable.insert(pgid + i);
        }
        if page.flags & FLAG_FREELIST == 0 {
            self.error(format!(
                "page {pgid}: invalid freelist page type: {}",
                page_type(page.flags)
            ));
            return;
        }
        let body = &page.data[PAGE_HEADER_SIZE..];
        let (n, ids) = if page.count == 0xFFFF {
            let n = body.get(..8).map_or(0, |b| {
                u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize
            });
            (n, body.get(8..).unwrap_or(&[]))
        } else {
            (page.count, body)
        };
        if n.checked_mul(8).is_none_or(|bytes| bytes > ids.len()) {
            self.error(format!(
                "page {pgid}: freelist of {n} ids overflows its page"
            ));
            return;
        }
        for chunk in ids[..n * 8].chunks_exact(8) {
            let id = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            if !self.freed.insert(id) {
                self.error(format!("page {id}: already freed"));
            }
        }
    }

    /// A bucket whose tree starts at `root` (0 for an inline bucket, whose
    /// page is checked by `leaf_entries`).
    fn bucket_tree(&mut self, root: u64, depth: usize) {
        if depth > MAX_DEPTH {
            self.error(format!("page {root}: buckets nested too deep"));
            return;
        }
        let mut nested = Vec::new();
        self.tree(root, 0, &mut nested);
        for value in nested {
            self.bucket_value(&value, depth + 1);
        }
    }

    /// A nested bucket from its value in the parent's leaf.
    fn bucket_value(&mut self, value: &[u8], depth: usize) {
        let Some(header) = value.get(..BUCKET_HEADER_SIZE) else {
            self.error(format!("bucket value of {} bytes", value.len()));
            return;
        };
        let root = u64::from_le_bytes(header[..8].try_into().unwrap_or([0; 8]));
        if root != 0 {
            self.bucket_tree(root, depth);
            return;
        }
        // Inline: its leaf page follows the header; no pages of its own.
        let page = &value[BUCKET_HEADER_SIZE..];
        if page.len() < PAGE_HEADER_SIZE {
            self.error("inline bucket: short page".into());
            return;
        }
        let flags = u16::from_le_bytes([page[8], page[9]]);
        let count = u16::from_le_bytes([page[10], page[11]]) as usize;
        if flags & FLAG_LEAF == 0 {
            self.error(format!("inline bucket: invalid type: {}", page_type(flags)));
            return;
        }
        let mut nested = Vec::new();
        self.leaf_entries(0, page, count, &mut nested);
        for v in nested {
            self.bucket_value(&v, depth + 1);
        }
    }

    /// Walks the pages of one bucket's tree, collecting the values of
    /// nested buckets.
    fn tree(&mut self, pgid: u64, level: usize, nested: &mut Vec<Vec<u8>>) {
        if level > MAX_DEPTH {
            self.error(format!("page {pgid}: tree deeper than {MAX_DEPTH} levels"));
            return;
        }
        if self.reachable.contains(pgid) {
            self.error(format!("page {pgid}: multiple references"));
            return;
        }
        let Some((page, overflow)) = self.read(pgid) else {
            return;
        };
        for i in 0..=u64::from(overflow) {
            if !self.reachable.insert(pgid + i) && i > 0 {
                self.error(format!("page {}: multiple references", pgid + i));
            }
        }
        if self.freed.contains(&pgid) {
            self.error(format!("page {pgid}: reachable freed"));
        }
        if page.flags & FLAG_BRANCH != 0 {
            let mut children = Vec::with_capacity(page.count);
            for i in 0..page.count {
                let off = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
                let Some(elem) = page.data.get(off..off + ELEMENT_SIZE) else {
                    self.error(format!("page {pgid}: element {i} beyond the page"));
                    return;
                };
                children.push(u64::from_le_bytes(elem[8..16].try_into().unwrap_or([0; 8])));
            }
            for child in children {
                self.tree(child, level + 1, nested);
            }
        } else if page.flags & FLAG_LEAF != 0 {
            self.leaf_entries(pgid, &page.data, page.count, nested);
        } else {
            self.error(format!(
                "page {pgid}: invalid type: {}",
                page_type(page.flags)
            ));
        }
    }

    /// The nested-bucket values of a leaf page's elements.
    fn leaf_entries(&mut self, pgid: u64, data: &[u8], count: usize, nested: &mut Vec<Vec<u8>>) {
        for i in 0..count {
            let off = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
            let Some(elem) = data.get(off..off + ELEMENT_SIZE) else {
                self.error(format!("page {pgid}: element {i} beyond the page"));
                return;
            };
            let word =
                |at: usize| u32::from_le_bytes(elem[at..at + 4].try_into().unwrap_or([0; 4]));
            let (flags, pos, ksize, vsize) = (word(0), word(4), word(8), word(12));
            if flags & LEAF_FLAG_BUCKET == 0 {
                continue;
            }
            let start = off as u64 + u64::from(pos) + u64::from(ksize);
            let end = start + u64::from(vsize);
            match data.get(start as usize..end as usize) {
                Some(v) if end <= data.len() as u64 => nested.push(v.to_vec()),
                _ => {
                    self.error(format!("page {pgid}: element {i} beyond the page"));
                    return;
                }
            }
        }
    }
}

/// bbolt's name of a page type.
fn page_type(flags: u16) -> String {
    if flags & FLAG_BRANCH != 0 {
        "branch".into()
    } else if flags & FLAG_LEAF != 0 {
        "leaf".into()
    } else if flags & FLAG_META != 0 {
        "meta".into()
    } else if flags & FLAG_FREELIST != 0 {
        "freelist".into()
    } else {
        format!("unknown<{flags:02x}>")
    }
}

/// Checks an output format the way etcdctl does before it reads the file:
/// `unsupported output format` (exit status [`EXIT_BAD_FEATURE`]) unless it
/// is one of `simple`, `json`, `table`, `fields`, `protobuf` (which fails
/// only when printing, after the file was read).
pub fn check_format(format: &str) -> Result<(), String> {
    match format {
        "simple" | "json" | "table" | "fields" | "protobuf" => Ok(()),
        _ => Err("unsupported output format".into()),
    }
}

/// What etcdctl 3.4 prints for `snapshot status -w FORMAT` (stdout, with
/// its trailing newline). Errors (exit status [`EXIT_BAD_FEATURE`]):
/// `unsupported output format`, `protobuf not supported as output format`.
pub fn render(s: &SnapshotStatus, format: &str) -> Result<String, String> {
    check_format(format)?;
    let row = [
        format!("{:x}", s.hash),
        s.revision.to_string(),
        s.total_key.to_string(),
        humanize_bytes(s.total_size),
    ];
    match format {
        "simple" => Ok(format!("{}\n", row.join(", "))),
        "json" => Ok(format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            s.hash, s.revision, s.total_key, s.total_size
        )),
        "fields" => Ok(format!(
            "\"Hash\" : {}\n\"Revision\" : {}\n\"Keys\" : {}\n\"Size\" : {}\n",
            s.hash, s.revision, s.total_key, s.total_size
        )),
        "table" => Ok(table(
            &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
            &row,
        )),
        _ => Err(format!("{format} not supported as output format")),
    }
}

/// tablewriter's rendering as etcdctl configures it: centred upper-case
/// headers, right-aligned cells, one space of padding.
fn table(header: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = header
        .iter()
        .zip(row)
        .map(|(h, c)| h.chars().count().max(c.chars().count()))
        .collect();
    let border: String = widths.iter().fold("+".to_string(), |mut s, w| {
        s.push_str(&"-".repeat(w + 2));
        s.push('+');
        s
    });
    let mut out = String::new();
    out.push_str(&border);
    out.push('\n');
    out.push('|');
    for (h, w) in header.iter().zip(&widths) {
        let gap = w - h.chars().count();
        let left = gap / 2;
        out.push_str(&format!(
            " {}{h}{} |",
            " ".repeat(left),
            " ".repeat(gap - left)
        ));
    }
    out.push('\n');
    out.push_str(&border);
    out.push('\n');
    out.push('|');
    for (c, w) in row.iter().zip(&widths) {
        out.push_str(&format!(" {c:>w$} |"));
    }
    out.push('\n');
    out.push_str(&border);
    out.push('\n');
    out
}

/// go-humanize's `Bytes`: SI units, one decimal below 10 ("4.1 kB",
/// "25 kB", "1.5 MB").
pub fn humanize_bytes(n: u64) -> String {
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let base = 1000f64;
    let e = ((n as f64).ln() / base.ln()).floor();
    let suffix = SIZES[(e as usize).min(SIZES.len() - 1)];
    let val = ((n as f64) / base.powf(e) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {suffix}")
    } else {
        format!("{val:.0} {suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bbolt::{FreelistMode, Writer, WriterOptions};

    fn st() -> SnapshotStatus {
        SnapshotStatus {
            hash: 0x7e5f438a,
            revision: 301,
            total_key: 304,
            total_size: 118784,
        }
    }

    #[test]
    fn humanized_sizes_are_go_humanize_bytes() {
        for (n, want) in [
            (0, "0 B"),
            (9, "9 B"),
            (10, "10 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (1049, "1.0 kB"),
            (1050, "1.1 kB"),
            (4096, "4.1 kB"),
            (9949, "9.9 kB"),
            (9950, "10 kB"),
            (20480, "20 kB"),
            (24576, "25 kB"),
            (118784, "119 kB"),
            (999_424, "999 kB"),
            (999_999, "1000 kB"),
            (1_003_520, "1.0 MB"),
            (1_500_000, "1.5 MB"),
            (25_165_824, "25 MB"),
            (2_147_483_648, "2.1 GB"),
            (8_589_934_592, "8.6 GB"),
            (1_000_000_000_000, "1.0 TB"),
            (u64::MAX, "18 EB"),
        ] {
            assert_eq!(humanize_bytes(n), want, "{n}");
        }
    }

    #[test]
    fn formats_are_etcdctls() {
        // Captured from etcdctl 3.4.23 on a real etcd snapshot.
        assert_eq!(
            render(&st(), "simple").unwrap(),
            "7e5f438a, 301, 304, 119 kB\n"
        );
        assert_eq!(
            render(&st(), "json").unwrap(),
            "{\"hash\":2120172426,\"revision\":301,\"totalKey\":304,\"totalSize\":118784}\n"
        );
        assert_eq!(
            render(&st(), "fields").unwrap(),
            "\"Hash\" : 2120172426\n\"Revision\" : 301\n\"Keys\" : 304\n\"Size\" : 118784\n"
        );
        assert_eq!(
            render(&st(), "table").unwrap(),
            "+----------+----------+------------+------------+\n\
             |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +----------+----------+------------+------------+\n\
             | 7e5f438a |      301 |        304 |     119 kB |\n\
             +----------+----------+------------+------------+\n"
        );
    }

    #[test]
    fn narrow_and_wide_table_cells() {
        let s = SnapshotStatus {
            hash: 0x5e1,
            revision: 0,
            total_key: 12_345_678_901,
            total_size: 20480,
        };
        assert_eq!(
            render(&s, "table").unwrap(),
            "+------+----------+-------------+------------+\n\
             | HASH | REVISION | TOTAL KEYS  | TOTAL SIZE |\n\
             +------+----------+-------------+------------+\n\
             |  5e1 |        0 | 12345678901 |      20 kB |\n\
             +------+----------+-------------+------------+\n"
        );
        let s = SnapshotStatus { hash: 0x5e1ab, ..s };
        assert!(render(&s, "table")
            .unwrap()
            .contains("| HASH  | REVISION |"));
    }

    #[test]
    fn unknown_formats_fail_like_etcdctl() {
        assert_eq!(
            render(&st(), "JSON").unwrap_err(),
            "unsupported output format"
        );
        assert_eq!(render(&st(), "").unwrap_err(), "unsupported output format");
        assert_eq!(
            render(&st(), "protobuf").unwrap_err(),
            "protobuf not supported as output format"
        );
        assert!(check_format("protobuf").is_ok());
        assert!(check_format("yaml").is_err());
    }

    fn write_db(path: &Path, opts: WriterOptions) {
        let mut w = Writer::create(path, opts).unwrap();
        w.write_bucket(b"alarm", Vec::<(Vec<u8>, Vec<u8>)>::new())
            .unwrap();
        let mut key = w.bucket(b"key").unwrap();
        for rev in 2..500u64 {
            let mut k = rev.to_be_bytes().to_vec();
            k.push(b'_');
            k.extend_from_slice(&0u64.to_be_bytes());
            key.put(&k, format!("value {rev} {}", "v".repeat(40)).as_bytes())
                .unwrap();
        }
        key.finish().unwrap();
        w.write_bucket(b"meta", [(b"consistent_index", 7u64.to_be_bytes())])
            .unwrap();
        w.finish_sync().unwrap();
    }

    fn expected(path: &Path) -> SnapshotStatus {
        let mut crc = crc32c::crc32c(b"alarm");
        crc = crc32c::crc32c_append(crc, b"key");
        for rev in 2..500u64 {
            let mut k = rev.to_be_bytes().to_vec();
            k.push(b'_');
            k.extend_from_slice(&0u64.to_be_bytes());
            crc = crc32c::crc32c_append(crc, &k);
            crc = crc32c::crc32c_append(crc, format!("value {rev} {}", "v".repeat(40)).as_bytes());
        }
        crc = crc32c::crc32c_append(crc, b"meta");
        crc = crc32c::crc32c_append(crc, b"consistent_index");
        crc = crc32c::crc32c_append(crc, &7u64.to_be_bytes());
        SnapshotStatus {
            hash: crc,
            revision: 499,
            total_key: 498 + 1,
            total_size: Db::open(path).unwrap().size(),
        }
    }

    #[test]
    fn status_of_written_files_with_and_without_trailer() {
        let dir = tempfile::tempdir().unwrap();
        for (i, freelist) in [FreelistMode::None, FreelistMode::EmptyPage]
            .into_iter()
            .enumerate()
        {
            let path = dir.path().join(format!("db{i}"));
            write_db(
                &path,
                WriterOptions {
                    freelist,
                    ..WriterOptions::default()
                },
            );
            let want = expected(&path);
            assert_eq!(status(&path).unwrap(), want);
            // A trailer (32 bytes after the pages) changes nothing.
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend_from_slice(&[0xAB; 32]);
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(status(&path).unwrap(), want);
        }
    }

    #[test]
    fn errors_are_etcdctls_and_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let missing = p("missing.db");
        assert_eq!(
            status(&missing).unwrap_err(),
            format!("stat {}: no such file or directory", missing.display())
        );
        assert_eq!(
            status(dir.path()).unwrap_err(),
            format!("open {}: is a directory", dir.path().display())
        );
        std::fs::write(p("empty"), b"").unwrap();
        assert_eq!(status(&p("empty")).unwrap_err(), "file size too small");
        std::fs::write(p("small"), b"hello\n").unwrap();
        assert_eq!(status(&p("small")).unwrap_err(), "invalid database");
        std::fs::write(p("zeros"), vec![0u8; 16384]).unwrap();
        assert_eq!(status(&p("zeros")).unwrap_err(), "invalid database");

        let good = p("good.db");
        write_db(&good, WriterOptions::default());
        let bytes = std::fs::read(&good).unwrap();
        std::fs::write(p("h4096"), &bytes[..4096]).unwrap();
        assert_eq!(status(&p("h4096")).unwrap_err(), "file size too small");
        std::fs::write(p("h6000"), &bytes[..6000]).unwrap();
        assert_eq!(status(&p("h6000")).unwrap_err(), "file size too small");
        // Both metas' checksums broken.
        let mut b = bytes.clone();
        b[16 + 40] ^= 1;
        b[4096 + 16 + 40] ^= 1;
        std::fs::write(p("cksum"), &b).unwrap();
        assert_eq!(status(&p("cksum")).unwrap_err(), "checksum error");
        let mut b = bytes.clone();
        b[16 + 4] = 9;
        b[4096 + 16 + 4] = 9;
        std::fs::write(p("version"), &b).unwrap();
        assert_eq!(status(&p("version")).unwrap_err(), "version mismatch");
        // One meta broken: the other is used.
        let mut b = bytes.clone();
        b[16 + 40] ^= 1;
        std::fs::write(p("meta0"), &b).unwrap();
        assert_eq!(status(&p("meta0")).unwrap(), expected(&good));

        // Truncated after the metas, and every page damaged in turn: an
        // integrity error, never a panic.
        for cut in [8192, 12288, bytes.len() / 2, bytes.len() - 4096] {
            std::fs::write(p("cut"), &bytes[..cut]).unwrap();
            let e = status(&p("cut")).unwrap_err();
            assert!(
                e.starts_with("snapshot file integrity check failed. "),
                "{cut}: {e}"
            );
        }
        let pages = bytes.len() / 4096;
        for page in 2..pages {
            for (off, val) in [(0, 0x55u8), (8, 0x77), (10, 0xff), (16, 0xee), (24, 0x80)] {
                let mut b = bytes.clone();
                b[page * 4096 + off] ^= val;
                std::fs::write(p("flip"), &b).unwrap();
                match status(&p("flip")) {
                    Ok(_) => {}
                    Err(e) => assert!(
                        e.starts_with("snapshot file integrity check failed. "),
                        "page {page} +{off}: {e}"
                    ),
                }
            }
        }
    }

    #[test]
    fn page_sets() {
        let mut p = Pages::new(130);
        for id in [5, 63, 64, 127, 128, 129] {
            assert!(p.insert(id));
        }
        assert!(!p.insert(5), "already in");
        assert!(!p.insert(192), "beyond the bitmap");
        assert!(p.contains(129) && !p.contains(130) && !p.contains(u64::MAX));
        for (limit, want) in [
            (0, 0),
            (1, 1),
            (2, 2),
            (6, 3),
            (64, 4),
            (65, 5),
            (129, 7),
            (1 << 40, 8),
        ] {
            assert_eq!(p.count_below(limit), want, "below {limit}");
        }
    }

    #[test]
    fn unreachable_pages_are_found_when_there_is_a_freelist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        write_db(
            &path,
            WriterOptions {
                freelist: FreelistMode::EmptyPage,
                ..WriterOptions::default()
            },
        );
        let db = Db::open(&path).unwrap();
        let mut meta = *db.meta();
        drop(db);
        // Two more pages under the high-water mark, neither used nor free.
        meta.pgid += 2;
        meta.checksum = meta.compute_checksum();
        let mut bytes = std::fs::read(&path).unwrap();
        for page in [0usize, 1] {
            bytes[page * 4096 + 16..page * 4096 + 80].copy_from_slice(&meta.encode());
        }
        bytes.extend_from_slice(&[0u8; 8192]);
        std::fs::write(&path, &bytes).unwrap();
        let e = status(&path).unwrap_err();
        let last = meta.pgid;
        assert_eq!(
            e,
            format!(
                "snapshot file integrity check failed. 2 errors found.\n\
                 page {}: unreachable unfreed\npage {}: unreachable unfreed",
                last - 2,
                last - 1
            )
        );
    }
}
