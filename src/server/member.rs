use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::oneshot;

use crate::alarm::Alarms;
use crate::apply::{Op, Request, Response};
use crate::consensus::transport::PeerActivity;
use crate::consensus::{Command, RaftHandle};
use crate::error::{Error, Result};
use crate::membership::Membership;
use crate::mvcc::MvccStore;
use crate::pb::cairnpb::peer_client::PeerClient;
use crate::pb::etcdserverpb::ResponseHeader;
use crate::pb::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use crate::storage::Storage;
use crate::tls::PeerDialer;

pub struct Member {
    pub id: u64,
    pub cluster_id: u64,
    pub membership: Arc<Membership>,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub max_learners: usize,
    pub strict_reconfig_check: bool,
    pub(super) peer_activity: Arc<PeerActivity>,
    pub alarms: Arc<Alarms>,
    quota_backend_bytes: i64,
    peer_dialer: Arc<PeerDialer>,
    raft: RaftHandle,
    store: Arc<MvccStore>,
    storage: Storage,
    next_request: AtomicU64,
    request_timeout: Duration,
    /// One membership change at a time from this member: raft turns a
    /// second one proposed before the first applies into a no-op.
    pub(super) conf_change: tokio::sync::Mutex<()>,
}

/// Settings a member is built with.
pub struct MemberSettings {
    pub id: u64,
    pub cluster_id: u64,
    pub membership: Arc<Membership>,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub max_learners: usize,
    pub strict_reconfig_check: bool,
    pub peer_activity: Arc<PeerActivity>,
    pub alarms: Arc<Alarms>,
    pub quota_backend_bytes: i64,
    pub election_timeout: Duration,
    pub peer_dialer: Arc<PeerDialer>,
}

impl Member {
    pub fn new(
        settings: MemberSettings,
        raft: RaftHandle,
        store: Arc<MvccStore>,
        storage: Storage,
    ) -> Member {
        // Request numbers only need to be unique among this member's
        // proposals that may still be applied: starting from the clock keeps
        // them apart from a previous run's.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| (d.as_millis() as u64) << 20)
            .unwrap_or(1);
        Member {
            id: settings.id,
            cluster_id: settings.cluster_id,
            membership: settings.membership,
            max_request_bytes: settings.max_request_bytes,
            max_txn_ops: settings.max_txn_ops,
            max_learners: settings.max_learners,
            strict_reconfig_check: settings.strict_reconfig_check,
            peer_activity: settings.peer_activity,
            alarms: settings.alarms,
            quota_backend_bytes: settings.quota_backend_bytes,
            peer_dialer: settings.peer_dialer,
            conf_change: tokio::sync::Mutex::new(()),
            raft,
            store,
            storage,
            next_request: AtomicU64::new(start),
            // etcd's: 5 s plus two election timeouts.
            request_timeout: Duration::from_secs(5) + 2 * settings.election_timeout,
        }
    }

