//! `grpc_server_started_total` and `grpc_server_handled_total`, as etcd's
//! go-grpc-prometheus interceptors count them: a tower layer on the client
//! gRPC server.
//!
//! A call is started when its request arrives and handled when its status
//! is known: from the response headers for a trailers-only answer (most
//! errors), otherwise from the `grpc-status` trailer at the end of the
//! body — for a stream, when the stream ends. A body dropped before its
//! trailers (the client went away) is counted as `Canceled`.
//!
//! Only etcd's own methods are counted, and their series exist at zero from
//! the start, as in etcd (whose dashboards rate over them). Anything else
//! on the port (HTTP endpoints, unknown methods) passes through uncounted.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use tower::{Layer, Service};

use super::METRICS;

/// etcd's gRPC methods: (service, method, grpc_type).
const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.Maintenance", "Downgrade", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "AuthStatus", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
    ("grpc.health.v1.Health", "Check", "unary"),
    ("grpc.health.v1.Health", "Watch", "server_stream"),
];

/// gRPC status codes by number, under the names go-grpc-prometheus uses.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;
const DEADLINE_EXCEEDED: usize = 4;
const UNAVAILABLE: usize = 14;

/// The counters of one method, resolved once so that counting a call is
/// a map lookup and an atomic add.
struct MethodCounters {
    started: IntCounter,
    handled: Vec<IntCounter>,
    /// The code etcd's handler returns when the client goes away: its
    /// keep-alive stream turns a cancelled context into "no leader"
    /// (Unavailable); every other method returns Canceled.
    gone: usize,
}

/// Request path (`/service/method`) → counters; every series created at 0.
static BY_PATH: LazyLock<HashMap<String, MethodCounters>> = LazyLock::new(|| {
    METHODS
        .iter()
        .map(|&(service, method, kind)| {
            let started = METRICS
                .grpc_started
                .with_label_values(&[kind, service, method]);
            let handled = CODES
                .iter()
                .map(|code| {
                    METRICS
                        .grpc_handled
                        .with_label_values(&[kind, service, method, code])
                })
                .collect();
            let gone = if method == "LeaseKeepAlive" {
                UNAVAILABLE
            } else {
                CANCELED
            };
            (
                format!("/{service}/{method}"),
                MethodCounters {
                    started,
                    handled,
                    gone,
                },
            )
        })
        .collect()
});

/// Creates every method's series at zero (done at startup so that the first
/// scrape shows them, as etcd's does).
pub fn init() {
    LazyLock::force(&BY_PATH);
}

fn code_index(headers: &HeaderMap) -> Option<usize> {
    let n: usize = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(if n < CODES.len() { n } else { UNKNOWN })
}

/// The tower layer that counts calls; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, RB> Service<Request<tonic::body::Body>> for GrpcMetrics<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Body<Data = Bytes> + Unpin,
{
    type Response = Response<CountedBody<RB>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let counters = if is_grpc {
            BY_PATH.get(req.uri().path())
        } else {
            None
        };
        if let Some(c) = counters {
            c.started.inc();
        }
        // Until the handler answers, a dropped call (the client cancelled,
        // or its deadline passed) is counted by this guard.
        let mut pending = PendingCall {
            counters,
            deadline: grpc_deadline(req.headers()),
        };
        // gRPC requests' bytes in, as etcd's codec counts them.
        let req = if counters.is_some() {
            req.map(|b| tonic::body::Body::new(ReceivedBody { inner: b }))
        } else {
            req
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            let resp = match call.await {
                Ok(r) => r,
                Err(e) => {
                    pending.count(UNKNOWN);
                    return Err(e);
                }
            };
            pending.disarm();
            let Some(c) = counters else {
                return Ok(resp.map(|b| CountedBody {
                    inner: b,
                    on_end: None,
                    grpc: false,
                }));
            };
            // Trailers-only answer: the status is already known.
            if let Some(code) = code_index(resp.headers()) {
                c.handled[code].inc();
                return Ok(resp.map(|b| CountedBody {
                    inner: b,
                    on_end: None,
                    grpc: true,
                }));
            }
            Ok(resp.map(|b| CountedBody {
                inner: b,
                on_end: Some(c),
                grpc: true,
            }))
        })
    }
}

/// A call whose handler has not answered yet.
struct PendingCall {
    counters: Option<&'static MethodCounters>,
    deadline: Option<Instant>,
}

impl PendingCall {
    /// The handler answered: the response body counts the call from here.
    fn disarm(&mut self) {
        self.counters = None;
    }

    fn count(&mut self, code: usize) {
        if let Some(c) = self.counters.take() {
            c.handled[code].inc();
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        let code = match (self.counters, self.deadline) {
            (None, _) => return,
            (Some(_), Some(d)) if Instant::now() >= d => DEADLINE_EXCEEDED,
            (Some(c), _) => c.gone,
        };
        self.count(code);
    }
}

/// When the call's `grpc-timeout` header (`<digits><unit>`) runs out.
fn grpc_deadline(headers: &HeaderMap) -> Option<Instant> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

/// A response body that counts its call as handled when its `grpc-status`
/// trailer goes by (or when it is dropped without one).
pub struct CountedBody<B> {
    inner: B,
    /// The call's counters, until it has been counted.
    on_end: Option<&'static MethodCounters>,
    /// A gRPC answer: its bytes out are counted.
    grpc: bool,
}

/// A gRPC request body that counts the bytes it brings in
/// (`etcd_network_client_grpc_received_bytes_total`; etcd counts encoded
/// messages, this counts them with their 5-byte gRPC frame prefixes).
struct ReceivedBody<B> {
    inner: B,
}

impl<B> Body for ReceivedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                METRICS.client_grpc_received_bytes.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> CountedBody<B> {
    fn count(&mut self, code: usize) {
        if let Some(c) = self.on_end.take() {
            c.handled[code].inc();
        }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(code_index) {
                    self.count(code);
                }
                if let (true, Some(data)) = (self.grpc, frame.data_ref()) {
                    METRICS.client_grpc_sent_bytes.inc_by(data.len() as u64);
                }
            }
            // A body that ends without a status, or fails: grpc-go's
            // client reports these as Unknown.
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => self.count(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        // Never finished: the client cancelled, or the connection broke.
        if let Some(c) = self.on_end {
            self.count(c.gone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_a_series_for_every_code() {
        init();
        let families = METRICS.registry.gather();
        let handled = families
            .iter()
            .find(|f| f.name() == "grpc_server_handled_total")
            .expect("grpc_server_handled_total");
        assert!(handled.get_metric().len() >= METHODS.len() * CODES.len());
        let put = BY_PATH.get("/etcdserverpb.KV/Put").expect("Put");
        assert_eq!(put.handled.len(), 17);
    }

    #[test]
    fn status_codes_are_read_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(code_index(&h), None);
        h.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(code_index(&h), Some(5));
        h.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(code_index(&h), Some(UNKNOWN));
        h.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(code_index(&h), None);
    }
}
