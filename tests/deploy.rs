//! The deploy acceptance tests of issue 6: cairn run from the files in
//! `deploy/` exactly as they are written, with only what differs between a
//! real machine and this test changed — addresses and ports (onto free
//! loopback ports), member names, the data dir and the certificate paths
//! (onto a kubeadm-style PKI made with openssl).
//!
//! * `kubeadm_static_pod`: three members started with the `command:` of
//!   `deploy/kubernetes/etcd.yaml`; the operator's etcdctl commands over
//!   mutual TLS; refusals on the client and peer ports; the manifest's
//!   probes on a healthy member, and on a learner that joins with the same
//!   command line (not ready until it is promoted).
//! * `systemd_unit_verifies`: `systemd-analyze verify` on the unit.
//! * `systemd_unit_runs_a_cluster`: three members started as systemd would
//!   start `deploy/systemd/cairn.service` with `cairn.env` (its `ExecStart=`,
//!   only the environment file's variables, `NOTIFY_SOCKET`): `READY=1`,
//!   etcdctl over TLS, then the unit's `KillSignal` within its
//!   `TimeoutStopSec`, exit 0 and `STOPPING=1`.
//!
//! A failing test prints the end of every member's log.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::http::{self, HttpResponse};
use common::tls::{etcdctl_tls, plaintext_h2, Pair, Pki, TlsProbe};
use common::{free_port, CAIRN_BIN, ETCDCTL_BIN};
use yaml_rust2::{Yaml, YamlLoader};

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/etcd.yaml");
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/cairn.service");
const ENV_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/cairn.env");

/// How long a member started from a deploy file gets to serve clients.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Where kubeadm keeps etcd's certificates, and where the manifest's data
/// volume is mounted.
const KUBEADM_PKI: &str = "/etc/kubernetes/pki/etcd";
const KUBEADM_DATA: &str = "/var/lib/etcd";

/// The manifest's flags that name an address, a member or a path: the only
/// ones whose values the test may change.
const KUBEADM_LOCAL_FLAGS: &[&str] = &[
    "--advertise-client-urls",
    "--cert-file",
    "--data-dir",
    "--initial-advertise-peer-urls",
    "--initial-cluster",
    "--key-file",
    "--listen-client-urls",
    "--listen-metrics-urls",
    "--listen-peer-urls",
    "--name",
    "--peer-cert-file",
    "--peer-key-file",
    "--peer-trusted-ca-file",
    "--trusted-ca-file",
];

/// The env file's variables that name an address, a member or a path.
const SYSTEMD_LOCAL_VARS: &[&str] = &[
    "ETCD_NAME",
    "ETCD_DATA_DIR",
    "ETCD_LISTEN_CLIENT_URLS",
    "ETCD_ADVERTISE_CLIENT_URLS",
    "ETCD_LISTEN_PEER_URLS",
    "ETCD_INITIAL_ADVERTISE_PEER_URLS",
    "ETCD_LISTEN_METRICS_URLS",
    "ETCD_INITIAL_CLUSTER",
    "ETCD_CERT_FILE",
    "ETCD_KEY_FILE",
    "ETCD_TRUSTED_CA_FILE",
    "ETCD_PEER_CERT_FILE",
    "ETCD_PEER_KEY_FILE",
    "ETCD_PEER_TRUSTED_CA_FILE",
];

/// systemd's `PATH` for system services.
const SYSTEMD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// ---------------------------------------------------------------------------
// kubeadm static pod
// ---------------------------------------------------------------------------

#[test]
fn kubeadm_static_pod() {
    let manifest = StaticPod::load();
    let pki = Pki::generate();
    let names = ["cp1", "cp2", "cp3"];
    let machines: Vec<Machine> = names
        .iter()
        .map(|n| Machine::new(n, &manifest.node_ip()))
        .collect();
    let initial_cluster = manifest.initial_cluster(&machines);

    let mut members: Vec<Daemon> = Vec::new();
    for m in &machines {
        let mut d = Daemon::new(m.name.as_str());
        let argv = manifest.command_for(m, &initial_cluster, &pki, d.dir(), &[]);
        d.start(&argv, None, Path::new("/"));
        members.push(d);
    }
    for (d, m) in members.iter_mut().zip(&machines) {
        wait_serving(d, &m.client_url(), &pki);
    }

    operator_commands(&machines, &pki);
    mtls_refusals(&machines[1], &pki);
    for m in &machines {
        for probe in &manifest.probes {
            let r = probe.get_until(m, |r| r.status == 200);
            assert_ok_answer(&r, &format!("{} on healthy {}", probe.kind, m.name));
        }
    }
    learner_probes(&manifest, &machines, &pki);

    for d in &members {
        assert_no_ignored_settings(d);
    }
}

