//! The Watch service: one bidirectional stream carries many watchers.
//!
//! Each stream is served by one task that owns its watchers. The task pulls
//! events from the hub for every watcher that is behind the hub's newest
//! revision, sends them, and answers creates, cancels and progress requests
//! in the order they arrive — so a progress response can never overtake an
//! event it vouches for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{check_leader, check_learner, ResponseStream};
use crate::error::Error;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::server::Member;
use crate::watch::watcher::{fragments, Watcher};
use crate::watch::WatchHub;

/// Revisions given to one watcher in one response at most (etcd's
/// `watchBatchMaxRevs`).
const MAX_REVS_PER_RESPONSE: i64 = 1000;
/// Responses queued for a client before the stream task waits for it.
const STREAM_BUFFER: usize = 128;

pub struct WatchService {
    member: Arc<Member>,
    hub: Arc<WatchHub>,
    progress_interval: Duration,
}

impl WatchService {
    pub fn new(member: Arc<Member>, hub: Arc<WatchHub>, progress_interval: Duration) -> Self {
        WatchService {
            member,
            hub,
            progress_interval,
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<ResponseStream<WatchResponse>>, Status> {
        check_learner(&self.member, false)?;
        check_leader(&self.member, &req)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = WatchStream {
            member: self.member.clone(),
            hub: self.hub.clone(),
            out: tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            progress_requested: false,
            last_header: 0,
        };
        tokio::spawn(stream.run(req.into_inner(), self.progress_interval));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct WatchStream {
    member: Arc<Member>,
    hub: Arc<WatchHub>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// A progress request waiting for every watcher to catch up.
    progress_requested: bool,
    /// The newest header revision sent: headers never go backwards.
    last_header: i64,
}

/// The client went away; the stream ends.
struct Gone;

impl WatchStream {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>, interval: Duration) {
        let mut latest_rx = self.hub.subscribe();
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            let caught_up = match self.deliver().await {
                Ok(c) => c,
                Err(Gone) => return,
            };
            if let (Some(rev), true) = (caught_up, self.progress_requested) {
                // The revision every watcher was just brought up to — not
                // the hub's newest, which may have moved on meanwhile.
                self.progress_requested = false;
                let resp = WatchResponse {
                    watch_id: -1,
                    ..Default::default()
                };
                if self.send(resp, rev).await.is_err() {
                    return;
                }
            }
            let caught_up = caught_up.is_some();
            tokio::select! {
                biased;
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if self.handle(req).await.is_err() {
                            return;
                        }
                    }
                    // The client closed its side or the connection broke.
                    _ => return,
                },
                _ = ticker.tick() => {
                    if self.progress_tick().await.is_err() {
                        return;
                    }
                }
                changed = latest_rx.changed(), if caught_up => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = std::future::ready(()), if !caught_up => {}
            }
        }
    }

    /// Sends one response with a header at `rev` (raised to the last
    /// header sent, so headers never go backwards).
    async fn send(&mut self, mut resp: WatchResponse, rev: i64) -> Result<(), Gone> {
        let rev = rev.max(self.last_header);
        self.last_header = rev;
        resp.header = Some(self.member.header(rev));
        self.out.send(Ok(resp)).await.map_err(|_| Gone)
    }

