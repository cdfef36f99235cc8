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
use raft::prelude::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};

use super::apply_worker::{self, ApplyMsg};
use super::log_store::LogStore;
use super::transport::Transport;
use crate::apply::{Applier, Response};
use crate::error::{Error, Result};
use crate::ids::format_id;

/// Linearizable reads waiting for one ReadIndex round.
type ReadWaiters = Vec<oneshot::Sender<Result<()>>>;

/// How long a ReadIndex round may go unanswered before it is asked again.
const READ_INDEX_RETRY: Duration = Duration::from_millis(500);

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
    /// A raft message from a peer.
    Step(Box<raft::prelude::Message>),
    /// Replicate a membership change (its context carries `id`, as a
    /// proposal's data does) and answer once it is applied.
    ProposeConfChange {
        id: u64,
        cc: ConfChange,
        done: oneshot::Sender<Result<Response>>,
    },
    /// Hand leadership to another voter (the caller watches for it).
    TransferLeader { to: u64 },
    /// The leader's view of how far every member's log matches its own;
    /// `None` when this member does not lead.
    Progress {
        done: oneshot::Sender<Option<Progress>>,
    },
    /// How sending a snapshot to member `to` went.
    ReportSnapshot { to: u64, ok: bool },
    /// Shut down: the raft thread stops after what it has in hand.
    Stop,
}

/// How far members' logs match the leader's.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The leader's own matched index.
    pub leader_matched: u64,
    /// Member id → matched index, and whether it was heard from lately.
    pub members: HashMap<u64, (u64, bool)>,
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
    /// Set when a committed change removed this member from the cluster.
    pub removed: AtomicBool,
    /// Woken (one permit) when `removed` is set.
    pub removed_notify: tokio::sync::Notify,
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

