//! The Maintenance service: Status, Hash, HashKV, Snapshot, MoveLeader, Alarm and
//! Defragment.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{check_leader, check_learner, ResponseStream};
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse,
    DowngradeInfo, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::server::Member;

pub struct MaintenanceService {
    member: Arc<Member>,
}

impl MaintenanceService {
    pub fn new(member: Arc<Member>) -> MaintenanceService {
        MaintenanceService { member }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        check_leader(&self.member, &req)?;
        let m = &self.member;
        let raft = &m.raft().status;
        let (db_size, db_size_in_use) = m.storage().size();
        let rev = m.store().current_revision();
        // As etcd: a member without a leader says so first, then alarms.
        let mut errors = Vec::new();
        if !m.has_leader() {
            errors.push(crate::error::Error::NoLeader.to_string());
        }
        errors.extend(m.alarms.list().iter().map(crate::alarm::describe));
        Ok(Response::new(StatusResponse {
            header: Some(m.header(rev)),
            version: crate::version::ETCD_API_VERSION.to_string(),
            db_size,
            leader: raft.leader.load(Ordering::SeqCst),
            raft_index: raft.commit.load(Ordering::SeqCst),
            raft_term: raft.term.load(Ordering::SeqCst),
            raft_applied_index: raft.applied.load(Ordering::SeqCst),
            errors,
            db_size_in_use,
            is_learner: m.is_learner(),
            db_size_quota: m.quota_backend_bytes().max(0),
            downgrade_info: Some(DowngradeInfo::default()),
            ..Default::default()
        }))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        self.member.move_leader(req.into_inner().target_id).await?;
        let rev = self.member.store().current_revision();
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.member.header(rev)),
        }))
    }

    /// etcd's whole-database hash: CRC-32C over the store laid out as
    /// etcd's buckets (see `backup::export::hash_etcd_db`), the same on
    /// every member at the same revision.
    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let storage = self.member.storage().clone();
        let members = self.member.membership.list();
        let (hash, revision) = tokio::task::spawn_blocking(move || {
            crate::backup::export::hash_etcd_db(&storage, &members)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(HashResponse {
            header: Some(self.member.header(revision)),
            hash,
        }))
    }

    /// The same on every member that has the same history (see
    /// `MvccStore::hash_kv`), which is how operators and tests compare
    /// members' stores.
    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let rev = req.into_inner().revision;
        let store = self.member.store().clone();
        let (hash, compact_revision, hash_revision) =
            tokio::task::spawn_blocking(move || store.hash_kv(rev))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        let current = self.member.store().current_revision();
        Ok(Response::new(HashKvResponse {
            header: Some(self.member.header(current)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    /// The store as an etcd database file, written to disk from one
    /// consistent view, then streamed in etcd's 32 KiB pieces and followed
    /// by the sha256 of everything before it, as etcdctl expects. Learners
    /// serve it too, as in etcd.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<ResponseStream<SnapshotResponse>>, Status> {
        check_leader(&self.member, &req)?;
        let m = &self.member;
        let storage = m.storage().clone();
        let path = crate::consensus::snapshot::export_path(&storage);
        let members = m.membership.list();
        let term = m.raft().status.term.load(Ordering::SeqCst);
        let file_path = path.clone();
        let exported = tokio::task::spawn_blocking(move || {
            crate::backup::write_etcd_db(&storage, &file_path, &members, term)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let exported = match exported {
            Ok(e) => e,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e.into());
            }
        };
        tracing::info!(
            size = exported.size,
            revision = exported.revision,
            "sending a snapshot of the store to a client"
        );
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(stream_file(path, exported.size, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// The alarm list, and raising or clearing alarms (through raft, so
    /// every member sees the same alarms).
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let r = req.into_inner();
        let alarms = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Activate) | Ok(AlarmAction::Deactivate) => {
                match self.member.propose(crate::apply::Op::Alarm(r)).await? {
                    crate::apply::Response::Alarm(list) => list,
                    _ => return Err(Status::internal("unexpected response kind")),
                }
            }
            // etcd lists through raft: linearizable, and unanswered on a
            // member cut off from the majority.
            _ => {
                self.member.read_barrier().await?;
                self.member.alarms.of_type(r.alarm)
            }
        };
        let rev = self.member.store().current_revision();
        Ok(Response::new(AlarmResponse {
            header: Some(self.member.header(rev)),
            alarms,
        }))
    }

    /// Reclaims the space of deleted and compacted data. RocksDB compacts
    /// in the background, so unlike etcd's this blocks neither reads nor
    /// writes.
    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let storage = self.member.storage().clone();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || storage.compact_all())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        crate::metrics::hooks::defragmented(started.elapsed());
        let rev = self.member.store().current_revision();
        Ok(Response::new(DefragmentResponse {
            header: Some(self.member.header(rev)),
        }))
    }
}

/// etcd's piece size for snapshot streams.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// Streams the file at `path` (`total` bytes) in pieces, then its sha256;
/// removes the file when done, however it ends.
async fn stream_file(
    path: std::path::PathBuf,
    total: u64,
    tx: tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;

    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = RemoveOnDrop(path.clone());
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
            return;
        }
    };
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    while sent < total {
        let n = SNAPSHOT_CHUNK.min((total - sent) as usize);
        let mut blob = vec![0u8; n];
        if let Err(e) = file.read_exact(&mut blob).await {
            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
            return;
        }
        hasher.update(&blob);
        sent += n as u64;
        let piece = SnapshotResponse {
            header: None,
            remaining_bytes: total - sent,
            blob,
            version: String::new(),
        };
        if tx.send(Ok(piece)).await.is_err() {
            // The client went away.
            return;
        }
    }
    let last = SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: hasher.finalize().to_vec(),
        version: String::new(),
    };
    let _ = tx.send(Ok(last)).await;
}
