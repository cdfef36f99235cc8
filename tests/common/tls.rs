//! TLS for black-box tests: a kubeadm-style PKI made with `openssl`, members
//! (cairn or the real etcd) started with kubeadm's TLS flags on `https://`
//! client and peer URLs, etcdctl with `--cacert --cert --key`, and raw TLS
//! probes that tell whether a listener completes HTTP/2 with a given client.
//!
//! Members are started through the parent module's `spawn_child` and
//! registry, so they die with the test process and are killed on `Drop`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::StatusRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{
    clear_etcd_env, free_port, log_tail, registry, spawn_child, Kind, CAIRN_BIN, ETCDCTL_BIN,
    ETCD_BIN, NEXT_ID,
};

/// How long a member gets to answer `Status` with a leader.
const READY_DEADLINE: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------
// The PKI
// ---------------------------------------------------------------------------

/// A client certificate and its key.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// kubeadm's etcd PKI (`/etc/kubernetes/pki/etcd/`): the etcd CA, a server
/// certificate (SANs `localhost`, `127.0.0.1`, `::1`; server and client
/// auth), a peer certificate (same SANs and usages), and the
/// `healthcheck-client` and `apiserver-etcd-client` client certificates;
/// plus an unrelated CA with a client certificate of its own.
pub struct Pki {
    dir: tempfile::TempDir,
}

