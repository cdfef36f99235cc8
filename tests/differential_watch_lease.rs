//! Differential test of the Watch and Lease services against the real etcd.
//!
//! One scripted sequence — watch streams (creates, cancels, start revisions,
//! compaction, filters, prev_kv, progress, fragments, client-chosen ids) and
//! leases (grant, revoke, keep-alive, time-to-live, list, attach/detach,
//! expiry) interleaved with the KV writes that drive them — is sent in
//! lockstep to a reference etcd (A) and to the server under test (B). Every
//! response must be identical field by field, headers included, after these
//! normalizations and only these:
//!
//! - `cluster_id` and `member_id` are cleared in every header;
//! - ids the *server* chooses are mapped to A's: a lease granted with `ID 0`
//!   and a watch created with `watch_id 0` get B's id replaced by A's
//!   everywhere B's responses carry it (`KeyValue.lease`, lease responses,
//!   `watch_id`), and requests naming them are translated to B's id;
//!   client-chosen ids are compared as they are;
//! - `LeaseTimeToLive.TTL` (the remaining time, which depends on when each
//!   server was asked) may differ by up to `TTL_TOLERANCE` seconds; granted
//!   TTLs and keep-alive TTLs are compared exactly;
//! - `LeaseTimeToLive.keys` is compared as a sorted list (etcd 3.4 returns
//!   the keys in Go map order);
//! - on one watch stream, responses of *different* watchers may interleave
//!   in any order (etcd delivers each watcher's events independently): the
//!   responses are compared watcher by watcher, each in arrival order, and
//!   the control responses (created, canceled by request, progress-request
//!   answers) are also compared in arrival order across watchers;
//! - periodic progress notifications (`--experimental-watch-progress-notify-
//!   interval`) are compared as the list of distinct responses seen in a
//!   fixed window (their number depends on timers), which must not be empty.
//!
//! "Nothing more arrives" is checked by a `QUIET` period after the expected
//! responses of every watch step.
//!
//! Both servers run with `--max-request-bytes=4096` (so that a watch
//! response can outgrow etcd's fragment threshold, which is
//! max-request-bytes + 512 KiB of gRPC overhead, with small requests) and a
//! 1 s progress-notify interval.
//!
//! Environment (as for the KV differential test):
//! - `CAIRN_DIFF_TARGET=etcd` compares etcd with a second etcd (validates the
//!   harness and the script); the default, `cairn`, compares etcd with cairn.
//! - `CAIRN_DIFF_KEEP_GOING=1` records every mismatch and fails at the end
//!   instead of failing on the first.
//! - `CAIRN_DIFF_TRACE=1` prints every step with A's outcome.
//!
//! Script expectations (`ok`, `fails`, the number of watch responses) are
//! checked against A only: they prove that the script really exercises the
//! case it names on the real etcd.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::lease_client::LeaseClient;
use cairn::pb::etcdserverpb::request_op::Request;
use cairn::pb::etcdserverpb::response_op::Response;
use cairn::pb::etcdserverpb::watch_client::WatchClient;
use cairn::pb::etcdserverpb::watch_create_request::FilterType;
use cairn::pb::etcdserverpb::watch_request::RequestUnion;
use cairn::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use cairn::pb::mvccpb::KeyValue;
use common::{pretty, start_pair_with, Kind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// How long a watch stream must stay silent after the expected responses.
const QUIET: Duration = Duration::from_millis(300);
/// How long to wait for the expected watch responses.
const EXPECT_DEADLINE: Duration = Duration::from_secs(5);
/// How long to wait for a lease to expire (TTL 2 s, checked every 500 ms).
const EXPIRY_DEADLINE: Duration = Duration::from_secs(15);
/// Unary calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Allowed difference of `LeaseTimeToLive.TTL` (remaining seconds).
const TTL_TOLERANCE: i64 = 1;
const MAX_REQUEST_BYTES: usize = 4096;
/// etcd's watch fragment threshold: max-request-bytes + gRPC overhead.
const FRAGMENT_THRESHOLD: usize = MAX_REQUEST_BYTES + 512 * 1024;
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const LEASE_EXISTS: &str = "etcdserver: lease already exists";
const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
/// etcd's MaxLeaseTTL.
const MAX_LEASE_TTL: i64 = 9_000_000_000;
const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const EMPTY_WATCH_RANGE: &str = "mvcc: watcher range is empty";

// ---------------------------------------------------------------------------
// Unary calls
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Call {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    Grant(LeaseGrantRequest),
    Revoke(LeaseRevokeRequest),
    TimeToLive(LeaseTimeToLiveRequest),
    Leases,
    /// One LeaseKeepAlive stream: each id sent in turn, one answer read for
    /// each.
    KeepAlive(Vec<i64>),
}

impl From<RangeRequest> for Call {
    fn from(r: RangeRequest) -> Call {
        Call::Range(r)
    }
}
impl From<PutRequest> for Call {
    fn from(r: PutRequest) -> Call {
        Call::Put(r)
    }
}
impl From<DeleteRangeRequest> for Call {
    fn from(r: DeleteRangeRequest) -> Call {
        Call::Delete(r)
    }
}
impl From<TxnRequest> for Call {
    fn from(r: TxnRequest) -> Call {
        Call::Txn(r)
    }
}
impl From<CompactionRequest> for Call {
    fn from(r: CompactionRequest) -> Call {
        Call::Compact(r)
    }
}
impl From<LeaseGrantRequest> for Call {
    fn from(r: LeaseGrantRequest) -> Call {
        Call::Grant(r)
    }
}
impl From<LeaseRevokeRequest> for Call {
    fn from(r: LeaseRevokeRequest) -> Call {
        Call::Revoke(r)
    }
}
impl From<LeaseTimeToLiveRequest> for Call {
    fn from(r: LeaseTimeToLiveRequest) -> Call {
        Call::TimeToLive(r)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Resp {
    Range(RangeResponse),
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    Grant(LeaseGrantResponse),
    Revoke(LeaseRevokeResponse),
    TimeToLive(LeaseTimeToLiveResponse),
    Leases(LeaseLeasesResponse),
    KeepAlive(Vec<Result<LeaseKeepAliveResponse, (Code, String)>>),
}

impl Resp {
    fn rev(&self) -> i64 {
        let h = match self {
            Resp::Range(r) => r.header.as_ref(),
            Resp::Put(r) => r.header.as_ref(),
            Resp::Delete(r) => r.header.as_ref(),
            Resp::Txn(r) => r.header.as_ref(),
            Resp::Compact(r) => r.header.as_ref(),
            Resp::Grant(r) => r.header.as_ref(),
            Resp::Revoke(r) => r.header.as_ref(),
            Resp::TimeToLive(r) => r.header.as_ref(),
            Resp::Leases(r) => r.header.as_ref(),
            Resp::KeepAlive(_) => None,
        };
        h.map(|h| h.revision).unwrap_or(0)
    }
}

/// Ok(response) or Err((code, message)).
type Outcome = Result<Resp, (Code, String)>;

fn status(s: tonic::Status) -> (Code, String) {
    (s.code(), s.message().to_string())
}

async fn exec(side: &mut Side, call: &Call) -> Outcome {
    let kv = &mut side.kv;
    let lease = &mut side.lease;
    let run = async {
        let r = match call.clone() {
            Call::Range(r) => kv.range(r).await.map(|x| Resp::Range(x.into_inner())),
            Call::Put(r) => kv.put(r).await.map(|x| Resp::Put(x.into_inner())),
            Call::Delete(r) => kv
                .delete_range(r)
                .await
                .map(|x| Resp::Delete(x.into_inner())),
            Call::Txn(r) => kv.txn(r).await.map(|x| Resp::Txn(x.into_inner())),
            Call::Compact(r) => kv.compact(r).await.map(|x| Resp::Compact(x.into_inner())),
            Call::Grant(r) => lease
                .lease_grant(r)
                .await
                .map(|x| Resp::Grant(x.into_inner())),
            Call::Revoke(r) => lease
                .lease_revoke(r)
                .await
                .map(|x| Resp::Revoke(x.into_inner())),
            Call::TimeToLive(r) => lease
                .lease_time_to_live(r)
                .await
                .map(|x| Resp::TimeToLive(x.into_inner())),
            Call::Leases => lease
                .lease_leases(LeaseLeasesRequest {})
                .await
                .map(|x| Resp::Leases(x.into_inner())),
            Call::KeepAlive(ids) => {
                // grpc-go sends the response headers with the first
                // message: queue the requests before awaiting the call.
                let (tx, rx) = mpsc::channel(ids.len().max(1));
                for id in &ids {
                    let _ = tx.send(LeaseKeepAliveRequest { id: *id }).await;
                }
                match lease.lease_keep_alive(ReceiverStream::new(rx)).await {
                    Err(e) => Err(e),
                    Ok(s) => {
                        let mut s = s.into_inner();
                        let mut out = Vec::new();
                        for _ in &ids {
                            match s.message().await {
                                Ok(Some(r)) => out.push(Ok(r)),
                                Ok(None) => {
                                    out.push(Err((Code::Ok, "[stream ended]".to_string())));
                                    break;
                                }
                                Err(e) => {
                                    out.push(Err(status(e)));
                                    break;
                                }
                            }
                        }
                        drop(tx);
                        Ok(Resp::KeepAlive(out))
                    }
                }
            }
        };
        r.map_err(status)
    };
    match tokio::time::timeout(CALL_TIMEOUT, run).await {
        Ok(r) => r.map(scrub),
        Err(_) => Err((
            Code::DeadlineExceeded,
            format!("[test harness] no answer within {CALL_TIMEOUT:?}"),
        )),
    }
}

fn scrub_header(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
    }
}

/// Clears `cluster_id` and `member_id` in every header.
fn scrub(mut r: Resp) -> Resp {
    fn txn(t: &mut TxnResponse) {
        scrub_header(&mut t.header);
        for op in &mut t.responses {
            match &mut op.response {
                Some(Response::ResponseRange(r)) => scrub_header(&mut r.header),
                Some(Response::ResponsePut(r)) => scrub_header(&mut r.header),
                Some(Response::ResponseDeleteRange(r)) => scrub_header(&mut r.header),
                Some(Response::ResponseTxn(t)) => txn(t),
                None => {}
            }
        }
    }
    match &mut r {
        Resp::Range(x) => scrub_header(&mut x.header),
        Resp::Put(x) => scrub_header(&mut x.header),
        Resp::Delete(x) => scrub_header(&mut x.header),
        Resp::Compact(x) => scrub_header(&mut x.header),
        Resp::Txn(t) => txn(t),
        Resp::Grant(x) => scrub_header(&mut x.header),
        Resp::Revoke(x) => scrub_header(&mut x.header),
        Resp::TimeToLive(x) => {
            scrub_header(&mut x.header);
            x.keys.sort();
        }
        Resp::Leases(x) => scrub_header(&mut x.header),
        Resp::KeepAlive(v) => {
            for r in v.iter_mut().flatten() {
                scrub_header(&mut r.header);
            }
        }
    }
    r
}

// ---------------------------------------------------------------------------
// Lease id translation (server-chosen ids)
// ---------------------------------------------------------------------------

/// Applies `f` to every lease id in a request.
fn map_call_leases(c: &mut Call, f: &dyn Fn(i64) -> i64) {
    fn txn(t: &mut TxnRequest, f: &dyn Fn(i64) -> i64) {
        for c in &mut t.compare {
            if let Some(cairn::pb::etcdserverpb::compare::TargetUnion::Lease(l)) =
                &mut c.target_union
            {
                *l = f(*l);
            }
        }
        for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
            match &mut op.request {
                Some(Request::RequestPut(p)) => p.lease = f(p.lease),
                Some(Request::RequestTxn(t)) => txn(t, f),
                _ => {}
            }
        }
    }
    match c {
        Call::Put(p) => p.lease = f(p.lease),
        Call::Txn(t) => txn(t, f),
        Call::Grant(g) => g.id = f(g.id),
        Call::Revoke(r) => r.id = f(r.id),
        Call::TimeToLive(r) => r.id = f(r.id),
        Call::KeepAlive(ids) => ids.iter_mut().for_each(|i| *i = f(*i)),
        Call::Range(_) | Call::Delete(_) | Call::Compact(_) | Call::Leases => {}
    }
}

fn map_kv(kv: &mut Option<KeyValue>, f: &dyn Fn(i64) -> i64) {
    if let Some(kv) = kv {
        kv.lease = f(kv.lease);
    }
}

/// Applies `f` to every lease id in a response.
fn map_resp_leases(r: &mut Resp, f: &dyn Fn(i64) -> i64) {
    fn txn(t: &mut TxnResponse, f: &dyn Fn(i64) -> i64) {
        for op in &mut t.responses {
            match &mut op.response {
                Some(Response::ResponseRange(r)) => {
                    r.kvs.iter_mut().for_each(|k| k.lease = f(k.lease))
                }
                Some(Response::ResponsePut(p)) => map_kv(&mut p.prev_kv, f),
                Some(Response::ResponseDeleteRange(d)) => {
                    d.prev_kvs.iter_mut().for_each(|k| k.lease = f(k.lease))
                }
                Some(Response::ResponseTxn(t)) => txn(t, f),
                None => {}
            }
        }
    }
    match r {
        Resp::Range(r) => r.kvs.iter_mut().for_each(|k| k.lease = f(k.lease)),
        Resp::Put(p) => map_kv(&mut p.prev_kv, f),
        Resp::Delete(d) => d.prev_kvs.iter_mut().for_each(|k| k.lease = f(k.lease)),
        Resp::Txn(t) => txn(t, f),
        Resp::Compact(_) | Resp::Revoke(_) => {}
        Resp::Grant(g) => g.id = f(g.id),
        Resp::TimeToLive(t) => t.id = f(t.id),
        Resp::Leases(l) => l.leases.iter_mut().for_each(|s| s.id = f(s.id)),
        Resp::KeepAlive(v) => v.iter_mut().flatten().for_each(|k| k.id = f(k.id)),
    }
}

fn map_watch_leases(w: &mut WatchResponse, f: &dyn Fn(i64) -> i64) {
    for e in &mut w.events {
        map_kv(&mut e.kv, f);
        map_kv(&mut e.prev_kv, f);
    }
}

// ---------------------------------------------------------------------------
// Watch streams
// ---------------------------------------------------------------------------

/// What a watch stream delivered: a response, or its end.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Resp(WatchResponse),
    /// The stream ended: Ok = cleanly, Err = with this status.
    End(Result<(), (Code, String)>),
}

