//! TLS on the client and peer URLs, as kubeadm runs etcd: a kubeadm-style
//! PKI, three members with kubeadm's TLS flags on `https://` URLs, the
//! operator's etcdctl commands with `--cacert --cert --key`, the refusals
//! (no client certificate, one from another CA, plaintext) on both ports,
//! certificate rotation without a restart, a member joining over TLS, and
//! TLS startup errors.
//!
//! Every test runs against cairn, or against the real etcd 3.4 with
//! `CAIRN_TLS_TARGET=etcd` — the etcd run is how these expectations were
//! checked to be etcd's.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::tls::{etcdctl_tls, plaintext_h2, Pki, TlsMember, TlsProbe};
use common::{free_port, Kind};

fn target() -> Kind {
    common::target_from_env("CAIRN_TLS_TARGET")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Retries `f` until it succeeds or `within` passes (the cluster may still
/// be settling right after it became ready).
fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > within => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn kubeadm_cluster_serves_etcdctl_over_mutual_tls() {
    let pki = Pki::generate();
    let members = TlsMember::cluster(target(), 3, &pki, &[]);
    let ca = pki.ca_file();
    let apiserver = pki.pair("apiserver-etcd-client");
    let healthcheck = pki.pair("healthcheck-client");
    let all: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    let all = all.join(",");
    let first = members[0].endpoint();

    // member list: three started members with their https URLs.
    let list = ok(etcdctl_tls(
        &first,
        &ca,
        Some(&apiserver),
        &["member", "list", "-w", "json"],
    ));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let mut peer_urls: Vec<String> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peerURLs"][0].as_str().unwrap().to_string())
        .collect();
    peer_urls.sort();
    let mut want: Vec<String> = members.iter().map(|m| m.peer_url()).collect();
    want.sort();
    assert_eq!(peer_urls, want, "{list}");
    for m in list["members"].as_array().unwrap() {
        let client_url = m["clientURLs"][0].as_str().unwrap_or("");
        assert!(client_url.starts_with("https://127.0.0.1:"), "{m}");
    }

    // endpoint status and health on every member.
    let status = ok(etcdctl_tls(
        &all,
        &ca,
        Some(&healthcheck),
        &["endpoint", "status", "-w", "json"],
    ));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let leaders: Vec<u64> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().unwrap())
        .collect();
    assert_eq!(leaders.len(), 3, "{status}");
    assert!(
        leaders.iter().all(|l| *l != 0 && *l == leaders[0]),
        "{status}"
    );
    let health = eventually("endpoint health", Duration::from_secs(10), || {
        let out = etcdctl_tls(&all, &ca, Some(&healthcheck), &["endpoint", "health"]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr))
        } else {
            Err(describe(&out))
        }
    });
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");

    // put on one member, get on another.
    ok(etcdctl_tls(
        &first,
        &ca,
        Some(&apiserver),
        &["put", "/registry/tls", "over-mtls"],
    ));
    let got = ok(etcdctl_tls(
        &members[2].endpoint(),
        &ca,
        Some(&apiserver),
        &["get", "/registry/tls", "--print-value-only"],
    ));
    assert_eq!(got.trim(), "over-mtls");

    // snapshot save over TLS, and the file is a valid snapshot.
    let snap_dir = tempfile::tempdir().unwrap();
    let snap = snap_dir.path().join("snapshot.db");
    let saved = etcdctl_tls(
        &first,
        &ca,
        Some(&apiserver),
        &["snapshot", "save", snap.to_str().unwrap()],
    );
    assert!(saved.status.success(), "{}", describe(&saved));
    let out = std::process::Command::new(common::ETCDCTL_BIN)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", snap.to_str().unwrap(), "-w", "json"])
        .output()
        .unwrap();
    let snap_status: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", describe(&out)));
    assert!(
        snap_status["totalKey"].as_u64().unwrap() >= 1,
        "{snap_status}"
    );

    // Refusals on the client port: no certificate, a certificate from
    // another CA, plaintext. The control (the right certificate) passes
    // on the same port at the same time.
    let client_addr = members[1].client_addr();
    let with_cert = TlsProbe::new(&ca, Some(&healthcheck));
    with_cert
        .h2(&client_addr)
        .unwrap_or_else(|e| panic!("the right client certificate was refused: {e}"));
    let no_cert = TlsProbe::new(&ca, None);
    assert!(
        no_cert.accepted(&client_addr).is_err(),
        "client without a certificate accepted"
    );
    let other_ca = TlsProbe::new(&ca, Some(&pki.pair("other-client")));
    assert!(
        other_ca.accepted(&client_addr).is_err(),
        "client with another CA's certificate accepted"
    );
    assert!(
        plaintext_h2(&client_addr).is_err(),
        "plaintext HTTP/2 accepted on the TLS client port"
    );
    // ... and etcdctl sees the same.
    let refused = etcdctl_tls(&members[1].endpoint(), &ca, None, &["get", "x"]);
    assert!(!refused.status.success(), "{}", describe(&refused));
    let refused = etcdctl_tls(
        &members[1].endpoint(),
        &ca,
        Some(&pki.pair("other-client")),
        &["get", "x"],
    );
    assert!(!refused.status.success(), "{}", describe(&refused));
    let plain = common::etcdctl(
        &format!("http://{client_addr}"),
        &["--dial-timeout=3s", "--command-timeout=5s", "get", "x"],
        None,
    );
    assert!(!plain.status.success(), "{}", describe(&plain));

    // Refusals on the peer port: a fake peer with no certificate, with one
    // from another CA, or in plaintext; a peer certificate from the
    // cluster's CA is accepted.
    let peer_addr = members[1].peer_addr();
    TlsProbe::new(&ca, Some(&pki.pair("peer")))
        .accepted(&peer_addr)
        .unwrap_or_else(|e| panic!("the cluster's peer certificate was refused: {e}"));
    assert!(
        TlsProbe::new(&ca, None).accepted(&peer_addr).is_err(),
        "peer without a certificate accepted"
    );
    assert!(
        TlsProbe::new(&ca, Some(&pki.pair("other-peer")))
            .accepted(&peer_addr)
            .is_err(),
        "peer with another CA's certificate accepted"
    );
    assert!(
        plaintext_h2(&peer_addr).is_err(),
        "plaintext HTTP/2 accepted on the TLS peer port"
    );

    // The cluster still works after all that.
    ok(etcdctl_tls(
        &all,
        &ca,
        Some(&healthcheck),
        &["endpoint", "health"],
    ));
    for m in &members {
        assert!(
            m.log().contains("serving client traffic securely"),
            "{}: {}",
            m.name,
            m.log_tail(40)
        );
    }
}

