//! Leases: which exist, their TTLs and attached keys (replicated, changed
//! only by the apply step), and when each expires (the leader's own clock,
//! never replicated).

mod lessor;

pub use lessor::{import_attachment, import_lease, leases_at, LeaseInfo, Lessor, MAX_LEASE_TTL};