/// Starts the raft thread. It runs until told to [`Command::Stop`] (or every
/// [`RaftHandle`] is dropped); join the returned thread to know it has let
/// go of the database.
pub fn start(
    cfg: NodeConfig,
    mut log: LogStore,
    applier: Applier,
    mut transport: Transport,
) -> Result<(RaftHandle, std::thread::JoinHandle<()>)> {
    // A member joining a running cluster starts with no configuration: the
    // leader's snapshot brings it.
    if !log.is_initialized() && !cfg.initial_voters.is_empty() {
        log.bootstrap(&cfg.initial_voters)?;
    }
    // Only committed entries are applied, so the applied index is known to
    // be committed even when a crash lost the (unsynced) commit index.
    if applier.applied_index() > log.hard_state().commit {
        log.set_commit(applier.applied_index())?;
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
    transport.set_reports(tx.clone());
    let status = Arc::new(RaftStatus::default());
    let (ready_tx, ready_rx) = watch::channel(false);
    let (apply_tx, apply_rx) = mpsc::channel();
    let apply_status = status.clone();
    let member = cfg.id;
    let apply_thread = std::thread::Builder::new()
        .name("apply".into())
        .spawn(move || {
            if let Err(e) = apply_worker::run(applier, member, apply_status, apply_rx) {
                // Storage failed under us: going on could lose or reorder
                // acknowledged writes. Stop; a restart re-applies the log.
                tracing::error!(error = %e, "apply failed; exiting");
                std::process::exit(1);
            }
        })
        .map_err(Error::internal)?;
    let mut driver = Driver {
        node,
        transport,
        apply: Some(apply_tx),
        cfg,
        status: status.clone(),
        ready: ready_tx,
        pending_reads: Vec::new(),
        reads_in_flight: HashMap::new(),
        next_read_ctx: 1,
    };
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            let result = driver.run(rx);
            // Closing the channel ends the apply thread once it has applied
            // what it was given.
            driver.apply.take();
            let _ = apply_thread.join();
            if let Err(e) = result {
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
    transport: Transport,
    /// To the apply thread; `None` once shutting down.
    apply: Option<mpsc::Sender<ApplyMsg>>,
    cfg: NodeConfig,
    status: Arc<RaftStatus>,
    ready: watch::Sender<bool>,
    /// Reads that arrived since the last ReadIndex round.
    pending_reads: ReadWaiters,
    /// ReadIndex rounds sent to raft, by context, with when they were last
    /// sent.
    reads_in_flight: HashMap<u64, (Instant, ReadWaiters)>,
    next_read_ctx: u64,
}

impl Driver {
    fn run(&mut self, rx: mpsc::Receiver<Command>) -> Result<()> {
        let mut next_tick = Instant::now() + self.cfg.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Command::Stop) => return Ok(()),
                Ok(cmd) => self.handle(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            // Group commit: everything that queued up while we were busy
            // (usually fsyncing) goes into the next Ready, and one fsync.
            while let Ok(cmd) = rx.try_recv() {
                if matches!(cmd, Command::Stop) {
                    return Ok(());
                }
                self.handle(cmd);
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick += self.cfg.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.cfg.tick;
                }
                self.drop_abandoned();
                self.resend_reads();
                self.transport.connect_all();
            }
            self.start_read_round();
            self.on_ready()?;
            self.after_apply()?;
        }
    }

    fn to_apply(&self, msg: ApplyMsg) -> Result<()> {
        match &self.apply {
            Some(tx) => tx.send(msg).map_err(|_| Error::Stopped),
            None => Err(Error::Stopped),
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
                // Registered before the entry can be committed and handed
                // over: the apply thread sees both in this order. (Should
                // that thread be gone, the dropped sender tells the client.)
                let _ = self.to_apply(ApplyMsg::Register { id, done });
            }
            Command::ProposeConfChange { id, cc, done } => {
                if let Err(e) = self.node.propose_conf_change(Vec::new(), cc) {
                    let err = match e {
                        raft::Error::ProposalDropped => Error::NoLeader,
                        e => Error::internal(e),
                    };
                    let _ = done.send(Err(err));
                    return;
                }
                let _ = self.to_apply(ApplyMsg::Register { id, done });
            }
            Command::ReadIndex { done } => self.pending_reads.push(done),
            Command::TransferLeader { to } => self.node.transfer_leader(to),
            Command::Progress { done } => {
                let raft = &self.node.raft;
                let progress = (raft.state == StateRole::Leader).then(|| Progress {
                    leader_matched: raft.prs().get(self.cfg.id).map_or(0, |p| p.matched),
                    members: raft
                        .prs()
                        .iter()
                        .map(|(id, p)| (*id, (p.matched, p.recent_active)))
                        .collect(),
                });
                let _ = done.send(progress);
            }
            Command::ReportSnapshot { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.node.report_snapshot(to, status);
                if !ok {
                    // Probe again rather than wait for the next heartbeat.
                    self.node.raft.send_append(to);
                }
            }
            Command::Stop => {}
            Command::Step(m) => {
                // Messages from members raft does not know (removed ones,
                // or stale terms) are refused by raft itself; nothing to do.
                if let Err(e) = self.node.step(*m) {
                    tracing::debug!(error = %e, "raft message refused");
                }
            }
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
        self.reads_in_flight.insert(
            ctx,
            (Instant::now(), std::mem::take(&mut self.pending_reads)),
        );
    }

    /// A ReadIndex round on its way to a leader that died is lost: ask
    /// again every half second (etcd's pace) until one is answered or the
    /// clients give up.
    fn resend_reads(&mut self) {
        let now = Instant::now();
        for (ctx, (sent, _)) in self.reads_in_flight.iter_mut() {
            if now.duration_since(*sent) >= READ_INDEX_RETRY {
                *sent = now;
                self.node.read_index(ctx.to_be_bytes().to_vec());
            }
        }
    }

    /// Forgets reads whose clients gave up (timed out).
    fn drop_abandoned(&mut self) {
        self.reads_in_flight.retain(|_, (_, ws)| {
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
            let previous = self.status.leader.swap(ss.leader_id, Ordering::SeqCst);
            crate::metrics::hooks::leader_seen(previous, ss.leader_id);
            if previous != ss.leader_id {
                log_leader_change(self.cfg.id, previous, ss.leader_id, self.node.raft.term);
            }
            let leader = ss.raft_state == StateRole::Leader;
            if leader != self.status.is_leader.swap(leader, Ordering::SeqCst) {
                self.to_apply(ApplyMsg::Leader(leader))?;
            }
        }
        // Messages that need nothing persisted first (a leader's appends may
        // go out before its own fsync).
        self.transport.send(rd.take_messages());
        self.on_read_states(rd.take_read_states())?;
        if !rd.snapshot().is_empty() {
            // A snapshot from the leader: the log starts over after it, and
            // the apply step installs the store staged with it (before any
            // entry that follows).
            let snap = rd.snapshot().clone();
            let dir = std::path::PathBuf::from(String::from_utf8_lossy(snap.get_data()).as_ref());
            // Before the log is touched: stopping here leaves log and store
            // as they were, and the leader sends the snapshot again.
            if !super::snapshot::is_complete(&dir) {
                return Err(Error::Internal(format!(
                    "raft took a snapshot whose files are missing ({})",
                    dir.display()
                )));
            }
            self.node.mut_store().apply_snapshot(&snap)?;
            let index = snap.get_metadata().index;
            tracing::info!(
                index,
                term = snap.get_metadata().term,
                "installing a snapshot from the leader"
            );
            self.to_apply(ApplyMsg::Install { dir, index })?;
        }
        let committed = rd.take_committed_entries();
        let hs = rd.hs().cloned();
        let entries = rd.take_entries();
        if !entries.is_empty() || hs.is_some() {
            self.node.mut_store().append(&entries, hs.as_ref())?;
        }
        // After the hard state that commits them is stored: the applied
        // index must never run ahead of the stored commit index.
        self.hand_over(committed)?;
        if let Some(hs) = &hs {
            self.status.term.store(hs.term, Ordering::SeqCst);
        }
        // Votes and append answers: only now that their entries are durable.
        self.transport.send(rd.take_persisted_messages());
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            // Stored before the entries it covers are applied, so the
            // applied index never exceeds the stored commit index.
            self.node.mut_store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.hand_over(light.take_committed_entries())?;
        // For raft-rs, handed over counts as applied: it must not offer
        // these entries again. The real applied index is the apply thread's.
        self.node.advance_apply();
        self.status
            .commit
            .store(self.node.raft.raft_log.committed, Ordering::SeqCst);
        Ok(())
    }

    /// Takes conf changes into raft (only this thread touches the node),
    /// then hands the entries to the apply thread.
    fn hand_over(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in &entries {
            let cs = match e.get_entry_type() {
                EntryType::EntryNormal => continue,
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(e.get_data()).map_err(Error::internal)?;
                    let removes_me = cc.get_change_type() == ConfChangeType::RemoveNode
                        && cc.node_id == self.cfg.id;
                    let cs = self.node.apply_conf_change(&cc).map_err(Error::internal)?;
                    if removes_me && self.node.raft.state == StateRole::Leader {
                        self.hand_off_leadership();
                    }
                    cs
                }
                EntryType::EntryConfChangeV2 => {
                    let cc =
                        ConfChangeV2::parse_from_bytes(e.get_data()).map_err(Error::internal)?;
                    self.node.apply_conf_change(&cc).map_err(Error::internal)?
                }
            };
            self.node.mut_store().set_conf_state(cs, e.index)?;
        }
        self.to_apply(ApplyMsg::Entries(entries))
    }

    /// A leader that removed itself stays leader of the others until it
    /// stops: hand leadership to the voter whose log is most complete, so
    /// that the cluster does not wait out an election timeout.
    fn hand_off_leadership(&mut self) {
        let me = self.cfg.id;
        let raft = &self.node.raft;
        let best = raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|id| *id != me)
            .max_by_key(|id| raft.prs().get(*id).map_or(0, |p| p.matched));
        if let Some(to) = best {
            tracing::info!(
                to = format_args!("{to:x}"),
                "removed from the cluster; handing off leadership"
            );
            self.node.transfer_leader(to);
        }
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) -> Result<()> {
        for rs in states {
            let Ok(ctx) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            if let Some((_, waiters)) = self.reads_in_flight.remove(&u64::from_be_bytes(ctx)) {
                self.to_apply(ApplyMsg::ReadReady {
                    index: rs.index,
                    waiters,
                })?;
            }
        }
        Ok(())
    }

    /// What follows the apply thread's progress: the ready flag and log
    /// compaction.
    fn after_apply(&mut self) -> Result<()> {
        let applied = self.status.applied.load(Ordering::SeqCst);
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

/// etcd's leader milestones, word for word (operators grep for them).
fn log_leader_change(me: u64, from: u64, to: u64, term: u64) {
    let (me, from_id, to_id) = (format_id(me), format_id(from), format_id(to));
    if from == 0 {
        tracing::info!("raft.node: {me} elected leader {to_id} at term {term}");
    } else if to == 0 {
        tracing::info!("raft.node: {me} lost leader {from_id} at term {term}");
    } else {
        tracing::info!("raft.node: {me} changed leader from {from_id} to {to_id} at term {term}");
    }
}
