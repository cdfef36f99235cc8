//! The member: what the API layer talks to. It turns client writes into
//! raft proposals and waits for them to be applied, makes linearizable
//! reads wait for a ReadIndex round, and knows who it and its cluster are.

mod member;
mod reconfig;

pub use crate::membership::MemberInfo;
pub use member::{Member, MemberSettings};

pub mod authority_repair;
pub mod auto_compaction;
pub mod boot;
pub mod corruption;
pub mod identity;
pub mod listeners;
pub mod peer;
pub mod systemd;
