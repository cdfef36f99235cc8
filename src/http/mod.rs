//! etcd's HTTP endpoints: `/livez`, `/readyz` (and their sub-paths),
//! `/health`, `/version`, `/metrics` — one axum router, served on every
//! `--listen-metrics-urls` URL (`listener.rs`) and next to gRPC on the
//! client URLs (`client_routes`, HTTP/1.1 on the same port as etcd's
//! cmux does).
//!
//! Bodies, status codes and the headers clients look at are etcd's
//! (`reply.rs` shapes them as Go's `net/http` does). Unknown paths are
//! 404s and bad input is answered, never a panic.

mod health;
mod listener;
mod probes;
mod reply;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use http::{Method, StatusCode};

pub use listener::{serve_connection, HttpListeners};
pub use probes::{Check, Probe};
use reply::Query;

use crate::server::Member;

/// The endpoints as one service: a router whose every path is ours to
/// answer (it has no routes of its own, only the fallback below, so that
/// gRPC services can be added beside it).
pub fn router(member: Arc<Member>) -> axum::Router {
    axum::Router::new()
        .fallback(handle_metrics_port)
        .with_state(member)
}

/// The endpoints as tonic routes, for the client listener: gRPC services
/// added to these keep their own paths, everything else comes here. The
/// server must accept HTTP/1.1 (`accept_http1(true)`) for curl and
/// Prometheus to reach them.
pub fn client_routes(member: Arc<Member>) -> tonic::service::Routes {
    tonic::service::Routes::from(
        axum::Router::new()
            .fallback(handle_client_port)
            .with_state(member),
    )
}

async fn handle_client_port(State(member): State<Arc<Member>>, req: Request) -> Response {
    handle(member, req, true).await
}

async fn handle_metrics_port(State(member): State<Arc<Member>>, req: Request) -> Response {
    handle(member, req, false).await
}

/// One request; `client_port` says which port it came to (etcd serves
/// `/version` on the client port only).
async fn handle(member: Arc<Member>, req: Request, client_port: bool) -> Response {
    // A gRPC call to a service we do not serve: answer as gRPC does.
    if is_grpc(&req) {
        return tonic::Status::unimplemented("").into_http();
    }
    let path = req.uri().path();
    let query = Query::parse(req.uri().query());
    let not_get = req.method() != Method::GET;
    if let Some((probe, only)) = Probe::route(path) {
        if not_get {
            return reply::method_not_allowed();
        }
        return probes::answer(&member, probe, only, &query).await;
    }
    match path {
        "/health" if not_get => reply::method_not_allowed(),
        "/health" => health::answer(&member, &query).await,
        "/version" if !client_port => reply::not_found(),
        "/version" if not_get => reply::method_not_allowed(),
        "/version" => version(),
        // Prometheus' handler takes any method, as etcd's does.
        "/metrics" => reply::with_type(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            crate::metrics::scrape(&member).await,
        ),
        _ => reply::not_found(),
    }
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// etcd 3.5's `/version`: the server version and the cluster version.
fn version() -> Response {
    // Written out: etcd's field order is its struct's, not alphabetical.
    let body = format!(
        r#"{{"etcdserver":{},"etcdcluster":{}}}"#,
        serde_json::Value::from(crate::version::ETCD_API_VERSION),
        serde_json::Value::from(crate::version::ETCD_CLUSTER_VERSION),
    );
    reply::with_type(StatusCode::OK, "application/json", body)
}
