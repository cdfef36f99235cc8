//! Prometheus metrics under etcd's names (`/metrics` on the client and
//! metrics URLs), so that etcd's dashboards and alerts work on cairn.
//!
//! `families.rs` defines them (names, help texts, labels, buckets as
//! etcd's); `hooks.rs` is what the write path calls where things happen
//! (one line per site); `grpc.rs` counts gRPC calls as a tower layer;
//! `scrape.rs` reads the gauges that are cheaper to read on demand and
//! encodes the text format.
//!
//! **Invariant:** counting never blocks or fails the code that counts; a
//! scrape never blocks apply.

mod families;
pub mod grpc;
pub mod hooks;
mod scrape;

pub use families::{Metrics, METRICS};
pub use scrape::{encode, scrape, CONTENT_TYPE};

/// The member's constant facts (id, version, quota), set once it is known.
pub fn set_member_info(member_id: u64, quota_backend_bytes: i64) {
    METRICS
        .server_id
        .with_label_values(&[&format!("{member_id:x}")])
        .set(1);
    METRICS
        .server_version
        .with_label_values(&[crate::version::ETCD_API_VERSION])
        .set(1);
    // etcd labels the cluster version with major.minor only.
    let cluster = crate::version::ETCD_CLUSTER_VERSION;
    let major_minor = cluster.rsplit_once('.').map_or(cluster, |(mm, _)| mm);
    METRICS
        .cluster_version
        .with_label_values(&[major_minor])
        .set(1);
    METRICS.quota_backend_bytes.set(quota_backend_bytes.max(0));
    grpc::init();
}
