//! One watcher's rules, without I/O: which events it sees, where it is in
//! the history, and how its responses are cut.

use std::sync::Arc;

use prost::Message;

use crate::mvcc::{in_range, RevisionEvents};
use crate::pb::etcdserverpb::watch_create_request::FilterType;
use crate::pb::etcdserverpb::{WatchCreateRequest, WatchResponse};
use crate::pb::mvccpb::{event::EventType, Event};

#[derive(Debug, Clone)]
pub struct Watcher {
    pub id: i64,
    pub key: Vec<u8>,
    pub end: Vec<u8>,
    /// The next revision this watcher has not been given yet.
    pub next_rev: i64,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    /// Events were sent since the last periodic progress tick (etcd then
    /// skips the notification).
    pub sent_since_tick: bool,
    /// Canceled by compaction: gets nothing more, but its id stays taken
    /// until the client cancels it (etcd answers that cancel).
    pub compacted: bool,
}

impl Watcher {
    /// A watcher for `req` whose first revision is `start` (the request's,
    /// or the one after the present when it asked for none).
    pub fn new(id: i64, req: &WatchCreateRequest, start: i64) -> Watcher {
        let filter = |f: FilterType| req.filters.contains(&(f as i32));
        // An empty key means the smallest key, "\0", as in etcd.
        let key = if req.key.is_empty() {
            vec![0]
        } else {
            req.key.clone()
        };
        Watcher {
            id,
            key,
            end: req.range_end.clone(),
            next_rev: start,
            no_put: filter(FilterType::Noput),
            no_delete: filter(FilterType::Nodelete),
            prev_kv: req.prev_kv,
            progress_notify: req.progress_notify,
            fragment: req.fragment,
            sent_since_tick: false,
            compacted: false,
        }
    }

    pub fn matches(&self, e: &Event) -> bool {
        let Some(kv) = &e.kv else {
            return false;
        };
        let put = e.r#type == EventType::Put as i32;
        if (put && self.no_put) || (!put && self.no_delete) {
            return false;
        }
        in_range(&kv.key, &self.key, &self.end)
    }

    /// The events of `revs` (consecutive revisions starting at or before
    /// `next_rev`) this watcher should get, and moves past them. A previous
    /// version below `compacted` is left out, as etcd (which reads it at the
    /// revision before the event) cannot give it either.
    pub fn take(&mut self, revs: &[Arc<RevisionEvents>], compacted: i64) -> Vec<Event> {
        let mut out = Vec::new();
        for r in revs {
            if r.rev < self.next_rev {
                continue;
            }
            for e in &r.events {
                if self.matches(e) {
                    let mut e = e.clone();
                    if !self.prev_kv || r.rev - 1 < compacted {
                        e.prev_kv = None;
                    }
                    out.push(e);
                }
            }
            self.next_rev = r.rev + 1;
        }
        out
    }
}

/// Splits a response too large for the client into fragments, as etcd
/// does for watchers that asked for it: every piece but the last is marked
/// `fragment`, and no piece but a single-event one exceeds `max_bytes`.
pub fn fragments(resp: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    if resp.encoded_len() < max_bytes || resp.events.len() < 2 {
        return vec![resp];
    }
    let mut template = resp.clone();
    template.events.clear();
    template.fragment = true;
    let mut out = Vec::new();
    let mut cur = template.clone();
    for e in resp.events {
        cur.events.push(e);
        if cur.events.len() > 1 && cur.encoded_len() >= max_bytes {
            let last = cur.events.pop().expect("just pushed");
            out.push(std::mem::replace(&mut cur, template.clone()));
            cur.events.push(last);
        }
    }
    cur.fragment = false;
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::KeyValue;

    fn put(key: &str, rev: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: rev,
                value: vec![b'v'; 100],
                ..Default::default()
            }),
            prev_kv: Some(KeyValue::default()),
        }
    }

    fn watcher(key: &str, end: &str, start: i64) -> Watcher {
        let req = WatchCreateRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        };
        Watcher::new(0, &req, start)
    }

    #[test]
    fn takes_matching_events_from_its_revision_on() {
        let revs: Vec<_> = (5..8)
            .map(|r| {
                Arc::new(RevisionEvents {
                    rev: r,
                    events: vec![put("a", r), put("b", r)],
                })
            })
            .collect();
        let mut w = watcher("a", "", 6);
        let got = w.take(&revs, 0);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].kv.as_ref().unwrap().mod_revision, 6);
        assert!(got[0].prev_kv.is_none(), "prev_kv only when asked");
        assert_eq!(w.next_rev, 8);
        let mut all = watcher("\0", "\0", 1);
        assert_eq!(all.take(&revs, 0).len(), 6);
    }

    #[test]
    fn fragments_keep_order_and_mark_all_but_last() {
        let resp = WatchResponse {
            watch_id: 3,
            events: (0..10).map(|i| put(&format!("k{i}"), 2)).collect(),
            ..Default::default()
        };
        let parts = fragments(resp.clone(), 400);
        assert!(parts.len() > 1);
        let (last, rest) = parts.split_last().unwrap();
        assert!(rest.iter().all(|p| p.fragment && p.watch_id == 3));
        assert!(!last.fragment);
        let joined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, resp.events);
        assert_eq!(fragments(resp.clone(), 1 << 20), vec![resp]);
    }
}
