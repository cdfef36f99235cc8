//! The accepting side: a rustls server config built from one side's flags
//! (rebuilt when its files change), and the handshake with etcd's checks.
//!
//! As in etcd: the server offers ALPN `h2`; a trusted CA file or
//! `--client-cert-auth` makes a client certificate mandatory and verified
//! against that CA (the system's roots without a CA file); allowed
//! identities and the CRL are checked inside the handshake; the peer port
//! then checks the peer's SANs against its address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::files;
use super::reload::Reloading;
use super::settings::{TlsProtocol, TlsSide};
use super::verify::{self, AllowedIdentities, CheckedClientVerifier, RevokedSerials};
use super::TlsError;

/// etcd's bound on one handshake, so a silent client cannot hold a
/// connection slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server config of one side is built from.
#[derive(Clone, Debug)]
struct ServerFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
    crl: Option<PathBuf>,
    require_client_cert: bool,
    allowed: AllowedIdentities,
}

/// The TLS side of a listener (client or peer).
pub struct ServerTls {
    config: Reloading<ServerConfig>,
    /// Peer port: a connecting peer's SANs must cover its address.
    check_address: bool,
}

impl ServerTls {
    /// Reads and checks the files now (errors stop startup). `what` names
    /// the side in logs; `check_address` is etcd's peer-port SAN check.
    pub fn new(
        what: &str,
        side: &TlsSide,
        protocol: &TlsProtocol,
        check_address: bool,
    ) -> Result<ServerTls, TlsError> {
        let (Some(cert), Some(key)) = (&side.cert_file, &side.key_file) else {
            return Err(TlsError::HalfPair {
                cert: path_text(&side.cert_file),
                key: path_text(&side.key_file),
            });
        };
        let files = ServerFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: side.trusted_ca_file.clone(),
            crl: side.crl_file.clone(),
            require_client_cert: side.requires_client_cert(),
            allowed: AllowedIdentities {
                cns: side.allowed_cns.clone(),
                hostnames: side.allowed_hostnames.clone(),
            },
        };
        // Go never checks allowed names when no client certificate is asked
        // for, so etcd then serves everyone; so does cairn, saying so.
        if !files.require_client_cert && !files.allowed.is_empty() {
            tracing::warn!(
                side = what,
                "allowed certificate names are set but no client certificate is asked for \
                 (no trusted CA file, no client cert auth): they have no effect"
            );
        }
        let paths = [
            Some(&files.cert),
            Some(&files.key),
            files.ca.as_ref(),
            files.crl.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        let protocol = protocol.clone();
        let config = Reloading::new(format!("{what} TLS server"), paths, move || {
            build(&files, &protocol)
        })?;
        Ok(ServerTls {
            config,
            check_address,
        })
    }

    /// Runs the handshake on an accepted connection, then the checks that
    /// need the remote address.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        remote: SocketAddr,
    ) -> Result<TlsStream<TcpStream>, TlsError> {
        let acceptor = TlsAcceptor::from(self.config.get());
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| TlsError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?
            .map_err(TlsError::Handshake)?;
        if self.check_address {
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first());
            if let Some(leaf) = leaf {
                verify::check_address_in_sans(leaf, remote.ip()).await?;
            }
        }
        Ok(stream)
    }
}

fn path_text(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The certificate and key of `cert`/`key`, checked to belong together.
pub(super) fn certified_key(
    cert: &std::path::Path,
    key: &std::path::Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = files::certificates(cert)?;
    let private_key = files::private_key(key)?;
    CertifiedKey::from_der(chain, private_key, provider).map_err(|e| TlsError::KeyPair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        // Go's text for the common case, as etcd prints it.
        reason: match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "tls: private key does not match public key".into()
            }
            e => e.to_string(),
        },
    })
}

/// Checks that a certificate and key load and belong together.
pub fn check_key_pair(
    cert: &std::path::Path,
    key: &std::path::Path,
    protocol: &TlsProtocol,
) -> Result<(), TlsError> {
    certified_key(cert, key, &protocol.provider()).map(|_| ())
}

fn build(files: &ServerFiles, protocol: &TlsProtocol) -> Result<ServerConfig, TlsError> {
    let provider = protocol.provider();
    let certified = certified_key(&files.cert, &files.key, &provider)?;
    let verifier: Arc<dyn ClientCertVerifier> = if files.require_client_cert {
        let roots = match &files.ca {
            Some(ca) => files::roots(ca)?,
            None => files::system_roots()?,
        };
        let revoked =
            match &files.crl {
                Some(path) => RevokedSerials::from_crls(&files::revocation_lists(path)?).map_err(
                    |reason| TlsError::BadCrl {
                        path: path.clone(),
                        reason,
                    },
                )?,
                None => RevokedSerials::default(),
            };
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()?;
        Arc::new(CheckedClientVerifier {
            inner,
            allowed: files.allowed.clone(),
            revoked,
        })
    } else {
        WebPkiClientVerifier::no_client_auth()
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&protocol.versions())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    // h2 first (gRPC); http/1.1 too, for the HTTP endpoints on the client
    // port: Go's TLS stack, and so etcd, accepts a client that offers only
    // http/1.1 (curl --http1.1, wget, older probes), where rustls would
    // refuse the handshake for want of a common protocol.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
