//! Key encodings of the `index` family.
//!
//! An index record is `escape(user key) 00 01 !main !sub` → [`IndexEntry`].
//! The escape (`00` → `00 FF`) and the `00 01` terminator keep byte order
//! equal to user-key order even when one key is a prefix of another, so a
//! key range is one contiguous scan. The revision is stored inverted, so the
//! newest version of a key comes first and "latest at or below R" is a
//! single seek.

use super::revision::Revision;

const TERMINATOR: [u8; 2] = [0x00, 0x01];

/// The escaped user key with its terminator: every record of `key` starts
/// with this, and no record of another key does.
pub fn key_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 18);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&TERMINATOR);
    out
}

/// The first byte string after every record of the key whose prefix this is.
pub fn after_key(prefix: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    // The prefix ends with the terminator 00 01; 00 02 sorts after all its
    // revisions and before any longer key (those continue with 00 FF or a
    // non-zero byte in that position).
    *out.last_mut().expect("prefix has a terminator") = 0x02;
    out
}

/// The record key of `key` at `rev`.
pub fn index_key(key: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = key_prefix(key);
    push_rev(&mut out, rev);
    out
}

/// Seek target: the first record of `prefix`'s key at or below `rev`.
pub fn seek_at(prefix: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 16);
    out.extend_from_slice(prefix);
    push_rev(&mut out, rev);
    out
}

fn push_rev(out: &mut Vec<u8>, rev: Revision) {
    out.extend_from_slice(&(!(rev.main as u64)).to_be_bytes());
    out.extend_from_slice(&(!(rev.sub as u64)).to_be_bytes());
}

/// Splits a record key into (prefix length, user key, revision).
pub fn decode_index_key(k: &[u8]) -> Option<(usize, Vec<u8>, Revision)> {
    let mut key = Vec::with_capacity(k.len().saturating_sub(18));
    let mut i = 0;
    loop {
        let b = *k.get(i)?;
        if b == 0 {
            match *k.get(i + 1)? {
                0xFF => key.push(0),
                0x01 => break,
                _ => return None,
            }
            i += 2;
        } else {
            key.push(b);
            i += 1;
        }
    }
    let prefix_len = i + 2;
    let rest = k.get(prefix_len..)?;
    if rest.len() != 16 {
        return None;
    }
    let main = !u64::from_be_bytes(rest[..8].try_into().ok()?) as i64;
    let sub = !u64::from_be_bytes(rest[8..].try_into().ok()?) as i64;
    Some((prefix_len, key, Revision { main, sub }))
}

/// What the index knows of one version of a key: enough to answer
/// `keys_only` and `count_only` reads and txn compares on everything but
/// the value, without touching the `kv` family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub tombstone: bool,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl IndexEntry {
    pub fn encode(&self) -> [u8; 25] {
        let mut b = [0u8; 25];
        b[0] = self.tombstone as u8;
        b[1..9].copy_from_slice(&self.create_revision.to_be_bytes());
        b[9..17].copy_from_slice(&self.version.to_be_bytes());
        b[17..25].copy_from_slice(&self.lease.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<IndexEntry> {
        if b.len() != 25 {
            return None;
        }
        Some(IndexEntry {
            tombstone: b[0] != 0,
            create_revision: i64::from_be_bytes(b[1..9].try_into().ok()?),
            version: i64::from_be_bytes(b[9..17].try_into().ok()?),
            lease: i64::from_be_bytes(b[17..25].try_into().ok()?),
        })
    }
}

/// The `kv` family's key for a revision: etcd's 16 bytes, plus `t` for a
/// tombstone as in etcd's `key` bucket.
pub fn kv_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = rev.to_bytes().to_vec();
    if tombstone {
        k.push(b't');
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let k = index_key(b"a\0b\xff", Revision::new(7, 3));
        let (plen, key, rev) = decode_index_key(&k).unwrap();
        assert_eq!(key, b"a\0b\xff");
        assert_eq!(rev, Revision::new(7, 3));
        assert_eq!(&k[..plen], key_prefix(b"a\0b\xff").as_slice());
    }

    #[test]
    fn newer_revisions_sort_first() {
        assert!(index_key(b"k", Revision::new(9, 0)) < index_key(b"k", Revision::new(8, 5)));
        assert!(index_key(b"k", Revision::new(8, 5)) < index_key(b"k", Revision::new(8, 4)));
    }

    proptest! {
        // Record order is (user key ascending, revision descending), whatever
        // bytes the keys hold; and after_key separates one key from the next.
        #[test]
        fn order_matches_user_keys(a in proptest::collection::vec(0u8..4, 0..6),
                                   b in proptest::collection::vec(0u8..4, 0..6),
                                   ra in 1i64..1000, rb in 1i64..1000) {
            let ka = index_key(&a, Revision::new(ra, 0));
            let kb = index_key(&b, Revision::new(rb, 0));
            if a != b {
                prop_assert_eq!(a < b, ka < kb);
                let (lo, hi, lo_key) = if a < b { (&a, &kb, &ka) } else { (&b, &ka, &kb) };
                let bound = after_key(&key_prefix(lo));
                prop_assert!(lo_key.as_slice() < bound.as_slice());
                prop_assert!(bound.as_slice() <= hi.as_slice());
            } else {
                prop_assert_eq!(ra > rb, ka < kb);
            }
        }
    }
}
