//! Differential test of the KV service against the real etcd.
//!
//! One scripted sequence of KV requests (hand-written cases for every error
//! and feature of etcd's KV, then a seeded deterministic random mix) is sent
//! in lockstep to a reference etcd (A) and to the server under test (B); every
//! response must be identical field by field — headers included, except
//! `cluster_id` and `member_id` — and every error must have the same gRPC code
//! and the same message.
//!
//! Environment:
//! - `CAIRN_DIFF_TARGET=etcd` compares etcd with a second etcd (validates the
//!   harness and the script); the default, `cairn`, compares etcd with cairn.
//! - `CAIRN_DIFF_KEEP_GOING=1` records every mismatch and fails at the end
//!   instead of failing on the first (later steps may cascade from earlier
//!   ones once the two stores diverge).
//! - `CAIRN_DIFF_TRACE=1` prints every step with A's outcome.
//! - `CAIRN_DIFF_SKIP=29,30` sends those steps to neither server (a debugging
//!   aid to look past a difference that shifts revisions; a skipped step's
//!   result reads as an empty response).
//!
//! Script expectations (`ok`, `fails`) are checked against A only: they prove
//! that the script really exercises the case it names on the real etcd.

mod common;

use std::fmt::Debug;
use std::time::Duration;

use cairn::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::lease_client::LeaseClient;
use cairn::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn::pb::etcdserverpb::request_op::Request;
use cairn::pb::etcdserverpb::response_op::Response;
use cairn::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse,
};
use common::{pretty, start_pair, Kind};
use tonic::transport::Channel;
use tonic::Code;

// ---------------------------------------------------------------------------
// Requests, responses, comparison
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
}

impl From<RangeRequest> for Op {
    fn from(r: RangeRequest) -> Op {
        Op::Range(r)
    }
}
impl From<PutRequest> for Op {
    fn from(r: PutRequest) -> Op {
        Op::Put(r)
    }
}
impl From<DeleteRangeRequest> for Op {
    fn from(r: DeleteRangeRequest) -> Op {
        Op::Delete(r)
    }
}
impl From<TxnRequest> for Op {
    fn from(r: TxnRequest) -> Op {
        Op::Txn(r)
    }
}
impl From<CompactionRequest> for Op {
    fn from(r: CompactionRequest) -> Op {
        Op::Compact(r)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Resp {
    Range(RangeResponse),
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
}

impl Resp {
    fn header(&self) -> Option<&ResponseHeader> {
        match self {
            Resp::Range(r) => r.header.as_ref(),
            Resp::Put(r) => r.header.as_ref(),
            Resp::Delete(r) => r.header.as_ref(),
            Resp::Txn(r) => r.header.as_ref(),
            Resp::Compact(r) => r.header.as_ref(),
        }
    }

    fn rev(&self) -> i64 {
        self.header().map(|h| h.revision).unwrap_or(0)
    }

    fn range(&self) -> &RangeResponse {
        match self {
            Resp::Range(r) => r,
            other => panic!("expected a range response, got {other:?}"),
        }
    }

    fn put(&self) -> &PutResponse {
        match self {
            Resp::Put(r) => r,
            other => panic!("expected a put response, got {other:?}"),
        }
    }
}

/// Ok(response) or Err((code, message)).
type Outcome = Result<Resp, (Code, String)>;

const SKIPPED: &str = "[test harness] step skipped";

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

async fn exec(kv: &mut KvClient<Channel>, op: &Op) -> Outcome {
    let call = async {
        let r = match op.clone() {
            Op::Range(r) => kv.range(r).await.map(|x| Resp::Range(x.into_inner())),
            Op::Put(r) => kv.put(r).await.map(|x| Resp::Put(x.into_inner())),
            Op::Delete(r) => kv
                .delete_range(r)
                .await
                .map(|x| Resp::Delete(x.into_inner())),
            Op::Txn(r) => kv.txn(r).await.map(|x| Resp::Txn(x.into_inner())),
            Op::Compact(r) => kv.compact(r).await.map(|x| Resp::Compact(x.into_inner())),
        };
        r.map_err(|s| (s.code(), s.message().to_string()))
    };
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r.map(scrub),
        Err(_) => Err((
            Code::DeadlineExceeded,
            format!("[test harness] no answer within {CALL_TIMEOUT:?}"),
        )),
    }
}

/// Clears the only fields allowed to differ: `cluster_id` and `member_id`,
/// in every header (nested txn responses included).
fn scrub(mut r: Resp) -> Resp {
    fn h(h: &mut Option<ResponseHeader>) {
        if let Some(h) = h {
            h.cluster_id = 0;
            h.member_id = 0;
        }
    }
    fn txn(t: &mut TxnResponse) {
        h(&mut t.header);
        for op in &mut t.responses {
            match &mut op.response {
                Some(Response::ResponseRange(r)) => h(&mut r.header),
                Some(Response::ResponsePut(r)) => h(&mut r.header),
                Some(Response::ResponseDeleteRange(r)) => h(&mut r.header),
                Some(Response::ResponseTxn(t)) => txn(t),
                None => {}
            }
        }
    }
    match &mut r {
        Resp::Range(x) => h(&mut x.header),
        Resp::Put(x) => h(&mut x.header),
        Resp::Delete(x) => h(&mut x.header),
        Resp::Compact(x) => h(&mut x.header),
        Resp::Txn(t) => txn(t),
    }
    r
}

fn show(o: &Outcome) -> String {
    match o {
        Ok(r) => pretty(r),
        Err((code, msg)) => format!("ERROR code={code:?} message={msg:?}"),
    }
}

// ---------------------------------------------------------------------------
// The lockstep driver
// ---------------------------------------------------------------------------

struct Diff {
    a: KvClient<Channel>,
    b: KvClient<Channel>,
    a_name: String,
    b_name: String,
    step: usize,
    keep_going: bool,
    /// `CAIRN_DIFF_TRACE=1`: print every step's reference outcome.
    trace: bool,
    /// `CAIRN_DIFF_SKIP=29,30`: steps sent to neither server.
    skip: Vec<usize>,
    mismatches: Vec<String>,
    /// The reference's current revision (from its latest header).
    cur: i64,
    /// The reference's compacted revision.
    compacted: i64,
}

impl Diff {
    /// Sends `op` to A, then to B, and compares the outcomes.
    async fn run(&mut self, what: &str, op: impl Into<Op>) -> Outcome {
        let op = op.into();
        self.step += 1;
        if self.skip.contains(&self.step) {
            eprintln!("step {} ({what}) skipped", self.step);
            return Err((Code::Aborted, SKIPPED.into()));
        }
        let ra = exec(&mut self.a, &op).await;
        let rb = exec(&mut self.b, &op).await;
        if self.trace {
            eprintln!("step {} ({what}): {}", self.step, show(&ra));
        }
        if ra != rb {
            let msg = format!(
                "step {} ({what}) differs\n  request: {}\n  {}: {}\n  {}: {}",
                self.step,
                pretty(&op),
                self.a_name,
                show(&ra),
                self.b_name,
                show(&rb)
            );
            if self.keep_going {
                eprintln!("MISMATCH {msg}\n");
                self.mismatches.push(msg);
            } else {
                panic!("{msg}");
            }
        }
        if let Ok(r) = &ra {
            self.cur = self.cur.max(r.rev());
            if let (Op::Compact(c), Resp::Compact(_)) = (&op, r) {
                self.compacted = c.revision;
            }
        }
        ra
    }

    /// Like `run`; the script expects A to succeed.
    async fn ok(&mut self, what: &str, op: impl Into<Op>) -> Resp {
        let step = self.step + 1;
        match self.run(what, op).await {
            Ok(r) => r,
            Err((Code::Aborted, m)) if m == SKIPPED => Resp::Range(RangeResponse::default()),
            Err(e) => panic!(
                "script expectation failed at step {step} ({what}): {} answered {e:?}",
                self.a_name
            ),
        }
    }

