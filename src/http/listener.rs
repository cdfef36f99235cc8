//! Serving the endpoints over plain HTTP/1.1 on `--listen-metrics-urls`
//! (as etcd: no TLS there, no gRPC), one task per connection.

use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The accept loops of the metrics URLs; dropping this closes the
/// listeners and every connection they accepted.
pub struct HttpListeners {
    tasks: Vec<JoinHandle<()>>,
}

impl HttpListeners {
    /// Binds every `host:port` (all or nothing: a taken port is an error,
    /// as etcd refuses to start then) and serves `router` on each.
    pub async fn bind(addrs: &[(String, u16)], router: axum::Router) -> anyhow::Result<Self> {
        let mut listeners = Vec::new();
        for (host, port) in addrs {
            let l = TcpListener::bind((host.as_str(), *port))
                .await
                .map_err(|e| anyhow::anyhow!("listen for metrics on {host}:{port}: {e}"))?;
            listeners.push(l);
        }
        let tasks = listeners
            .into_iter()
            .map(|l| {
                if let Ok(addr) = l.local_addr() {
                    tracing::info!(address = %addr, "serving metrics and health endpoints");
                }
                tokio::spawn(accept_loop(l, router.clone()))
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

async fn accept_loop(listener: TcpListener, router: axum::Router) {
    // Owned here, so that aborting this task ends every connection too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    connections.spawn(serve_connection(tcp, router.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather
                    // than spin.
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
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
    let served = hyper::server::conn::http1::Builder::new()
        // A client that never finishes its request headers is let go.
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "metrics connection ended with an error");
    }
}
