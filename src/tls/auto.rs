//! `--auto-tls` and `--peer-auto-tls`: a self-signed certificate for the
//! listen URLs' hosts, written to `<data-dir>/fixtures/client` or
//! `fixtures/peer` as `cert.pem` and `key.pem`, and reused from there on
//! later starts — etcd's layout, so the files are where an operator looks.
//!
//! etcd uses ECDSA P-521 keys; ring (cairn's TLS provider) does not sign
//! with P-521, so cairn generates P-256 keys. An etcd data dir's existing
//! P-521 fixtures therefore do not load; delete them to have new ones made.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::TlsError;

/// Where the certificate and key of one side are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfSigned {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The certificate and key in `dir`, generated first if either is missing.
/// `hosts` are the listen URLs' hosts (IPs become IP SANs, names DNS SANs);
/// `validity_years` is `--self-signed-cert-validity`.
pub fn self_signed(
    dir: &Path,
    hosts: &[String],
    validity_years: u64,
) -> Result<SelfSigned, TlsError> {
    let fail = |reason: String| TlsError::SelfCert {
        dir: dir.to_path_buf(),
        reason,
    };
    if validity_years == 0 {
        return Err(fail(
            "selfSignedCertValidity is invalid,it should be greater than 0".into(),
        ));
    }
    let files = SelfSigned {
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
    };
    if files.cert_file.exists() && files.key_file.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;

    let mut sans: Vec<String> = hosts.to_vec();
    sans.sort();
    sans.dedup();
    let mut params = rcgen::CertificateParams::new(sans).map_err(|e| fail(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after =
        (now + Duration::from_secs(validity_years.saturating_mul(365 * 24 * 3600))).into();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    // Server auth as etcd's; client auth too, since a member presents its
    // peer certificate when it dials.
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| fail(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    tracing::warn!(
        dir = %dir.display(),
        validity_years,
        "automatically generate certificates"
    );
    write_file(&files.cert_file, cert.pem().as_bytes(), 0o644).map_err(|e| fail(e.to_string()))?;
    write_file(&files.key_file, key.serialize_pem().as_bytes(), 0o600)
        .map_err(|e| fail(e.to_string()))?;
    tracing::info!(path = %files.cert_file.display(), "created cert file");
    tracing::info!(path = %files.key_file.display(), "created key file");
    Ok(files)
}

/// Writes through a temporary file and a rename, so a crash never leaves
/// half a key behind.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("pem.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = dir.path().join("fixtures").join("peer");
        let first = self_signed(&fixtures, &["127.0.0.1".into(), "localhost".into()], 1).unwrap();
        let cert = std::fs::read(&first.cert_file).unwrap();
        let certs = super::super::files::certificates(&first.cert_file).unwrap();
        super::super::files::private_key(&first.key_file).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
        let sans = format!("{:?}", parsed.subject_alternative_name().unwrap().unwrap());
        assert!(sans.contains("localhost") && sans.contains("127"), "{sans}");
        let again = self_signed(&fixtures, &["127.0.0.1".into()], 1).unwrap();
        assert_eq!(first, again);
        assert_eq!(std::fs::read(&again.cert_file).unwrap(), cert);
        assert!(self_signed(&dir.path().join("x"), &[], 0).is_err());
    }
}
