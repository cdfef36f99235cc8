//! TLS on the client and peer URLs, configured by etcd's flags, with
//! rustls (ring provider).
//!
//! The pieces, in the order a connection meets them:
//!
//! * [`settings`]: what the flags say for one side (client or peer), and the
//!   protocol settings both sides share (`--cipher-suites`,
//!   `--tls-min-version`, `--tls-max-version`), checked with etcd's texts.
//! * [`auto`]: `--auto-tls` / `--peer-auto-tls` self-signed certificates under
//!   `<data-dir>/fixtures/{client,peer}`, as etcd writes them.
//! * [`files`] and [`reload`]: reading PEM files, and rebuilding a rustls
//!   config when one of its files changed, so certificates rotate without a
//!   restart.
//! * [`verify`]: etcd's checks on the other side's certificate beyond the
//!   chain (allowed CNs and hostnames, the CRL, a peer's SANs against its
//!   address).
//! * [`server`]: the accepting side (client and peer listeners).
//! * [`client`]: the dialling side (connections to peers).
//! * [`incoming`]: a listener's accepted connections, plaintext or TLS (or
//!   either, told apart by their first byte, for a client address given
//!   with both `http://` and `https://`).
//!
//! **Invariant:** a connection on a TLS listener reaches a gRPC server only
//! after its handshake and every configured check passed; a TLS
//! configuration that cannot be built stops startup, and one that stops
//! building later (a half-written file during rotation) keeps the last good
//! one in use.

pub mod auto;
pub mod client;
pub mod files;
pub mod incoming;
pub mod reload;
pub mod server;
pub mod settings;
pub mod verify;

use std::path::PathBuf;

pub use client::{DialError, PeerDialer};
pub use incoming::{Conn, ListenMode};
pub use server::ServerTls;
pub use settings::{TlsProtocol, TlsSide, TlsVersion};

/// Why a TLS configuration cannot be built, or why a connection was
/// refused. Startup errors read like etcd's where etcd has a text.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("open {}: {}", path.display(), crate::error::go_os_error(source))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tls: failed to find any PEM data in certificate input ({})", path.display())]
    NoCertificate { path: PathBuf },
    #[error("tls: failed to find any PEM data in key input ({})", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: {reason}", path.display())]
    BadPem { path: PathBuf, reason: String },
    #[error("{reason} (certificate {}, key {})", cert.display(), key.display())]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("KeyFile and CertFile must both be present[key: {key}, cert: {cert}]")]
    HalfPair { cert: String, key: String },
    #[error(
        "ClientKeyFile and ClientCertFile must both be present or both absent: key: {key}, cert: {cert}]"
    )]
    HalfClientPair { cert: String, key: String },
    #[error("TLS key/cert (--cert-file, --key-file) must be provided for client url {0} with HTTPS scheme")]
    ClientUrlWithoutCert(String),
    #[error("cannot listen on TLS for {0}: KeyFile and CertFile are not presented")]
    PeerListenWithoutCert(String),
    #[error("no trusted CA certificates: {0}")]
    NoRoots(String),
    #[error("CRL {}: {reason}", path.display())]
    BadCrl { path: PathBuf, reason: String },
    #[error("cannot generate self-signed certificate in {}: {reason}", dir.display())]
    SelfCert { dir: PathBuf, reason: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("tls: handshake did not finish within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("{0}")]
    Handshake(std::io::Error),
    #[error("{0}")]
    Rejected(#[from] verify::Rejection),
    #[error("invalid server name {0:?}")]
    ServerName(String),
}
