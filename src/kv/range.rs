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
    let by = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    // Stable sorts keep ties in key order either way, as etcd's results
    // (insertion-sorted for small inputs) do.
    if order == SortOrder::Descend {
        kvs.sort_by(|a, b| by(b, a));
    } else {
        kvs.sort_by(by);
    }
}