#[test]
fn server_certificate_rotates_without_a_restart() {
    let pki = Pki::generate();
    let mut members = TlsMember::cluster(target(), 1, &pki, &[]);
    let member = &mut members[0];
    let ca = pki.ca_file();
    let probe = TlsProbe::new(&ca, Some(&pki.pair("healthcheck-client")));
    let addr = member.client_addr();

    let before = pki.cert_der("server");
    assert!(
        probe.server_cert(&addr).unwrap() == before,
        "the member does not serve its certificate file"
    );

    pki.reissue("server");
    let after = pki.cert_der("server");
    assert_ne!(before, after, "the reissued certificate is the same");
    // A new connection sees the new certificate, from the same process.
    assert!(
        probe.server_cert(&addr).unwrap() == after,
        "a new connection still sees the replaced certificate"
    );
    assert!(
        member.wait_exit(Duration::ZERO).is_none(),
        "the member restarted"
    );
    // And clients that trust the CA keep working.
    ok(etcdctl_tls(
        &member.endpoint(),
        &ca,
        Some(&pki.pair("apiserver-etcd-client")),
        &["put", "rotated", "yes"],
    ));
    // The peer port rotates the same way.
    let peer_probe = TlsProbe::new(&ca, Some(&pki.pair("peer")));
    let old_peer = pki.cert_der("peer");
    assert!(
        peer_probe.server_cert(&member.peer_addr()).unwrap() == old_peer,
        "the peer port does not serve the peer certificate"
    );
    pki.reissue("peer");
    assert!(
        peer_probe.server_cert(&member.peer_addr()).unwrap() == pki.cert_der("peer"),
        "a new peer connection still sees the replaced certificate"
    );
    assert_ne!(old_peer, pki.cert_der("peer"));
}