    /// Like `run`; the script expects A to fail with exactly this error.
    async fn fails(&mut self, what: &str, op: impl Into<Op>, code: Code, msg: &str) {
        let step = self.step + 1;
        let r = self.run(what, op).await;
        match &r {
            Err((c, m)) if *c == code && m == msg => {}
            Err((Code::Aborted, m)) if m == SKIPPED => {}
            _ => panic!(
                "script expectation failed at step {step} ({what}): {} answered {}, expected \
                 {code:?} {msg:?}",
                self.a_name,
                show(&r)
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Request builders
// ---------------------------------------------------------------------------

fn get(key: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

fn rng(key: &[u8], end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

fn prefix(p: &[u8]) -> RangeRequest {
    rng(p, &prefix_end(p))
}

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

fn sorted(mut r: RangeRequest, order: SortOrder, target: SortTarget) -> RangeRequest {
    r.sort_order = order as i32;
    r.sort_target = target as i32;
    r
}

fn put(key: &[u8], value: &[u8]) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..Default::default()
    }
}

fn del(key: &[u8], end: &[u8]) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

fn compact(revision: i64, physical: bool) -> CompactionRequest {
    CompactionRequest { revision, physical }
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

fn cmp(key: &[u8], target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.to_vec(),
        target_union: Some(u),
        range_end: Vec::new(),
    }
}

fn c_mod(key: &[u8], r: CompareResult, rev: i64) -> Compare {
    cmp(key, CompareTarget::Mod, r, TargetUnion::ModRevision(rev))
}
fn c_ver(key: &[u8], r: CompareResult, v: i64) -> Compare {
    cmp(key, CompareTarget::Version, r, TargetUnion::Version(v))
}
fn c_create(key: &[u8], r: CompareResult, rev: i64) -> Compare {
    cmp(
        key,
        CompareTarget::Create,
        r,
        TargetUnion::CreateRevision(rev),
    )
}
fn c_val(key: &[u8], r: CompareResult, v: &[u8]) -> Compare {
    cmp(key, CompareTarget::Value, r, TargetUnion::Value(v.to_vec()))
}
fn c_lease(key: &[u8], r: CompareResult, l: i64) -> Compare {
    cmp(key, CompareTarget::Lease, r, TargetUnion::Lease(l))
}
fn over(mut c: Compare, end: &[u8]) -> Compare {
    c.range_end = end.to_vec();
    c
}

fn o_put(p: PutRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(p)),
    }
}
fn o_get(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(r)),
    }
}
fn o_del(d: DeleteRangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(d)),
    }
}
fn o_txn(t: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(t)),
    }
}

use CompareResult::{Equal as EQ, Greater as GT, Less as LT, NotEqual as NE};

const EMPTY_KEY: &str = "etcdserver: key is not provided";
const VALUE_PROVIDED: &str = "etcdserver: value is provided";
const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const TOO_LARGE: &str = "etcdserver: request is too large";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

const INVALID: Code = Code::InvalidArgument;

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_matches_etcd_step_by_step() {
    let b_kind = common::target_from_env("CAIRN_DIFF_TARGET");
    let keep_going = std::env::var("CAIRN_DIFF_KEEP_GOING").is_ok_and(|v| v == "1");
    let (sa, sb) = start_pair(Kind::Etcd, b_kind);
    let mut d = Diff {
        a: KvClient::connect(sa.endpoint()).await.unwrap(),
        b: KvClient::connect(sb.endpoint()).await.unwrap(),
        a_name: format!("A=etcd({})", sa.endpoint()),
        b_name: format!("B={}({})", b_kind.name(), sb.endpoint()),
        step: 0,
        keep_going,
        trace: std::env::var("CAIRN_DIFF_TRACE").is_ok_and(|v| v == "1"),
        skip: std::env::var("CAIRN_DIFF_SKIP")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().expect("CAIRN_DIFF_SKIP: step numbers"))
            .collect(),
        mismatches: Vec::new(),
        cur: 1,
        compacted: 0,
    };
    for c in [&mut d.a, &mut d.b] {
        *c = c.clone().max_decoding_message_size(64 << 20);
    }

    validation_errors(&mut d).await;
    size_limits(&mut d).await;
    basic_puts_and_ranges(&mut d).await;
    sorting_and_filters(&mut d).await;
    deletes(&mut d).await;
    txn_compares(&mut d).await;
    txn_ops(&mut d).await;
    txn_duplicates(&mut d).await;
    leases(&mut d, &sa, &sb).await;
    kube_apiserver_shapes(&mut d).await;
    pagination(&mut d).await;
    compaction(&mut d).await;
    generated(&mut d, 0x5eed_cafe, 160).await;
    wipe(&mut d).await;

    let steps = d.step;
    eprintln!(
        "{steps} steps compared: {} vs {}",
        d.a_name.as_str(),
        d.b_name.as_str()
    );
    assert!(steps >= 200, "only {steps} steps");
    if !d.mismatches.is_empty() {
        panic!(
            "{} of {steps} steps differ:\n\n{}",
            d.mismatches.len(),
            d.mismatches.join("\n\n")
        );
    }
}

/// Empty keys, ignore_value/ignore_lease misuse, unknown leases, too many
/// ops — all on a fresh store (revision 1).
async fn validation_errors(d: &mut Diff) {
    d.fails("range: empty key", get(b""), INVALID, EMPTY_KEY)
        .await;
    d.fails(
        "range: empty key, range_end set",
        rng(b"", b"z"),
        INVALID,
        EMPTY_KEY,
    )
    .await;
    d.fails(
        "range: empty key, range_end \\0",
        rng(b"", b"\0"),
        INVALID,
        EMPTY_KEY,
    )
    .await;
    d.fails("put: empty key", put(b"", b"v"), INVALID, EMPTY_KEY)
        .await;
    d.fails("delete: empty key", del(b"", b""), INVALID, EMPTY_KEY)
        .await;
    d.fails(
        "delete: empty key, range_end \\0",
        del(b"", b"\0"),
        INVALID,
        EMPTY_KEY,
    )
    .await;
    d.fails(
        "txn: compare with empty key",
        txn(vec![c_ver(b"", EQ, 0)], vec![], vec![]),
        INVALID,
        EMPTY_KEY,
    )
    .await;
    d.fails(
        "txn: success put with empty key",
        txn(vec![], vec![o_put(put(b"", b"v"))], vec![]),
        INVALID,
        EMPTY_KEY,
    )
    .await;
    d.fails(
        "txn: failure range with empty key (branch not taken)",
        txn(vec![], vec![], vec![o_get(get(b""))]),
        INVALID,
        EMPTY_KEY,
    )
    .await;
    d.fails(
        "txn: success delete with empty key",
        txn(vec![], vec![o_del(del(b"", b""))], vec![]),
        INVALID,
        EMPTY_KEY,
    )
    .await;
    d.fails(
        "txn: nested compare with empty key",
        txn(
            vec![],
            vec![o_txn(txn(vec![c_mod(b"", EQ, 0)], vec![], vec![]))],
            vec![],
        ),
        INVALID,
        EMPTY_KEY,
    )
    .await;

    d.ok("put a=1", put(b"a", b"1")).await;
    d.fails(
        "put: ignore_value with a value",
        PutRequest {
            ignore_value: true,
            ..put(b"a", b"x")
        },
        INVALID,
        VALUE_PROVIDED,
    )
    .await;
    d.fails(
        "put: ignore_lease with a lease",
        PutRequest {
            ignore_lease: true,
            lease: 5,
            ..put(b"a", b"x")
        },
        INVALID,
        LEASE_PROVIDED,
    )
    .await;
    d.fails(
        "put: ignore_value on a missing key",
        PutRequest {
            ignore_value: true,
            ..put(b"nokey", b"")
        },
        INVALID,
        KEY_NOT_FOUND,
    )
    .await;
    d.fails(
        "put: ignore_lease on a missing key",
        PutRequest {
            ignore_lease: true,
            ..put(b"nokey", b"v")
        },
        INVALID,
        KEY_NOT_FOUND,
    )
    .await;
    d.fails(
        "put: unknown lease",
        PutRequest {
            lease: 0x7777,
            ..put(b"leased", b"v")
        },
        Code::NotFound,
        LEASE_NOT_FOUND,
    )
    .await;
    d.fails(
        "put: ignore_value with a value on a missing key (checked before the store)",
        PutRequest {
            ignore_value: true,
            ..put(b"nokey", b"x")
        },
        INVALID,
        VALUE_PROVIDED,
    )
    .await;
    d.fails(
        "txn: success put with ignore_value and a value",
        txn(
            vec![],
            vec![o_put(PutRequest {
                ignore_value: true,
                ..put(b"a", b"x")
            })],
            vec![],
        ),
        INVALID,
        VALUE_PROVIDED,
    )
    .await;
    d.fails(
        "txn: taken branch puts ignore_value on a missing key",
        txn(
            vec![],
            vec![o_put(PutRequest {
                ignore_value: true,
                ..put(b"nokey", b"")
            })],
            vec![],
        ),
        INVALID,
        KEY_NOT_FOUND,
    )
    .await;
    d.ok(
        "txn: branch not taken puts ignore_value on a missing key",
        txn(
            vec![c_ver(b"a", EQ, 99)],
            vec![o_put(PutRequest {
                ignore_value: true,
                ..put(b"nokey", b"")
            })],
            vec![o_get(get(b"a"))],
        ),
    )
    .await;
    d.fails(
        "txn: taken branch puts with an unknown lease",
        txn(
            vec![c_ver(b"a", EQ, 1)],
            vec![o_put(PutRequest {
                lease: 0x7777,
                ..put(b"leased", b"v")
            })],
            vec![],
        ),
        Code::NotFound,
        LEASE_NOT_FOUND,
    )
    .await;
    d.ok(
        "txn: branch not taken puts with an unknown lease",
        txn(
            vec![c_ver(b"a", EQ, 2)],
            vec![o_put(PutRequest {
                lease: 0x7777,
                ..put(b"leased", b"v")
            })],
            vec![o_put(put(b"leased-else", b"v"))],
        ),
    )
    .await;

    // --max-txn-ops (128): the largest of compares, success, failure counts.
    let puts = |n: usize, p: &str| -> Vec<RequestOp> {
        (0..n)
            .map(|i| o_put(put(format!("{p}{i:03}").as_bytes(), b"m")))
            .collect()
    };
    d.fails(
        "txn: 129 success ops",
        txn(vec![], puts(129, "many/"), vec![]),
        INVALID,
        TOO_MANY_OPS,
    )
    .await;
    d.fails(
        "txn: 129 failure ops",
        txn(vec![], vec![], puts(129, "many/")),
        INVALID,
        TOO_MANY_OPS,
    )
    .await;
    d.fails(
        "txn: 129 compares",
        txn(
            (0..129)
                .map(|i| c_ver(format!("many/{i:03}").as_bytes(), EQ, 0))
                .collect(),
            vec![],
            vec![],
        ),
        INVALID,
        TOO_MANY_OPS,
    )
    .await;
    d.ok(
        "txn: exactly 128 puts",
        txn(vec![], puts(128, "many/"), vec![]),
    )
    .await;
    d.ok(
        "range: the 128 keys, count",
        RangeRequest {
            count_only: true,
            ..prefix(b"many/")
        },
    )
    .await;
    let mut outer = puts(99, "many/o");
    outer.push(o_txn(txn(vec![], puts(29, "many/n"), vec![])));
    d.fails(
        "txn: 100 outer ops + a nested txn with 29 (budget 28 left)",
        txn(vec![], outer, vec![]),
        INVALID,
        TOO_MANY_OPS,
    )
    .await;
    let mut outer = puts(99, "many/o");
    outer.push(o_txn(txn(vec![], puts(28, "many/n"), vec![])));
    d.ok(
        "txn: 100 outer ops + a nested txn with 28",
        txn(vec![], outer, vec![]),
    )
    .await;
    d.ok("delete many/", del(b"many/", &prefix_end(b"many/")))
        .await;
}