/// `member list`, `endpoint status` and `endpoint health` on all three
/// endpoints, put/get, `snapshot save` and `snapshot status`, as in the
/// operator's routine (CONTRACT.md section 6).
fn operator_commands(machines: &[Machine], pki: &Pki) {
    let ca = pki.ca_file();
    let admin = pki.pair("apiserver-etcd-client");
    let healthcheck = pki.pair("healthcheck-client");
    let first = machines[0].client_url();
    let all = machines
        .iter()
        .map(Machine::client_url)
        .collect::<Vec<_>>()
        .join(",");

    let list = json(ok(etcdctl_tls(
        &first,
        &ca,
        Some(&admin),
        &["member", "list", "-w", "json"],
    )));
    let mut seen: Vec<(String, String, String)> = list["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {list}"))
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                m["peerURLs"][0].as_str().unwrap_or("").to_string(),
                m["clientURLs"][0].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    let want: Vec<(String, String, String)> = machines
        .iter()
        .map(|m| (m.name.clone(), m.peer_url(), m.client_url()))
        .collect();
    assert_eq!(seen, want, "member list: {list}");
    // The table the operator reads.
    let table = ok(etcdctl_tls(
        &first,
        &ca,
        Some(&admin),
        &["member", "list", "-w", "table"],
    ));
    assert_eq!(table.matches("started").count(), 3, "{table}");

    let status = json(ok(etcdctl_tls(
        &all,
        &ca,
        Some(&healthcheck),
        &["endpoint", "status", "-w", "json"],
    )));
    let entries = status.as_array().unwrap();
    assert_eq!(entries.len(), 3, "endpoint status: {status}");
    let leader = entries[0]["Status"]["leader"].as_u64().unwrap_or(0);
    assert_ne!(leader, 0, "endpoint status: {status}");
    for e in entries {
        assert_eq!(
            e["Status"]["leader"].as_u64(),
            Some(leader),
            "endpoint status: {status}"
        );
    }
    let table = ok(etcdctl_tls(
        &all,
        &ca,
        Some(&healthcheck),
        &["endpoint", "status", "-w", "table"],
    ));
    for m in machines {
        assert!(table.contains(&m.client_url()), "{table}");
    }

    let health = eventually("endpoint health", Duration::from_secs(10), || {
        let out = etcdctl_tls(&all, &ca, Some(&healthcheck), &["endpoint", "health"]);
        if out.status.success() {
            Ok(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        } else {
            Err(describe(&out))
        }
    });
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");

    // Put through one member's advertised URL, read through another's
    // loopback listener (the manifest's https://127.0.0.1:2379).
    ok(etcdctl_tls(
        &first,
        &ca,
        Some(&admin),
        &["put", "/registry/deploy/kubeadm", "static-pod"],
    ));
    let got = ok(etcdctl_tls(
        &machines[2].local_client_url(),
        &ca,
        Some(&admin),
        &["get", "/registry/deploy/kubeadm", "--print-value-only"],
    ));
    assert_eq!(got.trim(), "static-pod");

    let snap_dir = tempfile::tempdir().unwrap();
    let snap = snap_dir.path().join("snapshotdb");
    let snap = snap.to_str().unwrap();
    let saved = etcdctl_tls(&first, &ca, Some(&admin), &["snapshot", "save", snap]);
    assert!(
        saved.status.success(),
        "snapshot save: {}",
        describe(&saved)
    );
    let out = Command::new(ETCDCTL_BIN)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", snap, "-w", "json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let snap_status = json(ok(out));
    assert!(
        snap_status["totalKey"].as_u64().unwrap_or(0) >= 1,
        "snapshot status: {snap_status}"
    );
    assert!(
        snap_status["revision"].as_u64().unwrap_or(0) >= 2,
        "snapshot status: {snap_status}"
    );
}