#[test]
fn member_joins_a_tls_cluster() {
    let kind = target();
    let pki = Pki::generate();
    let members = TlsMember::cluster(kind, 1, &pki, &[]);
    let ca = pki.ca_file();
    let admin = pki.pair("apiserver-etcd-client");
    let ep = members[0].endpoint();
    ok(etcdctl_tls(
        &ep,
        &ca,
        Some(&admin),
        &["put", "before-join", "1"],
    ));

    let (client_port, peer_port) = (free_port(), free_port());
    let peer_url = format!("https://127.0.0.1:{peer_port}");
    ok(etcdctl_tls(
        &ep,
        &ca,
        Some(&admin),
        &["member", "add", "m1", &format!("--peer-urls={peer_url}")],
    ));
    let initial = format!("m0={},m1={peer_url}", members[0].peer_url());
    // The new member fetches the member list over the peer port (TLS),
    // then catches up over raft (TLS).
    let mut joined = TlsMember::unstarted(
        kind,
        "m1",
        client_port,
        peer_port,
        &initial,
        &pki,
        &["--initial-cluster-state=existing"],
    );
    joined.spawn();
    joined.wait_ready(&pki);
    let got = eventually("read on the joined member", Duration::from_secs(20), || {
        let out = etcdctl_tls(
            &joined.endpoint(),
            &ca,
            Some(&admin),
            &["get", "before-join", "--print-value-only"],
        );
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && text == "1" {
            Ok(text)
        } else {
            Err(describe(&out))
        }
    });
    assert_eq!(got, "1");
    let list = ok(etcdctl_tls(&ep, &ca, Some(&admin), &["member", "list"]));
    assert_eq!(
        list.lines().filter(|l| l.contains(", started,")).count(),
        2,
        "{list}"
    );
}

