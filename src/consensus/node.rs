//! The raft driver: one thread that owns the raft-rs node, ticks it, feeds
//! it proposals and read requests, persists what it must (group commit),
//! and hands committed entries to the apply step in order.
//!
//! **Invariant:** this thread is the only one that touches the raft node,
//! the log store and the applier; everything reaches it as a [`Command`].
//! An entry is fsynced before raft-rs hears it is persisted, and a client is
//! answered only after its entry is applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeV2, Entry, EntryType};
use raft::{RawNode, ReadState, StateRole};
use tokio::sync::{oneshot, watch};

use super::log_store::LogStore;
use crate::apply::{Applier, Response};
use crate::error::{Error, Result};

/// A request for the raft thread.
pub enum Command {
    /// Replicate `data` (an encoded `apply::Request` carrying `id`) and
    /// answer once it is applied.
    Propose {
        id: u64,
        data: Vec<u8>,
        done: oneshot::Sender<Result<Response>>,
    },
    /// Answer once this member has applied everything committed before the
    /// request arrived (a linearizable read may then read locally).
    ReadIndex { done: oneshot::Sender<Result<()>> },
}

/// Settings of the raft node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// Voters of a new cluster; ignored when the log already has a
    /// configuration.
    pub initial_voters: Vec<u64>,
    pub tick: Duration,
    pub election_ticks: usize,
    /// Applied entries kept in the log after compaction.
    pub snapshot_count: u64,
}

/// What the rest of the member may know of raft, updated by the raft thread.
#[derive(Default)]
pub struct RaftStatus {
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    pub is_leader: AtomicBool,
}

/// The handle through which the member talks to the raft thread.
#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Command>,
    pub status: Arc<RaftStatus>,
    ready: watch::Receiver<bool>,
}

impl RaftHandle {
    pub fn send(&self, cmd: Command) -> Result<()> {
        self.tx.send(cmd).map_err(|_| Error::Stopped)
    }

    /// Waits until the member has a leader and has applied everything
    /// committed up to the leader's first entry of its term.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.clone();
        let _ = rx.wait_for(|r| *r).await;
    }
}

/// Starts the raft thread. It runs until every [`RaftHandle`] is dropped;
/// join the returned thread to know it has let go of the database.
pub fn start(
    cfg: NodeConfig,
    mut log: LogStore,
    applier: Applier,
) -> Result<(RaftHandle, std::thread::JoinHandle<()>)> {
    if !log.is_initialized() {
        log.bootstrap(&cfg.initial_voters)?;
    }
    let raft_cfg = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: 1,
        applied: applier.applied_index().max(log.first_index() - 1),
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_cfg.validate().map_err(Error::internal)?;
    let logger = slog::Logger::root(tracing_slog::TracingSlogDrain, slog::o!());
    let single = log.conf_state().voters == [cfg.id];
    let mut node = RawNode::new(&raft_cfg, log, &logger).map_err(Error::internal)?;
    if single {
        // Alone, there is nobody to wait for: be leader at once, as etcd's
        // single member is.
        node.campaign().map_err(Error::internal)?;
    }
    let (tx, rx) = mpsc::channel();
    let status = Arc::new(RaftStatus::default());
    let (ready_tx, ready_rx) = watch::channel(false);
    let mut driver = Driver {
        node,
        applier,
        cfg,
        status: status.clone(),
        ready: ready_tx,
        waiters: HashMap::new(),
        pending_reads: Vec::new(),
        reads_in_flight: HashMap::new(),
        reads_waiting_apply: Vec::new(),
        next_read_ctx: 1,
    };
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            if let Err(e) = driver.run(rx) {
                // Storage failed under us: going on could lose or reorder
                // acknowledged writes. Stop the process; a restart recovers
                // from the log.
                tracing::error!(error = %e, "raft loop failed; exiting");
                std::process::exit(1);
            }
        })
        .map_err(Error::internal)?;
    let handle = RaftHandle {
        tx,
        status,
        ready: ready_rx,
    };
    Ok((handle, thread))
}

struct Driver {
    node: RawNode<LogStore>,
    applier: Applier,
    cfg: NodeConfig,
    status: Arc<RaftStatus>,
    ready: watch::Sender<bool>,
    waiters: HashMap<u64, oneshot::Sender<Result<Response>>>,
    /// Reads that arrived since the last ReadIndex round.
    pending_reads: Vec<oneshot::Sender<Result<()>>>,
    /// ReadIndex rounds sent to raft, by context.
    reads_in_flight: HashMap<u64, Vec<oneshot::Sender<Result<()>>>>,
    /// Rounds whose read index is known, waiting for apply to reach it.
    reads_waiting_apply: Vec<(u64, Vec<oneshot::Sender<Result<()>>>)>,
    next_read_ctx: u64,
}

