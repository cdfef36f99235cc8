//! Raft messages between members: a gRPC client stream per peer for what
//! this member sends (what it receives arrives through `server::peer`), and
//! snapshot streams to members that are behind the log.
//!
//! Peers are found in the member list as it is at the moment: a member
//! added by a conf change is reached once its entry is applied, a removed
//! one is let go, and new peer URLs are used from the next connection on.
//!
//! **Invariant:** sending never blocks the raft thread: messages go into a
//! bounded queue per peer and are dropped when it is full or the peer is
//! unreachable — raft retransmits what matters. A snapshot is streamed by a
//! task of its own, which reports the outcome back to raft.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::node::Command;
use super::snapshot;
use crate::error::{Error, Result};
use crate::membership::Membership;
use crate::pb::cairnpb::peer_client::PeerClient;
use crate::pb::cairnpb::{RaftBatch, SnapshotChunk};
use crate::storage::Storage;
use crate::tls::PeerDialer;

/// Messages queued for one peer at most.
const PEER_QUEUE: usize = 4096;
/// Messages per batch at most.
const BATCH: usize = 256;

/// Since when this member has had a working connection to each peer (etcd's
/// `ActiveSince`, which its strict reconfiguration checks read).
#[derive(Default)]
pub struct PeerActivity {
    /// This member (the `Local` of etcd's peer connection metrics).
    local: u64,
    since: Mutex<HashMap<u64, Instant>>,
}

impl PeerActivity {
    /// When the connection to `id` came up, if it is up.
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        self.lock().get(&id).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.since.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn up(&self, id: u64) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.lock().entry(id) {
            e.insert(Instant::now());
            crate::metrics::hooks::peer_connection(self.local, id, true);
        }
    }

    fn down(&self, id: u64) {
        if self.lock().remove(&id).is_some() {
            crate::metrics::hooks::peer_connection(self.local, id, false);
        }
    }
}

/// The sending side: one queue and one task per peer. Owned by the raft
/// thread.
pub struct Transport {
    runtime: tokio::runtime::Handle,
    cluster_id: u64,
    from: u64,
    membership: Arc<Membership>,
    storage: Storage,
    peers: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    activity: Arc<PeerActivity>,
    dialer: Arc<PeerDialer>,
    /// Where snapshot outcomes go (the raft thread's command channel).
    reports: Option<std::sync::mpsc::Sender<Command>>,
}

impl Transport {
    pub fn new(
        runtime: &tokio::runtime::Handle,
        cluster_id: u64,
        from: u64,
        membership: Arc<Membership>,
        storage: Storage,
        dialer: Arc<PeerDialer>,
    ) -> Transport {
        Transport {
            runtime: runtime.clone(),
            cluster_id,
            from,
            membership,
            storage,
            peers: HashMap::new(),
            activity: Arc::new(PeerActivity {
                local: from,
                since: Mutex::default(),
            }),
            dialer,
            reports: None,
        }
    }

    pub fn activity(&self) -> Arc<PeerActivity> {
        self.activity.clone()
    }

    /// Keeps a connection to every member, not only to those raft talks
    /// to (a follower never writes to another follower): as in etcd, a
    /// member knows which peers it can reach before it agrees to a
    /// membership change. Called on every tick.
    pub fn connect_all(&mut self) {
        for m in self.membership.list() {
            if m.id == self.from {
                continue;
            }
            let live = self.peers.get(&m.id).is_some_and(|q| !q.is_closed());
            if !live {
                self.start_peer(m.id, None);
            }
        }
    }

    pub fn set_reports(&mut self, tx: std::sync::mpsc::Sender<Command>) {
        self.reports = Some(tx);
    }