    /// A number for a proposal, unique among this member's.
    pub(super) fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Whether this member is a learner (it serves only Status and
    /// serializable reads).
    pub fn is_learner(&self) -> bool {
        self.membership.get(self.id).is_some_and(|m| m.is_learner)
    }

    /// A lease id for a grant that named none: positive, and unique as the
    /// request numbers are (etcd derives both the same way).
    pub fn next_lease_id(&self) -> i64 {
        loop {
            let n = self.next_request.fetch_add(1, Ordering::Relaxed);
            let id = ((self.id << 48) ^ n) as i64 & i64::MAX;
            if id != 0 {
                return id;
            }
        }
    }

    pub fn store(&self) -> &Arc<MvccStore> {
        &self.store
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    pub fn has_leader(&self) -> bool {
        self.raft.status.leader.load(Ordering::SeqCst) != 0
    }

    pub fn is_leader(&self) -> bool {
        self.raft.status.is_leader.load(Ordering::SeqCst)
    }

    /// The current leader's peer URL, when there is a leader other than us.
    pub fn leader_peer_url(&self) -> Option<String> {
        let leader = self.raft.status.leader.load(Ordering::SeqCst);
        if leader == 0 || leader == self.id {
            return None;
        }
        self.membership
            .get(leader)
            .and_then(|m| m.peer_urls.first().cloned())
    }

    /// A client of the leader's peer service, for what only the leader can
    /// answer (keep-alives, time to live, promotions).
    pub async fn leader_peer(
        &self,
    ) -> std::result::Result<PeerClient<tonic::transport::Channel>, tonic::Status> {
        let url = self
            .leader_peer_url()
            .ok_or_else(|| Error::NoLeader.status())?;
        let endpoint = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(1));
        let channel = self
            .peer_dialer
            .connect(endpoint)
            .await
            .map_err(|_| Error::LeaderChanged.status())?;
        Ok(PeerClient::new(channel))
    }

    /// The space quota in bytes; 0 or less: none.
    pub fn quota_backend_bytes(&self) -> i64 {
        self.quota_backend_bytes
    }

    /// How this member reaches its peers (TLS for `https://` URLs).
    pub fn peer_dialer(&self) -> &Arc<PeerDialer> {
        &self.peer_dialer
    }

    /// A response header as etcd fills it.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id,
            revision,
            raft_term: self.raft.status.term.load(Ordering::SeqCst),
        }
    }

    /// etcd's quota check before a write that adds `cost` bytes: past
    /// `--quota-backend-bytes`, the write is refused and the NOSPACE alarm
    /// raised (through raft, so every member refuses such writes).
    pub async fn check_quota(&self, cost: usize) -> Result<()> {
        if self.quota_backend_bytes <= 0 {
            return Ok(());
        }
        let (size, _) = self.storage.size();
        if size.saturating_add(cost as i64) <= self.quota_backend_bytes {
            return Ok(());
        }
        if !self.alarms.has(AlarmType::Nospace) {
            tracing::warn!(
                size,
                quota = self.quota_backend_bytes,
                "database space exceeded; raising the NOSPACE alarm"
            );
            let _ = self.raise_alarm(AlarmType::Nospace).await;
        }
        Err(Error::NoSpace)
    }

    /// Raises an alarm for this member through raft.
    pub async fn raise_alarm(&self, alarm: AlarmType) -> Result<Response> {
        self.propose(Op::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.id,
            alarm: alarm as i32,
        }))
        .await
    }

    /// Replicates a write and waits until this member has applied it.
    pub async fn propose(&self, op: Op) -> Result<Response> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let data = Request {
            id,
            member: self.id,
            op: Some(op),
        }
        .encode_to_vec();
        if data.len() > self.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let pending = crate::metrics::hooks::PendingProposal::start();
        let (done, rx) = oneshot::channel();
        let result = match self.raft.send(Command::Propose { id, data, done }) {
            Err(e) => Err(e),
            Ok(()) => match tokio::time::timeout(self.request_timeout, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(Error::Stopped),
                Err(_) => Err(Error::Timeout),
            },
        };
        pending.finish(&result);
        result
    }

    /// Hands leadership to member `to` (etcd's MoveLeader): only the leader
    /// can, only to another member; returns once `to` leads.
    pub async fn move_leader(&self, to: u64) -> Result<()> {
        if !self.is_leader() {
            return Err(Error::NotLeader);
        }
        if self.membership.get(to).is_none_or(|m| m.is_learner) {
            return Err(Error::BadLeaderTransferee);
        }
        if to == self.id {
            return Ok(());
        }
        self.raft.send(Command::TransferLeader { to })?;
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        while self.raft.status.leader.load(Ordering::SeqCst) != to {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::LeaderTransferTimeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Returns once a read on this member would see every write committed
    /// before the call (raft's ReadIndex, shared with concurrent reads).
    pub async fn read_barrier(&self) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.raft.send(Command::ReadIndex { done })?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }
}