impl Driver {
    fn run(&mut self, rx: mpsc::Receiver<Command>) -> Result<()> {
        let mut next_tick = Instant::now() + self.cfg.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(cmd) => self.handle(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            // Group commit: everything that queued up while we were busy
            // (usually fsyncing) goes into the next Ready, and one fsync.
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick += self.cfg.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.cfg.tick;
                }
                self.drop_abandoned();
            }
            self.start_read_round();
            self.on_ready()?;
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Propose { id, data, done } => {
                if let Err(e) = self.node.propose(Vec::new(), data) {
                    let err = match e {
                        raft::Error::ProposalDropped => Error::NoLeader,
                        e => Error::internal(e),
                    };
                    let _ = done.send(Err(err));
                    return;
                }
                self.waiters.insert(id, done);
            }
            Command::ReadIndex { done } => self.pending_reads.push(done),
        }
    }

    /// One ReadIndex round for all reads that arrived since the last one:
    /// a single heartbeat exchange serves them all.
    fn start_read_round(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.node.read_index(ctx.to_be_bytes().to_vec());
        self.reads_in_flight
            .insert(ctx, std::mem::take(&mut self.pending_reads));
    }

    /// Forgets clients that gave up (timed out); their entries may still
    /// apply, but nobody waits for the answer.
    fn drop_abandoned(&mut self) {
        self.waiters.retain(|_, w| !w.is_closed());
        self.reads_in_flight.retain(|_, ws| {
            ws.retain(|w| !w.is_closed());
            !ws.is_empty()
        });
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            self.status.leader.store(ss.leader_id, Ordering::SeqCst);
            let leader = ss.raft_state == StateRole::Leader;
            if leader != self.status.is_leader.swap(leader, Ordering::SeqCst) {
                self.applier.set_leader(leader);
                if leader {
                    tracing::info!(
                        member = format_args!("{:x}", self.cfg.id),
                        term = self.node.raft.term,
                        "became leader"
                    );
                }
            }
        }
        // Single-member raft has no peers to message; clustering sends
        // `rd.take_messages()` here.
        self.on_read_states(rd.take_read_states());
        self.apply_entries(rd.take_committed_entries())?;
        let hs = rd.hs().cloned();
        let entries = rd.take_entries();
        if !entries.is_empty() || hs.is_some() {
            self.node.mut_store().append(&entries, hs.as_ref())?;
        }
        if let Some(hs) = &hs {
            self.status.term.store(hs.term, Ordering::SeqCst);
        }
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            // Stored before the entries it covers are applied, so the
            // applied index never exceeds the stored commit index.
            self.node.mut_store().set_commit(commit)?;
        }
        self.apply_entries(light.take_committed_entries())?;
        self.node.advance_apply();
        self.after_apply()
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<()> {
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal if e.get_data().is_empty() => {
                    self.applier.apply_empty(e.index)?
                }
                EntryType::EntryNormal => {
                    if let Some(applied) = self.applier.apply(e.index, e.get_data())? {
                        if applied.member == self.cfg.id {
                            if let Some(w) = self.waiters.remove(&applied.id) {
                                let _ = w.send(applied.result);
                            }
                        }
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(e.get_data()).map_err(Error::internal)?;
                    let cs = self.node.apply_conf_change(&cc).map_err(Error::internal)?;
                    self.node.mut_store().set_conf_state(cs)?;
                    self.applier.apply_empty(e.index)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let cc =
                        ConfChangeV2::parse_from_bytes(e.get_data()).map_err(Error::internal)?;
                    let cs = self.node.apply_conf_change(&cc).map_err(Error::internal)?;
                    self.node.mut_store().set_conf_state(cs)?;
                    self.applier.apply_empty(e.index)?;
                }
            }
        }
        Ok(())
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Ok(ctx) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            if let Some(ws) = self.reads_in_flight.remove(&u64::from_be_bytes(ctx)) {
                self.reads_waiting_apply.push((rs.index, ws));
            }
        }
    }

    fn after_apply(&mut self) -> Result<()> {
        let applied = self.applier.applied_index();
        self.status.applied.store(applied, Ordering::SeqCst);
        self.status
            .commit
            .store(self.node.raft.raft_log.committed, Ordering::SeqCst);
        self.reads_waiting_apply.retain_mut(|(index, ws)| {
            if *index > applied {
                return true;
            }
            for w in ws.drain(..) {
                let _ = w.send(Ok(()));
            }
            false
        });
        let ready = self.status.leader.load(Ordering::SeqCst) != 0
            && applied >= self.node.raft.raft_log.committed
            && (!self.status.is_leader.load(Ordering::SeqCst)
                || self.node.raft.commit_to_current_term());
        self.ready.send_if_modified(|r| {
            let changed = *r != ready;
            *r = ready;
            changed
        });
        self.compact_log(applied)
    }

    /// Keeps the log bounded: once `snapshot_count` entries are applied
    /// past the start of the log, drop all but the newest of them.
    fn compact_log(&mut self, applied: u64) -> Result<()> {
        let store = self.node.mut_store();
        let first = store.first_index();
        if applied >= first + self.cfg.snapshot_count {
            // Keep some applied entries so a briefly lagging follower can
            // still catch up from the log rather than from a snapshot.
            let keep = (self.cfg.snapshot_count / 2).min(5000);
            store.compact_to(applied - keep)?;
        }
        Ok(())
    }
}
