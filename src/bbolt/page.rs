//! The on-disk layout of a bbolt file: page headers, page elements, the meta
//! page and the bucket header. Everything is little-endian (bbolt writes its
//! structs in native byte order, and etcd only ships on little-endian
//! machines in practice).
//!
//! Every parse here is bounds-checked and returns [`Error::Corrupt`] instead
//! of panicking: the input may be any file.

use super::Error;

/// bbolt's magic number, the first field of the meta struct.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The only file format version bbolt has ever written.
pub const VERSION: u32 = 2;

/// Page header: `id u64, flags u16, count u16, overflow u32`.
pub const PAGE_HEADER_SIZE: usize = 16;
/// Leaf element: `flags u32, pos u32, ksize u32, vsize u32`.
pub const LEAF_ELEMENT_SIZE: usize = 16;
/// Branch element: `pos u32, ksize u32, pgid u64`.
pub const BRANCH_ELEMENT_SIZE: usize = 16;
/// Bucket header (bbolt's `bucket` / `InBucket`): `root pgid u64, sequence u64`.
pub const BUCKET_HEADER_SIZE: usize = 16;
/// The meta struct that follows the page header of pages 0 and 1.
pub const META_SIZE: usize = 64;
/// The meta checksum covers the meta struct up to the checksum field.
pub const META_CHECKSUMMED: usize = 56;

pub const FLAG_BRANCH: u16 = 0x01;
pub const FLAG_LEAF: u16 = 0x02;
pub const FLAG_META: u16 = 0x04;
pub const FLAG_FREELIST: u16 = 0x10;

/// Leaf element flag: the value is a bucket header (a nested bucket).
pub const LEAF_FLAG_BUCKET: u32 = 0x01;

/// `meta.freelist` of a file written without a freelist page (etcd opens its
/// backend with `NoFreelistSync`): bbolt rebuilds the free list by walking
/// the tree on open.
pub const PGID_NO_FREELIST: u64 = u64::MAX;

/// bbolt's limits on keys and values (`MaxKeySize`, `MaxValueSize`).
pub const MAX_KEY_SIZE: usize = 32768;
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;

/// FNV-1a, 64 bits: the meta page checksum.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

/// A bucket header: the root page of the bucket's tree (0 for an inline
/// bucket, whose single leaf page follows the header in the value) and the
/// bucket's sequence (`NextSequence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketHeader {
    pub root: u64,
    pub sequence: u64,
}

impl BucketHeader {
    pub fn parse(b: &[u8]) -> Option<BucketHeader> {
        Some(BucketHeader {
            root: u64_at(b, 0)?,
            sequence: u64_at(b, 8)?,
        })
    }

    pub fn encode(&self) -> [u8; BUCKET_HEADER_SIZE] {
        let mut out = [0u8; BUCKET_HEADER_SIZE];
        out[0..8].copy_from_slice(&self.root.to_le_bytes());
        out[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        out
    }
}

/// The meta struct of page 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub magic: u32,
    pub version: u32,
    pub page_size: u32,
    pub flags: u32,
    /// The root bucket (whose entries are the top-level buckets).
    pub root: BucketHeader,
    /// Page of the freelist, or [`PGID_NO_FREELIST`].
    pub freelist: u64,
    /// High-water mark: the number of pages in use (every page id is below it).
    pub pgid: u64,
    pub txid: u64,
    pub checksum: u64,
}

impl Meta {
    /// Parses the 64-byte meta struct (without the page header).
    pub fn parse(b: &[u8]) -> Option<Meta> {
        Some(Meta {
            magic: u32_at(b, 0)?,
            version: u32_at(b, 4)?,
            page_size: u32_at(b, 8)?,
            flags: u32_at(b, 12)?,
            root: BucketHeader::parse(b.get(16..32)?)?,
            freelist: u64_at(b, 32)?,
            pgid: u64_at(b, 40)?,
            txid: u64_at(b, 48)?,
            checksum: u64_at(b, 56)?,
        })
    }

    /// The meta struct's bytes; the checksum field as stored in `self`.
    pub fn encode(&self) -> [u8; META_SIZE] {
        let mut out = [0u8; META_SIZE];
        out[0..4].copy_from_slice(&self.magic.to_le_bytes());
        out[4..8].copy_from_slice(&self.version.to_le_bytes());
        out[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..32].copy_from_slice(&self.root.encode());
        out[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        out[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        out[48..56].copy_from_slice(&self.txid.to_le_bytes());
        out[56..64].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    /// The checksum this meta should carry.
    pub fn compute_checksum(&self) -> u64 {
        fnv1a64(&self.encode()[..META_CHECKSUMMED])
    }

    /// bbolt's own validation (magic, version, checksum), as a reason.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.magic != MAGIC {
            Err("bad magic")
        } else if self.version != VERSION {
            Err("unsupported version")
        } else if self.checksum != self.compute_checksum() {
            Err("checksum mismatch")
        } else {
            Ok(())
        }
    }
}

/// A page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    /// Number of further contiguous pages this page spans.
    pub overflow: u32,
}