/// --max-request-bytes (1.5 MiB).
async fn size_limits(d: &mut Diff) {
    let big = vec![b'x'; 1_677_722]; // 1.6 MiB
    d.fails("put: 1.6 MiB value", put(b"big", &big), INVALID, TOO_LARGE)
        .await;
    let half = vec![b'y'; 838_861]; // 0.8 MiB
    d.fails(
        "txn: two 0.8 MiB puts",
        txn(
            vec![],
            vec![o_put(put(b"big1", &half)), o_put(put(b"big2", &half))],
            vec![],
        ),
        INVALID,
        TOO_LARGE,
    )
    .await;
    let ok = vec![b'z'; 1_468_006]; // 1.4 MiB
    d.ok("put: 1.4 MiB value", put(b"big", &ok)).await;
    d.ok("range: the 1.4 MiB value", get(b"big")).await;
    d.ok(
        "delete the 1.4 MiB value, prev_kv",
        DeleteRangeRequest {
            prev_kv: true,
            ..del(b"big", b"")
        },
    )
    .await;
}

async fn basic_puts_and_ranges(d: &mut Diff) {
    let first = d.ok("put b=2", put(b"b", b"2")).await.rev();
    d.ok("put c=<empty>", put(b"c", b"")).await;
    d.ok(
        "put a=11 with prev_kv",
        PutRequest {
            prev_kv: true,
            ..put(b"a", b"11")
        },
    )
    .await;
    d.ok(
        "put b=2 again with prev_kv (same value)",
        PutRequest {
            prev_kv: true,
            ..put(b"b", b"2")
        },
    )
    .await;
    d.ok(
        "put new key with prev_kv (no prev)",
        PutRequest {
            prev_kv: true,
            ..put(b"ab", b"x")
        },
    )
    .await;
    d.ok("put b\\0", put(b"b\0", b"nul-suffix")).await;
    d.ok("put \\0", put(b"\0", b"zero key")).await;
    d.ok("put \\xff", put(b"\xff", b"ff")).await;
    d.ok("put \\xff\\xff", put(b"\xff\xff", b"ffff")).await;
    d.ok(
        "put non-UTF-8 key and value",
        put(b"\xc3\x28", b"\x00\xff\x80binary"),
    )
    .await;
    d.ok("put a\\0b", put(b"a\0b", b"embedded nul")).await;
    for k in ["dir/x", "dir/y", "dir/z", "dir0", "dir/", "dir"] {
        d.ok(&format!("put {k}"), put(k.as_bytes(), k.as_bytes()))
            .await;
    }
    d.ok(
        "put ignore_value on existing key",
        PutRequest {
            ignore_value: true,
            prev_kv: true,
            ..put(b"dir/x", b"")
        },
    )
    .await;
    d.ok(
        "put ignore_lease on existing key",
        PutRequest {
            ignore_lease: true,
            prev_kv: true,
            ..put(b"dir/y", b"new y")
        },
    )
    .await;
    d.ok(
        "put ignore_value + ignore_lease on existing key",
        PutRequest {
            ignore_value: true,
            ignore_lease: true,
            ..put(b"dir/y", b"")
        },
    )
    .await;

    d.ok("range a", get(b"a")).await;
    d.ok("range missing key", get(b"nokey")).await;
    d.ok("range c (empty value)", get(b"c")).await;
    d.ok("range [a, c)", rng(b"a", b"c")).await;
    d.ok("range [a, \\0) = every key >= a", rng(b"a", b"\0"))
        .await;
    d.ok("range [\\0, \\0) = everything", rng(b"\0", b"\0"))
        .await;
    d.ok("range \\0 single key", get(b"\0")).await;
    d.ok("range [\\x01, \\0)", rng(b"\x01", b"\0")).await;
    d.ok("range prefix dir/", prefix(b"dir/")).await;
    d.ok("range prefix dir", prefix(b"dir")).await;
    d.ok("range [\\xff, \\0)", rng(b"\xff", b"\0")).await;
    d.ok("range prefix \\xff (end \\0)", prefix(b"\xff")).await;
    d.ok("range \\xff single", get(b"\xff")).await;
    d.ok("range non-UTF-8 key", get(b"\xc3\x28")).await;
    d.ok("range inverted [c, a)", rng(b"c", b"a")).await;
    d.ok("range empty [a, a)", rng(b"a", b"a")).await;
    d.ok("range [b, b\\0) = just b", rng(b"b", b"b\0")).await;
    for limit in [-1, 0, 1, 2, 5, 15, 16, 17, 100] {
        d.ok(
            &format!("range everything limit {limit}"),
            RangeRequest {
                limit,
                ..rng(b"\0", b"\0")
            },
        )
        .await;
    }
    d.ok(
        "range prefix dir/ limit 3 (exactly the count)",
        RangeRequest {
            limit: 3,
            ..prefix(b"dir/")
        },
    )
    .await;
    d.ok(
        "range keys_only",
        RangeRequest {
            keys_only: true,
            ..rng(b"a", b"c")
        },
    )
    .await;
    d.ok(
        "range count_only",
        RangeRequest {
            count_only: true,
            ..rng(b"\0", b"\0")
        },
    )
    .await;
    d.ok(
        "range count_only + limit",
        RangeRequest {
            count_only: true,
            limit: 2,
            ..rng(b"\0", b"\0")
        },
    )
    .await;
    d.ok(
        "range count_only on a missing key",
        RangeRequest {
            count_only: true,
            ..get(b"nokey")
        },
    )
    .await;
    d.ok(
        "range keys_only + limit",
        RangeRequest {
            keys_only: true,
            limit: 3,
            ..rng(b"\0", b"\0")
        },
    )
    .await;
    d.ok(
        "range keys_only + count_only",
        RangeRequest {
            keys_only: true,
            count_only: true,
            ..prefix(b"dir")
        },
    )
    .await;
    d.ok(
        "range serializable",
        RangeRequest {
            serializable: true,
            ..rng(b"a", b"\0")
        },
    )
    .await;
    d.ok(
        "range a at the revision of put b=2 (a=1 then)",
        RangeRequest {
            revision: first,
            ..get(b"a")
        },
    )
    .await;
    d.ok(
        "range everything at revision 1",
        RangeRequest {
            revision: 1,
            ..rng(b"\0", b"\0")
        },
    )
    .await;
    d.ok(
        "range everything at the put b=2 revision, limit 2",
        RangeRequest {
            revision: first,
            limit: 2,
            ..rng(b"\0", b"\0")
        },
    )
    .await;
    d.ok(
        "range with revision -5 (= latest)",
        RangeRequest {
            revision: -5,
            ..get(b"a")
        },
    )
    .await;
    let cur = d.cur;
    d.ok(
        "range at the current revision",
        RangeRequest {
            revision: cur,
            ..rng(b"a", b"\0")
        },
    )
    .await;
    d.fails(
        "range at current revision + 1",
        RangeRequest {
            revision: cur + 1,
            ..get(b"a")
        },
        Code::OutOfRange,
        FUTURE,
    )
    .await;
    d.fails(
        "range at a far future revision, count_only, serializable",
        RangeRequest {
            revision: cur + 1000,
            count_only: true,
            serializable: true,
            ..get(b"a")
        },
        Code::OutOfRange,
        FUTURE,
    )
    .await;
}

