//! Round-trip times to peers (`etcd_network_peer_round_trip_time_seconds`):
//! while a connection to a peer is up, a small unary call (`Members`, which
//! the peer answers from memory) is timed on it every few seconds — on the
//! same HTTP/2 connection as the raft stream, so it measures what raft
//! messages see. etcd probes its peers the same way, every few seconds.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::pb::cairnpb::peer_client::PeerClient;
use crate::pb::cairnpb::MembersRequest;

/// Time between probes (etcd's prober runs every 4 s).
const PROBE_INTERVAL: Duration = Duration::from_secs(4);
/// A probe slower than this is given up (and not recorded).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Probes member `to` over `client` until dropped.
pub struct PeerProbe(JoinHandle<()>);

impl PeerProbe {
    pub fn start(client: PeerClient<tonic::transport::Channel>, to: u64) -> PeerProbe {
        PeerProbe(tokio::spawn(probe(client, to)))
    }
}

impl Drop for PeerProbe {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn probe(mut client: PeerClient<tonic::transport::Channel>, to: u64) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tick.tick().await;
        let started = Instant::now();
        let answered = tokio::time::timeout(PROBE_TIMEOUT, client.members(MembersRequest {})).await;
        if let Ok(Ok(_)) = answered {
            crate::metrics::hooks::peer_round_trip(to, started.elapsed());
        }
    }
}
