//! Serving the endpoints on `--listen-metrics-urls`: HTTP/1.1 (and
//! HTTP/2), plaintext, or TLS with the client TLS settings for `https://`
//! URLs, as etcd does; no gRPC there. One task per connection.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::StreamExt;

use crate::server::listeners::ListenOn;
use crate::tls::incoming::incoming;

/// The accept loops of the metrics URLs; dropping this closes the
/// listeners and every connection they accepted.
pub struct HttpListeners {
    tasks: Vec<JoinHandle<()>>,
}

impl HttpListeners {
    /// Binds every address (all or nothing: a taken port is an error, as
    /// etcd refuses to start then) and serves `router` on each.
    pub async fn bind(addrs: &[ListenOn], router: axum::Router) -> anyhow::Result<Self> {
        let mut listeners = Vec::new();
        for on in addrs {
            let l = TcpListener::bind((on.host.as_str(), on.port))
                .await
                .map_err(|e| anyhow::anyhow!("listen for metrics on {}: {e}", on.address()))?;
            listeners.push((l, on.clone()));
        }
        let tasks = listeners
            .into_iter()
            .map(|(l, on)| {
                if let Ok(addr) = l.local_addr() {
                    let tls = !matches!(on.mode, crate::tls::ListenMode::Plain);
                    tracing::info!(address = %addr, tls, "serving metrics and health endpoints");
                }
                tokio::spawn(accept_loop(l, on, router.clone()))
            })
            .collect();
        Ok(HttpListeners { tasks })
    }
}

impl Drop for HttpListeners {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, on: ListenOn, router: axum::Router) {
    // Owned here, so that aborting this task ends every connection too.
    let mut connections = JoinSet::new();
    // Accepting (and the TLS handshake, refusals logged) as on the client
    // port.
    let mut accepted = incoming(listener, on.mode, "metrics");
    loop {
        tokio::select! {
            conn = accepted.next() => match conn {
                Some(Ok(conn)) => {
                    connections.spawn(serve_connection(conn, router.clone()));
                }
                Some(Err(e)) => tracing::debug!(error = %e, "a metrics connection failed"),
                None => return,
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Serves one accepted connection that speaks HTTP/1.1 (plain or already
/// through TLS) with `router` until the client closes it.
///
/// TODO(client listener): the client URLs get the endpoints through
/// `client_routes` and tonic's `accept_http1`; should the client listener
/// come to sort connections itself (TLS, cmux-like sniffing), it calls this
/// for each connection it finds to be HTTP/1.
pub async fn serve_connection<I>(io: I, router: axum::Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    // HTTP/1.1, or HTTP/2 when TLS negotiated it (or a client speaks it
    // with prior knowledge).
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // A client that never finishes its request headers is let go.
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let served = builder.serve_connection(TokioIo::new(io), service).await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "metrics connection ended with an error");
    }
}