async fn sorting_and_filters(d: &mut Diff) {
    // Creation order differs from key order, and updates reorder mod
    // revisions. Versions: s/1=1, s/2=3, s/3=2, s/4=1, s/5=2 (ties on
    // purpose); values all distinct.
    let script: [(&[u8], &[u8]); 9] = [
        (b"s/3", b"a0"),
        (b"s/1", b"e"),
        (b"s/5", b"b0"),
        (b"s/2", b"c0"),
        (b"s/4", b"d"),
        (b"s/2", b"c1"),
        (b"s/5", b"b"),
        (b"s/3", b"a"),
        (b"s/2", b"c"),
    ];
    let mut revs = Vec::new();
    for (k, v) in script {
        let r = d
            .ok(
                &format!("put {} for sorting", String::from_utf8_lossy(k)),
                put(k, v),
            )
            .await;
        revs.push(r.rev());
    }
    let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
    let targets = [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ];
    for o in orders {
        for t in targets {
            d.ok(
                &format!("range s/ sorted {o:?} by {t:?}"),
                sorted(prefix(b"s/"), o, t),
            )
            .await;
        }
    }
    for (o, t) in [
        (SortOrder::None, SortTarget::Value),
        (SortOrder::None, SortTarget::Mod),
        (SortOrder::Ascend, SortTarget::Value),
        (SortOrder::Descend, SortTarget::Mod),
        (SortOrder::Descend, SortTarget::Key),
        (SortOrder::Ascend, SortTarget::Version),
    ] {
        d.ok(
            &format!("range s/ sorted {o:?} by {t:?}, limit 2"),
            RangeRequest {
                limit: 2,
                ..sorted(prefix(b"s/"), o, t)
            },
        )
        .await;
    }
    let _ = d
        .run(
            "range s/ unknown sort order 7 / target 9, limit 2 (obscure)",
            RangeRequest {
                sort_order: 7,
                sort_target: 9,
                limit: 2,
                ..prefix(b"s/")
            },
        )
        .await;
    d.ok(
        "range s/ sorted descend by create, keys_only",
        RangeRequest {
            keys_only: true,
            ..sorted(prefix(b"s/"), SortOrder::Descend, SortTarget::Create)
        },
    )
    .await;
    d.ok(
        "range s/ sorted descend by value, count_only",
        RangeRequest {
            count_only: true,
            ..sorted(prefix(b"s/"), SortOrder::Descend, SortTarget::Value)
        },
    )
    .await;
    d.ok(
        "range s/ sorted ascend by mod at an older revision",
        RangeRequest {
            revision: revs[6],
            ..sorted(prefix(b"s/"), SortOrder::Ascend, SortTarget::Mod)
        },
    )
    .await;

    let (lo, hi) = (revs[2], revs[6]);
    d.ok(
        "range s/ min_mod_revision",
        RangeRequest {
            min_mod_revision: hi,
            ..prefix(b"s/")
        },
    )
    .await;
    d.ok(
        "range s/ max_mod_revision",
        RangeRequest {
            max_mod_revision: hi,
            ..prefix(b"s/")
        },
    )
    .await;
    d.ok(
        "range s/ min_create_revision",
        RangeRequest {
            min_create_revision: lo,
            ..prefix(b"s/")
        },
    )
    .await;
    d.ok(
        "range s/ max_create_revision",
        RangeRequest {
            max_create_revision: lo,
            ..prefix(b"s/")
        },
    )
    .await;
    d.ok(
        "range s/ min and max mod revision",
        RangeRequest {
            min_mod_revision: lo,
            max_mod_revision: hi,
            ..prefix(b"s/")
        },
    )
    .await;
    d.ok(
        "range s/ mod filter + limit 1",
        RangeRequest {
            min_mod_revision: lo,
            limit: 1,
            ..prefix(b"s/")
        },
    )
    .await;
    d.ok(
        "range s/ create filter + limit 3 (fewer match)",
        RangeRequest {
            max_create_revision: lo,
            limit: 3,
            ..prefix(b"s/")
        },
    )
    .await;
    d.ok(
        "range s/ create filter + count_only",
        RangeRequest {
            min_create_revision: lo,
            count_only: true,
            ..prefix(b"s/")
        },
    )
    .await;
    d.ok(
        "range s/ filter matching nothing",
        RangeRequest {
            min_mod_revision: d.cur + 100,
            ..prefix(b"s/")
        },
    )
    .await;
    d.ok(
        "range s/ filters + sort descend by version + limit 2",
        RangeRequest {
            min_create_revision: lo,
            max_mod_revision: d.cur,
            limit: 2,
            ..sorted(prefix(b"s/"), SortOrder::Descend, SortTarget::Version)
        },
    )
    .await;
}

async fn deletes(d: &mut Diff) {
    d.ok(
        "delete b with prev_kv",
        DeleteRangeRequest {
            prev_kv: true,
            ..del(b"b", b"")
        },
    )
    .await;
    d.ok(
        "delete missing key with prev_kv (no revision)",
        DeleteRangeRequest {
            prev_kv: true,
            ..del(b"nokey", b"")
        },
    )
    .await;
    d.ok("delete b again (missing now)", del(b"b", b"")).await;
    d.ok(
        "delete prefix dir/ with prev_kv",
        DeleteRangeRequest {
            prev_kv: true,
            ..del(b"dir/", &prefix_end(b"dir/"))
        },
    )
    .await;
    d.ok("delete inverted range [z, a)", del(b"z", b"a")).await;
    d.ok(
        "delete [\\xff, \\0) with prev_kv",
        DeleteRangeRequest {
            prev_kv: true,
            ..del(b"\xff", b"\0")
        },
    )
    .await;
    d.ok("delete [b\\0, b\\0\\0)", del(b"b\0", b"b\0\0")).await;
    d.ok("range everything after deletes", rng(b"\0", b"\0"))
        .await;
    d.ok("put b=3 (re-create)", put(b"b", b"3")).await;
    d.ok("range b (version 1 again)", get(b"b")).await;
}