    /// One round of catching up: every watcher behind the hub gets what it
    /// is missing (at most one response's worth). When all are caught up
    /// afterwards, the revision they are caught up to.
    async fn deliver(&mut self) -> Result<Option<i64>, Gone> {
        let latest = self.hub.latest();
        let mut caught_up = true;
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            if w.compacted || w.next_rev > latest {
                continue;
            }
            let upto = latest.min(w.next_rev + MAX_REVS_PER_RESPONSE - 1);
            let from = w.next_rev;
            let read = match self.hub.recent(from, upto) {
                Some(revs) => Ok(Ok(revs)),
                None => {
                    // Behind what memory holds: history, off the async
                    // workers.
                    let hub = self.hub.clone();
                    tokio::task::spawn_blocking(move || hub.history(from, upto)).await
                }
            };
            let batch = match read {
                Ok(Ok(batch)) => batch,
                Ok(Err(Error::Compacted)) => {
                    if let Some(w) = self.watchers.get_mut(&id) {
                        w.compacted = true;
                    }
                    self.send_compacted(id).await?;
                    continue;
                }
                Ok(Err(e)) => {
                    let _ = self.out.send(Err(e.status())).await;
                    return Err(Gone);
                }
                Err(e) => {
                    let _ = self.out.send(Err(Status::internal(e.to_string()))).await;
                    return Err(Gone);
                }
            };
            let w = self.watchers.get_mut(&id).expect("present");
            let events = w.take(&batch.revs, self.hub.store().compacted_revision());
            w.next_rev = w.next_rev.max(batch.covered + 1);
            if w.next_rev <= latest {
                caught_up = false;
            }
            if events.is_empty() {
                continue;
            }
            w.sent_since_tick = true;
            let fragment = w.fragment;
            let header_rev = batch.revs.last().map_or(latest, |r| r.rev);
            let resp = WatchResponse {
                watch_id: id,
                events,
                ..Default::default()
            };
            let parts = if fragment {
                // etcd's limit for a watch response: the request limit plus
                // the gRPC overhead it allows on top.
                fragments(resp, self.member.max_request_bytes + 512 * 1024)
            } else {
                vec![resp]
            };
            for p in parts {
                self.send(p, header_rev).await?;
            }
        }
        Ok(caught_up.then_some(latest))
    }

    async fn send_compacted(&mut self, id: i64) -> Result<(), Gone> {
        let resp = WatchResponse {
            watch_id: id,
            compact_revision: self.hub.store().compacted_revision(),
            canceled: true,
            ..Default::default()
        };
        // etcd sends this one with a zero header revision.
        resp_with_header(self, resp, 0).await
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    let resp = WatchResponse {
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    self.send(resp, self.hub.latest()).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Gone> {
        let latest = self.hub.latest();
        // etcd's range conventions: no end is one key, "\0" is every key
        // from `key` on; an end at or before the key watches nothing.
        if !c.range_end.is_empty() && c.range_end != [0] && c.range_end <= c.key {
            let resp = WatchResponse {
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: "mvcc: watcher range is empty".into(),
                ..Default::default()
            };
            return self.send(resp, latest).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                let resp = WatchResponse {
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream".into(),
                    ..Default::default()
                };
                return self.send(resp, latest).await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let start = if c.start_revision > 0 {
            c.start_revision
        } else {
            latest + 1
        };
        let created = WatchResponse {
            watch_id: id,
            created: true,
            ..Default::default()
        };
        self.send(created, latest).await?;
        let mut w = Watcher::new(id, &c, start);
        let compacted =
            c.start_revision > 0 && c.start_revision < self.hub.store().compacted_revision();
        w.compacted = compacted;
        self.watchers.insert(id, w);
        if compacted {
            self.send_compacted(id).await?;
        }
        Ok(())
    }

    /// Periodic progress: a caught-up watcher that asked for it, and got no
    /// events since the last tick, hears the revision it is caught up to.
    async fn progress_tick(&mut self) -> Result<(), Gone> {
        let latest = self.hub.latest();
        let due: Vec<i64> = self
            .watchers
            .values_mut()
            .filter_map(|w| {
                let sent = std::mem::take(&mut w.sent_since_tick);
                // Exactly caught up: a watcher that starts in the future hears
                // nothing below its start.
                (w.progress_notify && !sent && !w.compacted && w.next_rev == latest + 1)
                    .then_some(w.id)
            })
            .collect();
        for id in due {
            let resp = WatchResponse {
                watch_id: id,
                ..Default::default()
            };
            self.send(resp, latest).await?;
        }
        Ok(())
    }
}

/// Sends with an exact header revision, bypassing the never-backwards
/// raise (etcd's compaction notice carries revision 0).
async fn resp_with_header(
    s: &mut WatchStream,
    mut resp: WatchResponse,
    rev: i64,
) -> Result<(), Gone> {
    resp.header = Some(s.member.header(rev));
    s.out.send(Ok(resp)).await.map_err(|_| Gone)
}
