//! The apply step: the one deterministic state transition per committed
//! raft entry.
//!
//! **Invariant:** apply runs committed entries in log order, reads no clock,
//! does no network I/O, and writes the applied index in the same RocksDB
//! batch as the state the entry changed — so after a crash, re-applying from
//! the stored applied index + 1 gives the same state.

use std::sync::Arc;

use prost::Message;
use raft::prelude::{ConfChange, ConfChangeType};
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

use crate::alarm::Alarms;
use crate::error::{Error, Result};
use crate::kv::write;
use crate::lease::Lessor;
use crate::membership::{MemberInfo, Membership};
use crate::mvcc::{MvccStore, WriteOutcome};
use crate::pb::etcdserverpb::Member as PbMember;
use crate::pb::etcdserverpb::{alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmType};
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, PutRequest, PutResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::pb::mvccpb::event::EventType;
use crate::storage::{Storage, CF_META};
use crate::watch::WatchHub;

const META_APPLIED: &[u8] = b"applied_index";

/// What a raft entry carries: a client's write, tagged with the member and
/// the number that member's waiter is registered under.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub member: u64,
    #[prost(oneof = "Op", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11, 12")]
    pub op: Option<Op>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    #[prost(message, tag = "3")]
    Put(PutRequest),
    #[prost(message, tag = "4")]
    DeleteRange(DeleteRangeRequest),
    #[prost(message, tag = "5")]
    Txn(TxnRequest),
    #[prost(message, tag = "6")]
    Compact(CompactionRequest),
    #[prost(message, tag = "7")]
    LeaseGrant(LeaseGrantRequest),
    #[prost(message, tag = "8")]
    LeaseRevoke(LeaseRevokeRequest),
    #[prost(message, tag = "9")]
    LeaseCheckpoint(LeaseCheckpointRequest),
    /// A member's name and client URLs (etcd's member attributes).
    #[prost(message, tag = "10")]
    PublishMember(PbMember),
    /// A member's new peer URLs (etcd's MemberUpdate: not a raft
    /// configuration change, since the voters stay the same).
    #[prost(message, tag = "11")]
    UpdateMember(PbMember),
    /// Raise or clear an alarm (etcd's Alarm ACTIVATE / DEACTIVATE).
    #[prost(message, tag = "12")]
    Alarm(AlarmRequest),
}

/// The context of a raft conf change entry: who waits for it, and the
/// member it adds (with its peer URLs) or changes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfChangeContext {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub member: u64,
    #[prost(message, optional, tag = "3")]
    pub info: Option<PbMember>,
}

/// The result of applying one request, for the client that sent it.
#[derive(Debug)]
pub enum Response {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    /// With, for a `physical` compaction, what fires when it is done.
    Compact(CompactionResponse, Option<oneshot::Receiver<()>>),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint,
    PublishMember,
    /// A membership change or update is in effect.
    Members,
    /// The alarms after an alarm change.
    Alarm(Vec<AlarmMember>),
}

/// An applied request and whom to tell.
pub struct Applied {
    pub member: u64,
    pub id: u64,
    pub result: Result<Response>,
}

pub struct Applier {
    storage: Storage,
    store: Arc<MvccStore>,
    lessor: Arc<Lessor>,
    hub: Arc<WatchHub>,
    membership: Arc<Membership>,
    alarms: Arc<Alarms>,
    applied: u64,
}

/// The applied index as stored (what a consistent view of the database
/// holds, whatever the apply thread has in hand).
pub fn stored_applied_index(storage: &Storage) -> Result<u64> {
    applied_index_from(storage.db().get_cf(storage.cf(CF_META), META_APPLIED)?)
}

/// The applied index in a consistent view of the database.
pub fn applied_index_at(storage: &Storage, snap: &rocksdb::Snapshot<'_>) -> Result<u64> {
    applied_index_from(snap.get_cf(storage.cf(CF_META), META_APPLIED)?)
}

fn applied_index_from(raw: Option<Vec<u8>>) -> Result<u64> {
    Ok(raw
        .map(|v| u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8])))
        .unwrap_or(0))
}

