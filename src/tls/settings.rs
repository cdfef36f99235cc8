//! What etcd's TLS flags say, checked the way etcd checks them, before any
//! file is read.
//!
//! One [`TlsSide`] per side (`--cert-file ...` for clients, `--peer-cert-file
//! ...` for peers), and one [`TlsProtocol`] both sides share. Turning them
//! into rustls configs is `server`'s and `client`'s business.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::ring::{cipher_suite as suites, default_provider};
use rustls::crypto::CryptoProvider;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

/// The TLS flags of one side of a member (client or peer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSide {
    /// `--cert-file` / `--peer-cert-file`: what this member presents when it
    /// accepts (and, for peers, when it dials unless `client_cert_file`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// `--client-cert-file` / `--peer-client-cert-file`: what this member
    /// presents when it dials, if not `cert_file`.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// `--trusted-ca-file` / `--peer-trusted-ca-file`. As in etcd, giving it
    /// alone already makes the listener ask every client for a certificate.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth` / `--peer-client-cert-auth`.
    pub client_cert_auth: bool,
    /// `--client-crl-file` / `--peer-crl-file`.
    pub crl_file: Option<PathBuf>,
    /// `--auto-tls` / `--peer-auto-tls`: generate a self-signed certificate
    /// when no certificate is given.
    pub auto_tls: bool,
    /// `--peer-cert-allowed-cn`: a connecting peer's certificate must have
    /// one of these common names.
    pub allowed_cns: Vec<String>,
    /// `--peer-cert-allowed-hostname` / `--client-cert-allowed-hostname`: a
    /// connecting certificate must be valid for one of these names.
    pub allowed_hostnames: Vec<String>,
    /// `--peer-skip-client-san-verification`: do not check a connecting
    /// peer's SANs against its address (etcd checks them on the peer port).
    pub skip_client_san_verify: bool,
}

impl TlsSide {
    /// etcd's `TLSInfo.Empty()`: no certificate to serve with.
    pub fn has_cert(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Whether the listener asks for, and verifies, a client certificate
    /// (etcd: `TrustedCAFile != "" || ClientCertAuth`).
    pub fn requires_client_cert(&self) -> bool {
        self.trusted_ca_file.is_some() || self.client_cert_auth
    }

    /// etcd's checks of the side's flags that need no file: allowed CNs and
    /// hostnames exclude each other.
    pub fn check(&self) -> Result<(), String> {
        if !self.allowed_cns.is_empty() && !self.allowed_hostnames.is_empty() {
            return Err(format!(
                "AllowedCNs and AllowedHostnames are mutually exclusive (cns={:?}, hostnames={:?})",
                self.allowed_cns, self.allowed_hostnames
            ));
        }
        Ok(())
    }
}

/// `--tls-min-version` / `--tls-max-version` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// etcd's names; the empty text is "no limit" (`None`).
    pub fn parse(text: &str) -> Result<Option<TlsVersion>, String> {
        match text {
            "" => Ok(None),
            "TLS1.2" => Ok(Some(TlsVersion::Tls12)),
            "TLS1.3" => Ok(Some(TlsVersion::Tls13)),
            _ => Err(format!(
                "unexpected TLS version {text:?} (must be one of: TLS1.2, TLS1.3)"
            )),
        }
    }
}

/// Protocol versions and TLS 1.2 cipher suites, shared by both sides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsProtocol {
    /// Go's names as given in `--cipher-suites` (checked to be names Go
    /// knows). Empty: every suite rustls offers.
    pub cipher_suites: Vec<String>,
    pub min_version: TlsVersion,
    /// `None`: the newest version (TLS 1.3).
    pub max_version: Option<TlsVersion>,
}

impl Default for TlsProtocol {
    fn default() -> Self {
        TlsProtocol {
            cipher_suites: Vec::new(),
            min_version: TlsVersion::Tls12,
            max_version: None,
        }
    }
}