/// Without a client certificate, with one from another CA, or in
/// plaintext, neither the client port nor the peer port serves; with the
/// cluster's certificates, both do.
fn mtls_refusals(m: &Machine, pki: &Pki) {
    let ca = pki.ca_file();
    for (port, addr, right, other) in [
        (
            "client",
            m.client_addr(),
            "healthcheck-client",
            "other-client",
        ),
        ("peer", m.peer_addr(), "peer", "other-peer"),
    ] {
        TlsProbe::new(&ca, Some(&pki.pair(right)))
            .accepted(&addr)
            .unwrap_or_else(|e| panic!("{port} port refused the cluster's {right} cert: {e}"));
        assert!(
            TlsProbe::new(&ca, None).accepted(&addr).is_err(),
            "{port} port {addr} accepted a client without a certificate"
        );
        assert!(
            TlsProbe::new(&ca, Some(&pki.pair(other)))
                .accepted(&addr)
                .is_err(),
            "{port} port {addr} accepted a certificate from another CA"
        );
        assert!(
            plaintext_h2(&addr).is_err(),
            "{port} port {addr} accepted plaintext HTTP/2"
        );
    }
    // The client port also gives the answers etcdctl sees.
    let ep = m.client_url();
    let no_cert = etcdctl_tls(&ep, &ca, None, &["get", "x"]);
    assert!(!no_cert.status.success(), "{}", describe(&no_cert));
    let other = etcdctl_tls(&ep, &ca, Some(&pki.pair("other-client")), &["get", "x"]);
    assert!(!other.status.success(), "{}", describe(&other));
    let plain = common::etcdctl(
        &format!("http://{}", m.client_addr()),
        &["--dial-timeout=3s", "--command-timeout=5s", "get", "x"],
        None,
    );
    assert!(!plain.status.success(), "{}", describe(&plain));
}

/// kubeadm's join: `member add --learner`, then the manifest's command line
/// with every member in `--initial-cluster` and
/// `--initial-cluster-state=existing`. The learner is live but neither
/// ready nor started (kubelet keeps it out of service until kubeadm
/// promotes it); once promoted, it is ready.
fn learner_probes(manifest: &StaticPod, machines: &[Machine], pki: &Pki) {
    let ca = pki.ca_file();
    let admin = pki.pair("apiserver-etcd-client");
    let learner = Machine::new("cp4", &manifest.node_ip());
    let added = json(ok(etcdctl_tls(
        &machines[0].client_url(),
        &ca,
        Some(&admin),
        &[
            "member",
            "add",
            &learner.name,
            "--learner",
            &format!("--peer-urls={}", learner.peer_url()),
            "-w",
            "json",
        ],
    )));
    let id = added["member"]["ID"]
        .as_u64()
        .unwrap_or_else(|| panic!("member add: {added}"));
    assert_eq!(
        added["member"]["isLearner"].as_bool(),
        Some(true),
        "{added}"
    );

    let mut all = machines.to_vec();
    all.push(learner.clone());
    let initial_cluster = manifest.initial_cluster(&all);
    let mut d = Daemon::new(&learner.name);
    let argv = manifest.command_for(
        &learner,
        &initial_cluster,
        pki,
        d.dir(),
        &["--initial-cluster-state=existing"],
    );
    d.start(&argv, None, Path::new("/"));
    wait_serving(&mut d, &learner.client_url(), pki);

    for probe in &manifest.probes {
        let want = if probe.kind == "livenessProbe" {
            200
        } else {
            503
        };
        let r = probe.get_until(&learner, |r| r.status == want);
        if want == 200 {
            assert_ok_answer(&r, &format!("{} on the learner", probe.kind));
        } else {
            assert_eq!(
                r.status, 503,
                "{} on the learner {}: {r:?}",
                probe.kind, probe.path
            );
            assert!(
                r.body.contains("non_learner"),
                "{} on the learner names no failed non_learner check: {r:?}",
                probe.kind
            );
        }
    }

    // kubeadm promotes until the learner has caught up; then it is ready.
    eventually("member promote", Duration::from_secs(60), || {
        let out = etcdctl_tls(
            &machines[0].client_url(),
            &ca,
            Some(&admin),
            &["member", "promote", &format!("{id:x}")],
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(describe(&out))
        }
    });
    for probe in &manifest.probes {
        let r = probe.get_until(&learner, |r| r.status == 200);
        assert_ok_answer(&r, &format!("{} on the promoted cp4", probe.kind));
    }
    assert_no_ignored_settings(&d);
}

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

#[test]
fn systemd_unit_verifies() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!(
            "SKIPPED systemd_unit_verifies: systemd-analyze is missing and \
             `apt-get install systemd` did not provide it"
        );
        return;
    };
    // The unit exactly as shipped: it names no path that must exist on
    // this machine but /usr/bin/env (cairn is looked up in systemd's PATH).
    Unit::load();
    let unit_copy = Path::new(UNIT);
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(unit_copy)
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains("cairn")).collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify {}: {}",
        unit_copy.display(),
        describe(&out)
    );
}