    /// Queues messages for their peers (raft thread; never blocks).
    pub fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(m);
                continue;
            }
            let Ok(bytes) = m.write_to_bytes() else {
                continue;
            };
            let to = m.to;
            if let Some(q) = self.peers.get(&to) {
                match q.try_send(bytes) {
                    Ok(()) => continue,
                    // Full queue: the peer is slow or away; raft will resend.
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let heartbeat = m.get_msg_type() == MessageType::MsgHeartbeat;
                        crate::metrics::hooks::peer_message_dropped(to, heartbeat);
                    }
                    // Its task ended (the member was removed, or came back
                    // under a new configuration): start over below.
                    Err(mpsc::error::TrySendError::Closed(b)) => {
                        self.peers.remove(&to);
                        self.start_peer(to, Some(b));
                    }
                }
            } else {
                self.start_peer(to, Some(bytes));
            }
        }
    }

    /// Starts the sender task of a member, if the member list has it yet.
    fn start_peer(&mut self, to: u64, first: Option<Vec<u8>>) {
        if self.membership.get(to).is_none() {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        if let Some(first) = first {
            let _ = tx.try_send(first);
        }
        let peer = PeerLink {
            cluster_id: self.cluster_id,
            from: self.from,
            to,
            membership: self.membership.clone(),
            activity: self.activity.clone(),
            dialer: self.dialer.clone(),
        };
        self.runtime.spawn(peer.run(rx));
        self.peers.insert(to, tx);
    }

    fn send_snapshot(&self, m: Message) {
        let to = m.to;
        let Some(reports) = self.reports.clone() else {
            return;
        };
        let task = SnapshotSend {
            cluster_id: self.cluster_id,
            from: self.from,
            to,
            membership: self.membership.clone(),
            storage: self.storage.clone(),
            dialer: self.dialer.clone(),
        };
        self.runtime.spawn(async move {
            let started = std::time::Instant::now();
            let result = task.run(m).await;
            match &result {
                Ok(bytes) => tracing::info!(
                    to = format_args!("{to:x}"),
                    bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sent a snapshot"
                ),
                Err(e) => tracing::warn!(to = format_args!("{to:x}"), error = %e, "sending a snapshot failed"),
            }
            let _ = reports.send(Command::ReportSnapshot {
                to,
                ok: result.is_ok(),
            });
        });
    }
}

/// The peer URL to reach member `to` at, as the member list says now.
fn peer_url(membership: &Membership, to: u64) -> Option<String> {
    membership.get(to)?.peer_urls.first().cloned()
}