/// Startup with a TLS file that does not exist: a non-zero exit with a
/// message naming the file, not a panic; and an https URL without any
/// certificate: etcd's message.
#[test]
fn tls_startup_errors() {
    let kind = target();
    let pki = Pki::generate();
    let missing = pki.path("no-such.key");
    let log = startup_failure_log(kind, &pki, &format!("--key-file={}", missing.display()));
    // Go's text for the OS error, as etcd prints it.
    assert!(
        log.contains(&format!(
            "open {}: no such file or directory",
            missing.display()
        )),
        "{log}"
    );

    // A key that is not the certificate's.
    let wrong_key = pki.path("peer.key");
    let log = startup_failure_log(kind, &pki, &format!("--key-file={}", wrong_key.display()));
    assert!(
        log.contains("tls: private key does not match public key"),
        "{log}"
    );

    // An https client URL with no certificate at all.
    let (port, peer_port) = (free_port(), free_port());
    let bin = match kind {
        Kind::Cairn => common::CAIRN_BIN,
        Kind::Etcd => common::ETCD_BIN,
    };
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("log");
    let mut child = std::process::Command::new(bin)
        .args([
            format!("--data-dir={}", dir.path().join("d").display()),
            format!("--listen-client-urls=https://127.0.0.1:{port}"),
            format!("--advertise-client-urls=https://127.0.0.1:{port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("https without a certificate started: {text}"));
    assert!(!status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "TLS key/cert (--cert-file, --key-file) must be provided for client url \
             https://127.0.0.1:{port} with HTTPS scheme"
        )),
        "{text}"
    );
}

/// `http://` and `https://` client URLs on one address: one socket serves
/// both, as etcd's does (client certificates apply to TLS connections).
#[test]
fn one_client_address_serves_http_and_https() {
    let pki = Pki::generate();
    let port = free_port();
    let peer_port = free_port();
    let urls = format!("http://127.0.0.1:{port},https://127.0.0.1:{port}");
    let mut m = TlsMember::unstarted(
        target(),
        "m0",
        port,
        peer_port,
        &format!("m0=https://127.0.0.1:{peer_port}"),
        &pki,
        &[
            &format!("--listen-client-urls={urls}"),
            &format!("--advertise-client-urls=https://127.0.0.1:{port}"),
        ],
    );
    m.spawn();
    m.wait_ready(&pki);
    let ca = pki.ca_file();
    let admin = pki.pair("apiserver-etcd-client");
    ok(etcdctl_tls(
        &m.endpoint(),
        &ca,
        Some(&admin),
        &["put", "k", "tls"],
    ));
    // Plaintext gRPC on that socket. etcd 3.5+ routes plaintext HTTP/2 to
    // its insecure gRPC server there (serve.go: `cmux.HTTP2()` before the
    // TLS listener); etcd 3.4.23 hands it to its TLS server and fails
    // ("first record does not look like a TLS handshake"), so this part
    // is checked against cairn only.
    if m.kind() == Kind::Cairn {
        let plain = common::etcdctl(
            &format!("http://127.0.0.1:{port}"),
            &["get", "k", "--print-value-only"],
            None,
        );
        assert_eq!(ok(plain).trim(), "tls");
    }
    // TLS connections on that socket still need a client certificate.
    assert!(TlsProbe::new(&ca, None).accepted(&m.client_addr()).is_err());
    TlsProbe::new(&ca, Some(&admin))
        .h2(&m.client_addr())
        .unwrap();
    assert!(
        m.log().contains("serving client traffic"),
        "{}",
        m.log_tail(30)
    );
}

/// `--peer-cert-allowed-cn`: a peer certificate from the cluster's CA with
/// another CN is refused on the peer port; the members' own (CN
/// `kube-node`) still form the cluster.
#[test]
fn peer_port_checks_the_allowed_cn() {
    let pki = Pki::generate();
    let members = TlsMember::cluster(target(), 2, &pki, &["--peer-cert-allowed-cn=kube-node"]);
    let ca = pki.ca_file();
    let peer_addr = members[0].peer_addr();
    TlsProbe::new(&ca, Some(&pki.pair("peer")))
        .accepted(&peer_addr)
        .unwrap_or_else(|e| panic!("a peer with the allowed CN was refused: {e}"));
    let healthcheck = pki.pair("healthcheck-client");
    assert!(
        TlsProbe::new(&ca, Some(&healthcheck))
            .accepted(&peer_addr)
            .is_err(),
        "a certificate with CN kube-etcd-healthcheck-client was accepted on the peer port"
    );
    // The client port has no such restriction.
    TlsProbe::new(&ca, Some(&healthcheck))
        .h2(&members[0].client_addr())
        .unwrap();
    ok(etcdctl_tls(
        &members[1].endpoint(),
        &ca,
        Some(&healthcheck),
        &["endpoint", "health"],
    ));
}

/// Starts a member with kubeadm's TLS flags and `flag`, which must make it
/// fail to start: checks it exits non-zero without a panic; its log.
fn startup_failure_log(kind: Kind, pki: &Pki, flag: &str) -> String {
    let (client_port, peer_port) = (free_port(), free_port());
    let mut m = TlsMember::unstarted(
        kind,
        "m0",
        client_port,
        peer_port,
        &format!("m0=https://127.0.0.1:{peer_port}"),
        pki,
        &[flag],
    );
    m.spawn();
    let status = m
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("still running with {flag}:\n{}", m.log_tail(30)));
    assert!(!status.success(), "{flag}: {status}");
    let log = m.log();
    assert!(!log.contains("panicked"), "{log}");
    log
}