#[test]
fn systemd_unit_runs_a_cluster() {
    let unit = Unit::load();
    assert_eq!(
        unit.get("Type"),
        Some("notify"),
        "the test speaks sd_notify"
    );
    let kill_signal = signal_number(unit.get("KillSignal").unwrap_or("SIGTERM"));
    let stop_timeout = systemd_timespan(unit.get("TimeoutStopSec").unwrap_or("90s"));
    let env_file = unit
        .get("EnvironmentFile")
        .expect("EnvironmentFile=")
        .trim_start_matches('-');
    assert_eq!(
        Path::new(env_file).file_name(),
        Path::new(ENV_FILE).file_name(),
        "the unit reads another environment file than deploy/systemd's"
    );
    let env = EnvFile::load(ENV_FILE);
    let pki = Pki::generate();

    // The cluster of the env file's ETCD_INITIAL_CLUSTER, each member with
    // its own copy of the file, edited as the file says for other machines.
    let this_name = env.get("ETCD_NAME");
    let cluster = parse_initial_cluster(env.get("ETCD_INITIAL_CLUSTER"));
    assert_eq!(cluster.len(), 3, "ETCD_INITIAL_CLUSTER");
    let this_host = cluster
        .iter()
        .find(|(n, _, _)| n == this_name)
        .map(|(_, h, _)| h.clone())
        .expect("ETCD_NAME in ETCD_INITIAL_CLUSTER");
    let machines: Vec<Machine> = cluster
        .iter()
        .map(|(name, _, _)| Machine::new(name, &this_host))
        .collect();
    let mut peers = AddressMap::default();
    for ((_, host, port), m) in cluster.iter().zip(&machines) {
        peers.insert(host, *port, m.peer);
    }

    let mut members = Vec::new();
    for m in &machines {
        let mut d = Daemon::new(&m.name);
        let vars = env.vars_for(m, &peers, &pki, d.dir());
        let notify = NotifySocket::bind(&d.dir().join("notify"));
        let mut full: Vec<(String, String)> = vars.clone();
        full.push(("PATH".into(), SYSTEMD_PATH.into()));
        full.push(("NOTIFY_SOCKET".into(), notify.path()));
        d.start(&unit.exec_start(CAIRN_BIN), Some(&full), Path::new("/"));
        members.push((d, notify));
    }
    for (d, notify) in members.iter_mut() {
        notify.wait_for(d, "READY=1", START_DEADLINE);
    }

    // READY=1 means serving: etcdctl works right away, over TLS.
    let ca = pki.ca_file();
    let admin = pki.pair("apiserver-etcd-client");
    ok(etcdctl_tls(
        &machines[0].client_url(),
        &ca,
        Some(&admin),
        &["put", "/deploy/systemd", "notify"],
    ));
    let got = ok(etcdctl_tls(
        &machines[2].local_client_url(),
        &ca,
        Some(&admin),
        &["get", "/deploy/systemd", "--print-value-only"],
    ));
    assert_eq!(got.trim(), "notify");

    // `systemctl stop` on the leader: KillSignal, then up to TimeoutStopSec.
    let leader = leader_index(&machines, &pki);
    let (d, notify) = &mut members[leader];
    let (status, took) = d
        .signal_and_wait(kill_signal, stop_timeout)
        .unwrap_or_else(|e| panic!("stopping the leader {}: {e}", machines[leader].name));
    assert!(
        status.success(),
        "{} exited with {status} after signal {kill_signal}",
        machines[leader].name
    );
    assert!(took <= stop_timeout);
    notify.wait_for_exited("STOPPING=1");
    let order = notify.received.clone();
    let ready_at = order.iter().position(|s| s == "READY=1");
    let stopping_at = order.iter().position(|s| s == "STOPPING=1");
    assert!(ready_at < stopping_at, "notifications in order: {order:?}");

    // The two left elect a leader and keep serving.
    let rest: Vec<&Machine> = machines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, m)| m)
        .collect();
    eventually(
        "a write after the leader stopped",
        Duration::from_secs(20),
        || {
            let out = etcdctl_tls(
                &rest[0].client_url(),
                &ca,
                Some(&admin),
                &["put", "/deploy/systemd", "after-stop"],
            );
            if out.status.success() {
                Ok(())
            } else {
                Err(describe(&out))
            }
        },
    );
    let got = ok(etcdctl_tls(
        &rest[1].client_url(),
        &ca,
        Some(&admin),
        &["get", "/deploy/systemd", "--print-value-only"],
    ));
    assert_eq!(got.trim(), "after-stop");

    for (d, _) in &members {
        assert_no_ignored_settings(d);
    }
}

// ---------------------------------------------------------------------------
// Helpers: machines and addresses
// ---------------------------------------------------------------------------

/// One machine of a deploy file, on loopback: the address the file uses for
/// it and the free ports standing in for its 2379 (on that address and on
/// 127.0.0.1), 2380 and 2381.
#[derive(Clone, Debug)]
struct Machine {
    name: String,
    /// The machine's address in the deploy file (10.0.0.11).
    host: String,
    client: u16,
    local_client: u16,
    peer: u16,
    metrics: u16,
}

