//! Raft messages between members: a gRPC client stream per peer for what
//! this member sends, and the `Peer` service for what it receives.
//!
//! **Invariant:** sending never blocks the raft thread: messages go into a
//! bounded queue per peer and are dropped when it is full or the peer is
//! unreachable — raft retransmits what matters.

use std::collections::HashMap;
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::node::{Command, RaftHandle};
use crate::pb::cairnpb::peer_client::PeerClient;
use crate::pb::cairnpb::peer_server::Peer;
use crate::pb::cairnpb::{RaftAck, RaftBatch};

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

/// The receiving side: the `Peer` gRPC service on the peer URLs.
pub struct PeerService {
    raft: RaftHandle,
    cluster_id: u64,
    member: u64,
}

impl PeerService {
    pub fn new(raft: RaftHandle, cluster_id: u64, member: u64) -> PeerService {
        PeerService {
            raft,
            cluster_id,
            member,
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let mut stream = req.into_inner();
        while let Some(batch) = stream.message().await? {
            if batch.cluster_id != self.cluster_id {
                return Err(Status::failed_precondition(format!(
                    "cluster ID mismatch: ours is {:x}, member {:x} sent {:x}",
                    self.cluster_id, batch.from, batch.cluster_id
                )));
            }
            if batch.to != self.member {
                return Err(Status::failed_precondition(format!(
                    "member ID mismatch: this is {:x}, the batch is for {:x}",
                    self.member, batch.to
                )));
            }
            for raw in batch.messages {
                let m = Message::parse_from_bytes(&raw)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                self.raft
                    .send(Command::Step(Box::new(m)))
                    .map_err(|e| Status::unavailable(e.to_string()))?;
            }
        }
        Ok(Response::new(RaftAck {}))
    }
}