async fn txn_compares(d: &mut Diff) {
    // a: value "11", version 2.
    let a = d.ok("range a for compares", get(b"a")).await;
    let akv = a.range().kvs[0].clone();
    let (cr, mr) = (akv.create_revision, akv.mod_revision);
    let mut n = 0;
    let cases: Vec<(&str, Compare)> = vec![
        ("version == 2", c_ver(b"a", EQ, 2)),
        ("version != 2", c_ver(b"a", NE, 2)),
        ("version > 1", c_ver(b"a", GT, 1)),
        ("version < 1", c_ver(b"a", LT, 1)),
        ("version < 3", c_ver(b"a", LT, 3)),
        ("create == cr", c_create(b"a", EQ, cr)),
        ("create != 0", c_create(b"a", NE, 0)),
        ("create > 0", c_create(b"a", GT, 0)),
        ("create < cr", c_create(b"a", LT, cr)),
        ("mod == mr", c_mod(b"a", EQ, mr)),
        ("mod != mr", c_mod(b"a", NE, mr)),
        ("mod > mr-1", c_mod(b"a", GT, mr - 1)),
        ("mod < mr+1", c_mod(b"a", LT, mr + 1)),
        ("mod < mr", c_mod(b"a", LT, mr)),
        ("value == 11", c_val(b"a", EQ, b"11")),
        ("value != 11", c_val(b"a", NE, b"11")),
        ("value > 1", c_val(b"a", GT, b"1")),
        ("value < 2", c_val(b"a", LT, b"2")),
        ("value > 2", c_val(b"a", GT, b"2")),
        ("value == 11\\0", c_val(b"a", EQ, b"11\0")),
        ("lease == 0", c_lease(b"a", EQ, 0)),
        ("lease != 0", c_lease(b"a", NE, 0)),
        ("lease > 0", c_lease(b"a", GT, 0)),
        ("lease < 1", c_lease(b"a", LT, 1)),
        ("c value == empty", c_val(b"c", EQ, b"")),
        ("c value != empty", c_val(b"c", NE, b"")),
        ("missing: mod == 0", c_mod(b"nokey", EQ, 0)),
        ("missing: version == 0", c_ver(b"nokey", EQ, 0)),
        ("missing: create == 0", c_create(b"nokey", EQ, 0)),
        ("missing: version > 0", c_ver(b"nokey", GT, 0)),
        ("missing: lease == 0", c_lease(b"nokey", EQ, 0)),
        ("missing: value == empty", c_val(b"nokey", EQ, b"")),
        ("missing: value != x", c_val(b"nokey", NE, b"x")),
        ("missing: value < x", c_val(b"nokey", LT, b"x")),
        ("range s/: version > 0", over(c_ver(b"s/", GT, 0), b"s0")),
        ("range s/: version == 1", over(c_ver(b"s/", EQ, 1), b"s0")),
        (
            "range s/: mod < cur+1",
            over(c_mod(b"s/", LT, d.cur + 1), b"s0"),
        ),
        ("range s/: mod < mr", over(c_mod(b"s/", LT, mr), b"s0")),
        ("range s/: value > a0", over(c_val(b"s/", GT, b"a"), b"s0")),
        (
            "range s/: value != zz",
            over(c_val(b"s/", NE, b"zz"), b"s0"),
        ),
        ("range s/: create > 0", over(c_create(b"s/", GT, 0), b"s0")),
        ("range s/: lease == 0", over(c_lease(b"s/", EQ, 0), b"s0")),
        (
            "empty range: version == 0",
            over(c_ver(b"q/", EQ, 0), b"q0"),
        ),
        ("empty range: mod == 0", over(c_mod(b"q/", EQ, 0), b"q0")),
        (
            "empty range: value == empty",
            over(c_val(b"q/", EQ, b""), b"q0"),
        ),
        (
            "range [s/, \\0): version > 0",
            over(c_ver(b"s/", GT, 0), b"\0"),
        ),
        (
            "target MOD with a version union (obscure)",
            cmp(b"a", CompareTarget::Mod, EQ, TargetUnion::Version(mr)),
        ),
        (
            "target VALUE without a union (obscure)",
            Compare {
                target_union: None,
                ..c_val(b"c", EQ, b"")
            },
        ),
    ];
    for (what, c) in cases {
        n += 1;
        d.ok(
            &format!("txn compare {what}"),
            txn(
                vec![c],
                vec![o_put(put(b"t/then", format!("{n}").as_bytes()))],
                vec![o_put(put(b"t/else", format!("{n}").as_bytes()))],
            ),
        )
        .await;
    }
    d.ok(
        "txn several compares, all true",
        txn(
            vec![
                c_ver(b"a", EQ, 2),
                c_mod(b"nokey", EQ, 0),
                c_val(b"c", EQ, b""),
            ],
            vec![o_get(get(b"a"))],
            vec![o_get(get(b"c"))],
        ),
    )
    .await;
    for (what, result, target) in [
        (
            "unknown result 9 (obscure)",
            9,
            CompareTarget::Version as i32,
        ),
        ("unknown target 9 (obscure)", EQ as i32, 9),
    ] {
        let c = Compare {
            result,
            target,
            ..c_ver(b"a", EQ, 2)
        };
        let _ = d
            .run(
                &format!("txn compare {what}"),
                txn(vec![c], vec![o_get(get(b"a"))], vec![o_get(get(b"c"))]),
            )
            .await;
    }
    d.fails(
        "txn: an empty RequestOp",
        txn(vec![], vec![RequestOp { request: None }], vec![]),
        INVALID,
        KEY_NOT_FOUND,
    )
    .await;
    d.ok(
        "txn several compares, one false",
        txn(
            vec![c_ver(b"a", EQ, 2), c_mod(b"nokey", NE, 0)],
            vec![o_put(put(b"t/then", b"x"))],
            vec![o_get(get(b"a")), o_get(prefix(b"t/"))],
        ),
    )
    .await;
}

async fn txn_ops(d: &mut Diff) {
    let old = d.cur;
    d.ok(
        "txn: empty (no compares, no ops)",
        txn(vec![], vec![], vec![]),
    )
    .await;
    d.ok(
        "txn: compare false, empty failure (no revision)",
        txn(
            vec![c_ver(b"a", EQ, 42)],
            vec![o_put(put(b"t/x", b"x"))],
            vec![],
        ),
    )
    .await;
    d.ok(
        "txn: only a delete of a missing key (no revision)",
        txn(vec![], vec![o_del(del(b"t/missing", b""))], vec![]),
    )
    .await;
    d.ok(
        "txn: read-only, success",
        txn(
            vec![c_ver(b"a", GT, 0)],
            vec![o_get(get(b"a")), o_get(prefix(b"s/")), o_get(get(b"nokey"))],
            vec![],
        ),
    )
    .await;
    d.ok(
        "txn: read-only, failure with serializable + count_only ranges",
        txn(
            vec![c_ver(b"a", LT, 0)],
            vec![],
            vec![
                o_get(RangeRequest {
                    serializable: true,
                    ..prefix(b"s/")
                }),
                o_get(RangeRequest {
                    count_only: true,
                    ..rng(b"\0", b"\0")
                }),
            ],
        ),
    )
    .await;
    d.ok(
        "txn: writes then reads see them",
        txn(
            vec![c_mod(b"t/1", EQ, 0)],
            vec![
                o_put(put(b"t/1", b"one")),
                o_get(get(b"t/1")),
                o_put(PutRequest {
                    prev_kv: true,
                    ..put(b"t/then", b"over")
                }),
                o_del(del(b"t/zzz", b"")),
                o_get(prefix(b"t/")),
                o_del(DeleteRangeRequest {
                    prev_kv: true,
                    ..del(b"t/else", b"")
                }),
                o_get(RangeRequest {
                    count_only: true,
                    ..prefix(b"t/")
                }),
                o_get(RangeRequest {
                    revision: old,
                    ..prefix(b"t/")
                }),
                o_get(RangeRequest {
                    limit: 1,
                    ..sorted(prefix(b"t/"), SortOrder::Descend, SortTarget::Mod)
                }),
            ],
            vec![],
        ),
    )
    .await;
    d.ok(
        "txn: two puts of one key in different branches",
        txn(
            vec![c_val(b"t/1", EQ, b"one")],
            vec![o_put(put(b"t/2", b"then"))],
            vec![o_put(put(b"t/2", b"else"))],
        ),
    )
    .await;
    d.ok(
        "txn: two deletes of the same key (allowed)",
        txn(
            vec![],
            vec![
                o_del(DeleteRangeRequest {
                    prev_kv: true,
                    ..del(b"t/2", b"")
                }),
                o_del(DeleteRangeRequest {
                    prev_kv: true,
                    ..del(b"t/2", b"")
                }),
            ],
            vec![],
        ),
    )
    .await;
    d.ok(
        "txn: delete a range, then read it",
        txn(
            vec![],
            vec![
                o_put(put(b"u/1", b"1")),
                o_del(del(b"t/", b"t0")),
                o_get(rng(b"t/", b"u0")),
            ],
            vec![],
        ),
    )
    .await;

    // Nested transactions: every compare is judged before anything is
    // applied, so a nested compare does not see the outer txn's writes.
    d.ok(
        "nested: inner mod(n/1)==0 after outer put n/1 (judged before: true)",
        txn(
            vec![],
            vec![
                o_put(put(b"n/1", b"new")),
                o_txn(txn(
                    vec![c_mod(b"n/1", EQ, 0)],
                    vec![o_put(put(b"n/2", b"inner-then"))],
                    vec![o_put(put(b"n/3", b"inner-else"))],
                )),
                o_get(prefix(b"n/")),
            ],
            vec![],
        ),
    )
    .await;
    d.ok(
        "nested: inner value(n/1)==newer after outer put (judged before: false)",
        txn(
            vec![c_val(b"n/1", EQ, b"new")],
            vec![
                o_put(put(b"n/1", b"newer")),
                o_txn(txn(
                    vec![c_val(b"n/1", EQ, b"newer")],
                    vec![o_put(put(b"n/2", b"x"))],
                    vec![o_get(get(b"n/1")), o_put(put(b"n/3", b"y"))],
                )),
            ],
            vec![],
        ),
    )
    .await;
    d.ok(
        "nested: inner range sees outer write; both inner branches put one key",
        txn(
            vec![],
            vec![
                o_put(put(b"n/4", b"four")),
                o_txn(txn(
                    vec![c_ver(b"n/4", GT, 5)],
                    vec![o_put(put(b"n/5", b"then"))],
                    vec![o_get(get(b"n/4")), o_put(put(b"n/5", b"else"))],
                )),
                o_txn(txn(vec![], vec![o_get(prefix(b"n/"))], vec![])),
            ],
            vec![],
        ),
    )
    .await;
    d.ok(
        "nested: three levels, read-only",
        txn(
            vec![c_ver(b"n/1", GT, 0)],
            vec![o_txn(txn(
                vec![c_ver(b"n/2", GT, 0)],
                vec![o_txn(txn(vec![], vec![o_get(get(b"n/1"))], vec![]))],
                vec![o_get(get(b"n/2"))],
            ))],
            vec![],
        ),
    )
    .await;
    d.ok(
        "nested: inner delete, outer failure branch",
        txn(
            vec![c_ver(b"n/1", EQ, 0)],
            vec![],
            vec![o_txn(txn(
                vec![],
                vec![o_del(DeleteRangeRequest {
                    prev_kv: true,
                    ..del(b"n/", b"n0")
                })],
                vec![],
            ))],
        ),
    )
    .await;

    // Ranges at a revision inside a txn.
    let cur = d.cur;
    d.ok(
        "txn: range at an older revision and at the current one",
        txn(
            vec![],
            vec![
                o_get(RangeRequest {
                    revision: old,
                    ..rng(b"\0", b"\0")
                }),
                o_get(RangeRequest {
                    revision: cur,
                    ..prefix(b"u/")
                }),
            ],
            vec![],
        ),
    )
    .await;
    d.fails(
        "txn: taken branch ranges at a future revision",
        txn(
            vec![],
            vec![o_get(RangeRequest {
                revision: cur + 1,
                ..get(b"a")
            })],
            vec![],
        ),
        Code::OutOfRange,
        FUTURE,
    )
    .await;
    d.fails(
        "txn: write txn whose range asks for the revision it will create",
        txn(
            vec![],
            vec![
                o_put(put(b"u/2", b"2")),
                o_get(RangeRequest {
                    revision: cur + 1,
                    ..get(b"u/2")
                }),
            ],
            vec![],
        ),
        Code::OutOfRange,
        FUTURE,
    )
    .await;
    d.ok(
        "txn: branch not taken ranges at a future revision",
        txn(
            vec![c_ver(b"a", EQ, 2)],
            vec![o_get(get(b"a"))],
            vec![o_get(RangeRequest {
                revision: cur + 5,
                ..get(b"a")
            })],
        ),
    )
    .await;
}

