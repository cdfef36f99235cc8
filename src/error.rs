//! The errors a client can see, with etcd's gRPC codes and exact texts.
//!
//! etcd's Go client maps a gRPC status back to a typed error by comparing the
//! message string, and kube-apiserver and kubeadm compare those typed errors.
//! So the text below is part of the wire protocol: change none of it.

use tonic::{Code, Status};

/// An error that ends a client request. Each variant is one of etcd's
/// `rpctypes` errors; [`Error::status`] gives the code and text etcd sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is active: writes are refused cluster-wide.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: not capable")]
    NotCapable,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// A failure of our own (storage I/O, a corrupt record). etcd answers
    /// those with codes.Unknown and the underlying text; so do we, and the
    /// member logs it.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        use Error::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRevision => Code::OutOfRange,
            NoSpace => Code::ResourceExhausted,
            Corrupt => Code::DataLoss,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            NoLeader | LeaderChanged | Timeout | Stopped => Code::Unavailable,
            NotCapable | LeaseExists | NotLeader | BadLeaderTransferee => Code::FailedPrecondition,
            LeaderTransferTimeout | NotSupportedForLearner | Unhealthy => Code::Unavailable,
            PeerUrlExists | MemberExists | MemberNotLearner | LearnerNotReady | TooManyLearners => {
                Code::FailedPrecondition
            }
            // etcd maps this one to an error without a gRPC status, so it
            // reaches clients as Unknown.
            NotEnoughStartedMembers => Code::Unknown,
            MemberBadUrls => Code::InvalidArgument,
            LeaseTtlTooLarge => Code::OutOfRange,
            Internal(_) => Code::Unknown,
        }
    }

    pub fn status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }

    pub fn internal(e: impl std::fmt::Display) -> Error {
        Error::Internal(e.to_string())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        e.status()
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Error {
        Error::Internal(format!("storage: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An OS error as Go prints it (`no such file or directory`), for the
/// texts etcd's tools and server print about files.
pub fn go_os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.rfind(" (os error ") {
        Some(i) => &s[..i],
        None => &s,
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
