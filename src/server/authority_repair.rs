//! A filter in front of each client connection that repairs the HTTP/2
//! `:authority` etcdctl 3.4 sends.
//!
//! etcdctl 3.4 (grpc-go of its time) dials some commands — `endpoint
//! status`, `endpoint hashkv` — with the whole endpoint URL as the
//! authority: `http://127.0.0.1:2379`. grpc-go's server takes it; the `h2`
//! crate under tonic refuses it as a malformed authority and resets the
//! stream, so those commands failed against us while they work against etcd.
//!
//! The filter reads the client's frames. It decodes each header block with
//! an HPACK decoder (so it tracks the client's dynamic table) and forwards
//! the original bytes untouched — until it meets an authority with a
//! scheme. From then on, every header block of that connection is
//! re-encoded with the scheme stripped, by an encoder whose table the
//! server's decoder follows. A connection whose first request is well
//! formed is passed through unparsed from then on: a client uses one
//! authority per connection.
//!
//! **Invariant:** the filter never changes anything but `:authority` values
//! that carry a scheme; every other byte reaches the server as sent.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The smallest maximum frame size a peer may set: frames we build never
/// exceed it, whatever the server negotiated.
const MAX_FRAME: usize = 16_384;
/// Frames larger than this are refused (h2's default limit is 16 KiB, the
/// protocol's ceiling 16 MiB).
const MAX_ACCEPTED_FRAME: usize = 16 * 1024 * 1024;
const PIPE_BYTES: usize = 256 * 1024;

/// The server's end of a filtered client connection.
pub struct FilteredConn {
    inner: DuplexStream,
    remote: Option<SocketAddr>,
}

impl tonic::transport::server::Connected for FilteredConn {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.remote
    }
}

impl AsyncRead for FilteredConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FilteredConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Puts the filter between a client connection (TCP, or TLS already
/// decrypted) and the server; returns the server's end.
pub fn filter<S>(conn: S, remote: Option<SocketAddr>) -> FilteredConn
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (server_end, our_end) = tokio::io::duplex(PIPE_BYTES);
    let (tcp_rd, mut tcp_wr) = tokio::io::split(conn);
    let (pipe_rd, pipe_wr) = tokio::io::split(our_end);
    tokio::spawn(async move {
        let _ = client_to_server(tcp_rd, pipe_wr).await;
    });
    tokio::spawn(async move {
        let mut pipe_rd = pipe_rd;
        let _ = tokio::io::copy(&mut pipe_rd, &mut tcp_wr).await;
        let _ = tcp_wr.shutdown().await;
    });
    FilteredConn {
        inner: server_end,
        remote,
    }
}

enum Mode {
    /// Decoding header blocks, forwarding the original bytes.
    Inspect,
    /// Re-encoding every header block.
    Rewrite,
}

