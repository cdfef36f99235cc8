//! The gRPC services, one file each. They check requests, call the member,
//! and map results and errors to etcd's wire form; they hold no state of
//! their own.

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::pin::Pin;

use tonic::{Request, Status};

use crate::error::Error;
use crate::server::Member;

/// etcd's `hasleader` guard: a call that carries the metadata
/// `hasleader: true` fails at once when this member knows no leader.
pub fn check_leader<T>(member: &Member, req: &Request<T>) -> Result<(), Status> {
    let wants = req
        .metadata()
        .get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true");
    if wants && !member.has_leader() {
        return Err(Error::NoLeader.status());
    }
    Ok(())
}

/// etcd's learner guard: a learner serves only Status and serializable
/// Range (`supported`); everything else is refused, as in etcd, with
/// "rpc not supported for learner".
pub fn check_learner(member: &Member, supported: bool) -> Result<(), Status> {
    if !supported && member.is_learner() {
        return Err(Error::NotSupportedForLearner.status());
    }
    Ok(())
}

/// A server-streamed response, as the generated service traits take it.
pub type ResponseStream<T> =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;
