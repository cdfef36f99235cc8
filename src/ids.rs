//! Member and cluster ids, derived exactly as etcd derives them.
//!
//! etcd never stores a random id: a member bootstrapped from `--initial-cluster`
//! gets the hash of its peer URLs and the cluster token, and the cluster gets
//! the hash of its members' ids. Deriving them the same way means a cairn
//! member started with etcd's flags reports the ids etcd would have reported,
//! which is what operators' scripts, etcdctl output and kubeadm's bookkeeping
//! expect, and every member of a new cluster computes the same ids without
//! talking to the others.
//!
//! The peer URL strings must be in etcd's textual form (Go's `url.URL.String()`
//! of the parsed flag: lower-case scheme, host exactly as written, no trailing
//! slash), which is what [`crate::config::EtcdUrl::as_str`] gives. A
//! `url::Url` serialises as `http://host:port/` and lower-cases host names, so
//! it must not be hashed directly.

use sha1::{Digest, Sha1};

/// The id of a member bootstrapped from `--initial-cluster`: the first 8 bytes
/// (big-endian) of SHA-1 over its peer URLs, sorted and concatenated, followed
/// by the cluster token (`--initial-cluster-token`).
///
/// The order of `peer_urls` does not matter. etcd refuses an id of 0 (raft's
/// "no node") and duplicate ids; callers should too.
pub fn member_id<S: AsRef<str>>(peer_urls: &[S], token: &str) -> u64 {
    hash_member(peer_urls, token.as_bytes())
}

/// The id of a member added at run time (`MemberAdd`, voter or learner): etcd
/// hashes the sorted peer URLs with an empty cluster token followed by the
/// current Unix time in seconds, in decimal, so re-adding the same URLs later
/// yields a fresh id.
pub fn added_member_id<S: AsRef<str>>(peer_urls: &[S], unix_secs: i64) -> u64 {
    hash_member(peer_urls, unix_secs.to_string().as_bytes())
}

/// The id of a cluster bootstrapped from its initial members: the first 8
/// bytes (big-endian) of SHA-1 over the member ids, sorted ascending, each as 8
/// big-endian bytes. The order of `member_ids` does not matter.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut sorted = member_ids.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for id in sorted {
        hasher.update(id.to_be_bytes());
    }
    first_eight_bytes(&hasher.finalize())
}

/// An id as etcd prints it in logs and as `etcdctl member remove` takes it:
/// lower-case hexadecimal without leading zeros.
pub fn format_id(id: u64) -> String {
    format!("{id:x}")
}

/// Parses an id in the form [`format_id`] prints.
pub fn parse_id(text: &str) -> Result<u64, std::num::ParseIntError> {
    u64::from_str_radix(text, 16)
}

fn hash_member<S: AsRef<str>>(peer_urls: &[S], suffix: &[u8]) -> u64 {
    // Byte-wise order, as Go's sort.Strings; `str`'s Ord is byte-wise too.
    let mut sorted: Vec<&str> = peer_urls.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for url in sorted {
        hasher.update(url.as_bytes());
    }
    hasher.update(suffix);
    first_eight_bytes(&hasher.finalize())
}

fn first_eight_bytes(digest: &[u8]) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every expected number below was read from a real etcd 3.4.23
    // (`etcdctl member list -w json` / `endpoint status -w json`) started with
    // the flags quoted in each test.

    /// `etcd` with no flags at all: name `default`, peer URL
    /// `http://localhost:2380`, token `etcd-cluster`. These are also the ids
    /// every etcd user has seen (8e9e05c52164694d in cdf818194e3a8c32).
    #[test]
    fn default_flags() {
        let member = member_id(&["http://localhost:2380"], "etcd-cluster");
        assert_eq!(member, 10276657743932975437);
        assert_eq!(format_id(member), "8e9e05c52164694d");
        let cluster = cluster_id(&[member]);
        assert_eq!(cluster, 14841639068965178418);
        assert_eq!(format_id(cluster), "cdf818194e3a8c32");
    }

    /// `--name n1 --initial-advertise-peer-urls http://127.0.0.1:32380
    /// --initial-cluster n1=http://127.0.0.1:32380 --initial-cluster-token tok`
    #[test]
    fn single_member() {
        let member = member_id(&["http://127.0.0.1:32380".to_string()], "tok");
        assert_eq!(member, 14590032085621120027);
        assert_eq!(cluster_id(&[member]), 14765410957201216590);
    }

    /// Three members with `--initial-cluster-token cairn-three` and
    /// `--initial-cluster n1=http://127.0.0.1:32480,n2=http://127.0.0.1:32481,
    /// n3=http://127.0.0.2:32482,n3=http://127.0.0.1:32482` (n3 has two peer
    /// URLs, given out of order).
    #[test]
    fn three_members_one_with_two_peer_urls() {
        let n1 = member_id(&["http://127.0.0.1:32480"], "cairn-three");
        let n2 = member_id(&["http://127.0.0.1:32481"], "cairn-three");
        let n3 = member_id(
            &["http://127.0.0.2:32482", "http://127.0.0.1:32482"],
            "cairn-three",
        );
        assert_eq!(n1, 264439933405279048);
        assert_eq!(n2, 2485173073320197715);
        assert_eq!(n3, 17015968032664397513);
        // Order of URLs and of member ids is irrelevant.
        assert_eq!(
            n3,
            member_id(
                &["http://127.0.0.1:32482", "http://127.0.0.2:32482"],
                "cairn-three"
            )
        );
        assert_eq!(cluster_id(&[n1, n2, n3]), 14478675970369173847);
        assert_eq!(cluster_id(&[n3, n1, n2]), 14478675970369173847);
    }

    /// `--name Mixed --initial-advertise-peer-urls HTTP://LocalHost:32580
    /// --initial-cluster Mixed=HTTP://LocalHost:32580` (default token): etcd
    /// lower-cases the scheme but hashes the host exactly as written.
    #[test]
    fn host_case_is_kept() {
        let member = member_id(&["http://LocalHost:32580"], "etcd-cluster");
        assert_eq!(member, 9168771404639767028);
        assert_eq!(cluster_id(&[member]), 7564978624747141267);
        assert_ne!(
            member,
            member_id(&["http://localhost:32580"], "etcd-cluster")
        );
    }

    /// `etcdctl member add n2 --learner
    /// --peer-urls=http://127.0.0.1:32681,http://10.0.0.7:2380` against a
    /// one-member cluster (n1=http://127.0.0.1:32680, token tok), issued at
    /// Unix time 1795611586. The cluster id does not change on MemberAdd.
    #[test]
    fn member_added_at_run_time() {
        let n1 = member_id(&["http://127.0.0.1:32680"], "tok");
        assert_eq!(n1, 557002696823519232);
        assert_eq!(cluster_id(&[n1]), 10866658999307156293);
        let added = added_member_id(
            &["http://127.0.0.1:32681", "http://10.0.0.7:2380"],
            1795611586,
        );
        assert_eq!(added, 8570094546818555406);
        assert_ne!(
            added,
            added_member_id(
                &["http://127.0.0.1:32681", "http://10.0.0.7:2380"],
                1795611587
            )
        );
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(format_id(0x3ab7ab7e70cb348), "3ab7ab7e70cb348");
        assert_eq!(parse_id("3ab7ab7e70cb348"), Ok(264439933405279048));
        assert_eq!(parse_id("ec24dcc5705d26c9"), Ok(17015968032664397513));
        assert!(parse_id("xyz").is_err());
    }
}