impl Item {
    fn resp(&self) -> Option<&WatchResponse> {
        match self {
            Item::Resp(r) => Some(r),
            Item::End(_) => None,
        }
    }
}

/// One watch stream. A task owns the gRPC call (grpc-go sends the response
/// headers only with the first message, so the call cannot be awaited before
/// requests are sent) and forwards what arrives.
struct WStream {
    tx: mpsc::Sender<WatchRequest>,
    rx: mpsc::UnboundedReceiver<Item>,
    task: tokio::task::JoinHandle<()>,
    /// Creates sent and not yet answered: the requested watch_id of each.
    pending_creates: VecDeque<i64>,
}

impl WStream {
    fn open(client: &WatchClient<Channel>) -> WStream {
        let (tx, req_rx) = mpsc::channel(64);
        let (item_tx, rx) = mpsc::unbounded_channel();
        let mut client = client.clone();
        let task = tokio::spawn(async move {
            let mut s: Streaming<WatchResponse> =
                match client.watch(ReceiverStream::new(req_rx)).await {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        let _ = item_tx.send(Item::End(Err(status(e))));
                        return;
                    }
                };
            loop {
                let item = match s.message().await {
                    Ok(Some(mut r)) => {
                        scrub_header(&mut r.header);
                        Item::Resp(r)
                    }
                    Ok(None) => Item::End(Ok(())),
                    Err(e) => Item::End(Err(status(e))),
                };
                let end = matches!(item, Item::End(_));
                if item_tx.send(item).is_err() || end {
                    return;
                }
            }
        });
        WStream {
            tx,
            rx,
            task,
            pending_creates: VecDeque::new(),
        }
    }

    /// The next item within `wait`, or None.
    async fn next(&mut self, wait: Duration) -> Option<Item> {
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Reads until `n` responses have arrived (or `deadline` passed), then
    /// until the stream has been silent for `QUIET`.
    async fn collect(&mut self, n: usize, deadline: Duration) -> Vec<Item> {
        let start = Instant::now();
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            match self.next(left).await {
                Some(i) => {
                    let end = matches!(i, Item::End(_));
                    out.push(i);
                    if end {
                        return out;
                    }
                }
                None => break,
            }
        }
        let hard_stop = Instant::now() + Duration::from_secs(3);
        while Instant::now() < hard_stop {
            match self.next(QUIET).await {
                Some(i) => {
                    let end = matches!(i, Item::End(_));
                    out.push(i);
                    if end {
                        break;
                    }
                }
                None => break,
            }
        }
        out
    }

    /// Everything that arrives within `window`.
    async fn collect_for(&mut self, window: Duration) -> Vec<Item> {
        let until = Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.next(left).await {
                Some(i) => {
                    let end = matches!(i, Item::End(_));
                    out.push(i);
                    if end {
                        break;
                    }
                }
                None => break,
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// One server's clients and id maps
// ---------------------------------------------------------------------------

struct Side {
    name: String,
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    watch: WatchClient<Channel>,
    /// This server's choice of lease id → A's (only for leases granted with
    /// ID 0; identity on A).
    lease_ids: BTreeMap<i64, i64>,
    /// Per logical stream: this server's choice of watch id → A's.
    watch_ids: Vec<BTreeMap<i64, i64>>,
    streams: Vec<WStream>,
}

impl Side {
    async fn connect(name: String, endpoint: String) -> Side {
        let ch = tonic::transport::Endpoint::from_shared(endpoint)
            .unwrap()
            .connect()
            .await
            .unwrap();
        Side {
            name,
            kv: KvClient::new(ch.clone()).max_decoding_message_size(64 << 20),
            lease: LeaseClient::new(ch.clone()).max_decoding_message_size(64 << 20),
            watch: WatchClient::new(ch).max_decoding_message_size(64 << 20),
            lease_ids: BTreeMap::new(),
            watch_ids: Vec::new(),
            streams: Vec::new(),
        }
    }

    fn lease_to_ref(&self, id: i64) -> i64 {
        *self.lease_ids.get(&id).unwrap_or(&id)
    }

    fn lease_from_ref(&self, id: i64) -> i64 {
        self.lease_ids
            .iter()
            .find(|(_, a)| **a == id)
            .map(|(b, _)| *b)
            .unwrap_or(id)
    }

    fn watch_to_ref(&self, s: usize, id: i64) -> i64 {
        *self.watch_ids[s].get(&id).unwrap_or(&id)
    }

    fn watch_from_ref(&self, s: usize, id: i64) -> i64 {
        self.watch_ids[s]
            .iter()
            .find(|(_, a)| **a == id)
            .map(|(b, _)| *b)
            .unwrap_or(id)
    }

    fn open(&mut self) {
        self.streams.push(WStream::open(&self.watch));
        self.watch_ids.push(BTreeMap::new());
    }

    async fn send(&mut self, s: usize, req: &WatchRequest) {
        let mut req = req.clone();
        match &mut req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                self.streams[s].pending_creates.push_back(c.watch_id);
            }
            Some(RequestUnion::CancelRequest(c)) => c.watch_id = self.watch_from_ref(s, c.watch_id),
            _ => {}
        }
        // A closed stream just drops the request; the comparison shows it.
        let _ = self.streams[s].tx.send(req).await;
    }
}

