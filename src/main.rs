//! `cairn`: etcd's command line in front of a cairn member.

use cairn::config::{ClusterState, Config};
use cairn::server::boot::{self, BootSettings};
use cairn::server::identity::InitialMember;
use cairn::server::listeners::Listeners;

fn main() {
    // `cairn snapshot ...` is etcdctl's snapshot command, not a server.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("snapshot") {
        std::process::exit(cairn::backup::cli::run(&args[2..]));
    }
    let cfg = Config::from_env_and_args().unwrap_or_else(|e| e.exit());
    if let Err(e) = cairn::logging::init(&cfg) {
        eprintln!("cannot set up logging: {e}");
        std::process::exit(1);
    }
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    // etcd checks the initial-cluster flags only when the data dir is new;
    // a member that has data ignores them.
    let new_data_dir = !cfg.data_dir.join("member").exists();
    if new_data_dir {
        let checked = match cfg.initial_cluster_state {
            ClusterState::New => cfg.verify_bootstrap(),
            ClusterState::Existing => cfg.verify_join_existing(),
        };
        if let Err(e) = checked {
            tracing::error!("{e}");
            e.exit();
        }
    }
    // TLS files are read (and auto-tls certificates made) before anything
    // else starts: a missing or broken one is a startup error, as in etcd.
    let listeners = match Listeners::from_config(&cfg) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "listener failed");
            std::process::exit(1);
        }
    };
    let settings = BootSettings {
        name: cfg.name.clone(),
        data_dir: cfg.data_dir.clone(),
        listen_client: listeners.client,
        listen_peer: listeners.peer,
        peer_dialer: listeners.peer_dialer,
        listen_metrics: listeners.metrics,
        advertise_client_urls: cfg
            .advertise_client_urls
            .iter()
            .map(|u| u.as_str().to_string())
            .collect(),
        initial_cluster: cfg
            .initial_cluster
            .iter()
            .map(|(name, urls)| InitialMember {
                name: name.clone(),
                peer_urls: urls.iter().map(|u| u.as_str().to_string()).collect(),
            })
            .collect(),
        initial_cluster_token: cfg.initial_cluster_token.clone(),
        join_existing: cfg.initial_cluster_state == ClusterState::Existing,
        initial_corrupt_check: cfg.initial_corrupt_check,
        corrupt_check_time: cfg.corrupt_check_time,
        auto_compaction: cfg.auto_compaction,
        grpc_keepalive_interval: cfg.grpc_keepalive_interval,
        grpc_keepalive_timeout: cfg.grpc_keepalive_timeout,
        max_concurrent_streams: cfg.max_concurrent_streams,
        snapshot_count: cfg.snapshot_count,
        max_learners: cfg.max_learners.max(0) as usize,
        strict_reconfig_check: cfg.strict_reconfig_check,
        // etcd: 0 means its default of 2 GiB, a negative value no quota.
        quota_backend_bytes: match cfg.quota_backend_bytes {
            0 => 2 * 1024 * 1024 * 1024,
            q => q,
        },
        max_request_bytes: cfg.max_request_bytes as usize,
        max_txn_ops: cfg.max_txn_ops as usize,
        heartbeat: cfg.heartbeat_interval,
        election_timeout: cfg.election_timeout,
        watch_progress_notify_interval: cfg.watch_progress_notify_interval,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(boot::run(settings, stop_signal())) {
        tracing::error!(error = %format!("{e:#}"), "member failed");
        std::process::exit(1);
    }
}

/// Completes on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    // etcd's line and signal names.
    let name = tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupt",
        _ = term.recv() => "terminated",
    };
    tracing::info!(signal = name, "received signal; shutting down");
}
