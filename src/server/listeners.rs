//! Which sockets a member listens on, what each one accepts (plaintext,
//! TLS, or either), and how it dials its peers — all decided from the
//! configuration before the member starts, so that a TLS file that is
//! missing or unusable stops startup with a clear error, as in etcd.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, EtcdUrl};
use crate::tls::auto::self_signed;
use crate::tls::{ListenMode, PeerDialer, ServerTls, TlsError, TlsSide};

/// One address to listen on and what it accepts there.
#[derive(Clone)]
pub struct ListenOn {
    pub host: String,
    pub port: u16,
    pub mode: ListenMode,
}

impl ListenOn {
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A member's listeners and its way of reaching peers.
pub struct Listeners {
    pub client: Vec<ListenOn>,
    pub peer: Vec<ListenOn>,
    /// `--listen-metrics-urls`: https ones with the client TLS settings.
    pub metrics: Vec<ListenOn>,
    pub peer_dialer: Arc<PeerDialer>,
}

impl Listeners {
    /// Plaintext everywhere (tests and tools that start members in
    /// process).
    pub fn plaintext(client: &[(String, u16)], peer: &[(String, u16)]) -> Listeners {
        let plain = |list: &[(String, u16)]| {
            list.iter()
                .map(|(host, port)| ListenOn {
                    host: host.clone(),
                    port: *port,
                    mode: ListenMode::Plain,
                })
                .collect()
        };
        Listeners {
            client: plain(client),
            peer: plain(peer),
            metrics: Vec::new(),
            peer_dialer: Arc::new(PeerDialer::plaintext()),
        }
    }

    /// Reads every TLS file the flags name (generating auto-tls
    /// certificates first) and groups the client URLs by address: an
    /// address given as both `http://` and `https://` serves both.
    pub fn from_config(cfg: &Config) -> Result<Listeners, TlsError> {
        let (client_side, _) =
            with_auto_tls(&cfg.client_tls, cfg, "client", &cfg.listen_client_urls)?;
        let (peer_side, peer_self_signed) =
            with_auto_tls(&cfg.peer_tls, cfg, "peer", &cfg.listen_peer_urls)?;

        let https = |u: &EtcdUrl| u.scheme() == "https";
        let client_tls = if cfg.listen_client_urls.iter().any(https)
            || cfg.listen_metrics_urls.iter().any(https)
        {
            // etcd checks these at startup though only its gateway uses
            // them; cairn never dials its own client URLs.
            match (&client_side.client_cert_file, &client_side.client_key_file) {
                (Some(cert), Some(key)) => {
                    crate::tls::server::check_key_pair(cert, key, &cfg.tls_protocol)?
                }
                (None, None) => {}
                (cert, key) => {
                    let text = |p: &Option<std::path::PathBuf>| {
                        p.as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    };
                    return Err(TlsError::HalfClientPair {
                        cert: text(cert),
                        key: text(key),
                    });
                }
            }
            Some(Arc::new(ServerTls::new(
                "client",
                &client_side,
                &cfg.tls_protocol,
                false,
            )?))
        } else {
            None
        };
        let mut by_address: BTreeMap<(String, u16), (bool, bool)> = BTreeMap::new();
        for url in &cfg.listen_client_urls {
            let entry = by_address
                .entry((url.host().to_string(), url.port()))
                .or_default();
            match url.scheme() {
                "https" => entry.1 = true,
                _ => entry.0 = true,
            }
        }
        let client = by_address
            .into_iter()
            .map(|((host, port), (plain, secure))| {
                let mode = match (&client_tls, plain, secure) {
                    (Some(tls), true, true) => ListenMode::Either(tls.clone()),
                    (Some(tls), false, true) => ListenMode::Tls(tls.clone()),
                    _ => ListenMode::Plain,
                };
                ListenOn { host, port, mode }
            })
            .collect();

        let metrics = cfg
            .listen_metrics_urls
            .iter()
            .map(|url| ListenOn {
                host: url.host().to_string(),
                port: url.port(),
                mode: match (&client_tls, url.scheme()) {
                    (Some(tls), "https") => ListenMode::Tls(tls.clone()),
                    _ => ListenMode::Plain,
                },
            })
            .collect();

        let peer_tls = if cfg.listen_peer_urls.iter().any(|u| u.scheme() == "https") {
            Some(Arc::new(ServerTls::new(
                "peer",
                &peer_side,
                &cfg.tls_protocol,
                !peer_side.skip_client_san_verify,
            )?))
        } else {
            None
        };
        let peer = cfg
            .listen_peer_urls
            .iter()
            .map(|url| ListenOn {
                host: url.host().to_string(),
                port: url.port(),
                mode: match (&peer_tls, url.scheme()) {
                    (Some(tls), "https") => ListenMode::Tls(tls.clone()),
                    _ => ListenMode::Plain,
                },
            })
            .collect();
        let peer_dialer = Arc::new(PeerDialer::new(
            peer_side,
            cfg.tls_protocol.clone(),
            peer_self_signed,
        )?);
        Ok(Listeners {
            client,
            peer,
            metrics,
            peer_dialer,
        })
    }
}

/// The side's flags with an auto-tls certificate filled in when asked for
/// and no certificate is given; true when that happened.
fn with_auto_tls(
    side: &TlsSide,
    cfg: &Config,
    name: &str,
    urls: &[EtcdUrl],
) -> Result<(TlsSide, bool), TlsError> {
    if !side.auto_tls || side.has_cert() {
        return Ok((side.clone(), false));
    }
    let hosts: Vec<String> = urls.iter().map(|u| u.host().to_string()).collect();
    let dir = cfg.data_dir.join("fixtures").join(name);
    let files = self_signed(&dir, &hosts, cfg.self_signed_cert_validity)?;
    // As etcd: the generated certificate replaces the side's settings
    // whole, so no client certificate is asked for (peers' self-signed
    // certificates could not be verified anyway) and, with none presented,
    // no CRL, CN or SAN check applies.
    let side = TlsSide {
        cert_file: Some(files.cert_file),
        key_file: Some(files.key_file),
        auto_tls: true,
        ..TlsSide::default()
    };
    Ok((side, true))
}