// ---------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------

fn show(o: &Outcome) -> String {
    match o {
        Ok(r) => pretty(r),
        Err((code, msg)) => format!("ERROR code={code:?} message={msg:?}"),
    }
}

/// A watch response in one line, events summarized.
fn show_watch(r: &WatchResponse) -> String {
    let h = r
        .header
        .as_ref()
        .map(|h| format!("rev={} term={}", h.revision, h.raft_term))
        .unwrap_or_else(|| "no header".into());
    let mut s = format!("{{{h} watch_id={}", r.watch_id);
    if r.created {
        s.push_str(" created");
    }
    if r.canceled {
        s.push_str(" canceled");
    }
    if r.compact_revision != 0 {
        s.push_str(&format!(" compact_revision={}", r.compact_revision));
    }
    if !r.cancel_reason.is_empty() {
        s.push_str(&format!(" cancel_reason={:?}", r.cancel_reason));
    }
    if r.fragment {
        s.push_str(" fragment");
    }
    match r.events.len() {
        0 => {}
        n @ 1..=4 => s.push_str(&format!(" events({n})={}", pretty(&r.events))),
        n => s.push_str(&format!(
            " events({n})=[{}, {}, …, {}]",
            pretty(&r.events[0]),
            pretty(&r.events[1]),
            pretty(&r.events[n - 1])
        )),
    }
    s.push('}');
    s
}