async fn txn_duplicates(d: &mut Diff) {
    let cases_err: Vec<(&str, TxnRequest)> = vec![
        (
            "two puts of one key",
            txn(
                vec![],
                vec![o_put(put(b"d/k", b"1")), o_put(put(b"d/k", b"2"))],
                vec![],
            ),
        ),
        (
            "two puts of one key in the failure branch (compare true)",
            txn(
                vec![c_ver(b"a", GT, 0)],
                vec![],
                vec![o_put(put(b"d/k", b"1")), o_put(put(b"d/k", b"2"))],
            ),
        ),
        (
            "put inside a deleted range",
            txn(
                vec![],
                vec![o_del(del(b"d/", b"d0")), o_put(put(b"d/x", b"1"))],
                vec![],
            ),
        ),
        (
            "put before a delete of the same key",
            txn(
                vec![],
                vec![o_put(put(b"d/x", b"1")), o_del(del(b"d/x", b""))],
                vec![],
            ),
        ),
        (
            "outer put + nested put of the same key",
            txn(
                vec![],
                vec![
                    o_put(put(b"d/k", b"1")),
                    o_txn(txn(vec![], vec![o_put(put(b"d/k", b"2"))], vec![])),
                ],
                vec![],
            ),
        ),
        (
            "two nested txns put the same key",
            txn(
                vec![],
                vec![
                    o_txn(txn(vec![], vec![o_put(put(b"d/k", b"1"))], vec![])),
                    o_txn(txn(vec![], vec![], vec![o_put(put(b"d/k", b"2"))])),
                ],
                vec![],
            ),
        ),
        (
            "outer delete + nested put in the range",
            txn(
                vec![],
                vec![
                    o_del(del(b"d/", b"d0")),
                    o_txn(txn(vec![], vec![o_put(put(b"d/k", b"2"))], vec![])),
                ],
                vec![],
            ),
        ),
        (
            "nested delete + outer put of the same key",
            txn(
                vec![],
                vec![
                    o_txn(txn(vec![], vec![o_del(del(b"d/k", b""))], vec![])),
                    o_put(put(b"d/k", b"2")),
                ],
                vec![],
            ),
        ),
        (
            "nested: duplicate inside the inner branch",
            txn(
                vec![],
                vec![o_txn(txn(
                    vec![],
                    vec![],
                    vec![o_put(put(b"d/k", b"1")), o_put(put(b"d/k", b"2"))],
                ))],
                vec![],
            ),
        ),
    ];
    for (what, t) in cases_err {
        d.fails(&format!("txn dup: {what}"), t, INVALID, DUPLICATE_KEY)
            .await;
    }
    // Accepted, or not, as etcd decides: no expectation on these.
    // Accepted, or not, as etcd decides (its interval check treats an end
    // of "\0" literally): no expectation on these. The compare is false and
    // the failure branch empty, so when accepted they change nothing.
    let never = || vec![c_ver(b"a", EQ, 1000)];
    let cases_any: Vec<(&str, TxnRequest)> = vec![
        (
            "delete [d/, \\0) + put d/x",
            txn(
                never(),
                vec![o_del(del(b"d/", b"\0")), o_put(put(b"d/x", b"1"))],
                vec![],
            ),
        ),
        (
            "delete [\\0, \\0) + put d/y",
            txn(
                never(),
                vec![o_del(del(b"\0", b"\0")), o_put(put(b"d/y", b"1"))],
                vec![],
            ),
        ),
        (
            "nested delete [d/, \\0) + outer put d/z",
            txn(
                never(),
                vec![
                    o_txn(txn(vec![], vec![o_del(del(b"d/", b"\0"))], vec![])),
                    o_put(put(b"d/z", b"1")),
                ],
                vec![],
            ),
        ),
        (
            "put d/x, then delete [d/, \\0)",
            txn(
                never(),
                vec![o_put(put(b"d/x", b"1")), o_del(del(b"d/", b"\0"))],
                vec![],
            ),
        ),
    ];
    for (what, t) in cases_any {
        let _ = d.run(&format!("txn dup?: {what}"), t).await;
    }
    d.ok(
        "txn: delete [y/, \\0) (taken) beside a put below y/",
        txn(
            vec![],
            vec![o_del(del(b"y/", b"\0")), o_put(put(b"c/x", b"1"))],
            vec![],
        ),
    )
    .await;
    d.ok("restore a after the \\0-range delete", put(b"a", b"11"))
        .await;
    let ok_cases: Vec<(&str, TxnRequest)> = vec![
        (
            "nested: both branches put the same key",
            txn(
                vec![],
                vec![o_txn(txn(
                    vec![c_mod(b"d/k", EQ, 0)],
                    vec![o_put(put(b"d/k", b"then"))],
                    vec![o_put(put(b"d/k", b"else"))],
                ))],
                vec![],
            ),
        ),
        (
            "put in success, delete of it in failure",
            txn(
                vec![c_ver(b"d/k", GT, 0)],
                vec![o_put(put(b"d/k", b"2"))],
                vec![o_del(del(b"d/k", b""))],
            ),
        ),
        (
            "delete [d/a, d/k) + put d/k (end is exclusive)",
            txn(
                vec![],
                vec![o_del(del(b"d/a", b"d/k")), o_put(put(b"d/k", b"3"))],
                vec![],
            ),
        ),
        (
            "nested then put + outer failure put of the same key",
            txn(
                vec![c_ver(b"d/k", GT, 0)],
                vec![o_txn(txn(vec![], vec![o_put(put(b"d/k", b"4"))], vec![]))],
                vec![o_put(put(b"d/k", b"5"))],
            ),
        ),
        (
            "put + range of the same key",
            txn(
                vec![],
                vec![o_put(put(b"d/k", b"6")), o_get(get(b"d/k"))],
                vec![],
            ),
        ),
        (
            "delete a key, then range it",
            txn(
                vec![],
                vec![o_del(del(b"d/k", b"")), o_get(get(b"d/k"))],
                vec![],
            ),
        ),
    ];
    for (what, t) in ok_cases {
        d.ok(&format!("txn no dup: {what}"), t).await;
    }
}

