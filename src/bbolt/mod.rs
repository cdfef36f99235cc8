//! A small reader and writer for bbolt database files — the format of
//! etcd's backend (`member/snap/db`) and of `etcdctl snapshot save` files.
//!
//! No published crate reads etcd's files reliably (etcd writes them without
//! a freelist page), so this is our own implementation of the parts of the
//! format etcd uses:
//!
//! - [`Db`] opens a file, picks the newer valid meta page and walks buckets
//!   with [`Bucket::iter`], a streaming cursor that holds only the pages on
//!   the path from the root to the current leaf. Nested and inline buckets
//!   and overflow pages are supported. A malformed file gives
//!   [`Error::Corrupt`], never a panic.
//! - [`Writer`] bulk-loads a new file from buckets whose entries arrive in
//!   key order: leaves are written as they fill, and only the right edge of
//!   each branch level is kept in memory, so memory does not grow with the
//!   number of keys. The file has no freelist page (like etcd's own files)
//!   unless [`FreelistMode::EmptyPage`] is asked for.
//!
//! A file from `etcdctl snapshot save` ends with a 32-byte sha256 of
//! everything before it; the reader ignores bytes past the last page, and
//! the writer does not append one (the caller streams it after the file).
//!
//! Format summary (all integers little-endian): pages of `page_size` bytes,
//! each starting with a 16-byte header (`id u64, flags u16, count u16,
//! overflow u32`); pages 0 and 1 hold the meta struct (magic `0xED0CDAED`,
//! version 2, page size, flags, root bucket header, freelist page id,
//! high-water page id, txid, FNV-1a-64 checksum of the preceding 56 bytes);
//! branch elements are `pos u32, ksize u32, pgid u64` and leaf elements
//! `flags u32, pos u32, ksize u32, vsize u32`, `pos` counted from the
//! element's own header; a bucket's value is its 16-byte header (`root u64,
//! sequence u64`), followed by its single leaf page when `root` is 0
//! (an inline bucket).

mod page;
mod reader;
mod writer;

pub use page::{BucketHeader, Meta, MAX_KEY_SIZE, MAX_VALUE_SIZE, PGID_NO_FREELIST};
pub use reader::{Bucket, Db, Entry, Iter};
pub use writer::{BucketWriter, FreelistMode, Writer, WriterOptions};

/// Errors of the bbolt reader and writer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bbolt: {0}")]
    Io(#[from] std::io::Error),
    /// Neither meta page is valid: not a bbolt file, or both metas damaged.
    #[error("bbolt: not a valid bbolt file: {0}")]
    InvalidFile(String),
    /// A page or element that cannot be what the tree says it is.
    #[error("bbolt: corrupt page {pgid}: {what}")]
    Corrupt { pgid: u64, what: String },
    /// The entry exists but is a plain value, not a bucket.
    #[error("bbolt: {0:?} is not a bucket")]
    NotABucket(String),
    /// Writer: keys of a bucket must arrive strictly increasing.
    #[error("bbolt writer: key {key:?} in bucket {bucket:?} is not above the previous key")]
    KeyOrder { bucket: String, key: String },
    /// Writer: a bucket name was written twice.
    #[error("bbolt writer: bucket {0:?} written twice")]
    DuplicateBucket(String),
    /// Writer: empty key or bucket name.
    #[error("bbolt writer: empty key in bucket {0:?}")]
    EmptyKey(String),
    #[error("bbolt writer: key of {0} bytes exceeds bbolt's limit of 32768")]
    KeyTooLarge(usize),
    #[error("bbolt writer: value of {0} bytes exceeds bbolt's limit")]
    ValueTooLarge(usize),
    #[error("bbolt writer: invalid option: {0}")]
    InvalidOption(String),
}

/// Convenience alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Lossy text of a key for error messages (shortened).
pub(crate) fn show(key: &[u8]) -> String {
    let s = String::from_utf8_lossy(&key[..key.len().min(64)]).into_owned();
    if key.len() > 64 {
        format!("{s}…")
    } else {
        s
    }
}

#[cfg(test)]
mod tests;