/// A client of a peer's `Peer` service at `url` (TLS for `https://`).
async fn connect(dialer: &PeerDialer, url: &str) -> Result<PeerClient<tonic::transport::Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::Internal(format!("bad peer URL {url}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        // A peer that stops answering (a partition, a frozen machine) is
        // noticed within seconds even on an idle connection.
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true);
    let ch = dialer
        .connect(endpoint)
        .await
        .map_err(|e| Error::Internal(format!("connect to {url}: {e}")))?;
    Ok(PeerClient::new(ch)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// Whether an encoded raft message is a heartbeat, read from its first
/// field (the message type, which the encoder writes first).
fn is_heartbeat(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x08) && bytes.get(1) == Some(&(MessageType::MsgHeartbeat as u8))
}

/// The sending side of one peer.
struct PeerLink {
    cluster_id: u64,
    from: u64,
    to: u64,
    membership: Arc<Membership>,
    activity: Arc<PeerActivity>,
    dialer: Arc<PeerDialer>,
}

impl PeerLink {
    async fn run(self, mut queue: mpsc::Receiver<Vec<u8>>) {
        let mut backoff = Duration::from_millis(50);
        // The last reason the peer gave for refusing us, logged once.
        let mut refused: Option<String> = None;
        let mut last_dial_error: Option<String> = None;
        loop {
            // Looked up on every connection: the member may have new URLs,
            // or be gone.
            let Some(url) = peer_url(&self.membership, self.to) else {
                self.activity.down(self.to);
                return;
            };
            let mut client = match connect(&self.dialer, &url).await {
                Ok(c) => c,
                Err(e) => {
                    // A peer that is down is expected; one that refuses
                    // our certificate (or we its) needs an operator: say
                    // each different reason once.
                    let reason = e.to_string();
                    if last_dial_error.as_deref() != Some(reason.as_str()) {
                        tracing::warn!(peer = %url, to = format_args!("{:x}", self.to), error = %reason, "cannot reach peer");
                        last_dial_error = Some(reason);
                    }
                    self.activity.down(self.to);
                    // Drop what queued up while the peer was away, counted
                    // as failed sends (etcd's peer_sent_failures, which the
                    // "member down" alerts watch).
                    while let Ok(bytes) = queue.try_recv() {
                        crate::metrics::hooks::peer_message_dropped(self.to, is_heartbeat(&bytes));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    if queue.is_closed() {
                        return;
                    }
                    continue;
                }
            };
            let _probe = super::peer_probe::PeerProbe::start(client.clone(), self.to);
            last_dial_error = None;
            let (tx, rx) = mpsc::channel::<RaftBatch>(64);
            let mut call = tokio::spawn(async move { client.raft(ReceiverStream::new(rx)).await });
            self.activity.up(self.to);
            let ended = loop {
                let first = tokio::select! {
                    m = queue.recv() => m,
                    // The peer went away, or refused us: reconnect.
                    r = &mut call => break Some(r),
                };
                let Some(first) = first else {
                    self.activity.down(self.to);
                    call.abort();
                    return;
                };
                let mut messages = vec![first];
                while messages.len() < BATCH {
                    match queue.try_recv() {
                        Ok(m) => messages.push(m),
                        Err(_) => break,
                    }
                }
                crate::metrics::hooks::peer_bytes_sent(
                    self.to,
                    messages.iter().map(|m| m.len() as u64).sum(),
                );
                let batch = RaftBatch {
                    cluster_id: self.cluster_id,
                    from: self.from,
                    to: self.to,
                    messages,
                };
                if tx.send(batch).await.is_err() {
                    // The call is over; its outcome says why.
                    break None;
                }
            };
            self.activity.down(self.to);
            drop(tx);
            let outcome = match ended {
                Some(r) => r,
                None => (&mut call).await,
            };
            match outcome {
                Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                    // Another cluster, or not the member we think: say so
                    // (once per reason), and keep trying slowly.
                    if refused.as_deref() != Some(status.message()) {
                        tracing::error!(
                            peer = %url,
                            to = format_args!("{:x}", self.to),
                            error = status.message(),
                            "peer refused our raft messages"
                        );
                        refused = Some(status.message().to_string());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ => {
                    refused = None;
                    backoff = Duration::from_millis(50);
                }
            }
        }
    }
}

/// One snapshot on its way to a member.
struct SnapshotSend {
    cluster_id: u64,
    from: u64,
    to: u64,
    membership: Arc<Membership>,
    storage: Storage,
    dialer: Arc<PeerDialer>,
}

impl SnapshotSend {
    /// Streams the raft message, then the store read from a consistent view
    /// taken now; returns the bytes of records sent.
    async fn run(self, m: Message) -> Result<u64> {
        let url = peer_url(&self.membership, self.to)
            .ok_or_else(|| Error::Internal("member has no peer URL".into()))?;
        let mut client = connect(&self.dialer, &url).await?;
        let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
        let head = SnapshotChunk {
            cluster_id: self.cluster_id,
            from: self.from,
            to: self.to,
            message: m.write_to_bytes().map_err(Error::internal)?,
            ..Default::default()
        };
        tx.send(head).await.map_err(|_| Error::Stopped)?;
        let (cluster_id, from, to) = (self.cluster_id, self.from, self.to);
        let storage = self.storage.clone();
        let reader = tokio::task::spawn_blocking(move || {
            let mut bytes = 0u64;
            let mut complete = true;
            snapshot::read(&storage, |r| {
                bytes += r
                    .keys
                    .iter()
                    .chain(&r.values)
                    .map(|b| b.len() as u64)
                    .sum::<u64>();
                let chunk = SnapshotChunk {
                    cluster_id,
                    from,
                    to,
                    message: Vec::new(),
                    family: r.family,
                    keys: r.keys,
                    values: r.values,
                };
                // The call ended early: stop reading.
                complete = tx.blocking_send(chunk).is_ok();
                complete
            })?;
            if !complete {
                return Err(Error::Internal("snapshot stream closed early".into()));
            }
            Ok(bytes)
        });
        let sent = client.snapshot(ReceiverStream::new(rx)).await;
        let bytes = reader.await.map_err(Error::internal)??;
        sent.map_err(|s| Error::Internal(format!("{}: {}", s.code(), s.message())))?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_told_from_their_encoding() {
        let encode = |t: MessageType| {
            let mut m = Message::default();
            m.set_msg_type(t);
            m.to = 2;
            m.from = 1;
            m.term = 7;
            m.write_to_bytes().unwrap()
        };
        assert!(is_heartbeat(&encode(MessageType::MsgHeartbeat)));
        assert!(!is_heartbeat(&encode(MessageType::MsgAppend)));
        assert!(!is_heartbeat(&encode(MessageType::MsgHeartbeatResponse)));
        // MsgHup is type 0: no type field at all.
        assert!(!is_heartbeat(&encode(MessageType::MsgHup)));
    }
}
