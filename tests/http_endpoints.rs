//! The HTTP endpoints on `--listen-metrics-urls` (and on the client URL):
//! `/livez` and `/readyz` with their sub-checks, `/health`, `/version`,
//! `/metrics` with etcd's metric names, and counters that move with writes.
//!
//! `CAIRN_HTTP_TARGET=etcd` runs the tests that etcd 3.4 can pass against
//! the real etcd (it has `/health`, `/version` and the metrics, not
//! `/livez`/`/readyz`), which is how their expectations were checked. The
//! probe tests follow etcd 3.6's `health.go` and its tests.

mod common;

use std::time::Duration;

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, DeleteRangeRequest, PutRequest,
    StatusRequest,
};
use common::http::{self, get, get_until, metric, metric_help, parse_metrics, HttpResponse};
use common::join::NewMember;
use common::{free_port, Kind, Server};

fn target() -> Kind {
    common::target_from_env("CAIRN_HTTP_TARGET")
}

/// A single member serving the endpoints on a metrics port of its own.
fn start(kind: Kind) -> (Server, u16) {
    let port = free_port();
    let flag = format!("--listen-metrics-urls=http://127.0.0.1:{port}");
    let server = Server::start_with(kind, &[&flag]);
    // Listening before the member is ready is not promised: wait for it.
    get_until(port, "/metrics", Duration::from_secs(10), |r| {
        r.status == 200
    });
    (server, port)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn channel(endpoint: &str) -> tonic::transport::Channel {
    common::check::channel(endpoint, Duration::from_secs(10))
}

fn put_keys(endpoint: &str, prefix: &str, n: usize) {
    runtime().block_on(async {
        let mut kv = KvClient::new(channel(endpoint));
        for i in 0..n {
            kv.put(PutRequest {
                key: format!("{prefix}{i}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .expect("put");
        }
    })
}

fn delete_prefix(endpoint: &str, prefix: &str) -> i64 {
    runtime().block_on(async {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        KvClient::new(channel(endpoint))
            .delete_range(DeleteRangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: end,
                ..Default::default()
            })
            .await
            .expect("delete")
            .into_inner()
            .deleted
    })
}

/// Raises or clears an alarm for the member at `endpoint`.
fn alarm(endpoint: &str, action: AlarmAction, alarm: AlarmType) {
    runtime().block_on(async {
        let mut m = MaintenanceClient::new(channel(endpoint));
        let member_id = m
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner()
            .header
            .expect("header")
            .member_id;
        m.alarm(AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        })
        .await
        .expect("alarm");
    })
}

fn assert_answer(r: &HttpResponse, status: u16, body: &str) {
    assert_eq!((r.status, r.body.as_str()), (status, body), "{r:?}");
}

/// etcd 3.6's readyz report with every check passing.
const ALL_READY: &str = "[+]data_corruption ok\n[+]serializable_read ok\n\
                         [+]linearizable_read ok\n[+]non_learner ok\n";

#[test]
fn probes_pass_on_a_healthy_member() {
    let (server, port) = start(Kind::Cairn);
    let ok = |path: &str, body: &str| {
        let r = get(port, path);
        assert_answer(&r, 200, body);
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    };
    ok("/livez", "ok\n");
    ok("/readyz", "ok\n");
    ok("/livez?verbose", "[+]serializable_read ok\nok\n");
    ok("/readyz?verbose", &format!("{ALL_READY}ok\n"));
    ok(
        "/readyz?verbose&exclude=linearizable_read&exclude=non_learner",
        "[+]data_corruption ok\n[+]serializable_read ok\nok\n",
    );
    // Excluding a check that does not exist is no error (etcd: version skew).
    ok("/readyz?exclude=no_such_check", "ok\n");
    ok("/readyz/linearizable_read", "ok\n");
    ok("/readyz/non_learner?verbose", "[+]non_learner ok\nok\n");
    ok("/livez/serializable_read", "ok\n");
    // Sub-paths only name a probe's own checks.
    for path in [
        "/readyz/non_exist",
        "/livez/non_learner",
        "/readyz/",
        "/nope",
    ] {
        assert_answer(&get(port, path), 404, "404 page not found\n");
    }
    let post = http::request(port, "POST", "/readyz");
    assert_answer(&post, 405, "Method Not Allowed\n");
    assert_eq!(post.header("allow"), Some("GET"));

    // The client URL serves them too, over HTTP/1.1 beside gRPC.
    assert_answer(&get(server.client_port, "/readyz"), 200, "ok\n");
    assert_answer(&get(server.client_port, "/livez"), 200, "ok\n");
}

/// A CORRUPT alarm makes a member unready but leaves it alive; excluding
/// the check makes it ready again.
#[test]
fn a_corrupt_alarm_fails_readyz_only() {
    let (server, port) = start(Kind::Cairn);
    alarm(
        &server.endpoint(),
        AlarmAction::Activate,
        AlarmType::Corrupt,
    );
    let r = get(port, "/readyz");
    assert_answer(
        &r,
        503,
        "[-]data_corruption failed: alarm activated: CORRUPT\n[+]serializable_read ok\n\
         [+]linearizable_read ok\n[+]non_learner ok\n\n",
    );
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_answer(
        &get(port, "/readyz/data_corruption"),
        503,
        "[-]data_corruption failed: alarm activated: CORRUPT\n\n",
    );
    assert_answer(&get(port, "/readyz?exclude=data_corruption"), 200, "ok\n");
    assert_answer(&get(port, "/livez"), 200, "ok\n");
    let failures = parse_metrics(&get(port, "/metrics").body);
    let labels = [
        ("type", "readyz"),
        ("name", "data_corruption"),
        ("status", "error"),
    ];
    assert!(metric(&failures, "etcd_server_healthchecks_total", &labels) >= Some(2.0));
}

/// `/health` as etcd answers it: JSON, 503 on an alarm unless excluded.
/// Runs against etcd 3.4 too (whose JSON has no `reason` yet).
#[test]
fn health_reports_alarms_unless_excluded() {
    let kind = target();
    let (server, port) = start(kind);
    let health_field = |r: &HttpResponse| -> String {
        let v: serde_json::Value =
            serde_json::from_str(r.body.trim_end()).unwrap_or_else(|e| panic!("{e}: {r:?}"));
        v["health"].as_str().expect("health").to_string()
    };
    for path in ["/health", "/health?serializable=true"] {
        let r = get(port, path);
        assert_eq!(
            (r.status, health_field(&r).as_str()),
            (200, "true"),
            "{r:?}"
        );
        if kind == Kind::Cairn {
            assert_answer(&r, 200, r#"{"health":"true","reason":""}"#);
        }
    }
    assert_eq!(http::request(port, "PUT", "/health").status, 405);

    alarm(
        &server.endpoint(),
        AlarmAction::Activate,
        AlarmType::Nospace,
    );
    let r = get(port, "/health");
    assert_eq!(
        (r.status, health_field(&r).as_str()),
        (503, "false"),
        "{r:?}"
    );
    if kind == Kind::Cairn {
        assert_answer(
            &r,
            503,
            "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n",
        );
    }
    // kubeadm's older probe excludes NOSPACE and reads locally.
    for path in [
        "/health?exclude=NOSPACE",
        "/health?exclude=NOSPACE&serializable=true",
    ] {
        let r = get(port, path);
        assert_eq!(
            (r.status, health_field(&r).as_str()),
            (200, "true"),
            "{r:?}"
        );
    }
    alarm(
        &server.endpoint(),
        AlarmAction::Deactivate,
        AlarmType::Nospace,
    );
    assert_eq!(get(port, "/health").status, 200);
}

/// `/version` on the client URL: etcd's two fields, cairn's versions.
#[test]
fn version_is_etcds_json() {
    let kind = target();
    let (server, metrics_port) = start(kind);
    // On the client port only, as etcd's metrics mux has no /version.
    assert_eq!(get(metrics_port, "/version").status, 404);
    let r = get(server.client_port, "/version");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 2, "{r:?}");
    assert!(
        v["etcdserver"].is_string() && v["etcdcluster"].is_string(),
        "{r:?}"
    );
    if kind == Kind::Cairn {
        assert_eq!(
            r.body,
            format!(
                r#"{{"etcdserver":"{}","etcdcluster":"{}"}}"#,
                cairn::version::ETCD_API_VERSION,
                cairn::version::ETCD_CLUSTER_VERSION
            )
        );
    }
}

/// Families every member exports from the start, with etcd's help texts.
const FAMILIES: &[(&str, &str)] = &[
    (
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
    ),
    (
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
    ),
    (
        "etcd_server_leader_changes_seen_total",
        "The number of leader changes seen.",
    ),
    (
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
    ),
    (
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
    ),
    (
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit.",
    ),
    (
        "etcd_server_proposals_failed_total",
        "The total number of failed proposals seen.",
    ),
    (
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
    ),
    (
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes.",
    ),
    (
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
    ),
    (
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
    ),
    (
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
    ),
    (
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
    ),
    (
        "etcd_server_id",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
    ),
    (
        "etcd_server_version",
        "Which version is running. 1 for 'server_version' label with current version.",
    ),
    (
        "etcd_server_heartbeat_send_failures_total",
        "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
    ),
    (
        "etcd_server_slow_apply_total",
        "The total number of slow apply requests (likely overloaded from slow disk).",
    ),
    (
        "etcd_mvcc_put_total",
        "Total number of puts seen by this member.",
    ),
    (
        "etcd_mvcc_delete_total",
        "Total number of deletes seen by this member.",
    ),
    ("etcd_debugging_mvcc_keys_total", "Total number of keys."),
    (
        "etcd_server_quota_backend_bytes",
        "Current backend storage quota size in bytes.",
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
    ),
    ("process_open_fds", "Number of open file descriptors."),
];

const PUT: [(&str, &str); 3] = [
    ("grpc_type", "unary"),
    ("grpc_service", "etcdserverpb.KV"),
    ("grpc_method", "Put"),
];

/// Every metric listed in issue 6 is there under etcd's name and help,
/// and the counters move with writes. Runs against etcd 3.4 too.
#[test]
fn metrics_are_etcds_and_move_with_writes() {
    let kind = target();
    let (server, port) = start(kind);
    let before_text = get(port, "/metrics");
    assert_eq!(before_text.status, 200);
    assert!(
        before_text
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        before_text.headers
    );
    let help = metric_help(&before_text.body);
    for (name, text) in FAMILIES {
        assert_eq!(help.get(*name).map(String::as_str), Some(*text), "{name}");
    }
    let before = parse_metrics(&before_text.body);
    let value = |s: &[http::Sample], name: &str| metric(s, name, &[]).unwrap_or(-1.0);
    // Series of methods not called yet exist at zero, as etcd's do.
    let put_ok = [PUT[0], PUT[1], PUT[2], ("grpc_code", "OK")];
    let put_ok_before = metric(&before, "grpc_server_handled_total", &put_ok);
    assert!(put_ok_before.is_some(), "no Put series before any Put");

    const N: usize = 25;
    put_keys(&server.endpoint(), "metrics/", N);
    let deleted = delete_prefix(&server.endpoint(), "metrics/1");
    assert!(deleted >= 5, "deleted {deleted}");
    // cairn counts keys at most every few seconds, etcd commits its
    // backend every 100 ms: wait for both to show the writes.
    let keys = |s: &[http::Sample]| value(s, "etcd_debugging_mvcc_keys_total");
    let commits = |s: &[http::Sample]| value(s, "etcd_disk_backend_commit_duration_seconds_count");
    let want_keys = keys(&before) + (N as i64 - deleted) as f64;
    let after = get_until(port, "/metrics", Duration::from_secs(15), |r| {
        let s = parse_metrics(&r.body);
        keys(&s) == want_keys && commits(&s) > commits(&before)
    });
    let after = parse_metrics(&after.body);
    let grew = |name: &str| value(&after, name) - value(&before, name);
    assert_eq!(keys(&after), want_keys);

    assert_eq!(value(&after, "etcd_server_has_leader"), 1.0);
    assert_eq!(value(&after, "etcd_server_is_leader"), 1.0);
    assert!(value(&after, "etcd_server_leader_changes_seen_total") >= 1.0);
    assert!(grew("etcd_server_proposals_committed_total") >= N as f64 + 1.0);
    assert!(grew("etcd_server_proposals_applied_total") >= N as f64 + 1.0);
    assert!(
        value(&after, "etcd_server_proposals_applied_total")
            <= value(&after, "etcd_server_proposals_committed_total")
    );
    assert_eq!(value(&after, "etcd_server_proposals_pending"), 0.0);
    assert_eq!(value(&after, "etcd_server_proposals_failed_total"), 0.0);
    // etcd counts operations: N puts, one DeleteRange (of many keys).
    assert_eq!(grew("etcd_mvcc_put_total"), N as f64);
    assert_eq!(grew("etcd_mvcc_delete_total"), 1.0);
    assert!(value(&after, "etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert!(value(&after, "etcd_mvcc_db_total_size_in_use_in_bytes") > 0.0);
    assert!(grew("etcd_disk_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(grew("etcd_disk_backend_commit_duration_seconds_count") >= 1.0);
    // Histograms have etcd's buckets: 1 ms doubling to 8.192 s.
    for le in ["0.001", "0.008", "8.192", "+Inf"] {
        let b = metric(
            &after,
            "etcd_disk_wal_fsync_duration_seconds_bucket",
            &[("le", le)],
        );
        assert!(b.is_some(), "no fsync bucket le={le}");
    }
    assert_eq!(
        metric(&after, "grpc_server_handled_total", &put_ok).unwrap() - put_ok_before.unwrap(),
        N as f64
    );
    assert_eq!(
        metric(&after, "grpc_server_started_total", &PUT).unwrap()
            - metric(&before, "grpc_server_started_total", &PUT).unwrap(),
        N as f64
    );
    let delete_ok = [
        ("grpc_method", "DeleteRange"),
        ("grpc_code", "OK"),
        ("grpc_type", "unary"),
    ];
    assert_eq!(
        metric(&after, "grpc_server_handled_total", &delete_ok),
        Some(1.0)
    );
    // etcd_server_id carries this member's id.
    let id = after
        .iter()
        .find(|s| s.name == "etcd_server_id")
        .and_then(|s| s.labels.get("server_id").cloned())
        .expect("etcd_server_id");
    assert!(u64::from_str_radix(&id, 16).is_ok(), "{id}");
}

/// A gRPC error is counted under its code.
#[test]
fn grpc_errors_are_counted_by_code() {
    let kind = target();
    let (server, port) = start(kind);
    let labels = [
        ("grpc_method", "Put"),
        ("grpc_service", "etcdserverpb.KV"),
        ("grpc_code", "InvalidArgument"),
    ];
    let before = metric(
        &parse_metrics(&get(port, "/metrics").body),
        "grpc_server_handled_total",
        &labels,
    );
    runtime().block_on(async {
        let err = KvClient::new(channel(&server.endpoint()))
            .put(PutRequest::default())
            .await
            .expect_err("an empty key is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    });
    let after = metric(
        &parse_metrics(&get(port, "/metrics").body),
        "grpc_server_handled_total",
        &labels,
    );
    assert_eq!(after.unwrap() - before.unwrap(), 1.0);
}

/// A learner is alive but not ready (kubeadm's startup probe waits for its
/// promotion), and the leader measures the round trip to it.
#[test]
fn a_learner_is_not_ready() {
    let (leader, leader_port) = start(Kind::Cairn);
    let new = NewMember::new("learner");
    let url = format!("--peer-urls={}", new.peer_url());
    let out = common::etcdctl(
        &leader.endpoint(),
        &["member", "add", &new.name, &url, "--learner"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let initial = common::join::initial_cluster_with(&[&leader], &new);
    let port = free_port();
    let flag = format!("--listen-metrics-urls=http://127.0.0.1:{port}");
    let _learner = Server::join(Kind::Cairn, &new, &initial, &[&flag]);

    let r = get(port, "/readyz");
    assert_answer(
        &r,
        503,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n\
         [-]non_learner failed: not supported for learner\n\n",
    );
    assert_answer(
        &get(port, "/readyz/non_learner"),
        503,
        "[-]non_learner failed: not supported for learner\n\n",
    );
    assert_answer(&get(port, "/readyz?exclude=non_learner"), 200, "ok\n");
    assert_answer(&get(port, "/livez"), 200, "ok\n");
    let learner_metrics = parse_metrics(&get(port, "/metrics").body);
    assert_eq!(
        metric(&learner_metrics, "etcd_server_is_leader", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(&learner_metrics, "etcd_server_has_leader", &[]),
        Some(1.0)
    );

    // The leader probes its peer every few seconds.
    let leader_metrics = get_until(leader_port, "/metrics", Duration::from_secs(15), |r| {
        r.body
            .contains("etcd_network_peer_round_trip_time_seconds_count{To=")
    });
    let samples = parse_metrics(&leader_metrics.body);
    let rtt = samples
        .iter()
        .find(|s| s.name == "etcd_network_peer_round_trip_time_seconds_count")
        .unwrap_or_else(|| panic!("no round trip times:\n{}", leader_metrics.body));
    assert!(rtt.value >= 1.0);
    assert!(
        u64::from_str_radix(&rtt.labels["To"], 16).is_ok(),
        "{rtt:?}"
    );
}

/// A member restarted without its quorum answers on its metrics port at
/// once, as etcd's does: `/health` 503 with etcd's reason, `/metrics` with
/// `etcd_server_has_leader 0`, and (cairn, as etcd 3.6) `/livez` 200 while
/// `/readyz` is 503 — so kubelet's liveness probe does not kill a member
/// that waits for its peers.
#[test]
fn endpoints_answer_while_waiting_for_a_quorum() {
    let kind = target();
    let port = free_port();
    let flag = format!("--listen-metrics-urls=http://127.0.0.1:{port}");
    let mut members = Server::cluster_spawn_each(kind, &[&[&flag], &[], &[]]);
    for m in &mut members {
        m.await_ready();
    }
    members[1].kill9();
    members[2].kill9();
    members[0].restart_no_wait();
    let health = get_until(port, "/health", Duration::from_secs(20), |r| {
        r.status == 503
    });
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(
        health.body.contains(r#""health":"false""#),
        "{}",
        health.body
    );
    let metrics = get(port, "/metrics");
    assert_eq!(metrics.status, 200);
    let samples = parse_metrics(&metrics.body);
    assert_eq!(metric(&samples, "etcd_server_has_leader", &[]), Some(0.0));
    if kind == Kind::Cairn {
        assert_answer(&get(port, "/livez"), 200, "ok\n");
        assert_eq!(get(port, "/readyz").status, 503);
    }
}

/// A member that is down shows in the others' failed peer sends
/// (`etcd_network_peer_sent_failures_total{To=...}`, what etcd's "members
/// down" alert watches) within seconds.
#[test]
fn sends_to_a_dead_peer_are_counted_as_failures() {
    let kind = target();
    let ports = [free_port(), free_port(), free_port()];
    let flags: Vec<String> = ports
        .iter()
        .map(|p| format!("--listen-metrics-urls=http://127.0.0.1:{p}"))
        .collect();
    let mut members = Server::cluster_spawn_each(
        kind,
        &[
            &[flags[0].as_str()],
            &[flags[1].as_str()],
            &[flags[2].as_str()],
        ],
    );
    for m in &mut members {
        m.await_ready();
    }
    let dead = runtime().block_on(async {
        let mut m = MaintenanceClient::new(channel(&members[2].endpoint()));
        m.status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id
    });
    let to = format!("{dead:x}");
    // While it is up: a connection to it on both others, and traffic.
    let peer_metric = |port: u16, name: &str, labels: &[(&str, &str)]| {
        let samples = parse_metrics(&get(port, "/metrics").body);
        metric(&samples, name, labels).unwrap_or(0.0)
    };
    let eventually = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    eventually("active peer connections to the third member", &|| {
        ports[..2]
            .iter()
            .all(|p| peer_metric(*p, "etcd_network_active_peers", &[("Remote", &to)]) == 1.0)
    });
    let received: f64 = ports[..2]
        .iter()
        .map(|p| {
            peer_metric(
                *p,
                "etcd_network_peer_received_bytes_total",
                &[("From", &to)],
            )
        })
        .sum();
    let sent: f64 = ports[..2]
        .iter()
        .map(|p| peer_metric(*p, "etcd_network_peer_sent_bytes_total", &[("To", &to)]))
        .sum();
    assert!(
        received > 0.0 && sent > 0.0,
        "peer bytes: {received} in, {sent} out"
    );
    members[2].kill9();
    eventually("the connections to the dead member counted down", &|| {
        ports[..2].iter().all(|p| {
            peer_metric(*p, "etcd_network_active_peers", &[("Remote", &to)]) == 0.0
                && peer_metric(
                    *p,
                    "etcd_network_disconnected_peers_total",
                    &[("Remote", &to)],
                ) >= 1.0
        })
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let failures: f64 = ports[..2]
            .iter()
            .map(|p| {
                let samples = parse_metrics(&get(*p, "/metrics").body);
                metric(
                    &samples,
                    "etcd_network_peer_sent_failures_total",
                    &[("To", &to)],
                )
                .unwrap_or(0.0)
            })
            .sum();
        if failures > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed sends to {to} counted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Calls a client gives up on (its deadline passes while a member that
/// lost its quorum waits for a leader) are counted as handled too, as
/// etcd's interceptor counts every handler's return: started and handled
/// stay equal.
#[test]
fn calls_given_up_by_the_client_are_counted() {
    let kind = target();
    let port = free_port();
    let flag = format!("--listen-metrics-urls=http://127.0.0.1:{port}");
    let mut members = Server::cluster_spawn_each(kind, &[&[&flag], &[], &[]]);
    for m in &mut members {
        m.await_ready();
    }
    members[1].kill9();
    members[2].kill9();
    get_until(port, "/health", Duration::from_secs(20), |r| {
        r.status == 503
    });
    // Calls the client gives up on (its deadline passes while the member
    // waits for a leader) are counted as handled too, as etcd's
    // interceptor counts every handler's return.
    let handled_ranges = |body: &str| {
        let samples = parse_metrics(body);
        let started = metric(
            &samples,
            "grpc_server_started_total",
            &[("grpc_method", "Range")],
        )
        .unwrap_or(0.0);
        let handled = metric(
            &samples,
            "grpc_server_handled_total",
            &[("grpc_method", "Range")],
        )
        .unwrap_or(0.0);
        (started, handled)
    };
    runtime().block_on(async {
        for _ in 0..2 {
            let mut req = tonic::Request::new(cairn::pb::etcdserverpb::RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            });
            req.set_timeout(Duration::from_millis(500));
            let r = KvClient::new(channel(&members[0].endpoint()))
                .range(req)
                .await;
            assert!(r.is_err(), "a linearizable read without a leader: {r:?}");
        }
    });
    let settled = get_until(port, "/metrics", Duration::from_secs(10), |r| {
        let (started, handled) = handled_ranges(&r.body);
        started >= 2.0 && started == handled
    });
    let (started, handled) = handled_ranges(&settled.body);
    assert!(
        started >= 2.0 && started == handled,
        "started {started}, handled {handled}"
    );
}

/// etcd's mvcc counters move as etcd's do: a range per Range call, per
/// compare and per `prev_kv` read; a txn per store transaction of more than
/// one operation (a put with `prev_kv` is one; a writing txn's compares are
/// read in a transaction of their own, its put in another); the current
/// revision and learner gauges.
#[test]
fn mvcc_counters_move_as_etcds() {
    use cairn::pb::etcdserverpb::{
        compare, request_op, Compare, RangeRequest, RequestOp, TxnRequest,
    };
    let kind = target();
    let (server, port) = start(kind);
    let read = || {
        let samples = parse_metrics(&get(port, "/metrics").body);
        let v = |name: &str| metric(&samples, name, &[]).unwrap_or(-1.0);
        (
            v("etcd_mvcc_range_total"),
            v("etcd_mvcc_txn_total"),
            v("etcd_debugging_mvcc_current_revision"),
            v("etcd_server_is_learner"),
        )
    };
    let (ranges0, txns0, _, learner) = read();
    assert_eq!(learner, 0.0);
    let rev = runtime().block_on(async {
        let mut kv = KvClient::new(channel(&server.endpoint()));
        for _ in 0..3 {
            kv.range(RangeRequest {
                key: b"m".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        for _ in 0..2 {
            kv.put(PutRequest {
                key: b"m".to_vec(),
                value: b"v".to_vec(),
                prev_kv: true,
                ..Default::default()
            })
            .await
            .unwrap();
        }
        kv.put(PutRequest {
            key: b"n".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        kv.txn(TxnRequest {
            compare: vec![Compare {
                key: b"m".to_vec(),
                result: compare::CompareResult::Greater as i32,
                target: compare::CompareTarget::Version as i32,
                target_union: Some(compare::TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"o".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision
    });
    // A defragmentation is timed.
    let defrags = |body: &str| {
        metric(
            &parse_metrics(body),
            "etcd_disk_backend_defrag_duration_seconds_count",
            &[],
        )
        .unwrap_or(0.0)
    };
    let defrags0 = defrags(&get(port, "/metrics").body);
    let out = common::etcdctl(&server.endpoint(), &["defrag"], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(defrags(&get(port, "/metrics").body) - defrags0, 1.0);
    let (ranges, txns, current, _) = read();
    assert_eq!(
        ranges - ranges0,
        6.0,
        "ranges: 3 calls, 2 prev_kv reads, 1 compare"
    );
    assert_eq!(txns - txns0, 2.0, "txns: the 2 puts with prev_kv");
    assert_eq!(current, rev as f64);
}

/// The client traffic counters etcd's dashboards plot: a 10 kB value put
/// adds at least 10 kB received, reading it back at least 10 kB sent.
#[test]
fn client_grpc_bytes_are_counted() {
    use cairn::pb::etcdserverpb::RangeRequest;
    let kind = target();
    let (server, port) = start(kind);
    let read = || {
        let samples = parse_metrics(&get(port, "/metrics").body);
        let v = |name: &str| metric(&samples, name, &[]).unwrap_or(-1.0);
        (
            v("etcd_network_client_grpc_received_bytes_total"),
            v("etcd_network_client_grpc_sent_bytes_total"),
        )
    };
    let (received0, sent0) = read();
    runtime().block_on(async {
        let mut kv = KvClient::new(channel(&server.endpoint()));
        kv.put(PutRequest {
            key: b"big".to_vec(),
            value: vec![b'x'; 10_000],
            ..Default::default()
        })
        .await
        .unwrap();
        let (received, _) = read();
        assert!(
            received - received0 >= 10_000.0,
            "{received0} -> {received}"
        );
        kv.range(RangeRequest {
            key: b"big".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let (_, sent) = read();
    assert!(sent - sent0 >= 10_000.0, "{sent0} -> {sent}");
}
