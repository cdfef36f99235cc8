//! etcd's checks on the other side's certificate, beyond a valid chain:
//!
//! * allowed identities (`--peer-cert-allowed-cn`,
//!   `--peer-cert-allowed-hostname`, `--client-cert-allowed-hostname`): the
//!   connecting certificate must carry one of the CNs, or be valid for one
//!   of the hostnames;
//! * the CRL (`--client-crl-file`, `--peer-crl-file`): no certificate of the
//!   chain may have a revoked serial number (etcd compares serials only);
//! * on the peer port, a connecting peer's IP and DNS SANs must cover the
//!   address it connects from (`--peer-skip-client-san-verification` turns
//!   this off).
//!
//! The first two run inside the handshake (a wrapper around rustls's
//! verifier); the last needs the remote address, so it runs right after.
//! And `--peer-auto-tls` / `--auto-tls`: a member with a self-signed
//! certificate accepts any certificate from the member it dials, as etcd
//! does ([`AcceptAnyServerCert`]).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

/// Why a certificate that chains to a trusted CA is still refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// etcd's text for a certificate outside the allowed CNs or hostnames.
    #[error("client certificate authentication failed")]
    NotAllowed,
    #[error("transport: certificate serial {0} revoked")]
    Revoked(String),
    #[error("tls: {host:?} does not match any of the certificate's IP addresses {ips:?} or DNS names {names:?}")]
    AddressNotInSans {
        host: String,
        ips: Vec<IpAddr>,
        names: Vec<String>,
    },
    #[error("tls: client didn't provide a certificate")]
    NoCertificate,
    #[error("tls: cannot parse the certificate: {0}")]
    Unparsable(String),
}

impl From<Rejection> for rustls::Error {
    fn from(r: Rejection) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
    }
}

/// The identities a connecting certificate must have (either list, never
/// both; empty lists: any identity).
#[derive(Clone, Debug, Default)]
pub struct AllowedIdentities {
    pub cns: Vec<String>,
    pub hostnames: Vec<String>,
}

impl AllowedIdentities {
    pub fn is_empty(&self) -> bool {
        self.cns.is_empty() && self.hostnames.is_empty()
    }

    pub fn check(&self, cert: &CertificateDer<'_>) -> Result<(), Rejection> {
        if !self.cns.is_empty() {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert)
                .map_err(|e| Rejection::Unparsable(e.to_string()))?;
            // Go keeps the last CN attribute of the subject.
            let cn = parsed
                .subject()
                .iter_common_name()
                .filter_map(|a| a.as_str().ok())
                .last()
                .unwrap_or("");
            if !self.cns.iter().any(|allowed| allowed == cn) {
                return Err(Rejection::NotAllowed);
            }
        }
        if !self.hostnames.is_empty() {
            let cert = webpki::EndEntityCert::try_from(cert)
                .map_err(|e| Rejection::Unparsable(e.to_string()))?;
            let valid_for_one = self.hostnames.iter().any(|name| {
                ServerName::try_from(name.as_str())
                    .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
            });
            if !valid_for_one {
                return Err(Rejection::NotAllowed);
            }
        }
        Ok(())
    }
}

/// The serial numbers listed in the CRLs, as big-endian magnitudes without
/// leading zero bytes (Go's `SerialNumber.Bytes()`).
#[derive(Clone, Debug, Default)]
pub struct RevokedSerials(HashSet<Vec<u8>>);

fn magnitude(serial: &[u8]) -> Vec<u8> {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    serial[start..].to_vec()
}

impl RevokedSerials {
    pub fn from_crls(crls: &[CertificateRevocationListDer<'_>]) -> Result<RevokedSerials, String> {
        let mut serials = HashSet::new();
        for crl in crls {
            let (_, parsed) = x509_parser::parse_x509_crl(crl).map_err(|e| e.to_string())?;
            for revoked in parsed.iter_revoked_certificates() {
                serials.insert(magnitude(revoked.raw_serial()));
            }
        }
        Ok(RevokedSerials(serials))
    }

    pub fn check<'a>(
        &self,
        chain: impl IntoIterator<Item = &'a CertificateDer<'a>>,
    ) -> Result<(), Rejection> {
        if self.0.is_empty() {
            return Ok(());
        }
        for cert in chain {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert)
                .map_err(|e| Rejection::Unparsable(e.to_string()))?;
            let serial = magnitude(parsed.raw_serial());
            if self.0.contains(&serial) {
                let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
                return Err(Rejection::Revoked(hex));
            }
        }
        Ok(())
    }
}

/// rustls's chain verification, then the allowed identities and the CRL.
#[derive(Debug)]
pub struct CheckedClientVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub allowed: AllowedIdentities,
    pub revoked: RevokedSerials,
}

impl ClientCertVerifier for CheckedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.check(end_entity)?;
        self.revoked
            .check(std::iter::once(end_entity).chain(intermediates))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// etcd's peer-port check: a peer certificate that names IP addresses or