impl Machine {
    fn new(name: &str, host: &str) -> Machine {
        Machine {
            name: name.to_string(),
            host: host.to_string(),
            client: free_port(),
            local_client: free_port(),
            peer: free_port(),
            metrics: free_port(),
        }
    }

    /// Its addresses: the file's `host:2379`, `host:2380` and the loopback
    /// `127.0.0.1:2379` and `127.0.0.1:2381`.
    fn addresses(&self) -> AddressMap {
        let mut a = AddressMap::default();
        a.insert(&self.host, 2379, self.client);
        a.insert(&self.host, 2380, self.peer);
        a.insert("127.0.0.1", 2379, self.local_client);
        a.insert("127.0.0.1", 2381, self.metrics);
        a
    }

    fn client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client)
    }

    fn local_client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.local_client)
    }

    fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer)
    }

    fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    fn peer_addr(&self) -> String {
        format!("127.0.0.1:{}", self.peer)
    }
}

/// A deploy file's `host:port` → the loopback port standing in for it.
#[derive(Default, Clone, Debug)]
struct AddressMap(BTreeMap<(String, u16), u16>);

impl AddressMap {
    fn insert(&mut self, host: &str, port: u16, to: u16) {
        self.0.insert((host.to_string(), port), to);
    }

    fn port(&self, host: &str, port: u16) -> u16 {
        *self
            .0
            .get(&(host.to_string(), port))
            .unwrap_or_else(|| panic!("{host}:{port} is no address of this machine: {self:?}"))
    }