impl PageHeader {
    pub fn parse(b: &[u8]) -> Option<PageHeader> {
        Some(PageHeader {
            id: u64_at(b, 0)?,
            flags: u16_at(b, 8)?,
            count: u16_at(b, 10)?,
            overflow: u32_at(b, 12)?,
        })
    }

    pub fn encode(&self) -> [u8; PAGE_HEADER_SIZE] {
        let mut out = [0u8; PAGE_HEADER_SIZE];
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..10].copy_from_slice(&self.flags.to_le_bytes());
        out[10..12].copy_from_slice(&self.count.to_le_bytes());
        out[12..16].copy_from_slice(&self.overflow.to_le_bytes());
        out
    }
}

/// One element of a leaf page, borrowed from the page's bytes.
#[derive(Debug, Clone, Copy)]
pub struct LeafElem<'a> {
    pub flags: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// A branch or leaf page (or an inline bucket's page) as bytes, with its
/// header checked against the buffer: every element header lies inside it.
/// Element key and value offsets are checked on access.
#[derive(Debug, Clone, Copy)]
pub struct PageView<'a> {
    pub buf: &'a [u8],
    pub header: PageHeader,
    /// The page id, for error messages (0 for an inline page).
    pub pgid: u64,
}

fn corrupt(pgid: u64, what: impl Into<String>) -> Error {
    Error::Corrupt {
        pgid,
        what: what.into(),
    }
}

impl<'a> PageView<'a> {
    /// Checks that `buf` starts with a branch or leaf page whose element
    /// headers fit in `buf`.
    pub fn new(buf: &'a [u8], pgid: u64) -> Result<PageView<'a>, Error> {
        let header =
            PageHeader::parse(buf).ok_or_else(|| corrupt(pgid, "page shorter than its header"))?;
        if header.flags != FLAG_BRANCH && header.flags != FLAG_LEAF {
            return Err(corrupt(
                pgid,
                format!(
                    "expected a branch or leaf page, found flags {:#x}",
                    header.flags
                ),
            ));
        }
        let need = PAGE_HEADER_SIZE + usize::from(header.count) * LEAF_ELEMENT_SIZE;
        if need > buf.len() {
            return Err(corrupt(
                pgid,
                format!(
                    "{} elements do not fit in {} bytes",
                    header.count,
                    buf.len()
                ),
            ));
        }
        Ok(PageView { buf, header, pgid })
    }

    pub fn is_leaf(&self) -> bool {
        self.header.flags == FLAG_LEAF
    }

    pub fn count(&self) -> usize {
        usize::from(self.header.count)
    }

    /// `len` bytes at `pos` relative to the element header at `elem_off`.
    fn slice_at(&self, elem_off: usize, pos: u32, len: usize, i: usize) -> Result<&'a [u8], Error> {
        let start = elem_off
            .checked_add(pos as usize)
            .ok_or_else(|| corrupt(self.pgid, format!("element {i}: offset overflow")))?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| corrupt(self.pgid, format!("element {i}: length overflow")))?;
        self.buf.get(start..end).ok_or_else(|| {
            corrupt(
                self.pgid,
                format!(
                    "element {i}: bytes {start}..{end} outside the page ({} bytes)",
                    self.buf.len()
                ),
            )
        })
    }

    pub fn leaf(&self, i: usize) -> Result<LeafElem<'a>, Error> {
        if !self.is_leaf() || i >= self.count() {
            return Err(corrupt(self.pgid, format!("no leaf element {i}")));
        }
        let off = PAGE_HEADER_SIZE + i * LEAF_ELEMENT_SIZE;
        let e = &self.buf[off..off + LEAF_ELEMENT_SIZE];
        let flags = u32_at(e, 0).unwrap_or(0);
        let pos = u32_at(e, 4).unwrap_or(0);
        let ksize = u32_at(e, 8).unwrap_or(0) as usize;
        let vsize = u32_at(e, 12).unwrap_or(0) as usize;
        let kv = self.slice_at(off, pos, ksize.saturating_add(vsize), i)?;
        let (key, value) = kv.split_at(ksize);
        Ok(LeafElem { flags, key, value })
    }

    pub fn branch(&self, i: usize) -> Result<(&'a [u8], u64), Error> {
        if self.is_leaf() || i >= self.count() {
            return Err(corrupt(self.pgid, format!("no branch element {i}")));
        }
        let off = PAGE_HEADER_SIZE + i * BRANCH_ELEMENT_SIZE;
        let e = &self.buf[off..off + BRANCH_ELEMENT_SIZE];
        let pos = u32_at(e, 0).unwrap_or(0);
        let ksize = u32_at(e, 4).unwrap_or(0) as usize;
        let pgid = u64_at(e, 8).unwrap_or(0);
        let key = self.slice_at(off, pos, ksize, i)?;
        Ok((key, pgid))
    }

    /// The key of element `i`, leaf or branch.
    pub fn key(&self, i: usize) -> Result<&'a [u8], Error> {
        if self.is_leaf() {
            Ok(self.leaf(i)?.key)
        } else {
            Ok(self.branch(i)?.0)
        }
    }
}

