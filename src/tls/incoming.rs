//! The connections a listener hands to a gRPC server: plaintext, TLS, or
//! either.
//!
//! etcd serves one client address given as both `http://` and `https://`
//! on one socket, telling the two apart by what the client sends first;
//! cairn does the same by the first byte (a TLS handshake record starts
//! with 0x16, an HTTP/2 preface with `P`). Handshakes run in tasks of their
//! own, so a client that never finishes one delays nobody else; refused
//! connections are logged like etcd's "rejected connection".

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::server::{ServerTls, HANDSHAKE_TIMEOUT};

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a listener accepts.
#[derive(Clone)]
pub enum ListenMode {
    Plain,
    Tls(Arc<ServerTls>),
    /// Both, on one address (`http://` and `https://` client URLs with the
    /// same host and port).
    Either(Arc<ServerTls>),
}

impl ListenMode {
    /// etcd's wording for the milestone log line of a client listener.
    pub fn serving_message(&self) -> &'static str {
        match self {
            ListenMode::Plain => "serving client traffic insecurely; this is strongly discouraged!",
            ListenMode::Tls(_) => "serving client traffic securely",
            ListenMode::Either(_) => "serving client traffic securely and insecurely",
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection, decrypted if it came over TLS.
pub struct Conn {
    stream: Stream,
    remote: SocketAddr,
}

impl Conn {
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        Some(self.remote)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts on `listener` until the returned stream is dropped. `side`
/// ("client", "peer") names the listener in logs.
pub fn incoming(
    listener: TcpListener,
    mode: ListenMode,
    side: &'static str,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a
                    // moment rather than spin.
                    tracing::warn!(side, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            let mode = mode.clone();
            tokio::spawn(async move {
                match admit(tcp, remote, &mode).await {
                    Ok(Some(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(
                        side,
                        remote_addr = %remote,
                        error = %e,
                        "rejected connection"
                    ),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The connection as the server will see it; `None` for a client that
/// left before saying anything.
async fn admit(
    tcp: TcpStream,
    remote: SocketAddr,
    mode: &ListenMode,
) -> Result<Option<Conn>, super::TlsError> {
    let tls = match mode {
        ListenMode::Plain => None,
        ListenMode::Tls(tls) => Some(tls),
        ListenMode::Either(tls) => {
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first))
                .await
                .map_err(|_| super::TlsError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?
                .map_err(super::TlsError::Handshake)?;
            if peeked == 0 {
                return Ok(None);
            }
            (first[0] == TLS_HANDSHAKE_RECORD).then_some(tls)
        }
    };
    let stream = match tls {
        None => Stream::Plain(tcp),
        Some(tls) => Stream::Tls(Box::new(tls.accept(tcp, remote).await?)),
    };
    Ok(Some(Conn { stream, remote }))
}
