//! Raft messages between members: a gRPC client stream per peer for what
//! this member sends (what it receives arrives through `server::peer`).
//!
//! **Invariant:** sending never blocks the raft thread: messages go into a
//! bounded queue per peer and are dropped when it is full or the peer is
//! unreachable — raft retransmits what matters.

use std::collections::HashMap;
use std::time::Duration;

use crate::pb::cairnpb::peer_client::PeerClient;
use crate::pb::cairnpb::RaftBatch;
use protobuf::Message as _;
use raft::prelude::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Messages queued for one peer at most.
const PEER_QUEUE: usize = 4096;
/// Messages per batch at most.
const BATCH: usize = 256;

/// The sending side: one queue and one task per peer.
pub struct Transport {
    peers: HashMap<u64, mpsc::Sender<Vec<u8>>>,
}

impl Transport {
    /// Starts a sender task per peer on `runtime`. `peers` are (member id,
    /// peer URL) of the other members.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        cluster_id: u64,
        from: u64,
        peers: Vec<(u64, String)>,
    ) -> Transport {
        let mut queues = HashMap::new();
        for (to, url) in peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            runtime.spawn(send_loop(cluster_id, from, to, url, rx));
            queues.insert(to, tx);
        }
        Transport { peers: queues }
    }

    /// Queues messages for their peers (raft thread; never blocks).
    pub fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            let Some(q) = self.peers.get(&m.to) else {
                continue;
            };
            if let Ok(bytes) = m.write_to_bytes() {
                // Full queue: the peer is slow or away; raft will resend.
                let _ = q.try_send(bytes);
            }
        }
    }
}

async fn send_loop(
    cluster_id: u64,
    from: u64,
    to: u64,
    url: String,
    mut queue: mpsc::Receiver<Vec<u8>>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
            Ok(e) => e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true),
            Err(e) => {
                tracing::error!(peer = %url, error = %e, "bad peer URL");
                return;
            }
        };
        let client = match endpoint.connect().await {
            Ok(ch) => PeerClient::new(ch),
            Err(_) => {
                // Drop what queued up while the peer was away.
                while queue.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                if queue.is_closed() {
                    return;
                }
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let (tx, rx) = mpsc::channel::<RaftBatch>(64);
        let mut client = client;
        let call = tokio::spawn(async move { client.raft(ReceiverStream::new(rx)).await });
        loop {
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut messages = vec![first];
            while messages.len() < BATCH {
                match queue.try_recv() {
                    Ok(m) => messages.push(m),
                    Err(_) => break,
                }
            }
            let batch = RaftBatch {
                cluster_id,
                from,
                to,
                messages,
            };
            if tx.send(batch).await.is_err() {
                break;
            }
        }
        drop(tx);
        let _ = call.await;
    }
}