fn show_items(items: &[Item]) -> String {
    if items.is_empty() {
        return "    (nothing)".into();
    }
    // Long runs (fragments) are cut in the middle.
    let cut = items.len() > 16;
    items
        .iter()
        .enumerate()
        .filter(|(k, _)| !cut || *k < 6 || *k >= items.len() - 6)
        .map(|(k, i)| match i {
            _ if cut && k == 5 => format!("    … ({} responses not shown)", items.len() - 11),
            Item::Resp(r) => format!("    {}", show_watch(r)),
            Item::End(Ok(())) => "    [stream ended]".into(),
            Item::End(Err((c, m))) => format!("    [stream failed: code={c:?} message={m:?}]"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// The lockstep driver
// ---------------------------------------------------------------------------

struct Diff {
    a: Side,
    b: Side,
    step: usize,
    keep_going: bool,
    trace: bool,
    mismatches: Vec<String>,
}

/// A watch step's items, normalized for comparison: responses per watcher
/// (arrival order), and the control responses in arrival order.
#[derive(Debug, PartialEq)]
struct Normal {
    per_watch: BTreeMap<i64, Vec<Item>>,
    control: Vec<Item>,
    ends: Vec<Item>,
}

fn is_control(r: &WatchResponse) -> bool {
    r.created || (r.canceled && r.compact_revision == 0) || r.watch_id == -1
}

fn normalize(items: &[Item]) -> Normal {
    let mut n = Normal {
        per_watch: BTreeMap::new(),
        control: Vec::new(),
        ends: Vec::new(),
    };
    for i in items {
        match i {
            Item::Resp(r) => {
                n.per_watch.entry(r.watch_id).or_default().push(i.clone());
                if is_control(r) {
                    n.control.push(i.clone());
                }
            }
            Item::End(_) => n.ends.push(i.clone()),
        }
    }
    n
}

impl Diff {
    fn mismatch(&mut self, msg: String) {
        if self.keep_going {
            eprintln!("MISMATCH {msg}\n");
            self.mismatches.push(msg);
        } else {
            panic!("{msg}");
        }
    }

    /// Sends `call` to A and B (B with its own lease ids) and compares.
    async fn call(&mut self, what: &str, call: impl Into<Call>) -> Outcome {
        let call = call.into();
        self.step += 1;
        let mut call_b = call.clone();
        map_call_leases(&mut call_b, &|id| self.b.lease_from_ref(id));
        let (ra, mut rb) = tokio::join!(exec(&mut self.a, &call), exec(&mut self.b, &call_b));
        // A new server-chosen lease id: remember B's for A's.
        if let (Call::Grant(g), Ok(Resp::Grant(x)), Ok(Resp::Grant(y))) = (&call, &ra, &rb) {
            if g.id == 0 && x.error.is_empty() && y.error.is_empty() {
                self.b.lease_ids.insert(y.id, x.id);
            }
        }
        if let Ok(r) = &mut rb {
            let b = &self.b;
            map_resp_leases(r, &|id| b.lease_to_ref(id));
        }
        if let (Ok(Resp::TimeToLive(x)), Ok(Resp::TimeToLive(y))) = (&ra, &mut rb) {
            if (x.ttl - y.ttl).abs() <= TTL_TOLERANCE {
                y.ttl = x.ttl;
            }
        }
        if self.trace {
            eprintln!("step {} ({what}): {}", self.step, show(&ra));
        }
        if ra != rb {
            let msg = format!(
                "step {} ({what}) differs\n  request: {}\n  {}: {}\n  {}: {}",
                self.step,
                pretty(&call),
                self.a.name,
                show(&ra),
                self.b.name,
                show(&rb)
            );
            self.mismatch(msg);
        }
        ra
    }

    /// Like `call`; the script expects A to succeed.
    async fn ok(&mut self, what: &str, call: impl Into<Call>) -> Resp {
        let step = self.step + 1;
        match self.call(what, call).await {
            Ok(r) => r,
            Err(e) => panic!(
                "script expectation failed at step {step} ({what}): {} answered {e:?}",
                self.a.name
            ),
        }
    }

    /// Like `call`; the script expects A to fail with exactly this error.
    async fn fails(&mut self, what: &str, call: impl Into<Call>, code: Code, msg: &str) {
        let step = self.step + 1;
        let r = self.call(what, call).await;
        match &r {
            Err((c, m)) if *c == code && m == msg => {}
            _ => panic!(
                "script expectation failed at step {step} ({what}): {} answered {}, expected \
                 {code:?} {msg:?}",
                self.a.name,
                show(&r)
            ),
        }
    }

    /// Opens a watch stream on both servers; returns its index.
    async fn open(&mut self) -> usize {
        self.a.open();
        self.b.open();
        self.a.streams.len() - 1
    }

    /// Closes a stream on both (drops the request side; the server ends it).
    fn close(&mut self, s: usize) {
        for side in [&mut self.a, &mut self.b] {
            let (tx, _) = mpsc::channel(1);
            side.streams[s].tx = tx;
            side.streams[s].task.abort();
        }
    }

    /// Sends `reqs` on stream `s` of both servers, then reads what each
    /// delivers (A must deliver exactly `n` responses) and compares.
    async fn watch(&mut self, what: &str, s: usize, reqs: &[WatchRequest], n: usize) -> Vec<Item> {
        for r in reqs {
            self.a.send(s, r).await;
            self.b.send(s, r).await;
        }
        self.expect(what, s, n).await
    }

    /// Reads what stream `s` delivers on both (A must deliver exactly `n`
    /// responses) and compares.
    async fn expect(&mut self, what: &str, s: usize, n: usize) -> Vec<Item> {
        self.expect_within(what, s, n, EXPECT_DEADLINE).await
    }

    async fn expect_within(
        &mut self,
        what: &str,
        s: usize,
        n: usize,
        deadline: Duration,
    ) -> Vec<Item> {
        self.step += 1;
        let (ia, ib) = tokio::join!(
            self.a.streams[s].collect(n, deadline),
            self.b.streams[s].collect(n, deadline)
        );
        let ib = self.map_watch_items(s, &ia, ib);
        if self.trace {
            eprintln!(
                "step {} ({what}) stream {s}:\n{}",
                self.step,
                show_items(&ia)
            );
        }
        if normalize(&ia) != normalize(&ib) {
            let msg = format!(
                "step {} ({what}) on watch stream {s} differs (B's server-chosen ids mapped)\n  \
                 {}:\n{}\n  {}:\n{}",
                self.step,
                self.a.name,
                show_items(&ia),
                self.b.name,
                show_items(&ib)
            );
            self.mismatch(msg);
        }
        let got = ia.iter().filter(|i| i.resp().is_some()).count();
        if got != n {
            // Checked after the comparison: with keep-going, a wrong count
            // is reported with the other findings.
            let msg = format!(
                "script expectation failed at step {} ({what}): {} delivered {got} responses, \
                 the script expects {n}:\n{}",
                self.step,
                self.a.name,
                show_items(&ia)
            );
            self.mismatch(msg);
        }
        ia
    }

    /// Pairs the created responses of A and B on stream `s` (creates are
    /// answered in order), records B's server-chosen watch ids, and returns
    /// B's items with its ids (watch and lease) replaced by A's.
    fn map_watch_items(&mut self, s: usize, ia: &[Item], ib: Vec<Item>) -> Vec<Item> {
        let created = |side: &mut Side, items: &[Item]| -> Vec<(i64, i64, bool)> {
            let mut v = Vec::new();
            for r in items.iter().filter_map(Item::resp) {
                if r.created {
                    let requested = side.streams[s].pending_creates.pop_front().unwrap_or(-999);
                    v.push((requested, r.watch_id, r.canceled));
                }
            }
            v
        };
        let ca = created(&mut self.a, ia);
        let cb = created(&mut self.b, &ib);
        for (x, y) in ca.iter().zip(&cb) {
            if x.0 == 0 && y.0 == 0 && !x.2 && !y.2 {
                self.b.watch_ids[s].insert(y.1, x.1);
            }
        }
        let b = &self.b;
        ib.into_iter()
            .map(|i| match i {
                Item::Resp(mut r) => {
                    r.watch_id = b.watch_to_ref(s, r.watch_id);
                    map_watch_leases(&mut r, &|id| b.lease_to_ref(id));
                    Item::Resp(r)
                }
                e => e,
            })
            .collect()
    }

    /// Periodic progress notifications on stream `s` during `window`: the
    /// distinct responses are compared; A must send at least one.
    async fn progress_window(&mut self, what: &str, s: usize, window: Duration) {
        self.step += 1;
        let (ia, ib) = tokio::join!(
            self.a.streams[s].collect_for(window),
            self.b.streams[s].collect_for(window)
        );
        let ib = self.map_watch_items(s, &ia, ib);
        let distinct = |items: &[Item]| {
            let mut v: Vec<Item> = Vec::new();
            for i in items {
                if !v.contains(i) {
                    v.push(i.clone());
                }
            }
            v
        };
        let (da, db) = (distinct(&ia), distinct(&ib));
        if self.trace {
            eprintln!(
                "step {} ({what}) stream {s}, {} responses:\n{}",
                self.step,
                ia.len(),
                show_items(&ia)
            );
        }
        if da != db {
            let msg = format!(
                "step {} ({what}) on watch stream {s} differs (distinct responses in {window:?}; \
                 B's server-chosen ids mapped)\n  {} ({} responses):\n{}\n  {} ({} \
                 responses):\n{}",
                self.step,
                self.a.name,
                ia.len(),
                show_items(&da),
                self.b.name,
                ib.len(),
                show_items(&db)
            );
            self.mismatch(msg);
        }
        assert!(
            !ia.is_empty(),
            "script expectation failed at step {} ({what}): {} sent no progress notification \
             in {window:?}",
            self.step,
            self.a.name
        );
    }
}

// ---------------------------------------------------------------------------
// Request builders
// ---------------------------------------------------------------------------

fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn get_prefix(p: &[u8]) -> RangeRequest {
    RangeRequest {
        key: p.to_vec(),
        range_end: prefix_end(p),
        ..Default::default()
    }
}

fn put(key: &[u8], value: &[u8]) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..Default::default()
    }
}

fn put_lease(key: &[u8], value: &[u8], lease: i64) -> PutRequest {
    PutRequest {
        lease,
        ..put(key, value)
    }
}

fn del(key: &[u8], end: &[u8]) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

fn txn(success: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: vec![],
        success,
        failure: vec![],
    }
}

fn o_put(p: PutRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(p)),
    }
}

