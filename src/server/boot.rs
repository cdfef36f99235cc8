//! Starting a member: open the data dir, find out who we are, start raft,
//! wait until the store has caught up, then serve clients until told to
//! stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use super::authority_repair;
use super::corruption;
use super::listeners::ListenOn;

use super::identity::{find_self, Identity, InitialMember};
use super::peer::{PeerContext, PeerService};
use super::{Member, MemberSettings};
use crate::api::{
    cluster::ClusterService, kv::KvService, lease::LeaseService, maintenance::MaintenanceService,
    watch::WatchService,
};
use crate::apply::Applier;
use crate::apply::Op;
use crate::consensus::transport::Transport;
use crate::consensus::{log_store::LogStore, node, NodeConfig};
use crate::ids::format_id;
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::mvcc::MvccStore;
use crate::pb::cairnpb::peer_server::PeerServer;
use crate::pb::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer, LeaseCheckpoint,
    LeaseCheckpointRequest, LeaseRevokeRequest,
};
use crate::storage::Storage;
use crate::tls::incoming::incoming;
use crate::tls::PeerDialer;
use crate::watch::WatchHub;

/// What a member needs to start; built from the command line by `main`.
pub struct BootSettings {
    pub name: String,
    pub data_dir: PathBuf,
    /// Addresses to listen on for clients, each plaintext, TLS or both.
    pub listen_client: Vec<ListenOn>,
    /// Addresses to listen on for peers, each plaintext or TLS.
    pub listen_peer: Vec<ListenOn>,
    /// How this member reaches peer URLs (TLS for `https://` ones).
    pub peer_dialer: Arc<PeerDialer>,
    /// Addresses serving the HTTP endpoints (`--listen-metrics-urls`),
    /// plaintext or TLS.
    pub listen_metrics: Vec<ListenOn>,
    pub advertise_client_urls: Vec<String>,
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_token: String,
    /// `--initial-cluster-state existing`: join a running cluster.
    pub join_existing: bool,
    pub snapshot_count: u64,
    pub max_learners: usize,
    pub strict_reconfig_check: bool,
    /// Raise NOSPACE past this many bytes; 0 or less: no quota.
    pub quota_backend_bytes: i64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub watch_progress_notify_interval: Duration,
    /// Compare hashes with the peers before serving, on a restart.
    pub initial_corrupt_check: bool,
    /// Between the leader's hash comparisons; zero: never.
    pub corrupt_check_time: Duration,
    pub auto_compaction: crate::config::AutoCompaction,
    /// Server-to-client keepalive pings (zero here or in the timeout:
    /// gRPC's defaults, as etcd).
    pub grpc_keepalive_interval: Duration,
    /// How long a ping may go unanswered.
    pub grpc_keepalive_timeout: Duration,
    /// Streams per client connection.
    pub max_concurrent_streams: u32,
}

