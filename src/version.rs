//! Version numbers cairn reports.

/// The etcd server version cairn implements, reported by `Status.version`,
/// `/version` (`etcdserver`) and `cairn --version`. kube-apiserver turns off
/// its watch-cache features below 3.5.13, so this must stay at or above it.
pub const ETCD_API_VERSION: &str = "3.5.21";

/// The cluster version for `/version` (`etcdcluster`): etcd reports the
/// major.minor of its members with patch 0.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// cairn's own version.
pub const CAIRN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit cairn was built from, when the build provides `CAIRN_GIT_SHA`.
pub const GIT_SHA: Option<&str> = option_env!("CAIRN_GIT_SHA");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_is_at_least_what_kube_apiserver_needs() {
        let parts: Vec<u32> = ETCD_API_VERSION
            .split('.')
            .map(|part| part.parse().unwrap())
            .collect();
        assert_eq!(parts.len(), 3);
        assert!(parts >= vec![3, 5, 13], "{ETCD_API_VERSION}");
        assert!(ETCD_CLUSTER_VERSION.starts_with(&format!("{}.{}.", parts[0], parts[1])));
    }
}