    /// Rewrites a list of URLs (`a,b`, or `name=url,...`) onto loopback;
    /// panics on an address the map does not know.
    fn rewrite_urls(&self, value: &str) -> String {
        value
            .split(',')
            .map(|item| {
                let (name, url) = match item.split_once('=') {
                    Some((n, u)) if !n.contains("://") => (Some(n), u),
                    _ => (None, item),
                };
                let (scheme, host, port, path) = split_url(url);
                let url = format!("{scheme}://127.0.0.1:{}{path}", self.port(&host, port));
                match name {
                    Some(n) => format!("{n}={url}"),
                    None => url,
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `scheme://host:port/path` → its parts.
fn split_url(url: &str) -> (String, String, u16, String) {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("not a URL: {url:?}"));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in {url:?}"));
    let port = port
        .parse()
        .unwrap_or_else(|_| panic!("bad port in {url:?}"));
    (scheme.into(), host.into(), port, path.into())
}

/// `ETCD_INITIAL_CLUSTER`'s `name=https://host:port,...` → (name, host,
/// port) in order.
fn parse_initial_cluster(value: &str) -> Vec<(String, String, u16)> {
    value
        .split(',')
        .map(|entry| {
            let (name, url) = entry
                .split_once('=')
                .unwrap_or_else(|| panic!("bad initial-cluster entry {entry:?}"));
            let (_, host, port, _) = split_url(url);
            (name.to_string(), host, port)
        })
        .collect()
}

/// Replaces the deploy file's path prefix `from` by `to` (a path under the
/// test's temp dirs).
fn rewrite_path(value: &str, from: &str, to: &Path) -> Option<String> {
    let rest = value.strip_prefix(from)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    Some(format!("{}{rest}", to.display()))
}

// ---------------------------------------------------------------------------
// Helpers: the kubeadm manifest
// ---------------------------------------------------------------------------

/// The static pod manifest: its container's `command` and its probes.
struct StaticPod {
    command: Vec<String>,
    probes: Vec<Probe>,
}

/// An `httpGet` probe of the manifest.
struct Probe {
    /// `livenessProbe`, `readinessProbe` or `startupProbe`.
    kind: &'static str,
    scheme: String,
    host: String,
    port: u16,
    path: String,
}

impl StaticPod {
    fn load() -> StaticPod {
        let text = std::fs::read_to_string(MANIFEST).unwrap();
        let docs = YamlLoader::load_from_str(&text).expect("parse the manifest");
        assert_eq!(docs.len(), 1, "one document in {MANIFEST}");
        let pod = &docs[0];
        assert_eq!(pod["kind"].as_str(), Some("Pod"));
        let containers = pod["spec"]["containers"].as_vec().expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        let c = &containers[0];
        let command: Vec<String> = c["command"]
            .as_vec()
            .expect("command")
            .iter()
            .map(|a| a.as_str().expect("command items are strings").to_string())
            .collect();
        assert_eq!(command[0], "cairn", "the manifest runs cairn");
        let probes = ["livenessProbe", "readinessProbe", "startupProbe"]
            .into_iter()
            .map(|kind| {
                let get = &c[kind]["httpGet"];
                assert!(!get.is_badvalue(), "no {kind}.httpGet in the manifest");
                let text = |field: &str| -> String {
                    match &get[field] {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => panic!("{kind}.httpGet.{field}: {other:?}"),
                    }
                };
                Probe {
                    kind,
                    scheme: text("scheme"),
                    host: text("host"),
                    port: text("port").parse().expect("probe port"),
                    path: text("path"),
                }
            })
            .collect();
        StaticPod { command, probes }
    }

    fn flag(&self, name: &str) -> &str {
        self.command
            .iter()
            .find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {name}= in the manifest's command"))
    }

    /// The node address the manifest is written for (its advertised peer
    /// URL's host).
    fn node_ip(&self) -> String {
        split_url(self.flag("--initial-advertise-peer-urls")).1
    }

    /// `--initial-cluster` for `machines`: each one's name and its
    /// rewritten `--initial-advertise-peer-urls`.
    fn initial_cluster(&self, machines: &[Machine]) -> String {
        let advertised = self.flag("--initial-advertise-peer-urls");
        machines
            .iter()
            .map(|m| format!("{}={}", m.name, m.addresses().rewrite_urls(advertised)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The manifest's command for machine `m`: `cairn` → the built binary,
    /// addresses onto `m`'s ports, the name, `--initial-cluster`, the data
    /// dir under `dir`, the certificates from `pki`; then `extra` flags
    /// (in kubeadm's sorted order). Asserts that only those changed.
    fn command_for(
        &self,
        m: &Machine,
        initial_cluster: &str,
        pki: &Pki,
        dir: &Path,
        extra: &[&str],
    ) -> Vec<String> {
        let addresses = m.addresses();
        let mut argv = vec![CAIRN_BIN.to_string()];
        for arg in &self.command[1..] {
            let (flag, value) = arg
                .split_once('=')
                .unwrap_or_else(|| panic!("manifest flag without '=': {arg}"));
            assert!(flag.starts_with("--"), "not a flag: {arg}");
            let value = if flag == "--name" {
                m.name.clone()
            } else if flag == "--initial-cluster" {
                initial_cluster.to_string()
            } else if value.contains("://") {
                addresses.rewrite_urls(value)
            } else if value.starts_with('/') {
                rewrite_path(value, KUBEADM_PKI, pki.dir())
                    .or_else(|| rewrite_path(value, KUBEADM_DATA, &dir.join("data")))
                    .unwrap_or_else(|| panic!("unexpected path in the manifest: {arg}"))
            } else {
                value.to_string()
            };
            let new = format!("{flag}={value}");
            assert!(
                new == *arg || KUBEADM_LOCAL_FLAGS.contains(&flag),
                "the test changed {arg} to {new}"
            );
            argv.push(new);
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv[1..].sort();

        // The same flags as the manifest (plus `extra`), nothing left that
        // points at the machine of the manifest.
        let names = |args: &[String]| -> BTreeSet<String> {
            args.iter()
                .map(|a| a.split('=').next().unwrap().to_string())
                .collect()
        };
        let mut want = names(&self.command[1..]);
        want.extend(names(
            &extra.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ));
        assert_eq!(names(&argv[1..]), want, "flag names passed vs manifest");
        assert_eq!(argv.len(), self.command.len() + extra.len());
        for a in &argv[1..] {
            assert!(
                !a.contains(&m.host) && !a.contains("/etc/kubernetes") && !a.contains("/var/lib"),
                "left a machine address or path in {a}"
            );
        }
        for file in [
            "--cert-file",
            "--key-file",
            "--peer-cert-file",
            "--peer-key-file",
        ] {
            let path = argv
                .iter()
                .find_map(|a| a.strip_prefix(file)?.strip_prefix('='))
                .unwrap();
            assert!(Path::new(path).is_file(), "{file}={path}: no such file");
        }
        argv
    }
}

impl Probe {
    /// The probe's URL for machine `m` (its port onto `m`'s ports).
    fn port_on(&self, m: &Machine) -> u16 {
        assert_eq!(
            self.scheme, "HTTP",
            "{}: kubelet probes without TLS",
            self.kind
        );
        assert_eq!(self.host, "127.0.0.1", "{}: probe host", self.kind);
        m.addresses().port(&self.host, self.port)
    }

    /// GETs the probe on `m` until `want` holds (10 s at most); the last
    /// answer.
    fn get_until(&self, m: &Machine, want: impl Fn(&HttpResponse) -> bool) -> HttpResponse {
        http::get_until(self.port_on(m), &self.path, Duration::from_secs(10), want)
    }
}

/// A probe's answer that kubelet counts as success, with etcd's body.
fn assert_ok_answer(r: &HttpResponse, what: &str) {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    assert_eq!(r.body.trim(), "ok", "{what}: {r:?}");
}

// ---------------------------------------------------------------------------
// Helpers: the systemd unit and its environment file
// ---------------------------------------------------------------------------

/// The `[Service]` section of the unit.
struct Unit {
    service: Vec<(String, String)>,
}

impl Unit {
    fn load() -> Unit {
        let text = std::fs::read_to_string(UNIT).unwrap();
        let mut section = String::new();
        let mut service = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            assert!(!line.ends_with('\\'), "continued lines: {line}");
            if let Some(name) = line.strip_prefix('[') {
                section = name.trim_end_matches(']').to_string();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not a setting: {line}"));
            if section == "Service" {
                service.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let unit = Unit { service };
        let execs = unit.service.iter().filter(|(k, _)| k == "ExecStart");
        assert_eq!(execs.count(), 1, "one ExecStart=");
        unit
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.service
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `ExecStart=`'s command line with its binary replaced by `binary`.
    fn exec_start(&self, binary: &str) -> Vec<String> {
        let line = self.get("ExecStart").unwrap();
        let line = line.trim_start_matches(['@', '-', ':', '+', '!']);
        assert!(
            !line.contains(['"', '\'', '$', '%']),
            "quoting, variables and specifiers are not handled: {line}"
        );
        let mut argv: Vec<String> = line.split_whitespace().map(String::from).collect();
        // `/usr/bin/env cairn`: cairn from systemd's PATH.
        if argv[0] == "/usr/bin/env" {
            argv.remove(0);
        }
        assert!(
            argv[0] == "cairn" || (argv[0].starts_with('/') && argv[0].ends_with("/cairn")),
            "ExecStart= runs {}",
            argv[0]
        );
        argv[0] = binary.to_string();
        argv
    }
}

/// An `EnvironmentFile=`: `KEY=VALUE` lines, `#`/`;` comments, blank lines.
struct EnvFile {
    vars: Vec<(String, String)>,
}

impl EnvFile {
    fn load(path: &str) -> EnvFile {
        let text = std::fs::read_to_string(path).unwrap();
        let mut vars: Vec<(String, String)> = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            assert!(!line.ends_with('\\'), "continued lines: {line}");
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            let k = k.trim().to_string();
            assert!(
                !vars.iter().any(|(seen, _)| *seen == k),
                "{k} set twice in {path}"
            );
            vars.push((k, v.to_string()));
        }
        EnvFile { vars }
    }

    fn get(&self, key: &str) -> &str {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{key} missing from {ENV_FILE}"))
    }

    /// The file as machine `m` would have it: its name, its addresses, the
    /// other members' peer addresses (`peers`), the state dir under `dir`
    /// (systemd's `StateDirectory=`, /var/lib/cairn) and the certificates
    /// from `pki`. Asserts that only those changed.
    fn vars_for(
        &self,
        m: &Machine,
        peers: &AddressMap,
        pki: &Pki,
        dir: &Path,
    ) -> Vec<(String, String)> {
        let addresses = m.addresses();
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let out: Vec<(String, String)> = self
            .vars
            .iter()
            .map(|(k, v)| {
                let new = if k == "ETCD_NAME" {
                    m.name.clone()
                } else if k == "ETCD_INITIAL_CLUSTER" {
                    peers.rewrite_urls(v)
                } else if v.contains("://") {
                    addresses.rewrite_urls(v)
                } else if v.starts_with('/') {
                    rewrite_path(v, "/etc/cairn/pki", pki.dir())
                        .or_else(|| rewrite_path(v, "/var/lib/cairn", &state_dir))
                        .unwrap_or_else(|| panic!("unexpected path in the env file: {k}={v}"))
                } else {
                    v.clone()
                };
                assert!(
                    new == *v || SYSTEMD_LOCAL_VARS.contains(&k.as_str()),
                    "the test changed {k}={v} to {new}"
                );
                assert!(
                    !new.contains("10.0.0.") && !new.contains("/etc/cairn"),
                    "left a machine address or path in {k}={new}"
                );
                (k.clone(), new)
            })
            .collect();
        let names = |vars: &[(String, String)]| -> BTreeSet<String> {
            vars.iter().map(|(k, _)| k.clone()).collect()
        };
        assert_eq!(names(&out), names(&self.vars));
        out
    }
}

/// `SIGTERM` (or `TERM`, or a number) → its number.
fn signal_number(name: &str) -> i32 {
    match name.trim_start_matches("SIG") {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "TERM" => 15,
        n => n.parse().unwrap_or_else(|_| panic!("signal {name}")),
    }
}

/// A systemd time span (`30`, `30s`, `1min 30s`, `500ms`).
fn systemd_timespan(text: &str) -> Duration {
    let mut total = Duration::ZERO;
    for part in text.split_whitespace() {
        let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let n: u64 = digits
            .parse()
            .unwrap_or_else(|_| panic!("time span {text:?}"));
        total += match &part[digits.len()..] {
            "" | "s" | "sec" | "second" | "seconds" => Duration::from_secs(n),
            "ms" | "msec" => Duration::from_millis(n),
            "m" | "min" | "minute" | "minutes" => Duration::from_secs(60 * n),
            "h" | "hr" | "hour" | "hours" => Duration::from_secs(3600 * n),
            unit => panic!("time span unit {unit:?} in {text:?}"),
        };
    }
    total
}

/// `systemd-analyze`, installed with apt if missing; `None` if that fails.
fn systemd_analyze() -> Option<PathBuf> {
    let find = || {
        ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Some(p);
    }
    eprintln!("systemd-analyze is missing: apt-get install systemd");
    let installed = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "systemd"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status();
    eprintln!("apt-get install systemd: {installed:?}");
    find()
}

/// The datagram socket a `Type=notify` service reports to.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every assignment received, in order (`READY=1`, ...).
    received: Vec<String>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket =
            UnixDatagram::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            socket,
            path: path.to_path_buf(),
            received: Vec::new(),
        }
    }

    fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// Reads what has arrived, waiting up to the read timeout.
    fn receive(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.received
                .extend(text.lines().filter(|l| !l.is_empty()).map(String::from));
        }
    }

    /// Waits until `d` has sent `state` (panics if it exits first or after
    /// `within`).
    fn wait_for(&mut self, d: &mut Daemon, state: &str, within: Duration) {
        let start = Instant::now();
        loop {
            self.receive();
            if self.received.iter().any(|s| s == state) {
                return;
            }
            if let Some(status) = d.exited() {
                panic!("{} exited ({status}) before sending {state}", d.name);
            }
            assert!(
                start.elapsed() < within,
                "{} sent no {state} within {within:?}; received {:?}",
                d.name,
                self.received
            );
        }
    }

    /// After the process exited: `state` must have arrived.
    fn wait_for_exited(&mut self, state: &str) {
        self.receive();
        assert!(
            self.received.iter().any(|s| s == state),
            "no {state} before exit; received {:?}",
            self.received
        );
    }
}

// ---------------------------------------------------------------------------
// Helpers: etcdctl and waiting
// ---------------------------------------------------------------------------

/// Waits until the member at `endpoint` answers `endpoint status` (over
/// TLS, as kubeadm's health check client) with a leader.
fn wait_serving(d: &mut Daemon, endpoint: &str, pki: &Pki) {
    let ca = pki.ca_file();
    let client: Pair = pki.pair("healthcheck-client");
    let start = Instant::now();
    loop {
        if let Some(status) = d.exited() {
            panic!("{} exited during startup ({status})", d.name);
        }
        let out = etcdctl_tls(
            endpoint,
            &ca,
            Some(&client),
            &["endpoint", "status", "-w", "json"],
        );
        let leader = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v[0]["Status"]["leader"].as_u64())
            .unwrap_or(0);
        if out.status.success() && leader != 0 {
            return;
        }
        assert!(
            start.elapsed() < START_DEADLINE,
            "{} at {endpoint} not serving after {START_DEADLINE:?}: {}",
            d.name,
            describe(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The index in `machines` of the leader, by `endpoint status`.
fn leader_index(machines: &[Machine], pki: &Pki) -> usize {
    let all = machines
        .iter()
        .map(Machine::client_url)
        .collect::<Vec<_>>()
        .join(",");
    let status = json(ok(etcdctl_tls(
        &all,
        &pki.ca_file(),
        Some(&pki.pair("healthcheck-client")),
        &["endpoint", "status", "-w", "json"],
    )));
    let entries = status.as_array().unwrap();
    let leader = entries[0]["Status"]["leader"].as_u64().unwrap();
    let e = entries
        .iter()
        .find(|e| e["Status"]["header"]["member_id"].as_u64() == Some(leader))
        .unwrap_or_else(|| panic!("no endpoint is the leader: {status}"));
    let url = e["Endpoint"].as_str().unwrap();
    machines
        .iter()
        .position(|m| m.client_url() == url)
        .unwrap_or_else(|| panic!("leader endpoint {url} unknown"))
}

/// No flag or variable of the deploy file was ignored or unrecognized.
fn assert_no_ignored_settings(d: &Daemon) {
    let log = d.log();
    for line in log.lines() {
        assert!(
            !(line.contains("unrecognized")
                || line.contains("ignoring it")
                || line.contains("and ignored")),
            "{} ignored part of its configuration: {line}",
            d.name
        );
    }
}

/// Retries `f` until it succeeds or `within` passes.
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

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The command's stdout; panics with its output when it failed.
fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
