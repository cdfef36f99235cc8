//! gRPC server settings as etcd's: the standard health service, and the
//! per-connection stream limit of `--max-concurrent-streams`. Runs against
//! cairn, or the real etcd with `CAIRN_CLUSTER_TARGET=etcd` (the
//! reference).

mod common;

use std::time::Duration;

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::watch_client::WatchClient;
use cairn::pb::etcdserverpb::{watch_request, RangeRequest, WatchCreateRequest, WatchRequest};
use common::check::channel;
use common::Server;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn target() -> common::Kind {
    common::target_from_env("CAIRN_CLUSTER_TARGET")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `grpc.health.v1.Health/Check` for all services is SERVING; an unknown
/// service is NOT_FOUND.
#[test]
fn health_service_reports_serving() {
    let srv = Server::start(target());
    runtime().block_on(async {
        let mut h = HealthClient::new(channel(&srv.endpoint(), Duration::from_secs(5)));
        let r = h
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32);
        let err = h
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    });
}

/// With `--max-concurrent-streams=2`, a connection holding two open watch
/// streams gets no third stream until one of them ends.
#[test]
fn max_concurrent_streams_limits_a_connection() {
    let srv = Server::start_with(target(), &["--max-concurrent-streams=2"]);
    runtime().block_on(async {
        // One connection for everything.
        let ch = tonic::transport::Endpoint::from_shared(srv.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let open_watch = || {
            let mut w = WatchClient::new(ch.clone());
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(
                        WatchCreateRequest {
                            key: b"k".to_vec(),
                            ..Default::default()
                        },
                    )),
                })
                .await
                .unwrap();
                let mut stream = w
                    .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .expect("watch")
                    .into_inner();
                let created = stream.message().await.unwrap().unwrap();
                assert!(created.created);
                (tx, stream)
            }
        };
        let first = open_watch().await;
        let _second = open_watch().await;
        let range = || {
            let mut kv = KvClient::new(ch.clone());
            async move {
                kv.range(RangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })
                .await
            }
        };
        // A third stream waits for a free slot...
        let waiting = tokio::spawn(range());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "a third stream was opened");
        // ...and gets one when a watch stream ends.
        drop(first);
        let r = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiting call never got a stream")
            .unwrap();
        r.expect("range");
    });
}
