//! Versions cairn reports.

/// The etcd API version cairn implements and reports in `Status.version`
/// and `/version`. kube-apiserver needs at least 3.5.13 to turn on its
/// consistent reads from cache and watch lists.
pub const ETCD_API_VERSION: &str = "3.5.21";

/// cairn's own version.
pub const CAIRN_VERSION: &str = env!("CARGO_PKG_VERSION");
