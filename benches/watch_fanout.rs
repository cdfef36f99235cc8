//! Watch benchmark: the real etcd and cairn, one after the other, same load.
//!
//! (a) Fan-out: 1,000 watchers on 10 keys (10 streams, each with 10
//!     watchers on every key, so 100 per key), then `FANOUT_PUTS` puts spread
//!     over the 10 keys by 8 concurrent writers. Reported: puts/s, events
//!     delivered per second (from the first put sent to the last event
//!     received), and how long the last events trailed the last put.
//! (a') The same with the puts batched 10 per txn (one revision per txn,
//!     1,000 events each), so the fan-out weighs more than the write path.
//! (b) Latency: 100 watchers on one key (4 streams of 25), then
//!     `LATENCY_PUTS` puts one at a time (the next once all 100 watchers have
//!     the previous one). Reported: average and p99 of (event received - put
//!     sent) over every (put, watcher) pair.
//!
//! Run (a plain `main`, no harness; prints a table):
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/cairn/target
//! cargo bench --bench watch_fanout            # release build of cairn and of this client
//! CAIRN_BIN=/path/to/cairn cargo bench --bench watch_fanout
//! cargo test --release --bench watch_fanout   # same thing, test profile
//! ```
//!
//! The cairn binary is `$CAIRN_BIN` if set, else
//! `$CARGO_TARGET_DIR/release/cairn` if it exists, else the binary Cargo
//! built alongside this benchmark (release under `cargo bench`, debug under
//! `cargo test --bench watch_fanout`). The one used is printed: compare
//! release with release. etcd is `/usr/bin/etcd`. Both run with a fresh data
//! dir on loopback; total run time is about half a minute.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::request_op::Request;
use cairn::pb::etcdserverpb::watch_client::WatchClient;
use cairn::pb::etcdserverpb::watch_request::RequestUnion;
use cairn::pb::etcdserverpb::{
    PutRequest, RequestOp, StatusRequest, TxnRequest, WatchCreateRequest, WatchRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

const FANOUT_KEYS: usize = 10;
const FANOUT_STREAMS: usize = 10;
const FANOUT_PUTS: usize = 3000;
const FANOUT_WRITERS: usize = 8;
const LATENCY_WATCHERS: usize = 100;
const LATENCY_STREAMS: usize = 4;
const LATENCY_PUTS: usize = 300;
const VALUE_BYTES: usize = 100;

// ---------------------------------------------------------------------------
// A server process
// ---------------------------------------------------------------------------

struct Proc {
    name: &'static str,
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(name: &'static str, bin: &str) -> Proc {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{name}-bench-"))
        .tempdir()
        .unwrap();
    let client = format!("http://127.0.0.1:{}", common::free_port());
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(&k);
        }
    }
    cmd.args([
        "--name=default".to_string(),
        format!("--data-dir={}", dir.path().join("data").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=default={peer}"),
    ])
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    let mut p = Proc {
        name,
        child,
        endpoint: client,
        _dir: dir,
    };
    let t = Instant::now();
    loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!("{name} exited during startup: {st}");
        }
        if let Ok(ch) = Endpoint::from_shared(p.endpoint.clone())
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
        {
            if let Ok(s) = MaintenanceClient::new(ch).status(StatusRequest {}).await {
                if s.into_inner().leader != 0 {
                    return p;
                }
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name} not ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(endpoint: &str) -> Channel {
    Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

fn key(i: usize) -> Vec<u8> {
    format!("bench/key{i:02}").into_bytes()
}

/// An open watch stream; dropping it cancels the stream (the reader task
/// is aborted, which resets the HTTP/2 stream: closing only our sending
/// side would leave etcd's watchers running).
struct Stream {
    _tx: mpsc::Sender<WatchRequest>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Opens a stream with one watcher per key in `keys` (in that order) and
/// waits for all created responses. Every event is handed to `on_event`
/// with its receive time.
async fn open_stream<F>(endpoint: &str, keys: Vec<Vec<u8>>, on_event: F) -> Stream
where
    F: Fn(&cairn::pb::mvccpb::Event, Instant) + Send + 'static,
{
    let ch = connect(endpoint).await;
    let (tx, rx) = mpsc::channel(keys.len() + 8);
    let n = keys.len();
    for k in keys {
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: k,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    }
    let mut inbound = WatchClient::new(ch)
        .watch(ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let mut created = 0;
    while created < n {
        match inbound.next().await {
            Some(Ok(r)) if r.created => created += 1,
            Some(Ok(_)) => {}
            other => panic!("watch stream ended while creating: {other:?}"),
        }
    }
    let reader = tokio::spawn(async move {
        while let Some(Ok(r)) = inbound.next().await {
            let now = Instant::now();
            for ev in &r.events {
                on_event(ev, now);
            }
        }
    });
    Stream { _tx: tx, reader }
}

// ---------------------------------------------------------------------------
// (a) fan-out
// ---------------------------------------------------------------------------

struct Fanout {
    puts_per_sec: f64,
    events_per_sec: f64,
    trail_ms: f64,
    complete: bool,
}

/// `batch` = 1: single puts; 10: one txn puts all 10 keys (one revision,
/// 1,000 events), so the write path matters less than the fan-out.
async fn fanout(endpoint: &str, batch: usize) -> Fanout {
    let received = Arc::new(AtomicUsize::new(0));
    let last_ns = Arc::new(AtomicU64::new(0));
    let base = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..FANOUT_STREAMS {
        let keys: Vec<Vec<u8>> = (0..FANOUT_KEYS)
            .flat_map(|k| std::iter::repeat_n(key(k), 100 / FANOUT_STREAMS))
            .collect();
        let (received, last_ns) = (received.clone(), last_ns.clone());
        streams.push(
            open_stream(endpoint, keys, move |_, at| {
                received.fetch_add(1, Ordering::Relaxed);
                last_ns.fetch_max(at.duration_since(base).as_nanos() as u64, Ordering::Relaxed);
            })
            .await,
        );
    }
    let ch = connect(endpoint).await;
    let expected = FANOUT_PUTS * 100;
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..FANOUT_WRITERS)
        .map(|_| {
            let mut kv = KvClient::new(ch.clone());
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(batch, Ordering::Relaxed);
                    if i >= FANOUT_PUTS {
                        break;
                    }
                    let put = |j: usize| PutRequest {
                        key: key(j % FANOUT_KEYS),
                        value: vec![b'x'; VALUE_BYTES],
                        ..Default::default()
                    };
                    if batch == 1 {
                        kv.put(put(i)).await.expect("put");
                    } else {
                        kv.txn(TxnRequest {
                            success: (i..i + batch)
                                .map(|j| RequestOp {
                                    request: Some(Request::RequestPut(put(j))),
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .await
                        .expect("txn");
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let puts_done = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = received.load(Ordering::Relaxed);
    let last = Duration::from_nanos(last_ns.load(Ordering::Relaxed));
    let span = (base + last).saturating_duration_since(start);
    drop(streams);
    Fanout {
        puts_per_sec: FANOUT_PUTS as f64 / puts_done.as_secs_f64(),
        events_per_sec: got as f64 / span.as_secs_f64(),
        trail_ms: span.saturating_sub(puts_done).as_secs_f64() * 1000.0,
        complete: got == expected,
    }
}

// ---------------------------------------------------------------------------
// (b) latency
// ---------------------------------------------------------------------------

struct Latency {
    avg_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    samples: usize,
}

async fn latency(endpoint: &str) -> Latency {
    // seq (the put's value) → receive times.
    let got: Arc<Mutex<Vec<Vec<Instant>>>> = Arc::new(Mutex::new(vec![Vec::new(); LATENCY_PUTS]));
    let mut streams = Vec::new();
    for _ in 0..LATENCY_STREAMS {
        let got = got.clone();
        let keys = vec![b"bench/latency".to_vec(); LATENCY_WATCHERS / LATENCY_STREAMS];
        streams.push(
            open_stream(endpoint, keys, move |ev, at| {
                let seq: usize = ev
                    .kv
                    .as_ref()
                    .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
                    .unwrap_or(usize::MAX);
                if let Some(v) = got.lock().unwrap().get_mut(seq) {
                    v.push(at);
                }
            })
            .await,
        );
    }
    let mut kv = KvClient::new(connect(endpoint).await);
    let mut lat: Vec<f64> = Vec::new();
    for seq in 0..LATENCY_PUTS {
        let sent = Instant::now();
        kv.put(PutRequest {
            key: b"bench/latency".to_vec(),
            value: seq.to_string().into_bytes(),
            ..Default::default()
        })
        .await
        .expect("put");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = got.lock().unwrap()[seq].len();
            if n >= LATENCY_WATCHERS || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        for at in &got.lock().unwrap()[seq] {
            lat.push(at.duration_since(sent).as_secs_f64() * 1000.0);
        }
    }
    drop(streams);
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = lat.len().max(1);
    Latency {
        avg_ms: lat.iter().sum::<f64>() / n as f64,
        p99_ms: lat.get(n * 99 / 100).copied().unwrap_or(f64::NAN),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        samples: lat.len(),
    }
}

// ---------------------------------------------------------------------------

fn cairn_bin() -> String {
    if let Ok(b) = std::env::var("CAIRN_BIN") {
        return b;
    }
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        let p = PathBuf::from(dir).join("release").join("cairn");
        if p.exists() {
            return p.display().to_string();
        }
    }
    common::CAIRN_BIN.to_string()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cairn = cairn_bin();
    println!("watch_fanout: etcd {} vs cairn {cairn}", common::ETCD_BIN);
    let mut results = Vec::new();
    for (name, bin) in [("etcd", common::ETCD_BIN.to_string()), ("cairn", cairn)] {
        let r = rt.block_on(async {
            let p = start(name, &bin).await;
            let f = fanout(&p.endpoint, 1).await;
            let fb = fanout(&p.endpoint, FANOUT_KEYS).await;
            let l = latency(&p.endpoint).await;
            println!(
                "  {}: fan-out {} / {} of {} events, latency {} samples",
                p.name,
                if f.complete { "all" } else { "NOT all" },
                if fb.complete { "all" } else { "NOT all" },
                FANOUT_PUTS * 100,
                l.samples
            );
            (f, l, fb)
        });
        results.push(r);
    }
    let (e, c) = (&results[0], &results[1]);
    println!();
    println!(
        "{:<42} {:>12} {:>12} {:>12}",
        "", "etcd", "cairn", "cairn/etcd"
    );
    let row = |label: &str, a: f64, b: f64| {
        let ratio = if a.abs() < 0.05 {
            "-".to_string()
        } else {
            format!("{:.2}", b / a)
        };
        println!("{label:<42} {a:>12.1} {b:>12.1} {ratio:>12}");
    };
    row(
        "(a) 1000 watchers/10 keys: events/s",
        e.0.events_per_sec,
        c.0.events_per_sec,
    );
    row("(a) puts/s (8 writers)", e.0.puts_per_sec, c.0.puts_per_sec);
    row(
        "(a) last event after last put (ms)",
        e.0.trail_ms,
        c.0.trail_ms,
    );
    row(
        "(a') 10 puts per txn: events/s",
        e.2.events_per_sec,
        c.2.events_per_sec,
    );
    row(
        "(a') txns/s (8 writers)",
        e.2.puts_per_sec / 10.0,
        c.2.puts_per_sec / 10.0,
    );
    row(
        "(a') last event after last txn (ms)",
        e.2.trail_ms,
        c.2.trail_ms,
    );
    row(
        "(b) 100 watchers/1 key: avg latency (ms)",
        e.1.avg_ms,
        c.1.avg_ms,
    );
    row("(b) p99 latency (ms)", e.1.p99_ms, c.1.p99_ms);
    row("(b) max latency (ms)", e.1.max_ms, c.1.max_ms);
}