/// Leases, if both servers can grant them (cairn has no Lease service yet):
/// put with a lease, LEASE compares, ignore_lease, kube create with a lease.
async fn leases(d: &mut Diff, sa: &common::Server, sb: &common::Server) {
    const ID: i64 = 0x1234_5678;
    let grant = LeaseGrantRequest { ttl: 3600, id: ID };
    let mut ok = true;
    for s in [sa, sb] {
        let mut lc = LeaseClient::connect(s.endpoint()).await.unwrap();
        if let Err(e) = lc.lease_grant(grant).await {
            eprintln!(
                "lease steps skipped: {} at {} answered LeaseGrant with {:?} {:?}",
                s.kind().name(),
                s.endpoint(),
                e.code(),
                e.message()
            );
            ok = false;
        }
    }
    if !ok {
        return;
    }
    let r = d
        .ok(
            "put with a lease",
            PutRequest {
                lease: ID,
                ..put(b"l/1", b"leased")
            },
        )
        .await;
    let _ = r.put();
    d.ok("range leased key", get(b"l/1")).await;
    d.ok(
        "put ignore_lease keeps the lease",
        PutRequest {
            ignore_lease: true,
            prev_kv: true,
            ..put(b"l/1", b"v2")
        },
    )
    .await;
    d.ok(
        "put ignore_value keeps the value, sets no lease",
        PutRequest {
            ignore_value: true,
            prev_kv: true,
            ..put(b"l/1", b"")
        },
    )
    .await;
    d.ok(
        "put with the lease again",
        PutRequest {
            lease: ID,
            ..put(b"l/1", b"v3")
        },
    )
    .await;
    for (what, c) in [
        ("lease == ID", c_lease(b"l/1", EQ, ID)),
        ("lease != ID", c_lease(b"l/1", NE, ID)),
        ("lease > 0", c_lease(b"l/1", GT, 0)),
        ("lease < ID", c_lease(b"l/1", LT, ID)),
    ] {
        d.ok(
            &format!("txn compare {what}"),
            txn(vec![c], vec![o_get(get(b"l/1"))], vec![]),
        )
        .await;
    }
    d.ok(
        "kube create with a lease",
        txn(
            vec![c_mod(b"/registry/events/default/e1", EQ, 0)],
            vec![o_put(PutRequest {
                lease: ID,
                ..put(b"/registry/events/default/e1", b"k8s\0event")
            })],
            vec![],
        ),
    )
    .await;
    d.ok("range events", prefix(b"/registry/events/")).await;
}

/// The four transactions kube-apiserver sends (CONTRACT.md §2).
async fn kube_apiserver_shapes(d: &mut Diff) {
    let k: &[u8] = b"/registry/pods/default/p1";
    let v1: &[u8] = b"k8s\0\n\x09\n\x02v1\x12\x03Pod\x12\x00";
    let create = |value: &[u8]| txn(vec![c_mod(k, EQ, 0)], vec![o_put(put(k, value))], vec![]);
    let r = d.ok("kube create (absent: succeeds)", create(v1)).await;
    let rev = r.rev();
    d.ok("kube create again (present: fails)", create(v1)).await;
    let update = |rev: i64, value: &[u8]| {
        txn(
            vec![c_mod(k, EQ, rev)],
            vec![o_put(put(k, value))],
            vec![o_get(get(k))],
        )
    };
    let r = d
        .ok(
            "kube update with the right revision",
            update(rev, b"k8s\0v2"),
        )
        .await;
    let rev2 = r.rev();
    d.ok("kube update with a stale revision", update(rev, b"k8s\0v3"))
        .await;
    let delete = |rev: i64| {
        txn(
            vec![c_mod(k, EQ, rev)],
            vec![o_del(del(k, b""))],
            vec![o_get(get(k))],
        )
    };
    d.ok("kube delete with a stale revision", delete(rev)).await;
    d.ok("kube delete with the right revision", delete(rev2))
        .await;
    d.ok("kube delete again (absent)", delete(rev2)).await;
    d.ok("kube create after delete", create(b"k8s\0again"))
        .await;
    d.ok("kube get", get(k)).await;
    d.ok("kube list /registry/pods/", prefix(b"/registry/pods/"))
        .await;
    d.ok(
        "kube count /registry/pods/",
        RangeRequest {
            count_only: true,
            ..prefix(b"/registry/pods/")
        },
    )
    .await;

    let ck: &[u8] = b"compact_rev_key";
    let claim = |version: i64, rev: i64| {
        txn(
            vec![c_ver(ck, EQ, version)],
            vec![o_put(put(ck, rev.to_string().as_bytes()))],
            vec![o_get(get(ck))],
        )
    };
    let cur = d.cur;
    d.ok("kube compaction claim, version 0 (succeeds)", claim(0, cur))
        .await;
    d.ok("kube compaction claim, stale version 0", claim(0, cur))
        .await;
    let cur = d.cur;
    d.ok("kube compaction claim, version 1", claim(1, cur))
        .await;
    d.ok(
        "kube compaction at the claimed revision",
        compact(cur, false),
    )
    .await;
}

/// A paginated list pinned to page 1's revision while keys change.
async fn pagination(d: &mut Diff) {
    for i in 0..10 {
        d.ok(
            &format!("put pg/{i:02}"),
            put(format!("pg/{i:02}").as_bytes(), format!("v{i}").as_bytes()),
        )
        .await;
    }
    let end = prefix_end(b"pg/");
    let page = |key: &[u8], rev: i64| RangeRequest {
        limit: 3,
        revision: rev,
        ..rng(key, &end)
    };
    let first = d.ok("list page 1", page(b"pg/", 0)).await;
    let pinned = first.rev();
    let mut last = first.range().kvs.last().unwrap().key.clone();
    let mut more = first.range().more;
    // Writes between pages must not show.
    d.ok("put pg/05 between pages", put(b"pg/05", b"changed"))
        .await;
    d.ok("delete pg/07 between pages", del(b"pg/07", b"")).await;
    d.ok("put pg/055 between pages", put(b"pg/055", b"new"))
        .await;
    d.ok("delete pg/00 between pages", del(b"pg/00", b"")).await;
    let mut n = 1;
    while more {
        n += 1;
        let mut key = last.clone();
        key.push(0);
        let r = d
            .ok(
                &format!("list page {n} pinned to {pinned}"),
                page(&key, pinned),
            )
            .await;
        more = r.range().more;
        if let Some(kv) = r.range().kvs.last() {
            last = kv.key.clone();
        }
        assert!(n < 10, "pagination does not end");
    }
    d.ok(
        "list pg/ at the latest revision",
        RangeRequest {
            limit: 100,
            ..rng(b"pg/", &end)
        },
    )
    .await;
}

async fn compaction(d: &mut Diff) {
    let before = d.compacted;
    d.fails(
        "compact at current + 1",
        compact(d.cur + 1, false),
        Code::OutOfRange,
        FUTURE,
    )
    .await;
    d.fails(
        "compact at the compacted revision again",
        compact(before, false),
        Code::OutOfRange,
        COMPACTED,
    )
    .await;
    d.fails(
        "compact at 0",
        compact(0, false),
        Code::OutOfRange,
        COMPACTED,
    )
    .await;
    d.fails(
        "range below the compacted revision",
        RangeRequest {
            revision: before - 1,
            ..get(b"a")
        },
        Code::OutOfRange,
        COMPACTED,
    )
    .await;
    d.ok(
        "range at exactly the compacted revision",
        RangeRequest {
            revision: before,
            ..rng(b"\0", b"\0")
        },
    )
    .await;
    // History: h is put five times; compact in the middle of it.
    let mut revs = Vec::new();
    for i in 1..=5 {
        let r = d
            .ok(
                &format!("put h version {i}"),
                put(b"h", format!("h{i}").as_bytes()),
            )
            .await;
        revs.push(r.rev());
    }
    d.ok("delete s/1", del(b"s/1", b"")).await;
    d.ok("put s/1 again", put(b"s/1", b"E")).await;
    let mid = revs[2];
    d.ok("compact in the middle of h's history", compact(mid, false))
        .await;
    d.fails(
        "range h below the compacted revision",
        RangeRequest {
            revision: mid - 1,
            ..get(b"h")
        },
        Code::OutOfRange,
        COMPACTED,
    )
    .await;
    d.ok(
        "range h at the compacted revision (keeps h3)",
        RangeRequest {
            revision: mid,
            ..get(b"h")
        },
    )
    .await;
    d.ok(
        "range everything at the compacted revision",
        RangeRequest {
            revision: mid,
            ..rng(b"\0", b"\0")
        },
    )
    .await;
    d.ok(
        "range h after the compacted revision",
        RangeRequest {
            revision: revs[3],
            ..get(b"h")
        },
    )
    .await;
    d.fails(
        "txn range below the compacted revision",
        txn(
            vec![],
            vec![o_get(RangeRequest {
                revision: mid - 1,
                ..get(b"h")
            })],
            vec![],
        ),
        Code::OutOfRange,
        COMPACTED,
    )
    .await;
    d.ok(
        "txn range at the compacted revision",
        txn(
            vec![],
            vec![o_get(RangeRequest {
                revision: mid,
                ..get(b"h")
            })],
            vec![],
        ),
    )
    .await;
    d.ok(
        "txn compare after compaction (version counts all history)",
        txn(vec![c_ver(b"h", EQ, 5)], vec![o_get(get(b"h"))], vec![]),
    )
    .await;
    d.fails(
        "compact below the compacted revision",
        compact(mid - 1, false),
        Code::OutOfRange,
        COMPACTED,
    )
    .await;
    let cur = d.cur;
    d.ok(
        "compact at the current revision, physical",
        compact(cur, true),
    )
    .await;
    d.ok(
        "range everything at the new compacted revision",
        RangeRequest {
            revision: cur,
            ..rng(b"\0", b"\0")
        },
    )
    .await;
    d.ok("range h (latest)", get(b"h")).await;
    d.ok("put h after compaction", put(b"h", b"h6")).await;
    d.ok("range h (version 6)", get(b"h")).await;
}