fn o_del(d: DeleteRangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(d)),
    }
}

fn grant(ttl: i64, id: i64) -> LeaseGrantRequest {
    LeaseGrantRequest { ttl, id }
}

fn revoke(id: i64) -> LeaseRevokeRequest {
    LeaseRevokeRequest { id }
}

fn ttl(id: i64, keys: bool) -> LeaseTimeToLiveRequest {
    LeaseTimeToLiveRequest { id, keys }
}

/// A create request: single key when `end` is empty.
fn wc(key: &[u8], end: &[u8]) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

fn wc_prefix(p: &[u8]) -> WatchCreateRequest {
    wc(p, &prefix_end(p))
}

fn create(c: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(c)),
    }
}

fn cancel(watch_id: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })),
    }
}

fn progress() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

/// The watch id of the `i`-th created response among `items`.
fn created_id(items: &[Item], i: usize) -> i64 {
    items
        .iter()
        .filter_map(Item::resp)
        .filter(|r| r.created)
        .nth(i)
        .unwrap_or_else(|| panic!("no created response #{i} in\n{}", show_items(items)))
        .watch_id
}

/// Script expectation on A: the create was refused with this reason.
fn expect_refused(items: &[Item], reason: &str) {
    let r = items.first().and_then(Item::resp);
    assert!(
        r.is_some_and(|r| r.created && r.canceled && r.cancel_reason == reason),
        "script expectation failed: A did not refuse the create with {reason:?}:\n{}",
        show_items(items)
    );
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_lease_match_etcd_step_by_step() {
    let b_kind = common::target_from_env("CAIRN_DIFF_TARGET");
    let max_request_bytes = format!("--max-request-bytes={MAX_REQUEST_BYTES}");
    let progress = format!(
        "--experimental-watch-progress-notify-interval={}ms",
        PROGRESS_INTERVAL.as_millis()
    );
    let (sa, sb) = start_pair_with(Kind::Etcd, b_kind, &[&max_request_bytes, &progress]);
    let mut d = Diff {
        a: Side::connect(format!("A=etcd({})", sa.endpoint()), sa.endpoint()).await,
        b: Side::connect(
            format!("B={}({})", b_kind.name(), sb.endpoint()),
            sb.endpoint(),
        )
        .await,
        step: 0,
        keep_going: std::env::var("CAIRN_DIFF_KEEP_GOING").is_ok_and(|v| v == "1"),
        trace: std::env::var("CAIRN_DIFF_TRACE").is_ok_and(|v| v == "1"),
        mismatches: Vec::new(),
    };
    let started = Instant::now();

    macro_rules! section {
        ($f:ident) => {{
            let t = Instant::now();
            $f(&mut d).await;
            eprintln!("{}: {:?}", stringify!($f), t.elapsed());
        }};
    }
    section!(watch_creates_and_events);
    section!(watch_ids_and_cancels);
    section!(watch_start_revisions);
    section!(watch_compacted);
    section!(watch_progress);
    section!(watch_fragments);
    section!(lease_grants);
    section!(lease_keys);
    section!(lease_expiry);

    let steps = d.step;
    eprintln!(
        "{steps} steps compared in {:?}: {} vs {}",
        started.elapsed(),
        d.a.name,
        d.b.name
    );
    if !d.mismatches.is_empty() {
        panic!(
            "{} of {steps} steps differ:\n\n{}",
            d.mismatches.len(),
            d.mismatches.join("\n\n")
        );
    }
    drop((sa, sb));
}

/// Single key, prefix, from-key and all-keys watchers on one stream; the
/// created responses; puts, txns and deletes with prev_kv and filters.
async fn watch_creates_and_events(d: &mut Diff) {
    d.ok("put w/a=0 (before the watchers)", put(b"w/a", b"0"))
        .await;
    let s = d.open().await;
    let items = d
        .watch("create single key w/a", s, &[create(wc(b"w/a", b""))], 1)
        .await;
    let single = created_id(&items, 0);
    let items = d
        .watch(
            "create three watchers at once: prefix w/, from-key w/m, all keys (\\0..\\0)",
            s,
            &[
                create(wc_prefix(b"w/")),
                create(wc(b"w/m", b"\0")),
                create(wc(b"\0", b"\0")),
            ],
            3,
        )
        .await;
    let (pfx, from, all) = (
        created_id(&items, 0),
        created_id(&items, 1),
        created_id(&items, 2),
    );
    let items = d
        .watch(
            "create single key \\0, and empty key (etcd: key \\0)",
            s,
            &[create(wc(b"\0", b"")), create(wc(b"", b""))],
            2,
        )
        .await;
    let (zero, empty) = (created_id(&items, 0), created_id(&items, 1));
    let items = d
        .watch(
            "create prev_kv on w/, NOPUT on w/, NODELETE on w/",
            s,
            &[
                create(WatchCreateRequest {
                    prev_kv: true,
                    ..wc_prefix(b"w/")
                }),
                create(WatchCreateRequest {
                    filters: vec![FilterType::Noput as i32],
                    ..wc_prefix(b"w/")
                }),
                create(WatchCreateRequest {
                    filters: vec![FilterType::Nodelete as i32],
                    ..wc_prefix(b"w/")
                }),
            ],
            3,
        )
        .await;
    let (prev, noput, nodel) = (
        created_id(&items, 0),
        created_id(&items, 1),
        created_id(&items, 2),
    );
    let _ = (single, pfx, from, all, zero, empty, prev, noput, nodel);
    d.watch(
        "create with both NOPUT and NODELETE on w/ (sees nothing)",
        s,
        &[create(WatchCreateRequest {
            filters: vec![FilterType::Noput as i32, FilterType::Nodelete as i32],
            ..wc_prefix(b"w/")
        })],
        1,
    )
    .await;

    d.ok("update w/a", put(b"w/a", b"1")).await;
    // single, prefix, all, prev, nodelete
    d.expect("events of update w/a", s, 5).await;
    d.ok("create w/z", put(b"w/z", b"z")).await;
    // prefix, from-key, all, prev (no prev_kv on a create), nodelete
    d.expect("events of create w/z", s, 5).await;
    d.ok("put key \\0", put(b"\0", b"zero")).await;
    // all, single \0, empty key
    d.expect("events of put \\0", s, 3).await;
    d.ok("put outside (x)", put(b"x", b"x")).await;
    // all-keys only
    d.expect("event of put x (from-key w/m and all keys)", s, 2)
        .await;
    d.ok(
        "txn: put w/b, put w/c, delete w/a, put w/n",
        txn(vec![
            o_put(put(b"w/b", b"b")),
            o_put(put(b"w/c", b"c")),
            o_del(del(b"w/a", b"")),
            o_put(put(b"w/n", b"n")),
        ]),
    )
    .await;
    // one response each: single (delete), prefix, from-key (w/n), all, prev,
    // noput (the delete only), nodelete (the puts only)
    d.expect("events of the txn, one response per watcher", s, 7)
        .await;
    d.ok("update w/b", put(b"w/b", b"b2")).await;
    d.expect("events of update w/b", s, 4).await;
    d.ok(
        "delete w/ prefix (w/b, w/c, w/n, w/z)",
        DeleteRangeRequest {
            prev_kv: true,
            ..del(b"w/", &prefix_end(b"w/"))
        },
    )
    .await;
    // prefix, from-key, all, prev, noput
    d.expect("delete events", s, 5).await;
    d.ok("delete a missing key (no revision)", del(b"w/none", b""))
        .await;
    d.expect("no events for a delete of nothing", s, 0).await;
    d.ok("re-create w/a after its delete", put(b"w/a", b"again"))
        .await;
    d.expect("events of the re-create (a create)", s, 5).await;
    d.ok("txn with one put: w/t", txn(vec![o_put(put(b"w/t", b"t"))]))
        .await;
    d.expect("events of put w/t", s, 5).await;
    d.ok("put w/t with the same value", put(b"w/t", b"t")).await;
    d.expect("events of the same-value update", s, 5).await;
    d.close(s);
}

/// Client-chosen ids, duplicates, negative ids, cancels, bad ranges.
async fn watch_ids_and_cancels(d: &mut Diff) {
    let s = d.open().await;
    d.watch(
        "create with client-chosen watch_id 100",
        s,
        &[create(WatchCreateRequest {
            watch_id: 100,
            ..wc(b"i/k", b"")
        })],
        1,
    )
    .await;
    let items = d
        .watch(
            "create with the duplicate watch_id 100",
            s,
            &[create(WatchCreateRequest {
                watch_id: 100,
                ..wc(b"i/other", b"")
            })],
            1,
        )
        .await;
    expect_refused(&items, DUPLICATE_WATCH_ID);
    let items = d
        .watch(
            "two auto-id creates after a client-chosen id",
            s,
            &[create(wc(b"i/k", b"")), create(wc(b"i/k", b""))],
            2,
        )
        .await;
    let auto1 = created_id(&items, 0);
    let auto2 = created_id(&items, 1);
    d.watch(
        "create with client-chosen watch_id 1 and 2 (may collide with auto ids)",
        s,
        &[
            create(WatchCreateRequest {
                watch_id: 1,
                ..wc(b"i/k", b"")
            }),
            create(WatchCreateRequest {
                watch_id: 2,
                ..wc(b"i/k", b"")
            }),
        ],
        2,
    )
    .await;
    d.watch(
        "create with a negative watch_id -5",
        s,
        &[create(WatchCreateRequest {
            watch_id: -5,
            ..wc(b"i/k", b"")
        })],
        1,
    )
    .await;
    let items = d
        .watch(
            "create with key > range_end",
            s,
            &[create(wc(b"i/z", b"i/a"))],
            1,
        )
        .await;
    expect_refused(&items, EMPTY_WATCH_RANGE);
    let items = d
        .watch(
            "create with key == range_end",
            s,
            &[create(wc(b"i/a", b"i/a"))],
            1,
        )
        .await;
    expect_refused(&items, EMPTY_WATCH_RANGE);
    d.ok("put i/k", put(b"i/k", b"1")).await;
    // 100, the two auto ids, 2, -5
    d.expect("events of put i/k on every watcher of i/k", s, 5)
        .await;
    d.watch("cancel 100", s, &[cancel(100)], 1).await;
    d.watch("cancel 100 again (unknown now)", s, &[cancel(100)], 0)
        .await;
    d.watch("cancel an id never used (12345)", s, &[cancel(12345)], 0)
        .await;
    d.watch(
        "cancel the two auto ids at once",
        s,
        &[cancel(auto1), cancel(auto2)],
        2,
    )
    .await;
    d.watch("cancel -5", s, &[cancel(-5)], 1).await;
    d.watch("cancel -1", s, &[cancel(-1)], 0).await;
    d.ok("put i/k again", put(b"i/k", b"2")).await;
    d.expect("events of put i/k on the remaining watcher", s, 1)
        .await;
    d.watch(
        "reuse the canceled client id 100",
        s,
        &[create(WatchCreateRequest {
            watch_id: 100,
            ..wc(b"i/k", b"")
        })],
        1,
    )
    .await;
    d.close(s);

    // A second stream has its own id space.
    let s2 = d.open().await;
    d.watch(
        "new stream: auto id, then client id 100",
        s2,
        &[
            create(wc(b"i/k", b"")),
            create(WatchCreateRequest {
                watch_id: 100,
                ..wc(b"i/k", b"")
            }),
        ],
        2,
    )
    .await;
    d.ok("put i/k a third time", put(b"i/k", b"3")).await;
    d.expect("events on the second stream", s2, 2).await;
    d.close(s2);
}

/// Past, current and future start revisions; events replayed in order, one
/// response per watcher for the replay.
async fn watch_start_revisions(d: &mut Diff) {
    let r1 = d.ok("h/k v1", put(b"h/k", b"v1")).await.rev();
    d.ok("h/k v2", put(b"h/k", b"v2")).await;
    d.ok(
        "txn: h/k v3, h/j j1",
        txn(vec![o_put(put(b"h/k", b"v3")), o_put(put(b"h/j", b"j1"))]),
    )
    .await;
    d.ok("delete h/k", del(b"h/k", b"")).await;
    d.ok("re-create h/k v4", put(b"h/k", b"v4")).await;
    d.ok("h/x outside the watched key", put(b"h/x", b"x")).await;
    let cur = d.ok("h/j j2", put(b"h/j", b"j2")).await.rev();

    let s = d.open().await;
    d.watch(
        "prefix h/ from r1, prev_kv",
        s,
        &[create(WatchCreateRequest {
            start_revision: r1,
            prev_kv: true,
            ..wc_prefix(b"h/")
        })],
        2,
    )
    .await;
    d.watch(
        "key h/k from r1 + 1",
        s,
        &[create(WatchCreateRequest {
            start_revision: r1 + 1,
            ..wc(b"h/k", b"")
        })],
        2,
    )
    .await;
    d.watch(
        "key h/k from r1 + 3 (its delete), NOPUT",
        s,
        &[create(WatchCreateRequest {
            start_revision: r1 + 3,
            filters: vec![FilterType::Noput as i32],
            ..wc(b"h/k", b"")
        })],
        2,
    )
    .await;
    d.watch(
        "prefix h/ from the current revision",
        s,
        &[create(WatchCreateRequest {
            start_revision: cur,
            ..wc_prefix(b"h/")
        })],
        2,
    )
    .await;
    d.watch(
        "prefix h/ from current + 1 (nothing to replay)",
        s,
        &[create(WatchCreateRequest {
            start_revision: cur + 1,
            ..wc_prefix(b"h/")
        })],
        1,
    )
    .await;
    d.watch(
        "prefix h/ from current + 3 (future), prev_kv",
        s,
        &[create(WatchCreateRequest {
            start_revision: cur + 3,
            prev_kv: true,
            ..wc_prefix(b"h/")
        })],
        1,
    )
    .await;
    d.watch(
        "key h/j from revision 1 (all history)",
        s,
        &[create(WatchCreateRequest {
            start_revision: 1,
            ..wc(b"h/j", b"")
        })],
        2,
    )
    .await;
    d.ok("h/j j3 (cur + 1)", put(b"h/j", b"j3")).await;
    // from r1, from cur, from cur+1, h/j from 1
    d.expect("events at cur + 1", s, 4).await;
    d.ok("h/k v5 (cur + 2)", put(b"h/k", b"v5")).await;
    // from r1, h/k from r1+1, from cur, from cur+1
    d.expect("events at cur + 2", s, 4).await;
    d.ok("h/k v6 (cur + 3)", put(b"h/k", b"v6")).await;
    // ... and the future watcher's first event
    d.expect("events at cur + 3", s, 5).await;
    d.close(s);
}

/// A start revision below the compacted one: created, then a response with
/// compact_revision and canceled.
async fn watch_compacted(d: &mut Diff) {
    let r1 = d.ok("c/k 1", put(b"c/k", b"1")).await.rev();
    d.ok("c/k 2", put(b"c/k", b"2")).await;
    let r3 = d.ok("c/k 3", put(b"c/k", b"3")).await.rev();
    d.ok("c/k 4", put(b"c/k", b"4")).await;
    d.ok(
        "compact at r3 (physical)",
        CompactionRequest {
            revision: r3,
            physical: true,
        },
    )
    .await;
    let s = d.open().await;
    d.watch(
        "watch c/k from r1 (compacted), client id 7",
        s,
        &[create(WatchCreateRequest {
            start_revision: r1,
            watch_id: 7,
            ..wc(b"c/k", b"")
        })],
        2,
    )
    .await;
    d.watch(
        "watch c/ prefix from r3 - 1 (compacted), auto id, prev_kv",
        s,
        &[create(WatchCreateRequest {
            start_revision: r3 - 1,
            prev_kv: true,
            ..wc_prefix(b"c/")
        })],
        2,
    )
    .await;
    d.watch(
        "watch c/k from r3 (== compacted: allowed)",
        s,
        &[create(WatchCreateRequest {
            start_revision: r3,
            prev_kv: true,
            ..wc(b"c/k", b"")
        })],
        2,
    )
    .await;
    d.watch("cancel 7 after its compaction cancel", s, &[cancel(7)], 1)
        .await;
    d.ok("c/k 5", put(b"c/k", b"5")).await;
    d.expect("only the live watcher sees c/k 5", s, 1).await;
    d.close(s);
}

/// Progress requests (no watcher, caught-up watchers) and periodic progress
/// notifications.
async fn watch_progress(d: &mut Diff) {
    let s = d.open().await;
    d.watch("progress request with no watcher", s, &[progress()], 1)
        .await;
    d.watch(
        "create p/k, then a progress request",
        s,
        &[create(wc(b"p/k", b"")), progress()],
        2,
    )
    .await;
    d.ok("p/k 1", put(b"p/k", b"1")).await;
    d.expect("event p/k 1", s, 1).await;
    d.ok("p/other (not watched)", put(b"p/other", b"1")).await;
    d.watch(
        "progress request after an unwatched write",
        s,
        &[progress()],
        1,
    )
    .await;
    d.watch("two progress requests", s, &[progress(), progress()], 2)
        .await;
    d.close(s);

    let s = d.open().await;
    d.watch(
        "create p/ with progress_notify",
        s,
        &[create(WatchCreateRequest {
            progress_notify: true,
            ..wc_prefix(b"p/")
        })],
        1,
    )
    .await;
    d.progress_window(
        "periodic progress notifications while idle",
        s,
        PROGRESS_INTERVAL * 5 / 2,
    )
    .await;
    d.ok("p/k 2 (watched)", put(b"p/k", b"2")).await;
    // The event, then notifications at the new revision (etcd skips the
    // first tick after an event).
    d.progress_window(
        "an event, then progress notifications at its revision",
        s,
        PROGRESS_INTERVAL * 5 / 2,
    )
    .await;
    d.close(s);
}

/// A response over the fragment threshold: split for a watcher that asked
/// for fragments, whole for one that did not.
async fn watch_fragments(d: &mut Diff) {
    // Each put is well under --max-request-bytes; the delete's events with
    // prev_kv total more than the fragment threshold.
    let value = vec![b'f'; 3900];
    let keys = FRAGMENT_THRESHOLD / value.len() + 5;
    for i in 0..keys {
        let k = format!("f/{i:04}");
        let r = d
            .call(&format!("put {k} (3900 bytes)"), put(k.as_bytes(), &value))
            .await;
        assert!(r.is_ok(), "put {k}: {r:?}");
    }
    let s = d.open().await;
    let end = prefix_end(b"f/");
    d.watch(
        "create f/ with fragment + prev_kv (client id 1), f/ with prev_kv only (2), f/ with \
         fragment only (3)",
        s,
        &[
            create(WatchCreateRequest {
                watch_id: 1,
                prev_kv: true,
                fragment: true,
                ..wc(b"f/", &end)
            }),
            create(WatchCreateRequest {
                watch_id: 2,
                prev_kv: true,
                ..wc(b"f/", &end)
            }),
            create(WatchCreateRequest {
                watch_id: 3,
                fragment: true,
                ..wc(b"f/", &end)
            }),
        ],
        3,
    )
    .await;
    d.ok("delete f/ (one revision)", del(b"f/", &end)).await;
    // 1: two fragments; 2: one big response; 3: one small response
    d.expect("the delete's events, fragmented for watcher 1", s, 4)
        .await;
    d.close(s);
}

/// Grants (server- and client-chosen ids, TTL limits, duplicates), list,
/// time-to-live, keep-alive, revoke.
async fn lease_grants(d: &mut Diff) {
    d.ok("grant TTL 60, server-chosen id", grant(60, 0)).await;
    let l0 = match d.ok("list leases", Call::Leases).await {
        Resp::Leases(l) => l.leases[0].id,
        other => panic!("{other:?}"),
    };
    d.ok("grant TTL 120, id 1000", grant(120, 1000)).await;
    d.fails(
        "grant id 1000 again",
        grant(30, 1000),
        Code::FailedPrecondition,
        LEASE_EXISTS,
    )
    .await;
    d.ok("grant TTL 1 (below the minimum), id 1001", grant(1, 1001))
        .await;
    d.ok("revoke 1001", revoke(1001)).await;
    d.ok("grant TTL 0, id 1002", grant(0, 1002)).await;
    d.ok("revoke 1002", revoke(1002)).await;
    d.ok("grant TTL -5, id 1003", grant(-5, 1003)).await;
    d.ok("revoke 1003", revoke(1003)).await;
    d.fails(
        "grant a TTL over the maximum",
        grant(MAX_LEASE_TTL + 1, 1004),
        Code::OutOfRange,
        LEASE_TTL_TOO_LARGE,
    )
    .await;
    d.ok("grant the maximum TTL, id 1004", grant(MAX_LEASE_TTL, 1004))
        .await;
    d.ok("time-to-live 1004", ttl(1004, false)).await;
    d.ok("revoke 1004", revoke(1004)).await;
    d.ok("grant TTL 100, negative id -7", grant(100, -7)).await;
    d.ok("list leases (l0, -7, 1000)", Call::Leases).await;
    d.ok("time-to-live l0", ttl(l0, false)).await;
    d.ok("time-to-live 1000 with keys (none)", ttl(1000, true))
        .await;
    d.ok("time-to-live -7", ttl(-7, true)).await;
    d.ok("time-to-live unknown (4242)", ttl(4242, true)).await;
    d.ok("time-to-live revoked (1001)", ttl(1001, false)).await;
    d.ok(
        "keep-alive 1000, l0, unknown 4242, revoked 1001, -7",
        Call::KeepAlive(vec![1000, l0, 4242, 1001, -7]),
    )
    .await;
    d.ok("time-to-live 1000 after keep-alive", ttl(1000, false))
        .await;
    d.fails(
        "revoke unknown (4242)",
        revoke(4242),
        Code::NotFound,
        LEASE_NOT_FOUND,
    )
    .await;
    d.fails("revoke 0", revoke(0), Code::NotFound, LEASE_NOT_FOUND)
        .await;
    d.ok("revoke -7", revoke(-7)).await;
    d.ok("list leases (l0, 1000)", Call::Leases).await;
}

/// Keys attached to leases, detached by a put with another lease or none,
/// txn puts with leases, revoke deleting the attached keys in one revision.
async fn lease_keys(d: &mut Diff) {
    let l0 = match d.ok("list leases", Call::Leases).await {
        Resp::Leases(l) => l
            .leases
            .iter()
            .map(|l| l.id)
            .find(|id| *id != 1000)
            .unwrap(),
        other => panic!("{other:?}"),
    };
    let s = d.open().await;
    d.watch(
        "watch l/ with prev_kv",
        s,
        &[create(WatchCreateRequest {
            prev_kv: true,
            ..wc_prefix(b"l/")
        })],
        1,
    )
    .await;
    for k in ["l/a", "l/b", "l/d", "l/e", "l/f"] {
        d.ok(
            &format!("put {k} with lease 1000"),
            put_lease(k.as_bytes(), b"v", 1000),
        )
        .await;
    }
    d.ok("put l/c with lease l0", put_lease(b"l/c", b"v", l0))
        .await;
    d.expect("six put events", s, 6).await;
    d.ok("range l/", get_prefix(b"l/")).await;
    d.ok("time-to-live 1000 with keys", ttl(1000, true)).await;
    d.ok("time-to-live l0 with keys", ttl(l0, true)).await;
    d.ok(
        "put l/b with lease l0 (moves it), prev_kv",
        PutRequest {
            prev_kv: true,
            ..put_lease(b"l/b", b"v2", l0)
        },
    )
    .await;
    d.ok(
        "put l/a without a lease (detaches it), prev_kv",
        PutRequest {
            prev_kv: true,
            ..put(b"l/a", b"v2")
        },
    )
    .await;
    d.ok(
        "put l/e with ignore_lease (keeps 1000)",
        PutRequest {
            ignore_lease: true,
            ..put(b"l/e", b"v2")
        },
    )
    .await;
    d.expect("three update events with prev_kv", s, 3).await;
    d.ok("time-to-live 1000 with keys", ttl(1000, true)).await;
    d.ok("time-to-live l0 with keys", ttl(l0, true)).await;
    d.ok(
        "txn: put l/g with lease 1000, put l/h with l0",
        txn(vec![
            o_put(put_lease(b"l/g", b"g", 1000)),
            o_put(put_lease(b"l/h", b"h", l0)),
        ]),
    )
    .await;
    d.expect("txn events", s, 1).await;
    d.fails(
        "txn: put l/i with an unknown lease",
        txn(vec![o_put(put_lease(b"l/i", b"i", 4242))]),
        Code::NotFound,
        LEASE_NOT_FOUND,
    )
    .await;
    d.fails(
        "put l/i with an unknown lease",
        put_lease(b"l/i", b"i", 4242),
        Code::NotFound,
        LEASE_NOT_FOUND,
    )
    .await;
    d.ok("range l/", get_prefix(b"l/")).await;
    d.ok("revoke 1000 (deletes l/d, l/e, l/f, l/g)", revoke(1000))
        .await;
    d.expect("one response: four deletes with prev_kv", s, 1)
        .await;
    d.ok("range l/ after the revoke", get_prefix(b"l/")).await;
    d.fails(
        "revoke 1000 again",
        revoke(1000),
        Code::NotFound,
        LEASE_NOT_FOUND,
    )
    .await;
    d.ok("time-to-live 1000 (revoked)", ttl(1000, true)).await;
    d.ok("keep-alive 1000 (revoked)", Call::KeepAlive(vec![1000]))
        .await;
    d.ok("revoke l0 (deletes l/b, l/c, l/h)", revoke(l0)).await;
    d.expect("one response: three deletes with prev_kv", s, 1)
        .await;
    d.ok("range l/ after revoking l0", get_prefix(b"l/")).await;
    d.ok("grant TTL 300, id 3000", grant(300, 3000)).await;
    d.ok("put l/x with lease 3000", put_lease(b"l/x", b"x", 3000))
        .await;
    d.ok("put l/y with lease 3000", put_lease(b"l/y", b"y", 3000))
        .await;
    d.expect("two put events", s, 2).await;
    d.ok("delete l/x (detaches it)", del(b"l/x", b"")).await;
    d.expect("delete event of l/x", s, 1).await;
    d.ok("time-to-live 3000 with keys (l/y)", ttl(3000, true))
        .await;
    d.ok(
        "txn: delete l/y (detaches it)",
        txn(vec![o_del(del(b"l/y", b""))]),
    )
    .await;
    d.expect("delete event of l/y", s, 1).await;
    d.ok("time-to-live 3000 with keys (none)", ttl(3000, true))
        .await;
    d.ok(
        "revoke 3000 with no keys left (no new revision)",
        revoke(3000),
    )
    .await;
    d.expect("no events for revoking a lease without keys", s, 0)
        .await;
    d.ok("range l/ after revoking 3000", get_prefix(b"l/"))
        .await;
    d.ok("list leases (none)", Call::Leases).await;
    d.close(s);
}

/// A lease of the minimum TTL expires: its keys are deleted in one revision,
/// seen by a watcher in one response with prev_kv.
async fn lease_expiry(d: &mut Diff) {
    let s = d.open().await;
    d.watch(
        "watch e/ with prev_kv",
        s,
        &[create(WatchCreateRequest {
            prev_kv: true,
            ..wc_prefix(b"e/")
        })],
        1,
    )
    .await;
    d.ok("grant TTL 2 (the minimum), id 2000", grant(2, 2000))
        .await;
    for k in ["e/1", "e/2", "e/3"] {
        d.ok(
            &format!("put {k} with lease 2000"),
            put_lease(k.as_bytes(), b"x", 2000),
        )
        .await;
    }
    d.ok("put e/0 without a lease", put(b"e/0", b"stays")).await;
    d.expect("four put events", s, 4).await;
    d.expect_within(
        "expiry: one response with three deletes and prev_kv",
        s,
        1,
        EXPIRY_DEADLINE,
    )
    .await;
    d.ok("range e/ after the expiry", get_prefix(b"e/")).await;
    d.ok("time-to-live 2000 (expired)", ttl(2000, true)).await;
    d.ok("list leases (none)", Call::Leases).await;
    d.close(s);
}