/// etcd lets gRPC messages exceed `--max-request-bytes` by this much, so
/// that a request just over the limit gets etcd's own "request is too
/// large" rather than a transport error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Runs a member until `shutdown` completes.
pub async fn run(s: BootSettings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let storage = Storage::open(&s.data_dir.join("member"))?;
    // Before anything reads the store: an install a crash interrupted.
    crate::consensus::snapshot::resume(&storage)?;
    let identity = if s.join_existing && !Identity::exists(&storage)? {
        let (cluster_id, members) =
            fetch_cluster(&s.initial_cluster, &s.name, &s.peer_dialer).await?;
        let me = find_self(&members, &s.initial_cluster, &s.name).map_err(anyhow::Error::msg)?;
        Identity::create_joined(&storage, me, cluster_id, members)?
    } else {
        Identity::load_or_create(
            &storage,
            &s.name,
            &s.initial_cluster,
            &s.initial_cluster_token,
        )?
    };
    tracing::info!(
        name = %s.name,
        data_dir = %s.data_dir.display(),
        member_id = %format_id(identity.member_id),
        cluster_id = %format_id(identity.cluster_id),
        new = identity.new,
        "starting member"
    );
    let store = MvccStore::open(storage.clone())?;
    let election_ticks =
        (s.election_timeout.as_millis() / s.heartbeat.as_millis().max(1)).max(2) as usize;
    // etcd's minimum lease TTL: one and a half election timeouts, rounded up
    // to whole seconds.
    let min_ttl_ms = (3 * election_ticks as u128 / 2) * s.heartbeat.as_millis();
    let lessor = Arc::new(Lessor::open(
        storage.clone(),
        min_ttl_ms.div_ceil(1000).max(1) as i64,
    )?);
    let hub = WatchHub::new(store.clone());
    let membership = Membership::open(storage.clone(), identity.members.clone())?;
    let alarms = Arc::new(crate::alarm::Alarms::open(storage.clone())?);
    let applier = Applier::open(
        storage.clone(),
        store.clone(),
        lessor.clone(),
        hub.clone(),
        membership.clone(),
        alarms.clone(),
    )?;
    // As etcd: only a member restarting on its data, before it serves
    // anything (a new one has nothing to compare yet).
    if s.initial_corrupt_check && !identity.new {
        corruption::initial_check(
            &s.peer_dialer,
            &store,
            &membership.list(),
            identity.member_id,
            identity.cluster_id,
            corruption::request_timeout(s.election_timeout),
        )
        .await?;
    }
    let log = LogStore::open(storage.clone())?;
    let transport = Transport::new(
        &tokio::runtime::Handle::current(),
        identity.cluster_id,
        identity.member_id,
        membership.clone(),
        storage.clone(),
        s.peer_dialer.clone(),
    );
    let peer_activity = transport.activity();
    let (raft, raft_thread) = node::start(
        NodeConfig {
            id: identity.member_id,
            // A joining member gets its configuration from the leader.
            initial_voters: if identity.joined {
                Vec::new()
            } else {
                identity.members.iter().map(|m| m.id).collect()
            },
            tick: s.heartbeat,
            election_ticks,
            snapshot_count: s.snapshot_count.max(1),
        },
        log,
        applier,
        transport,
    )?;
    // Peers must reach us before there can be a leader.
    let (peer_stop_tx, peer_stop_rx) = tokio::sync::watch::channel(false);
    let (member_tx, member_rx) = tokio::sync::watch::channel(None);
    let mut peer_servers = Vec::new();
    // Always, as etcd: even a single member may be joined by others.
    for listen in &s.listen_peer {
        let address = listen.address();
        let l = TcpListener::bind((listen.host.as_str(), listen.port))
            .await
            .map_err(|e| anyhow::anyhow!("listen for peers on {address}: {e}"))?;
        let service = PeerServer::new(PeerService::new(PeerContext {
            raft: raft.clone(),
            cluster_id: identity.cluster_id,
            member_id: identity.member_id,
            member: member_rx.clone(),
            lessor: lessor.clone(),
            membership: membership.clone(),
            storage: storage.clone(),
            store: store.clone(),
        }))
        .max_decoding_message_size(usize::MAX);
        let mut stop = peer_stop_rx.clone();
        let server = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                // Connections come with Nagle off: raft messages and
                // snapshot chunks are small writes that must not wait.
                incoming(l, listen.mode.clone(), "peer"),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            );
        tracing::info!(
            address = %address,
            tls = !matches!(listen.mode, crate::tls::ListenMode::Plain),
            "serving peer traffic"
        );
        peer_servers.push(tokio::spawn(server));
    }
    let member = Arc::new(Member::new(
        MemberSettings {
            id: identity.member_id,
            cluster_id: identity.cluster_id,
            membership: membership.clone(),
            max_request_bytes: s.max_request_bytes,
            max_txn_ops: s.max_txn_ops,
            max_learners: s.max_learners,
            strict_reconfig_check: s.strict_reconfig_check,
            peer_activity,
            alarms,
            quota_backend_bytes: s.quota_backend_bytes,
            election_timeout: s.election_timeout,
            peer_dialer: s.peer_dialer.clone(),
        },
        raft,
        store,
        storage,
    ));
    // As etcd: the metrics and health endpoints answer from the start, so
    // probes and scrapes see a member without a leader (`has_leader 0`,
    // `/health` 503) rather than a closed port, and kubelet's liveness
    // probe does not kill a member waiting for its quorum.
    crate::metrics::set_member_info(identity.member_id, s.quota_backend_bytes);
    let http_listeners =
        crate::http::HttpListeners::bind(&s.listen_metrics, crate::http::router(member.clone()))
            .await?;
    member.raft().wait_ready().await;
    member_tx.send_replace(Some(member.clone()));
    // As etcd: clients are served once the cluster knows our client URLs.
    publish_attributes(&member, &s.name, &s.advertise_client_urls).await;

    let mut listeners = Vec::new();
    for listen in &s.listen_client {
        let l = TcpListener::bind((listen.host.as_str(), listen.port))
            .await
            .map_err(|e| anyhow::anyhow!("listen on {}: {e}", listen.address()))?;
        listeners.push((l, listen.mode.clone()));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    // gRPC's health service, as etcd registers it: "" SERVING while the
    // member serves clients.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    // As etcd: both set above zero, or grpc's defaults (2 h, 20 s).
    let (keepalive_interval, keepalive_timeout) =
        if s.grpc_keepalive_interval.is_zero() || s.grpc_keepalive_timeout.is_zero() {
            (Duration::from_secs(2 * 3600), Duration::from_secs(20))
        } else {
            (s.grpc_keepalive_interval, s.grpc_keepalive_timeout)
        };
    for (l, mode) in listeners {
        let addr: SocketAddr = l.local_addr()?;
        let max_recv = s.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let kv = KvServer::new(KvService::new(member.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX);
        let cluster = ClusterServer::new(ClusterService::new(member.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX);
        let maintenance = MaintenanceServer::new(MaintenanceService::new(member.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX);
        let watch = WatchServer::new(WatchService::new(
            member.clone(),
            hub.clone(),
            s.watch_progress_notify_interval,
        ))
        .max_decoding_message_size(max_recv)
        .max_encoding_message_size(usize::MAX);
        let lease = LeaseServer::new(LeaseService::new(member.clone(), lessor.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX);
        let mut stop = stop_rx.clone();
        let serving = mode.serving_message();
        // The filter reads the decrypted stream of a TLS connection.
        let incoming = incoming(l, mode, "client").map(|c| {
            c.map(|c| {
                let remote = c.remote();
                authority_repair::filter(c, Some(remote))
            })
        });
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(keepalive_interval))
            .http2_keepalive_timeout(Some(keepalive_timeout))
            .max_concurrent_streams(Some(s.max_concurrent_streams))
            .layer(crate::metrics::grpc::GrpcMetricsLayer)
            // HTTP/1.1 beside gRPC, for the HTTP endpoints (etcd's cmux).
            .accept_http1(true)
            .add_routes(crate::http::client_routes(member.clone()))
            .add_service(kv)
            .add_service(cluster)
            .add_service(maintenance)
            .add_service(watch)
            .add_service(lease)
            .add_service(health_service.clone())
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            });
        tracing::info!(address = %addr, "{serving}");
        servers.push(tokio::spawn(server));
    }
    let expiry = tokio::spawn(expire_leases(member.clone(), lessor.clone()));
    let auto_compaction = tokio::spawn(super::auto_compaction::run(
        member.clone(),
        s.auto_compaction,
    ));
    let corruption_monitor = (!s.corrupt_check_time.is_zero()).then(|| {
        tokio::spawn(corruption::monitor(
            member.clone(),
            s.corrupt_check_time,
            corruption::request_timeout(s.election_timeout),
        ))
    });

    tracing::info!("ready to serve client requests");
    super::systemd::ready();
    let status = member.raft().status.clone();
    tokio::select! {
        _ = shutdown => {
            member.hand_off_leadership(3 * s.election_timeout).await;
        }
        _ = status.removed_notify.notified() => {
            // As etcd: a member removed from the cluster stops. A removed
            // leader first gets a moment to hand off leadership.
            tracing::warn!(error = "the member has been permanently removed from the cluster", "server error");
            tracing::warn!(data_dir = %s.data_dir.display(), "data-dir used by this member must be removed");
            let deadline = tokio::time::Instant::now() + s.election_timeout;
            while member.is_leader() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    super::systemd::stopping();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let _ = stop_tx.send(true);
    let _ = peer_stop_tx.send(true);
    drop(http_listeners);
    expiry.abort();
    auto_compaction.abort();
    if let Some(m) = corruption_monitor {
        m.abort();
    }
    // Long-lived streams (watches, peers' raft streams) never end on their
    // own: give in-flight calls a moment, then cut the rest.
    for mut s in servers.into_iter().chain(peer_servers) {
        if tokio::time::timeout(Duration::from_secs(2), &mut s)
            .await
            .is_err()
        {
            s.abort();
            let _ = s.await;
        }
    }
    // Connections still open hold raft handles too: stop the raft thread
    // explicitly (it then ends the apply thread, which closes the database)
    // rather than waiting for every handle to go.
    member_tx.send_replace(None);
    let _ = member.raft().send(crate::consensus::Command::Stop);
    drop(member);
    let joined = tokio::task::spawn_blocking(move || raft_thread.join());
    if tokio::time::timeout(Duration::from_secs(5), joined)
        .await
        .is_err()
    {
        // Everything acknowledged is in the synced raft log already.
        tracing::warn!("raft thread still busy at shutdown; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(())
}

/// How often the leader records each lease's time left: after a restart
/// or a leader change a lease lives at most this much (plus a second of
/// rounding) longer than its TTL, never shorter.
const LEASE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// The leader's expiry loop: every half second (etcd's pace), leases past
/// their deadline are revoked through raft, which deletes their keys; every
/// checkpoint interval, the time left of the others is recorded.
async fn expire_leases(member: Arc<Member>, lessor: Arc<Lessor>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_checkpoint = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if last_checkpoint.elapsed() >= LEASE_CHECKPOINT_INTERVAL {
            last_checkpoint = tokio::time::Instant::now();
            let due = lessor.due_checkpoints(1000);
            if !due.is_empty() {
                let checkpoints = due
                    .into_iter()
                    .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                    .collect();
                let op = Op::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints });
                if let Err(e) = member.propose(op).await {
                    tracing::warn!(error = %e, "recording lease checkpoints failed");
                }
            }
        }
        for id in lessor.expired(1000) {
            let member = member.clone();
            tokio::spawn(async move {
                let op = Op::LeaseRevoke(LeaseRevokeRequest { id });
                if let Err(e) = member.propose(op).await {
                    // Retried after a grace period by `Lessor::expired`.
                    tracing::warn!(lease = id, error = %e, "revoking an expired lease failed");
                }
            });
        }
    }
}

/// Tells the cluster this member's name and client URLs (through raft, as
/// etcd's members publish their attributes), until it has them.
async fn publish_attributes(member: &Member, name: &str, client_urls: &[String]) {
    loop {
        let known = member.membership.get(member.id);
        if known.is_some_and(|m| m.name == name && m.client_urls == client_urls) {
            return;
        }
        let op = Op::PublishMember(crate::pb::etcdserverpb::Member {
            id: member.id,
            name: name.to_string(),
            client_ur_ls: client_urls.to_vec(),
            ..Default::default()
        });
        match member.propose(op).await {
            Ok(_) => tracing::info!(
                local_member_id = %format_id(member.id),
                local_member_attributes = %format!("{{Name:{name} ClientURLs:[{}]}}", client_urls.join(" ")),
                cluster_id = %format_id(member.cluster_id),
                "published local member to cluster through raft"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "publishing member attributes failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Asks the members named in `--initial-cluster` (all but this one) who the
/// cluster is, as etcd does before joining: the first that answers tells.
async fn fetch_cluster(
    initial: &[InitialMember],
    name: &str,
    dialer: &PeerDialer,
) -> anyhow::Result<(u64, Vec<crate::membership::MemberInfo>)> {
    use crate::pb::cairnpb::{peer_client::PeerClient, MembersRequest};
    let urls: Vec<&String> = initial
        .iter()
        .filter(|m| m.name != name)
        .flat_map(|m| &m.peer_urls)
        .collect();
    for url in &urls {
        let Ok(ep) = tonic::transport::Endpoint::from_shared(url.to_string()) else {
            continue;
        };
        let ep = ep
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2));
        let ch = match dialer.connect(ep).await {
            Ok(ch) => ch,
            Err(e) => {
                tracing::warn!(peer = %url, error = %e, "cannot reach a member to ask for the member list");
                continue;
            }
        };
        match PeerClient::new(ch).members(MembersRequest {}).await {
            Ok(r) => {
                let r = r.into_inner();
                let members = r
                    .members
                    .into_iter()
                    .map(|m| crate::membership::MemberInfo {
                        id: m.id,
                        name: m.name,
                        peer_urls: m.peer_urls,
                        client_urls: m.client_urls,
                        is_learner: m.is_learner,
                    })
                    .collect();
                return Ok((r.cluster_id, members));
            }
            Err(e) => tracing::warn!(peer = %url, error = %e, "asking for the member list failed"),
        }
    }
    anyhow::bail!(
        "cannot fetch cluster info from peer urls: could not retrieve cluster information from the given URLs ({})",
        urls.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(",")
    )
}