/// Deterministic pseudo-random mix of puts, deletes, ranges, txns and
/// compactions over a small key set.
async fn generated(d: &mut Diff, seed: u64, steps: usize) {
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }
    let mut r = Rng(seed);
    let keys: Vec<Vec<u8>> = vec![
        b"g/0".to_vec(),
        b"g/1".to_vec(),
        b"g/2".to_vec(),
        b"g/3".to_vec(),
        b"g/4".to_vec(),
        b"g/\x00".to_vec(),
        b"g/\xff".to_vec(),
        b"g/5/x".to_vec(),
    ];
    let values: [&[u8]; 5] = [b"", b"v", b"w", b"\x00\xff", b"longer value"];
    fn key(r: &mut Rng, keys: &[Vec<u8>]) -> Vec<u8> {
        keys[r.below(keys.len() as u64) as usize].clone()
    }
    fn range_pair(r: &mut Rng, keys: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        match r.below(4) {
            0 => (b"g/".to_vec(), b"g0".to_vec()),
            1 => (key(r, keys), b"\0".to_vec()),
            2 => {
                let (a, b) = (key(r, keys), key(r, keys));
                if a <= b {
                    (a, b)
                } else {
                    (b, a)
                }
            }
            _ => (key(r, keys), Vec::new()),
        }
    }
    let rev_in = |r: &mut Rng, d: &Diff| -> i64 {
        match r.below(10) {
            0 => d.cur + 1,
            1 if d.compacted > 1 => d.compacted - 1,
            2 | 3 => 0,
            _ => d.compacted.max(1) + r.below((d.cur - d.compacted.max(1) + 1) as u64) as i64,
        }
    };
    let random_compare = |r: &mut Rng, d: &Diff, keys: &[Vec<u8>]| -> Compare {
        let k = key(r, keys);
        let res = [EQ, NE, GT, LT][r.below(4) as usize];
        let mut c = match r.below(5) {
            0 => c_ver(&k, res, r.below(4) as i64),
            1 => c_create(&k, res, r.below((d.cur + 1) as u64) as i64),
            2 => c_mod(&k, res, r.below((d.cur + 1) as u64) as i64),
            3 => c_val(&k, res, values[r.below(values.len() as u64) as usize]),
            _ => c_lease(&k, res, 0),
        };
        if r.chance(10) {
            c.key = b"g/".to_vec();
            c.range_end = b"g0".to_vec();
        }
        c
    };
    let random_op = |r: &mut Rng, d: &Diff, keys: &[Vec<u8>], depth: u32| -> RequestOp {
        match r.below(if depth > 0 { 3 } else { 4 }) {
            0 => o_put(PutRequest {
                prev_kv: r.chance(50),
                ..put(&key(r, keys), values[r.below(values.len() as u64) as usize])
            }),
            1 => {
                let (k, e) = range_pair(r, keys);
                o_del(DeleteRangeRequest {
                    prev_kv: r.chance(50),
                    ..del(&k, &e)
                })
            }
            _ => {
                let (k, e) = range_pair(r, keys);
                let rev = if r.chance(20) {
                    d.compacted.max(1) + r.below((d.cur - d.compacted.max(1) + 1) as u64) as i64
                } else {
                    0
                };
                o_get(RangeRequest {
                    revision: rev,
                    limit: r.below(3) as i64,
                    keys_only: r.chance(10),
                    ..rng(&k, &e)
                })
            }
        }
    };
    for i in 0..steps {
        let what = format!("generated #{i}");
        match r.below(100) {
            0..=29 => {
                let req = PutRequest {
                    prev_kv: r.chance(50),
                    ..put(
                        &key(&mut r, &keys),
                        values[r.below(values.len() as u64) as usize],
                    )
                };
                let _ = d.run(&what, req).await;
            }
            30..=39 => {
                let (k, e) = range_pair(&mut r, &keys);
                let req = DeleteRangeRequest {
                    prev_kv: r.chance(50),
                    ..del(&k, &e)
                };
                let _ = d.run(&what, req).await;
            }
            40..=64 => {
                let (k, e) = range_pair(&mut r, &keys);
                let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
                let targets = [
                    SortTarget::Key,
                    SortTarget::Version,
                    SortTarget::Create,
                    SortTarget::Mod,
                    SortTarget::Value,
                ];
                let mut req = RangeRequest {
                    revision: rev_in(&mut r, d),
                    limit: r.below(4) as i64,
                    count_only: r.chance(10),
                    keys_only: r.chance(10),
                    serializable: r.chance(20),
                    ..rng(&k, &e)
                };
                if r.chance(30) {
                    req.sort_order = orders[r.below(3) as usize] as i32;
                    req.sort_target = targets[r.below(5) as usize] as i32;
                }
                if r.chance(15) {
                    req.min_mod_revision = r.below((d.cur + 1) as u64) as i64;
                }
                if r.chance(15) {
                    req.max_create_revision = r.below((d.cur + 1) as u64) as i64;
                }
                let _ = d.run(&what, req).await;
            }
            65..=96 => {
                let nc = r.below(3);
                let compare = (0..nc).map(|_| random_compare(&mut r, d, &keys)).collect();
                let mut success: Vec<RequestOp> = (0..r.below(4))
                    .map(|_| random_op(&mut r, d, &keys, 0))
                    .collect();
                let failure = (0..r.below(3))
                    .map(|_| random_op(&mut r, d, &keys, 0))
                    .collect();
                if r.chance(20) {
                    let inner_c = (0..r.below(2))
                        .map(|_| random_compare(&mut r, d, &keys))
                        .collect();
                    let inner_s = (0..r.below(3))
                        .map(|_| random_op(&mut r, d, &keys, 1))
                        .collect();
                    let inner_f = (0..r.below(2))
                        .map(|_| random_op(&mut r, d, &keys, 1))
                        .collect();
                    success.push(o_txn(txn(inner_c, inner_s, inner_f)));
                }
                // Duplicate-key errors are fine: both must agree.
                let _ = d.run(&what, txn(compare, success, failure)).await;
            }
            _ => {
                let lo = d.compacted.max(1);
                let rev = if r.chance(25) {
                    d.compacted
                } else {
                    lo + r.below((d.cur - lo + 1) as u64) as i64
                };
                let physical = r.chance(50);
                let _ = d.run(&what, compact(rev, physical)).await;
            }
        }
    }
    d.ok("range g/ after the generated steps", prefix(b"g/"))
        .await;
}

async fn wipe(d: &mut Diff) {
    d.ok(
        "delete everything: [\\0, \\0) with prev_kv",
        DeleteRangeRequest {
            prev_kv: true,
            ..del(b"\0", b"\0")
        },
    )
    .await;
    d.ok("range everything (empty)", rng(b"\0", b"\0")).await;
    d.ok(
        "count everything (0)",
        RangeRequest {
            count_only: true,
            ..rng(b"\0", b"\0")
        },
    )
    .await;
    d.ok("delete everything again (nothing)", del(b"\0", b"\0"))
        .await;
    let cur = d.cur;
    d.ok(
        "range a before the wipe",
        RangeRequest {
            revision: cur - 1,
            ..get(b"a")
        },
    )
    .await;
    d.ok("final physical compaction", compact(cur, true)).await;
    d.ok("put after everything", put(b"a", b"last")).await;
}
