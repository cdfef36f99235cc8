//! The dialling side: how a member reaches another member's peer URL.
//!
//! `http://` peer URLs are dialled as before; `https://` ones through a
//! rustls client config made from the peer flags: the member's peer
//! certificate (or `--peer-client-cert-file`) is its client certificate,
//! the peer CA verifies the other member's server certificate against the
//! URL's host (the system's roots without a CA file), and a member with an
//! auto-tls certificate skips that verification, as etcd does. The config
//! is rebuilt when its files change, so a new connection presents a
//! rotated certificate.
//!
//! Every place that dials a peer URL goes through [`PeerDialer::connect`]:
//! the raft transport, snapshot streams, requests forwarded to the leader
//! and the member-list fetch of a joining member.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::ServerName;
use rustls::sign::SingleCertAndKey;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::files;
use super::reload::Reloading;
use super::server::certified_key;
use super::settings::{TlsProtocol, TlsSide};
use super::verify::{AcceptAnyServerCert, AllowedIdentities, CheckedServerVerifier};
use super::TlsError;

/// What the client config is built from.
#[derive(Clone, Debug)]
struct ClientFiles {
    /// The certificate and key presented to the peer, if any.
    identity: Option<(PathBuf, PathBuf)>,
    ca: Option<PathBuf>,
    /// The member's own certificate is self-signed (auto-tls): its peers'
    /// are too, so they cannot be verified.
    skip_verify: bool,
    /// `--peer-cert-allowed-cn/-hostname`, checked on dialled peers too.
    allowed: AllowedIdentities,
}

/// A rustls client config for dialling peers, rebuilt when files change.
pub struct ClientTls {
    config: Reloading<ClientConfig>,
}

impl ClientTls {
    /// Reads and checks the files now (errors stop startup).
    pub fn new(
        side: &TlsSide,
        protocol: &TlsProtocol,
        self_signed: bool,
    ) -> Result<ClientTls, TlsError> {
        let identity = match (&side.client_cert_file, &side.client_key_file) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => match (&side.cert_file, &side.key_file) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                (None, None) => None,
                (cert, key) => {
                    return Err(TlsError::HalfPair {
                        cert: text(cert),
                        key: text(key),
                    })
                }
            },
            (cert, key) => {
                return Err(TlsError::HalfClientPair {
                    cert: text(cert),
                    key: text(key),
                })
            }
        };
        let files = ClientFiles {
            identity,
            ca: side.trusted_ca_file.clone(),
            skip_verify: self_signed,
            allowed: AllowedIdentities {
                cns: side.allowed_cns.clone(),
                hostnames: side.allowed_hostnames.clone(),
            },
        };
        let paths = files
            .identity
            .iter()
            .flat_map(|(c, k)| [c.clone(), k.clone()])
            .chain(files.ca.clone())
            .collect();
        let protocol = protocol.clone();
        let config = Reloading::new("peer TLS client", paths, move || build(&files, &protocol))?;
        Ok(ClientTls { config })
    }

    fn connector(&self) -> TlsConnector {
        TlsConnector {
            config: self.config.get(),
        }
    }
}

fn text(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn build(files: &ClientFiles, protocol: &TlsProtocol) -> Result<ClientConfig, TlsError> {
    let provider = protocol.provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol.versions())?;
    let verifier: Arc<dyn ServerCertVerifier> = if files.skip_verify {
        Arc::new(AcceptAnyServerCert(provider.clone()))
    } else {
        let roots = match &files.ca {
            Some(ca) => files::roots(ca)?,
            None => files::system_roots()?,
        };
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?
    };
    let verifier = if files.allowed.is_empty() {
        verifier
    } else {
        Arc::new(CheckedServerVerifier {
            inner: verifier,
            allowed: files.allowed.clone(),
        })
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &files.identity {
        Some((cert, key)) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
            certified_key(cert, key, &provider)?,
        ))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A tonic connector that opens TCP, then TLS with the URL's host as the
/// name the peer's certificate must be valid for.
#[derive(Clone)]
struct TlsConnector {
    config: Arc<ClientConfig>,
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let invalid =
                |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("no host in {uri}")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            // Raft messages are small writes that must not wait for Nagle.
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|_| invalid(format!("invalid server name {host:?}")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Why a peer could not be dialled.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("peer TLS: {0}")]
    Tls(String),
    #[error("{}", chain(.0))]
    Connect(#[from] tonic::transport::Error),
}

/// tonic's transport error says only "transport error"; the reason is in
/// its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Dials peer URLs, plaintext or TLS by their scheme.
pub struct PeerDialer {
    side: TlsSide,
    protocol: TlsProtocol,
    self_signed: bool,
    /// Built at startup when peer TLS files are configured; otherwise on
    /// the first `https://` URL (the system's roots, no client
    /// certificate), so a plaintext cluster never reads the trust store.
    tls: OnceLock<Result<Arc<ClientTls>, String>>,
}

impl PeerDialer {
    /// A dialler for plaintext clusters (and tests).
    pub fn plaintext() -> PeerDialer {
        PeerDialer {
            side: TlsSide::default(),
            protocol: TlsProtocol::default(),
            self_signed: false,
            tls: OnceLock::new(),
        }
    }

    /// `side` holds the peer flags, with auto-tls files already filled in
    /// (`self_signed` then). Files that are configured are read now.
    pub fn new(
        side: TlsSide,
        protocol: TlsProtocol,
        self_signed: bool,
    ) -> Result<PeerDialer, TlsError> {
        let dialer = PeerDialer {
            side,
            protocol,
            self_signed,
            tls: OnceLock::new(),
        };
        if dialer.side.has_cert() || dialer.side.trusted_ca_file.is_some() {
            let tls = ClientTls::new(&dialer.side, &dialer.protocol, dialer.self_signed)?;
            let _ = dialer.tls.set(Ok(Arc::new(tls)));
        }
        Ok(dialer)
    }

    fn client_tls(&self) -> Result<Arc<ClientTls>, DialError> {
        self.tls
            .get_or_init(|| {
                ClientTls::new(&self.side, &self.protocol, self.self_signed)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(DialError::Tls)
    }

    /// Connects `endpoint` (its settings — timeouts, keep-alives — apply
    /// either way).
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, DialError> {
        if endpoint.uri().scheme_str() == Some("https") {
            let connector = self.client_tls()?.connector();
            Ok(endpoint.connect_with_connector(connector).await?)
        } else {
            Ok(endpoint.connect().await?)
        }
    }
}