/// Runs openssl; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("cairn-pki-")
            .tempdir()
            .expect("temp dir");
        let pki = Pki { dir };
        pki.ca("ca", "etcd-ca");
        pki.ca("other-ca", "other-ca");
        let sans = "DNS:localhost,IP:127.0.0.1,IP:0:0:0:0:0:0:0:1";
        pki.leaf(
            "server",
            "ca",
            "kube-node",
            "serverAuth,clientAuth",
            Some(sans),
        );
        pki.leaf(
            "peer",
            "ca",
            "kube-node",
            "serverAuth,clientAuth",
            Some(sans),
        );
        pki.leaf(
            "healthcheck-client",
            "ca",
            "kube-etcd-healthcheck-client",
            "clientAuth",
            None,
        );
        pki.leaf(
            "apiserver-etcd-client",
            "ca",
            "kube-apiserver-etcd-client",
            "clientAuth",
            None,
        );
        pki.leaf("other-client", "other-ca", "intruder", "clientAuth", None);
        pki.leaf(
            "other-peer",
            "other-ca",
            "kube-node",
            "serverAuth,clientAuth",
            Some(sans),
        );
        pki
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn ca(&self, name: &str, cn: &str) {
        openssl(
            self.dir(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "3650",
                "-subj",
                &format!("/CN={cn}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,digitalSignature,keyEncipherment",
            ],
        );
    }

    /// Issues `name.crt`/`name.key` from CA `ca` with a random serial,
    /// written to temporary names first and renamed into place (the cert,
    /// then the key), as a rotation tool would. The key is in PKCS#1 form
    /// (`RSA PRIVATE KEY`), as kubeadm writes keys.
    pub fn leaf(&self, name: &str, ca: &str, cn: &str, usages: &str, sans: Option<&str>) {
        let dir = self.dir();
        let ext = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage={usages}\n{}",
            sans.map(|s| format!("subjectAltName={s}\n"))
                .unwrap_or_default()
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let serial = format!("0x{:016x}", random_u64());
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.pkcs8.new"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "rsa",
                "-in",
                &format!("{name}.pkcs8.new"),
                "-traditional",
                "-out",
                &format!("{name}.key.new"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-set_serial",
                &serial,
                "-days",
                "365",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt.new"),
            ],
        );
        std::fs::rename(
            dir.join(format!("{name}.crt.new")),
            dir.join(format!("{name}.crt")),
        )
        .unwrap();
        std::fs::rename(
            dir.join(format!("{name}.key.new")),
            dir.join(format!("{name}.key")),
        )
        .unwrap();
    }

    /// A new certificate and key (new key, new serial) for `server` or
    /// `peer`, in place of the old files.
    pub fn reissue(&self, name: &str) {
        self.leaf(
            name,
            "ca",
            "kube-node",
            "serverAuth,clientAuth",
            Some("DNS:localhost,IP:127.0.0.1,IP:0:0:0:0:0:0:0:1"),
        );
    }

    pub fn pair(&self, name: &str) -> Pair {
        Pair {
            cert: self.path(&format!("{name}.crt")),
            key: self.path(&format!("{name}.key")),
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// The first certificate of a PEM file, DER-encoded.
    pub fn cert_der(&self, name: &str) -> Vec<u8> {
        let path = self.path(&format!("{name}.crt"));
        CertificateDer::from_pem_file(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .to_vec()
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() >> 1
}

// ---------------------------------------------------------------------------
// Members with kubeadm's TLS flags
// ---------------------------------------------------------------------------

/// One member process (cairn or etcd) with TLS on its client and peer URLs.
pub struct TlsMember {
    kind: Kind,
    id: u64,
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
}

/// kubeadm's TLS flags for a member, with the PKI's files.
pub fn kubeadm_tls_flags(pki: &Pki) -> Vec<String> {
    let p = |f: &str| pki.path(f).display().to_string();
    vec![
        format!("--cert-file={}", p("server.crt")),
        format!("--key-file={}", p("server.key")),
        format!("--trusted-ca-file={}", p("ca.crt")),
        "--client-cert-auth=true".into(),
        format!("--peer-cert-file={}", p("peer.crt")),
        format!("--peer-key-file={}", p("peer.key")),
        format!("--peer-trusted-ca-file={}", p("ca.crt")),
        "--peer-client-cert-auth=true".into(),
    ]
}

impl TlsMember {
    /// Starts `n` members named m0, m1, ... at once (none is ready before a
    /// quorum is up) and waits until each answers `Status` with a leader.
    pub fn cluster(kind: Kind, n: usize, pki: &Pki, extra: &[&str]) -> Vec<TlsMember> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=https://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<TlsMember> = ports
            .into_iter()
            .enumerate()
            .map(|(i, (client_port, peer_port))| {
                let mut m = TlsMember::unstarted(
                    kind,
                    &format!("m{i}"),
                    client_port,
                    peer_port,
                    &initial,
                    pki,
                    extra,
                );
                m.spawn();
                m
            })
            .collect();
        for m in &mut members {
            m.wait_ready(pki);
        }
        members
    }

    /// A member not started yet, with kubeadm's command line (addresses on
    /// loopback) and then `extra` flags.
    pub fn unstarted(
        kind: Kind,
        name: &str,
        client_port: u16,
        peer_port: u16,
        initial_cluster: &str,
        pki: &Pki,
        extra: &[&str],
    ) -> TlsMember {
        let mut flags = kubeadm_tls_flags(pki);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        TlsMember::unstarted_with(kind, name, client_port, peer_port, initial_cluster, &flags)
    }

    /// A member not started yet on https client and peer URLs, with only
    /// `flags` for TLS (e.g. `--auto-tls --peer-auto-tls`).
    pub fn unstarted_with(
        kind: Kind,
        name: &str,
        client_port: u16,
        peer_port: u16,
        initial_cluster: &str,
        flags: &[&str],
    ) -> TlsMember {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-tls-", kind.name()))
            .tempdir()
            .expect("temp dir");
        let client = format!("https://127.0.0.1:{client_port}");
        let peer = format!("https://127.0.0.1:{peer_port}");
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", dir.path().join("data").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={initial_cluster}"),
            "--initial-cluster-token=cairn-tls-test".to_string(),
            "--snapshot-count=10000".to_string(),
        ];
        if kind == Kind::Etcd {
            args.push("--logger=zap".into());
            args.push("--log-outputs=stderr".into());
        }
        args.extend(flags.iter().map(|s| s.to_string()));
        TlsMember {
            kind,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            client_port,
            peer_port,
            dir,
            child: None,
            args,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer_port)
    }

    pub fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn peer_addr(&self) -> String {
        format!("127.0.0.1:{}", self.peer_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    pub fn spawn(&mut self) {
        let bin = match self.kind {
            Kind::Cairn => CAIRN_BIN,
            Kind::Etcd => ETCD_BIN,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open server log");
        let mut header = log.try_clone().unwrap();
        let _ = writeln!(header, "=== {} {}", bin, self.args.join(" "));
        let mut cmd = Command::new(bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        clear_etcd_env(&mut cmd);
        let child = spawn_child(cmd).unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        registry()
            .lock()
            .unwrap()
            .insert(self.id, (child.id(), self.dir.path().to_path_buf()));
        self.child = Some(child);
    }

    /// Waits for the process to exit on its own (a startup failure);
    /// `None` if it still runs after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                registry().lock().unwrap().remove(&self.id);
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `Maintenance.Status` over TLS (with the healthcheck client
    /// certificate) until it reports a leader.
    pub fn wait_ready(&mut self, pki: &Pki) {
        self.wait_ready_trusting(Some(pki))
    }

    /// Like `wait_ready`; with `None`, any server certificate is accepted
    /// and none is presented (members with auto-tls certificates).
    pub fn wait_ready_trusting(&mut self, pki: Option<&Pki>) {
        let start = Instant::now();
        let mut last;
        loop {
            if let Some(c) = &mut self.child {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "{} {} exited during startup ({status}); log:\n{}",
                        self.kind.name(),
                        self.name,
                        self.log_tail(60)
                    );
                }
            }
            match status_leader(&self.endpoint(), pki) {
                Ok(leader) if leader != 0 => return,
                Ok(_) => last = "Status answered without a leader".into(),
                Err(e) => last = e,
            }
            if start.elapsed() > READY_DEADLINE {
                let tail = self.log_tail(60);
                self.kill9();
                panic!(
                    "{} {} not ready after {READY_DEADLINE:?} ({last}); log:\n{tail}",
                    self.kind.name(),
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        registry().lock().unwrap().remove(&self.id);
    }
}

impl Drop for TlsMember {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `Maintenance.Status` over TLS with the healthcheck client certificate;
/// Ok(leader id). Runs on a throwaway runtime in its own thread.
fn status_leader(endpoint: &str, pki: Option<&Pki>) -> Result<u64, String> {
    use cairn::tls::{PeerDialer, TlsProtocol, TlsSide};
    let Some(pki) = pki else {
        return status_leader_insecure(endpoint);
    };
    let client = pki.pair("healthcheck-client");
    let side = TlsSide {
        cert_file: Some(client.cert),
        key_file: Some(client.key),
        trusted_ca_file: Some(pki.ca_file()),
        ..TlsSide::default()
    };
    let endpoint = endpoint.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let dialer =
                PeerDialer::new(side, TlsProtocol::default(), false).map_err(|e| e.to_string())?;
            let ep = tonic::transport::Endpoint::from_shared(endpoint)
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(2));
            let ch = dialer.connect(ep).await.map_err(|e| e.to_string())?;
            let st = MaintenanceClient::new(ch)
                .status(StatusRequest {})
                .await
                .map_err(|e| format!("status: {e}"))?;
            Ok(st.into_inner().leader)
        })
    })
    .join()
    .unwrap_or_else(|_| Err("probe thread panicked".into()))
}

/// The leader etcdctl's `endpoint status` reports, without verifying the
/// server's certificate: for auto-tls members, whose certificates may also
/// use curves rustls does not (etcd's P-521).
fn status_leader_insecure(endpoint: &str) -> Result<u64, String> {
    let out = super::etcdctl(
        endpoint,
        &[
            "--insecure-skip-tls-verify",
            "--insecure-transport=false",
            "--dial-timeout=1s",
            "--command-timeout=2s",
            "endpoint",
            "status",
            "-w",
            "json",
        ],
        None,
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("endpoint status: {e}"))?;
    v[0]["Status"]["leader"]
        .as_u64()
        .ok_or_else(|| format!("no leader in {v}"))
}

// ---------------------------------------------------------------------------
// etcdctl over TLS
// ---------------------------------------------------------------------------

/// `etcdctl --endpoints=ENDPOINTS --cacert=CA [--cert --key] ARGS...`
/// (ETCDCTL_API=3), with short dial and command timeouts so refusals fail
/// fast.
pub fn etcdctl_tls(endpoints: &str, ca: &Path, client: Option<&Pair>, args: &[&str]) -> Output {
    let mut cmd = Command::new(ETCDCTL_BIN);
    clear_etcd_env(&mut cmd);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", ca.display()))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=5s");
    if let Some(c) = client {
        cmd.arg(format!("--cert={}", c.cert.display()))
            .arg(format!("--key={}", c.key.display()));
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl")
}

// ---------------------------------------------------------------------------
// Raw probes
// ---------------------------------------------------------------------------

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Sends the HTTP/2 preface and an empty SETTINGS frame, and reads the
/// server's first frame header: true when it is a SETTINGS frame, i.e. the
/// server accepted the connection and speaks HTTP/2 on it.
fn h2_answers(mut stream: impl Read + Write) -> Result<(), String> {
    stream
        .write_all(H2_PREFACE)
        .and_then(|_| stream.write_all(H2_SETTINGS))
        .and_then(|_| stream.flush())
        .map_err(|e| format!("write: {e}"))?;
    let mut header = [0u8; 9];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("read: {e}"))?;
    if header[3] == 4 {
        Ok(())
    } else {
        Err(format!("not an HTTP/2 SETTINGS frame: {header:02x?}"))
    }
}

fn tcp(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Plaintext HTTP/2 to `addr`: Ok when the server answers it.
pub fn plaintext_h2(addr: &str) -> Result<(), String> {
    h2_answers(tcp(addr))
}

/// What a TLS probe connection presents and trusts.
pub struct TlsProbe {
    config: Arc<rustls::ClientConfig>,
}

impl TlsProbe {
    /// Trusts `ca`; presents `client` if given; offers ALPN `h2`.
    pub fn new(ca: &Path, client: Option<&Pair>) -> TlsProbe {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            Some(pair) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(&pair.cert)
                        .unwrap()
                        .map(|c| c.unwrap())
                        .collect(),
                    PrivateKeyDer::from_pem_file(&pair.key).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        TlsProbe {
            config: Arc::new(config),
        }
    }

    /// TLS to `addr` (verifying the server as `127.0.0.1`), then HTTP/2:
    /// Ok when the server accepted us and answered.
    pub fn h2(&self, addr: &str) -> Result<(), String> {
        let (stream, _) = self.connect(addr)?;
        h2_answers(stream)
    }

    /// TLS to `addr`, then a second of listening: Ok when the server
    /// keeps the connection (it may greet us, as an HTTP/2 server does, or
    /// wait for a request, as etcd's HTTP/1 peer port does); an error when
    /// the handshake fails or the server closes or alerts right after it,
    /// which is how a refused client certificate shows under TLS 1.3.
    pub fn accepted(&self, addr: &str) -> Result<(), String> {
        let (mut stream, _) = self.connect(addr)?;
        stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => Err("closed by the server".into()),
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// The certificate the server at `addr` presents to a new connection
    /// (DER).
    pub fn server_cert(&self, addr: &str) -> Result<Vec<u8>, String> {
        let (_, cert) = self.connect(addr)?;
        Ok(cert)
    }

    fn connect(
        &self,
        addr: &str,
    ) -> Result<
        (
            rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
            Vec<u8>,
        ),
        String,
    > {
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let conn =
            rustls::ClientConnection::new(self.config.clone(), name).map_err(|e| e.to_string())?;
        let mut stream = rustls::StreamOwned::new(conn, tcp(addr));
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        let cert = stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or("no server certificate")?;
        Ok((stream, cert))
    }
}