/// Every cipher suite name Go's `crypto/tls` knows (its secure and
/// insecure lists, plus the two short ChaCha20 aliases etcd adds), with the
/// ring suite that implements it in rustls, if any. rustls has no CBC, RC4,
/// 3DES or static-RSA suites; those names are accepted, as etcd accepts
/// them, and left out with a warning.
static GO_CIPHER_SUITES: &[(&str, Option<&SupportedCipherSuite>)] = &[
    // TLS 1.3: Go accepts the names but never restricts 1.3 suites; neither
    // does cairn.
    (
        "TLS_AES_128_GCM_SHA256",
        Some(&suites::TLS13_AES_128_GCM_SHA256),
    ),
    (
        "TLS_AES_256_GCM_SHA384",
        Some(&suites::TLS13_AES_256_GCM_SHA384),
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        Some(&suites::TLS13_CHACHA20_POLY1305_SHA256),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        Some(&suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        Some(&suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        Some(&suites::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        Some(&suites::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        Some(&suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        Some(&suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        Some(&suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        Some(&suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
    ),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_RSA_WITH_RC4_128_SHA", None),
    ("TLS_RSA_WITH_3DES_EDE_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_128_CBC_SHA256", None),
    ("TLS_RSA_WITH_AES_128_GCM_SHA256", None),
    ("TLS_RSA_WITH_AES_256_GCM_SHA384", None),
    ("TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", None),
    ("TLS_ECDHE_RSA_WITH_RC4_128_SHA", None),
    ("TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", None),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", None),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", None),
];

fn go_cipher_suite(name: &str) -> Option<Option<SupportedCipherSuite>> {
    GO_CIPHER_SUITES
        .iter()
        .find(|(go_name, _)| *go_name == name)
        .map(|(_, suite)| suite.copied())
}

impl TlsProtocol {
    /// Checks the flags as etcd does (its texts), plus one check of cairn's
    /// own: TLS 1.2 only, with none of the listed suites available here,
    /// could never complete a handshake. Returns the protocol and the
    /// warnings to log (suites left out).
    pub fn parse(
        cipher_suites: Vec<String>,
        min_version: &str,
        max_version: &str,
    ) -> Result<(TlsProtocol, Vec<String>), String> {
        let min = TlsVersion::parse(min_version)?.unwrap_or(TlsVersion::Tls12);
        let max = TlsVersion::parse(max_version)?;
        if max.is_some_and(|max| min > max) {
            return Err(format!(
                "min version ({min_version}) is greater than max version ({max_version})"
            ));
        }
        if min == TlsVersion::Tls13 && !cipher_suites.is_empty() {
            return Err("cipher suites cannot be configured when only TLS1.3 is enabled".into());
        }
        let mut warnings = Vec::new();
        let mut usable_tls12 = 0;
        for name in &cipher_suites {
            match go_cipher_suite(name) {
                None => return Err(format!("unexpected TLS cipher suite {name:?}")),
                Some(None) => warnings.push(format!(
                    "cipher suite {name} is not available in cairn's TLS library (rustls); \
                     it is left out"
                )),
                Some(Some(SupportedCipherSuite::Tls12(_))) => usable_tls12 += 1,
                Some(Some(_)) => {}
            }
        }
        if !cipher_suites.is_empty() && usable_tls12 == 0 && max == Some(TlsVersion::Tls12) {
            return Err(format!(
                "none of the TLS 1.2 cipher suites in --cipher-suites ({}) is available in \
                 cairn's TLS library (rustls)",
                cipher_suites.join(",")
            ));
        }
        let protocol = TlsProtocol {
            cipher_suites,
            min_version: min,
            max_version: max,
        };
        Ok((protocol, warnings))
    }

    /// ring's provider with the TLS 1.2 suites narrowed to the listed ones
    /// (in the listed order); TLS 1.3 suites are always all offered, as Go
    /// does.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        let mut provider = default_provider();
        if !self.cipher_suites.is_empty() {
            let mut chosen: Vec<SupportedCipherSuite> = provider
                .cipher_suites
                .iter()
                .copied()
                .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
                .collect();
            for name in &self.cipher_suites {
                if let Some(Some(suite @ SupportedCipherSuite::Tls12(_))) = go_cipher_suite(name) {
                    if !chosen.iter().any(|c| c.suite() == suite.suite()) {
                        chosen.push(suite);
                    }
                }
            }
            provider.cipher_suites = chosen;
        }
        Arc::new(provider)
    }

    /// The protocol versions between the minimum and the maximum.
    pub fn versions(&self) -> Vec<&'static SupportedProtocolVersion> {
        let max = self.max_version.unwrap_or(TlsVersion::Tls13);
        let mut versions = Vec::new();
        if self.min_version <= TlsVersion::Tls13 && max >= TlsVersion::Tls13 {
            versions.push(&rustls::version::TLS13);
        }
        if self.min_version <= TlsVersion::Tls12 && max >= TlsVersion::Tls12 {
            versions.push(&rustls::version::TLS12);
        }
        versions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(suites: &[&str], min: &str, max: &str) -> Result<(TlsProtocol, Vec<String>), String> {
        TlsProtocol::parse(suites.iter().map(|s| s.to_string()).collect(), min, max)
    }

    #[test]
    fn versions_read_like_etcd() {
        assert_eq!(
            parse(&[], "TLS1.1", "").unwrap_err(),
            r#"unexpected TLS version "TLS1.1" (must be one of: TLS1.2, TLS1.3)"#
        );
        assert_eq!(
            parse(&[], "TLS1.3", "TLS1.2").unwrap_err(),
            "min version (TLS1.3) is greater than max version (TLS1.2)"
        );
        assert_eq!(
            parse(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"], "TLS1.3", "").unwrap_err(),
            "cipher suites cannot be configured when only TLS1.3 is enabled"
        );
        let (p, _) = parse(&[], "TLS1.2", "").unwrap();
        assert_eq!(p.versions().len(), 2);
        let (p, _) = parse(&[], "TLS1.3", "").unwrap();
        assert_eq!(p.versions(), vec![&rustls::version::TLS13]);
        let (p, _) = parse(&[], "", "TLS1.2").unwrap();
        assert_eq!(p.versions(), vec![&rustls::version::TLS12]);
    }

    #[test]
    fn cipher_suites_take_go_names() {
        assert_eq!(
            parse(&["FOO"], "", "").unwrap_err(),
            r#"unexpected TLS cipher suite "FOO""#
        );
        let (p, warnings) = parse(
            &[
                "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            ],
            "TLS1.2",
            "",
        )
        .unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"));
        let tls12: Vec<_> = p
            .provider()
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            [
                suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256.suite(),
                suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384.suite()
            ]
        );
        // Only suites rustls lacks, and TLS 1.2 only: nothing could connect.
        assert!(parse(&["TLS_RSA_WITH_AES_128_CBC_SHA"], "", "TLS1.2").is_err());
        // With TLS 1.3 allowed, that is a warning.
        assert!(parse(&["TLS_RSA_WITH_AES_128_CBC_SHA"], "", "").is_ok());
    }

    #[test]
    fn allowed_cns_and_hostnames_exclude_each_other() {
        let side = TlsSide {
            allowed_cns: vec!["a".into()],
            allowed_hostnames: vec!["b".into()],
            ..TlsSide::default()
        };
        assert_eq!(
            side.check().unwrap_err(),
            r#"AllowedCNs and AllowedHostnames are mutually exclusive (cns=["a"], hostnames=["b"])"#
        );
    }
}