/// Serializes a branch or leaf page: header, all element headers, then
/// every key (and value) back to back, the layout bbolt's `node.write`
/// produces. `items` are `(flags, key, value)` for a leaf and
/// `(0, key, pgid as 8 LE bytes)` for a branch. The result is not padded.
pub fn encode_node<'a>(
    out: &mut Vec<u8>,
    pgid: u64,
    leaf: bool,
    overflow: u32,
    items: impl ExactSizeIterator<Item = (u32, &'a [u8], &'a [u8])> + Clone,
) {
    let count = items.len();
    let header = PageHeader {
        id: pgid,
        flags: if leaf { FLAG_LEAF } else { FLAG_BRANCH },
        count: count as u16,
        overflow,
    };
    out.extend_from_slice(&header.encode());
    let elems_start = out.len();
    // Data begins after all element headers.
    let mut data_off = PAGE_HEADER_SIZE + count * LEAF_ELEMENT_SIZE;
    for (i, (flags, key, value)) in items.clone().enumerate() {
        let elem_off = PAGE_HEADER_SIZE + i * LEAF_ELEMENT_SIZE;
        let pos = (data_off - elem_off) as u32;
        if leaf {
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&pos.to_le_bytes());
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            data_off += key.len() + value.len();
        } else {
            out.extend_from_slice(&pos.to_le_bytes());
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
            data_off += key.len();
        }
    }
    debug_assert_eq!(out.len() - elems_start, count * LEAF_ELEMENT_SIZE);
    for (_, key, value) in items {
        out.extend_from_slice(key);
        if leaf {
            out.extend_from_slice(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn meta_roundtrip_and_checksum() {
        let mut m = Meta {
            magic: MAGIC,
            version: VERSION,
            page_size: 4096,
            flags: 0,
            root: BucketHeader {
                root: 3,
                sequence: 0,
            },
            freelist: PGID_NO_FREELIST,
            pgid: 4,
            txid: 2,
            checksum: 0,
        };
        m.checksum = m.compute_checksum();
        let back = Meta::parse(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert!(back.validate().is_ok());
        let mut bad = m;
        bad.txid = 3;
        assert_eq!(bad.validate(), Err("checksum mismatch"));
    }

    #[test]
    fn leaf_page_roundtrip() {
        let items: Vec<(u32, &[u8], &[u8])> = vec![(0, b"a", b"1"), (1, b"bb", b"")];
        let mut buf = Vec::new();
        encode_node(&mut buf, 7, true, 0, items.iter().copied());
        let p = PageView::new(&buf, 7).unwrap();
        assert!(p.is_leaf());
        assert_eq!(p.count(), 2);
        let e = p.leaf(1).unwrap();
        assert_eq!((e.flags, e.key, e.value), (1, &b"bb"[..], &b""[..]));
        assert!(p.leaf(2).is_err());
        assert!(p.branch(0).is_err());
    }

    #[test]
    fn branch_page_roundtrip() {
        let a = 5u64.to_le_bytes();
        let b = 9u64.to_le_bytes();
        let items: Vec<(u32, &[u8], &[u8])> = vec![(0, b"k1", &a), (0, b"k2", &b)];
        let mut buf = Vec::new();
        encode_node(&mut buf, 3, false, 0, items.iter().copied());
        let p = PageView::new(&buf, 3).unwrap();
        assert_eq!(p.branch(1).unwrap(), (&b"k2"[..], 9));
    }

    #[test]
    fn element_outside_page_is_an_error() {
        let items: Vec<(u32, &[u8], &[u8])> = vec![(0, b"key", b"value")];
        let mut buf = Vec::new();
        encode_node(&mut buf, 2, true, 0, items.iter().copied());
        // ksize = huge
        buf[PAGE_HEADER_SIZE + 8..PAGE_HEADER_SIZE + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let p = PageView::new(&buf, 2).unwrap();
        assert!(matches!(p.leaf(0), Err(Error::Corrupt { .. })));
        // count larger than the buffer holds
        buf[10..12].copy_from_slice(&1000u16.to_le_bytes());
        assert!(PageView::new(&buf, 2).is_err());
    }
}
