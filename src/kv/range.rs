//! A `RangeRequest` answered as etcd answers it.

use super::KvView;
use crate::error::Result;
use crate::mvcc::RangeOptions;
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::pb::mvccpb::KeyValue;

/// Reads `req` from `view`. The header carries only the revision; the
/// member fills in the rest.
pub fn range(view: &impl KvView, req: &RangeRequest) -> Result<RangeResponse> {
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    // The store returns keys in ascending order; any other order (or any
    // target but the key, which etcd sorts ascending by default) means
    // sorting, and then the limit can only be applied afterwards.
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let fetch_all = req.sort_order != SortOrder::None as i32 || filtered;
    let limit = if req.limit > 0 && !fetch_all {
        // One more than asked, to know whether there is more.
        req.limit as usize + 1
    } else {
        0
    };
    let opts = RangeOptions {
        limit,
        rev: req.revision,
        keys_only: req.keys_only,
        count_only: req.count_only,
    };
    let rr = view.range(&req.key, &req.range_end, &opts)?;
    let mut kvs = rr.kvs;
    if filtered {
        kvs.retain(|kv| keep(req, kv));
    }
    sort(&mut kvs, order, target);
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: rr.rev,
            ..Default::default()
        }),
        kvs,
        more,
        count: rr.count,
    })
}

fn keep(req: &RangeRequest, kv: &KeyValue) -> bool {
    !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
        || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
        || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
        || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
}

fn sort(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    if order == SortOrder::None || (order == SortOrder::Ascend && target == SortTarget::Key) {
        return;
    }
    // Stable sorts keep ties in key order, as etcd's (insertion-sorted for
    // small inputs) results do.
    match target {
        SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        reverse_stable(kvs, target);
    }
}

/// Descending order with ties still in ascending key order.
fn reverse_stable(kvs: &mut [KeyValue], target: SortTarget) {
    let key = |kv: &KeyValue| -> (i64, Vec<u8>) {
        match target {
            SortTarget::Key => (0, kv.key.clone()),
            SortTarget::Version => (kv.version, Vec::new()),
            SortTarget::Create => (kv.create_revision, Vec::new()),
            SortTarget::Mod => (kv.mod_revision, Vec::new()),
            SortTarget::Value => (0, kv.value.clone()),
        }
    };
    kvs.sort_by(|a, b| key(b).cmp(&key(a)));
}