impl Applier {
    pub fn open(
        storage: Storage,
        store: Arc<MvccStore>,
        lessor: Arc<Lessor>,
        hub: Arc<WatchHub>,
        membership: Arc<Membership>,
        alarms: Arc<Alarms>,
    ) -> Result<Applier> {
        let applied = stored_applied_index(&storage)?;
        Ok(Applier {
            storage,
            store,
            lessor,
            hub,
            membership,
            alarms,
            applied,
        })
    }

    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    pub fn store(&self) -> &Arc<MvccStore> {
        &self.store
    }

    /// Raft tells us whether this member leads: lease deadlines live only
    /// on the leader.
    pub fn set_leader(&self, leader: bool) {
        self.lessor.set_leader(leader);
    }

    /// Records an entry that changes no replicated state (a new leader's
    /// empty entry, a conf change the raft layer handled).
    pub fn apply_empty(&mut self, index: u64) -> Result<()> {
        if index <= self.applied {
            return Ok(());
        }
        self.commit(index, WriteBatch::default())
    }

    /// Applies a raft conf change to the member list (raft itself took it
    /// in when it was committed).
    pub fn apply_conf_change(&mut self, index: u64, cc: &ConfChange) -> Result<Option<Applied>> {
        if index <= self.applied {
            return Ok(None);
        }
        let ctx = ConfChangeContext::decode(cc.get_context()).unwrap_or_default();
        let mut batch = WriteBatch::default();
        let id = cc.node_id;
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let learner = cc.get_change_type() == ConfChangeType::AddLearnerNode;
                match self.membership.get(id) {
                    // A learner made a voter.
                    Some(_) if !learner => self.membership.promote(id, &mut batch),
                    Some(_) => {}
                    None => {
                        let info = ctx.info.clone().unwrap_or_default();
                        self.membership.add(
                            MemberInfo {
                                id,
                                name: String::new(),
                                peer_urls: info.peer_ur_ls,
                                client_urls: Vec::new(),
                                is_learner: learner,
                            },
                            &mut batch,
                        );
                    }
                }
            }
            ConfChangeType::RemoveNode => self.membership.remove(id, &mut batch),
        }
        self.commit(index, batch)?;
        tracing::info!(
            index,
            change = ?cc.get_change_type(),
            member = format_args!("{id:x}"),
            "membership changed"
        );
        Ok(Some(Applied {
            member: ctx.member,
            id: ctx.id,
            result: Ok(Response::Members),
        }))
    }

    /// Replaces the replicated state with a snapshot from the leader (staged
    /// in `dir`, taken at or after log index `index`), and reloads what the
    /// components keep in memory.
    pub fn install(&mut self, dir: &std::path::Path, index: u64) -> Result<()> {
        let storage = self.storage.clone();
        self.store
            .replace(|| crate::consensus::snapshot::install(&storage, dir))?;
        self.lessor.reload()?;
        self.membership.reload()?;
        self.alarms.reload()?;
        self.hub.reset(self.store.current_revision());
        self.applied = stored_applied_index(&self.storage)?;
        if self.applied < index {
            return Err(Error::Internal(format!(
                "snapshot holds index {} but raft's says {index}",
                self.applied
            )));
        }
        tracing::info!(
            index,
            applied = self.applied,
            revision = self.store.current_revision(),
            "snapshot installed"
        );
        Ok(())
    }

    /// Applies one normal entry's data. Entries at or below the applied
    /// index were applied before a restart and are skipped.
    pub fn apply(&mut self, index: u64, data: &[u8]) -> Result<Option<Applied>> {
        if index <= self.applied {
            return Ok(None);
        }
        let req = match Request::decode(data) {
            Ok(r) => r,
            Err(e) => {
                // Every member decodes the same bytes the same way, so
                // skipping keeps them in step; it means a bug, so say so.
                tracing::error!(index, error = %e, "undecodable raft entry skipped");
                self.apply_empty(index)?;
                return Ok(None);
            }
        };
        let result = self.apply_request(index, req.op);
        Ok(Some(Applied {
            member: req.member,
            id: req.id,
            result,
        }))
    }

    fn apply_request(&mut self, index: u64, op: Option<Op>) -> Result<Response> {
        let Some(op) = op else {
            self.apply_empty(index)?;
            return Err(Error::Internal("empty request".into()));
        };
        // etcd's corrupt applier, outermost: with CORRUPT raised, no
        // client write is applied anywhere until an operator disarms it.
        if self.alarms.has(AlarmType::Corrupt) && refused_when_corrupt(&op) {
            self.apply_empty(index)?;
            return Err(Error::Corrupt);
        }
        // etcd's capped applier: with NOSPACE raised, nothing that adds
        // data is applied (deletes, compactions and revokes still are, so
        // space can be freed).
        if self.alarms.has(AlarmType::Nospace) && adds_data(&op) {
            self.apply_empty(index)?;
            return Err(Error::NoSpace);
        }
        let store = self.store.clone();
        let lessor = self.lessor.clone();
        let mut w = store.write();
        let result = match &op {
            Op::Alarm(a) => {
                drop(w);
                let mut batch = WriteBatch::default();
                // As etcd answers: the alarm raised or cleared (nothing when
                // nothing changed on a clear), or the list asked for.
                let answer = match AlarmAction::try_from(a.action) {
                    Ok(AlarmAction::Activate) => self
                        .alarms
                        .activate(a.member_id, a.alarm, &mut batch)
                        .into_iter()
                        .collect(),
                    Ok(AlarmAction::Deactivate) => self
                        .alarms
                        .deactivate(a.member_id, a.alarm, &mut batch)
                        .into_iter()
                        .collect(),
                    _ => self.alarms.of_type(a.alarm),
                };
                self.commit(index, batch)?;
                return Ok(Response::Alarm(answer));
            }
            Op::Compact(c) => {
                drop(w);
                return self.compact(index, c);
            }
            Op::LeaseGrant(g) => {
                drop(w);
                return self.lease_grant(index, g);
            }
            Op::PublishMember(m) => {
                drop(w);
                let mut batch = WriteBatch::default();
                self.membership
                    .set_attributes(m.id, &m.name, &m.client_ur_ls, &mut batch);
                self.commit(index, batch)?;
                return Ok(Response::PublishMember);
            }
            Op::UpdateMember(m) => {
                drop(w);
                let mut batch = WriteBatch::default();
                if self.membership.get(m.id).is_none() {
                    self.apply_empty(index)?;
                    return Err(Error::MemberNotFound);
                }
                self.membership
                    .set_peer_urls(m.id, &m.peer_ur_ls, &mut batch);
                self.commit(index, batch)?;
                return Ok(Response::Members);
            }
            Op::LeaseCheckpoint(c) => {
                drop(w);
                let mut batch = WriteBatch::default();
                for cp in &c.checkpoints {
                    self.lessor.checkpoint(cp.id, cp.remaining_ttl, &mut batch);
                }
                self.commit(index, batch)?;
                return Ok(Response::LeaseCheckpoint);
            }
            Op::Put(p) => write::put(&mut w, p, lessor.as_ref()).map(Response::Put),
            Op::DeleteRange(d) => write::delete_range(&mut w, d).map(Response::DeleteRange),
            Op::Txn(t) => write::txn(&mut w, t, lessor.as_ref()).map(Response::Txn),
            Op::LeaseRevoke(r) => lease_revoke(&mut w, &lessor, r).map(Response::LeaseRevoke),
        };
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                // A refused request changes nothing but the applied index.
                drop(w);
                self.apply_empty(index)?;
                return Err(e);
            }
        };
        let mut out = w.finish();
        match &op {
            Op::LeaseRevoke(r) => lessor.revoke(r.id, &mut out.batch)?,
            _ => self.track_leases(&mut out),
        }
        let WriteOutcome { batch, rev, events } = out;
        self.commit(index, batch)?;
        crate::metrics::hooks::write_applied(&op, &resp, &events);
        store.publish(rev);
        if !events.is_empty() {
            self.hub.publish(rev, events);
        }
        Ok(resp)
    }

    /// Keeps lease attachments in step with what a write changed: a key put
    /// with a lease joins it, leaves the lease it had, and a deleted key
    /// leaves its lease.
    fn track_leases(&self, out: &mut WriteOutcome) {
        for e in &out.events {
            let (Some(kv), prev) = (&e.kv, &e.prev_kv) else {
                continue;
            };
            let old = prev.as_ref().map_or(0, |p| p.lease);
            let new = if e.r#type == EventType::Put as i32 {
                kv.lease
            } else {
                0
            };
            if old != new {
                if old != 0 {
                    self.lessor.detach(old, &kv.key, &mut out.batch);
                }
                if new != 0 {
                    self.lessor.attach(new, &kv.key, &mut out.batch);
                }
            }
        }
    }

    fn lease_grant(&mut self, index: u64, req: &LeaseGrantRequest) -> Result<Response> {
        let mut batch = WriteBatch::default();
        match self.lessor.grant(req.id, req.ttl, &mut batch) {
            Ok(ttl) => {
                self.commit(index, batch)?;
                Ok(Response::LeaseGrant(LeaseGrantResponse {
                    header: Some(ResponseHeader {
                        revision: self.store.current_revision(),
                        ..Default::default()
                    }),
                    id: req.id,
                    ttl,
                    error: String::new(),
                }))
            }
            Err(e) => {
                self.apply_empty(index)?;
                Err(e)
            }
        }
    }

    fn compact(&mut self, index: u64, req: &CompactionRequest) -> Result<Response> {
        let mut batch = WriteBatch::default();
        if let Err(e) = self.store.schedule_compaction(req.revision, &mut batch) {
            self.apply_empty(index)?;
            return Err(e);
        }
        self.commit(index, batch)?;
        let (tx, rx) = oneshot::channel();
        self.store.start_compaction(req.revision, Some(tx));
        let resp = CompactionResponse {
            header: Some(ResponseHeader {
                revision: self.store.current_revision(),
                ..Default::default()
            }),
        };
        Ok(Response::Compact(resp, req.physical.then_some(rx)))
    }

    fn commit(&mut self, index: u64, mut batch: WriteBatch) -> Result<()> {
        batch.put_cf(self.storage.cf(CF_META), META_APPLIED, index.to_be_bytes());
        // Unsynced: the raft log is durable, and re-applying is harmless.
        let started = std::time::Instant::now();
        self.storage.write(batch, false)?;
        crate::metrics::hooks::backend_commit(started.elapsed());
        self.applied = index;
        Ok(())
    }
}