/// `--auto-tls --peer-auto-tls`: each member makes a self-signed
/// certificate under `<data-dir>/fixtures/{client,peer}` and the members
/// form a cluster over TLS with them (peers' self-signed certificates are
/// not verified, as etcd does not verify them).
#[test]
fn auto_tls_cluster() {
    let kind = target();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}=https://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<TlsMember> = ports
        .iter()
        .enumerate()
        .map(|(i, (c, p))| {
            let mut m = TlsMember::unstarted_with(
                kind,
                &format!("m{i}"),
                *c,
                *p,
                &initial,
                &["--auto-tls", "--peer-auto-tls"],
            );
            m.spawn();
            m
        })
        .collect();
    for m in &mut members {
        m.wait_ready_trusting(None);
    }
    for m in &members {
        for side in ["client", "peer"] {
            let dir = m.data_dir().join("fixtures").join(side);
            assert!(dir.join("cert.pem").is_file(), "{}", dir.display());
            assert!(dir.join("key.pem").is_file(), "{}", dir.display());
        }
    }
    // etcdctl 3.4 only uses TLS without a CA file when told
    // --insecure-transport=false.
    let insecure = [
        "--insecure-skip-tls-verify",
        "--insecure-transport=false",
        "--dial-timeout=3s",
    ];
    let with = |args: &[&str]| -> Vec<String> {
        insecure.iter().chain(args).map(|s| s.to_string()).collect()
    };
    let args = with(&["put", "auto", "tls"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(common::etcdctl(&members[0].endpoint(), &args, None));
    let args = with(&["get", "auto", "--print-value-only"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = eventually("read on another member", Duration::from_secs(10), || {
        let out = common::etcdctl(&members[2].endpoint(), &args, None);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && text == "tls" {
            Ok(text)
        } else {
            Err(describe(&out))
        }
    });
    assert_eq!(got, "tls");

    // The HTTP endpoints over TLS on the client port, also for a client
    // that offers only HTTP/1.1 in ALPN (as curl --http1.1 and wget do).
    for version in ["--http2", "--http1.1"] {
        let out = std::process::Command::new("curl")
            .args(["-sSk", "--max-time", "5", version])
            .arg(format!("{}/health", members[1].endpoint()))
            .output()
            .expect("run curl");
        // etcd 3.4 leaves out the reason; 3.5 and later, and cairn, have it.
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.starts_with(r#"{"health":"true""#),
            "curl {version}: {body} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// An `https://` metrics URL serves the HTTP endpoints with the client TLS
/// settings, client certificates required as on the client port.
#[test]
fn https_metrics_url() {
    let pki = Pki::generate();
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let flag = format!("--listen-metrics-urls={url}");
    let _member = TlsMember::cluster(target(), 1, &pki, &[&flag]);
    let client = pki.pair("healthcheck-client");
    let curl = |with_cert: bool, version: &str, path: &str| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "5", version, "--cacert"])
            .arg(pki.ca_file());
        if with_cert {
            cmd.arg("--cert")
                .arg(&client.cert)
                .arg("--key")
                .arg(&client.key);
        }
        cmd.arg(format!("{url}{path}")).output().expect("run curl")
    };
    for version in ["--http2", "--http1.1"] {
        let out = curl(true, version, "/health");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.starts_with(r#"{"health":"true""#),
            "{version}: {body} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = curl(true, version, "/metrics");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("etcd_server_has_leader 1"),
            "{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let refused = curl(false, "--http1.1", "/health");
    assert!(
        !refused.status.success() && refused.stdout.is_empty(),
        "served without a client certificate: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
}

/// `--config-file` with TLS in `client-transport-security` and
/// `peer-transport-security`, including the client `allowed-cn` that only
/// the file can set: a client certificate of the CA with another CN is
/// refused, the allowed one served.
#[test]
fn config_file_with_tls_sections() {
    let kind = target();
    let pki = Pki::generate();
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("etcd.yaml");
    let (c, p) = (free_port(), free_port());
    let initial = format!("cfg=https://127.0.0.1:{p}");
    let flag = format!("--config-file={}", conf.display());
    let mut m = TlsMember::unstarted_with(kind, "cfg", c, p, &initial, &[&flag]);
    let f = |name: &str| pki.path(name).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "name: cfg\n\
             data-dir: {data}\n\
             listen-client-urls: https://127.0.0.1:{c}\n\
             advertise-client-urls: https://127.0.0.1:{c}\n\
             listen-peer-urls: https://127.0.0.1:{p}\n\
             initial-advertise-peer-urls: https://127.0.0.1:{p}\n\
             initial-cluster: {initial}\n\
             initial-cluster-token: from-the-file\n\
             client-transport-security:\n  \
               cert-file: {server_crt}\n  \
               key-file: {server_key}\n  \
               trusted-ca-file: {ca}\n  \
               client-cert-auth: true\n  \
               allowed-cn: kube-etcd-healthcheck-client\n\
             peer-transport-security:\n  \
               cert-file: {peer_crt}\n  \
               key-file: {peer_key}\n  \
               trusted-ca-file: {ca}\n  \
               client-cert-auth: true\n",
            data = m.data_dir().display(),
            server_crt = f("server.crt"),
            server_key = f("server.key"),
            peer_crt = f("peer.crt"),
            peer_key = f("peer.key"),
            ca = f("ca.crt"),
        ),
    )
    .unwrap();
    m.spawn();
    m.wait_ready(&pki);
    let ca = pki.ca_file();
    let allowed = pki.pair("healthcheck-client");
    ok(etcdctl_tls(
        &m.endpoint(),
        &ca,
        Some(&allowed),
        &["put", "k", "v"],
    ));
    let other_cn = pki.pair("apiserver-etcd-client");
    let out = etcdctl_tls(&m.endpoint(), &ca, Some(&other_cn), &["get", "k"]);
    // etcd 3.4 reads the client side's allowed-cn but never applies it;
    // 3.5 and 3.6 (`copySecurityDetails` in embed/config.go) do, as cairn.
    if kind == Kind::Cairn {
        assert!(
            !out.status.success(),
            "a client CN outside allowed-cn was served: {}",
            describe(&out)
        );
    }
}

/// Allowed CNs with no client certificate asked for (no peer CA, no
/// `--peer-client-cert-auth`) have no effect: Go never checks them then,
/// so etcd serves every TLS client, and so does cairn.
#[test]
fn allowed_cn_without_client_auth_has_no_effect() {
    let pki = Pki::generate();
    let (c, p) = (free_port(), free_port());
    let f = |name: &str| format!("{}", pki.path(name).display());
    let flags = [
        format!("--peer-cert-file={}", f("peer.crt")),
        format!("--peer-key-file={}", f("peer.key")),
        "--peer-cert-allowed-cn=someone-else".to_string(),
        format!("--cert-file={}", f("server.crt")),
        format!("--key-file={}", f("server.key")),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let initial = format!("solo=https://127.0.0.1:{p}");
    let mut m = TlsMember::unstarted_with(target(), "solo", c, p, &initial, &flags);
    m.spawn();
    m.wait_ready_trusting(Some(&pki));
    let ca = pki.ca_file();
    TlsProbe::new(&ca, None)
        .accepted(&m.peer_addr())
        .unwrap_or_else(|e| panic!("a TLS client without a certificate was refused: {e}"));
    TlsProbe::new(&ca, Some(&pki.pair("healthcheck-client")))
        .accepted(&m.peer_addr())
        .unwrap_or_else(|e| panic!("a certificate with another CN was refused: {e}"));
}