/// DNS names must name the address the peer connects from. DNS names are
/// resolved forward (etcd also tries a reverse lookup of the address, which
/// cairn does not do).
pub async fn check_address_in_sans(
    cert: &CertificateDer<'_>,
    remote: IpAddr,
) -> Result<(), Rejection> {
    let (ips, names) = {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert)
            .map_err(|e| Rejection::Unparsable(e.to_string()))?;
        let mut ips = Vec::new();
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            ips.push(ip);
                        }
                    }
                    x509_parser::extensions::GeneralName::DNSName(name) => {
                        names.push(name.to_string())
                    }
                    _ => {}
                }
            }
        }
        (ips, names)
    };
    if ips.is_empty() && names.is_empty() {
        return Ok(());
    }
    let remote = remote.to_canonical();
    if ips.iter().any(|ip| ip.to_canonical() == remote) {
        return Ok(());
    }
    for name in names.iter().filter(|n| !n.starts_with("*.")) {
        if let Ok(addrs) = tokio::net::lookup_host((name.as_str(), 0)).await {
            if addrs.map(|a| a.ip().to_canonical()).any(|ip| ip == remote) {
                return Ok(());
            }
        }
    }
    Err(Rejection::AddressNotInSans {
        host: remote.to_string(),
        ips,
        names,
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// A peer's server certificate as this member dials it: the usual
/// verification (or none, for self-signed peers), then the allowed names
/// of `--peer-cert-allowed-cn/-hostname`, which etcd checks on the
/// certificates of the peers it dials as on those that dial it.
#[derive(Debug)]
pub struct CheckedServerVerifier {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub allowed: AllowedIdentities,
}

impl ServerCertVerifier for CheckedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.allowed.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// For a member whose peers use self-signed (auto-tls) certificates: any
/// certificate is accepted, but the handshake signatures are still checked,
/// so the connection is encrypted to whoever holds that certificate's key.
#[derive(Debug)]
pub struct AcceptAnyServerCert(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: &[&str]) -> CertificateDer<'static> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x2a, 0x01]));
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    /// A dialled peer's certificate must carry an allowed name, as etcd's
    /// client side checks it.
    #[test]
    fn dialled_peers_are_checked_for_allowed_names() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = |cns: &[&str]| CheckedServerVerifier {
            inner: Arc::new(AcceptAnyServerCert(provider.clone())),
            allowed: AllowedIdentities {
                cns: cns.iter().map(|s| s.to_string()).collect(),
                hostnames: Vec::new(),
            },
        };
        let peer = cert("etcd-peer", &["localhost"]);
        let name = ServerName::try_from("localhost").unwrap();
        let verify = |v: &CheckedServerVerifier| {
            v.verify_server_cert(&peer, &[], &name, &[], UnixTime::now())
                .map(|_| ())
        };
        assert!(verify(&verifier(&["etcd-peer"])).is_ok());
        assert!(verify(&verifier(&["someone-else"])).is_err());
    }

    #[test]
    fn allowed_cns_and_hostnames() {
        let c = cert("etcd-peer", &["peer.example", "127.0.0.1"]);
        let only_cn = |cns: &[&str]| AllowedIdentities {
            cns: cns.iter().map(|s| s.to_string()).collect(),
            hostnames: vec![],
        };
        let only_host = |hosts: &[&str]| AllowedIdentities {
            cns: vec![],
            hostnames: hosts.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(AllowedIdentities::default().check(&c), Ok(()));
        assert_eq!(only_cn(&["x", "etcd-peer"]).check(&c), Ok(()));
        assert_eq!(only_cn(&["etcd"]).check(&c), Err(Rejection::NotAllowed));
        assert_eq!(only_host(&["peer.example"]).check(&c), Ok(()));
        assert_eq!(only_host(&["127.0.0.1"]).check(&c), Ok(()));
        assert_eq!(
            only_host(&["other.example", "10.0.0.1"]).check(&c),
            Err(Rejection::NotAllowed)
        );
        // Not a certificate at all: refused, not a panic.
        let junk = CertificateDer::from(vec![1u8, 2, 3]);
        assert!(matches!(
            only_cn(&["etcd-peer"]).check(&junk),
            Err(Rejection::Unparsable(_))
        ));
    }

    #[tokio::test]
    async fn address_must_be_in_the_sans() {
        let c = cert("p", &["127.0.0.1"]);
        assert_eq!(
            check_address_in_sans(&c, "127.0.0.1".parse().unwrap()).await,
            Ok(())
        );
        // The same address seen through an IPv6 socket.
        assert_eq!(
            check_address_in_sans(&c, "::ffff:127.0.0.1".parse().unwrap()).await,
            Ok(())
        );
        assert!(matches!(
            check_address_in_sans(&c, "127.0.0.2".parse().unwrap()).await,
            Err(Rejection::AddressNotInSans { .. })
        ));
        // A certificate without SANs is not checked.
        let bare = cert("p", &[]);
        assert_eq!(
            check_address_in_sans(&bare, "10.1.2.3".parse().unwrap()).await,
            Ok(())
        );
        // localhost resolves to the loopback address.
        let named = cert("p", &["localhost"]);
        assert_eq!(
            check_address_in_sans(&named, "127.0.0.1".parse().unwrap()).await,
            Ok(())
        );
    }

    #[test]
    fn revoked_serials_ignore_leading_zeros() {
        let c = cert("p", &[]);
        let mut revoked = RevokedSerials::default();
        assert_eq!(revoked.check([&c]), Ok(()));
        revoked.0.insert(vec![0x2a, 0x01]);
        assert_eq!(revoked.check([&c]), Err(Rejection::Revoked("2a01".into())));
    }
}