/// Whether a request would add data: what the NOSPACE alarm stops (etcd
/// counts a txn by the puts in either branch, nested ones included).
pub fn adds_data(op: &Op) -> bool {
    fn txn_puts(t: &TxnRequest) -> bool {
        use crate::pb::etcdserverpb::request_op::Request as R;
        t.success
            .iter()
            .chain(&t.failure)
            .any(|r| match &r.request {
                Some(R::RequestPut(_)) => true,
                Some(R::RequestTxn(inner)) => txn_puts(inner),
                _ => false,
            })
    }
    match op {
        Op::Put(_) | Op::LeaseGrant(_) => true,
        Op::Txn(t) => txn_puts(t),
        _ => false,
    }
}

/// What the CORRUPT alarm stops, as etcd's corrupt applier: every client
/// write, compaction, and lease grant or revoke — expiry's revokes too, so
/// nothing is deleted while the cluster is suspect. Alarms, membership and
/// lease checkpoints still go through.
fn refused_when_corrupt(op: &Op) -> bool {
    match op {
        Op::Put(_) | Op::DeleteRange(_) | Op::Compact(_) | Op::LeaseGrant(_) => true,
        Op::LeaseRevoke(_) => true,
        // etcd serves a txn of ranges only (nested txns not counted as
        // such) on its read path, which no alarm stops; ours go through
        // raft, so they are let through here instead.
        Op::Txn(t) => !txn_is_read_only(t),
        _ => false,
    }
}

/// etcd's `IsTxnReadonly`: only ranges in either branch (a nested txn does
/// not count as one).
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    use crate::pb::etcdserverpb::request_op::Request as Req;
    t.success
        .iter()
        .chain(&t.failure)
        .all(|r| matches!(r.request, Some(Req::RequestRange(_))))
}

/// A revoke deletes every key of the lease in one revision (the caller then
/// forgets the lease in the same batch).
fn lease_revoke(
    w: &mut crate::mvcc::WriteTxn,
    lessor: &Lessor,
    req: &LeaseRevokeRequest,
) -> Result<LeaseRevokeResponse> {
    for key in lessor.keys_of(req.id)? {
        w.delete_range(&key, &[])?;
    }
    Ok(LeaseRevokeResponse {
        header: Some(ResponseHeader {
            revision: w.rev(),
            ..Default::default()
        }),
    })
}