async fn client_to_server(
    mut rd: impl AsyncRead + Unpin,
    mut wr: impl AsyncWrite + Unpin,
) -> io::Result<()> {
    let mut preface = [0u8; 24];
    rd.read_exact(&mut preface).await?;
    wr.write_all(&preface).await?;
    if preface != PREFACE {
        // Not HTTP/2 with prior knowledge: let the server refuse it.
        tokio::io::copy(&mut rd, &mut wr).await?;
        return Ok(());
    }
    let mut decoder = loona_hpack::Decoder::new();
    let mut encoder = loona_hpack::Encoder::new();
    let mut mode = Mode::Inspect;
    // A header block in progress: its frames as sent, and the fragment.
    let mut raw_block: Vec<u8> = Vec::new();
    let mut block: Vec<u8> = Vec::new();
    let mut block_start: Option<(u32, u8, Option<[u8; 5]>)> = None;
    loop {
        let mut head = [0u8; 9];
        if rd.read_exact(&mut head).await.is_err() {
            return wr.shutdown().await;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if len > MAX_ACCEPTED_FRAME {
            return Err(io::Error::other("frame too large"));
        }
        let mut payload = vec![0u8; len];
        rd.read_exact(&mut payload).await?;
        match kind {
            FRAME_HEADERS => {
                let (fragment, priority) = headers_fragment(&payload, flags)?;
                block_start = Some((stream, flags & FLAG_END_STREAM, priority));
                block.clear();
                block.extend_from_slice(fragment);
                raw_block.clear();
                raw_block.extend_from_slice(&head);
                raw_block.extend_from_slice(&payload);
                if flags & FLAG_END_HEADERS == 0 {
                    continue;
                }
            }
            FRAME_CONTINUATION if block_start.is_some() => {
                block.extend_from_slice(&payload);
                raw_block.extend_from_slice(&head);
                raw_block.extend_from_slice(&payload);
                if flags & FLAG_END_HEADERS == 0 {
                    continue;
                }
            }
            _ => {
                wr.write_all(&head).await?;
                wr.write_all(&payload).await?;
                continue;
            }
        }
        // A whole header block.
        let (stream, end_stream, priority) = block_start.take().expect("block started");
        let fields = decoder
            .decode(&block)
            .map_err(|e| io::Error::other(format!("hpack: {e}")))?;
        let bad = fields
            .iter()
            .any(|(n, v)| n == b":authority" && authority_host(v).is_some());
        match mode {
            Mode::Inspect if !bad => {
                wr.write_all(&raw_block).await?;
                // Well formed: nothing on this connection needs us again.
                tokio::io::copy(&mut rd, &mut wr).await?;
                return wr.shutdown().await;
            }
            _ => {
                mode = Mode::Rewrite;
                let fixed: Vec<(Vec<u8>, Vec<u8>)> = fields
                    .into_iter()
                    .map(|(n, v)| {
                        if n == b":authority" {
                            let host = authority_host(&v).map(<[u8]>::to_vec);
                            (n, host.unwrap_or(v))
                        } else {
                            (n, v)
                        }
                    })
                    .collect();
                let encoded =
                    encoder.encode(fixed.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
                write_block(&mut wr, stream, end_stream, priority, &encoded).await?;
            }
        }
    }
}

/// The header block fragment of a HEADERS frame, without padding and
/// priority (which is returned).
fn headers_fragment(payload: &[u8], flags: u8) -> io::Result<(&[u8], Option<[u8; 5]>)> {
    let bad = || io::Error::other("malformed HEADERS frame");
    let mut p = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        pad = *p.first().ok_or_else(bad)? as usize;
        p = &p[1..];
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let pr: [u8; 5] = p.get(..5).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
        priority = Some(pr);
        p = &p[5..];
    }
    let end = p.len().checked_sub(pad).ok_or_else(bad)?;
    Ok((&p[..end], priority))
}

/// Writes a header block as one HEADERS frame and as many CONTINUATION
/// frames as it needs.
async fn write_block(
    wr: &mut (impl AsyncWrite + Unpin),
    stream: u32,
    end_stream: u8,
    priority: Option<[u8; 5]>,
    block: &[u8],
) -> io::Result<()> {
    let first_room = MAX_FRAME - if priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = end_stream;
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let mut payload = Vec::with_capacity(first.len() + 5);
    if let Some(pr) = priority {
        payload.extend_from_slice(&pr);
    }
    payload.extend_from_slice(first);
    write_frame(wr, FRAME_HEADERS, flags, stream, &payload).await?;
    while !rest.is_empty() {
        let (chunk, more) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = more;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_frame(wr, FRAME_CONTINUATION, flags, stream, chunk).await?;
    }
    Ok(())
}

async fn write_frame(
    wr: &mut (impl AsyncWrite + Unpin),
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> io::Result<()> {
    let len = (payload.len() as u32).to_be_bytes();
    let s = stream.to_be_bytes();
    let head = [len[1], len[2], len[3], kind, flags, s[0], s[1], s[2], s[3]];
    wr.write_all(&head).await?;
    wr.write_all(payload).await
}

/// For an authority written as a URL (`scheme://host:port[/...]`), the
/// `host:port` part; `None` for a well-formed authority.
fn authority_host(v: &[u8]) -> Option<&[u8]> {
    let sep = v.windows(3).position(|w| w == b"://")?;
    let rest = &v[sep + 3..];
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_scheme_and_path() {
        assert_eq!(
            authority_host(b"http://127.0.0.1:2379"),
            Some(&b"127.0.0.1:2379"[..])
        );
        assert_eq!(
            authority_host(b"https://etcd-0:2379/"),
            Some(&b"etcd-0:2379"[..])
        );
        assert_eq!(authority_host(b"127.0.0.1:2379"), None);
    }

    /// A client that sends a URL authority, then the same authority again by
    /// dynamic-table index, gets both requests repaired, and the server
    /// side decodes every block consistently.
    #[tokio::test]
    async fn rewrites_url_authorities_across_blocks() {
        let mut client_enc = loona_hpack::Encoder::new();
        let req = |path: &'static str| -> Vec<(&'static [u8], &'static [u8])> {
            vec![
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path.as_bytes()),
                (b":authority", b"http://127.0.0.1:2379"),
                (b"content-type", b"application/grpc"),
            ]
        };
        let mut input = PREFACE.to_vec();
        for (i, path) in ["/etcdserverpb.KV/Range", "/etcdserverpb.Maintenance/Status"]
            .into_iter()
            .enumerate()
        {
            let block = client_enc.encode(req(path));
            let mut frame = Vec::new();
            write_block(&mut frame, 1 + 2 * i as u32, 0, None, &block)
                .await
                .unwrap();
            input.extend_from_slice(&frame);
            // A DATA frame passes through untouched.
            write_frame(&mut frame, 0x0, 0x1, 1 + 2 * i as u32, b"x")
                .await
                .unwrap();
            input.extend_from_slice(&frame[frame.len() - 10..]);
        }
        let mut out = Vec::new();
        client_to_server(input.as_slice(), &mut out).await.unwrap();
        assert_eq!(&out[..24], PREFACE);
        let mut dec = loona_hpack::Decoder::new();
        let mut p = &out[24..];
        let mut authorities = Vec::new();
        let mut data_frames = 0;
        while p.len() >= 9 {
            let len = u32::from_be_bytes([0, p[0], p[1], p[2]]) as usize;
            let kind = p[3];
            let payload = &p[9..9 + len];
            if kind == FRAME_HEADERS {
                for (n, v) in dec.decode(payload).unwrap() {
                    if n == b":authority" {
                        authorities.push(v);
                    }
                }
            } else if kind == 0x0 {
                assert_eq!(payload, b"x");
                data_frames += 1;
            }
            p = &p[9 + len..];
        }
        assert_eq!(
            authorities,
            vec![b"127.0.0.1:2379".to_vec(), b"127.0.0.1:2379".to_vec()]
        );
        assert_eq!(data_frames, 2);
    }
}
