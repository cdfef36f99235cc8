//! Alarms, as etcd keeps them: a replicated set of (member, alarm type)
//! pairs. NOSPACE is raised by a member that finds the store past
//! `--quota-backend-bytes`; while it is active, every member refuses writes
//! that add data (puts, txns with puts, lease grants), in the apply step,
//! so all members refuse the same entries.
//!
//! **Invariant:** changed only by the apply step, persisted in `meta` in the
//! same batch as the applied index.

use std::sync::Mutex;

use prost::Message;
use rocksdb::WriteBatch;

use crate::error::{Error, Result};
use crate::pb::etcdserverpb::{AlarmMember, AlarmType};
use crate::storage::{Storage, CF_META};

const META_ALARMS: &[u8] = b"alarms";

#[derive(Clone, PartialEq, prost::Message)]
struct StoredAlarms {
    #[prost(message, repeated, tag = "1")]
    alarms: Vec<AlarmMember>,
}

pub struct Alarms {
    storage: Storage,
    active: Mutex<Vec<AlarmMember>>,
}

impl Alarms {
    pub fn open(storage: Storage) -> Result<Alarms> {
        let active = load(&storage)?;
        Ok(Alarms {
            storage,
            active: Mutex::new(active),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AlarmMember>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every active alarm, by member then type.
    pub fn list(&self) -> Vec<AlarmMember> {
        self.lock().clone()
    }

    /// The active alarms of one type; every one for NONE (etcd's GET).
    pub fn of_type(&self, alarm: i32) -> Vec<AlarmMember> {
        self.lock()
            .iter()
            .filter(|a| alarm == AlarmType::None as i32 || a.alarm == alarm)
            .cloned()
            .collect()
    }

    /// Whether any member has raised `alarm`.
    pub fn has(&self, alarm: AlarmType) -> bool {
        self.lock().iter().any(|a| a.alarm == alarm as i32)
    }

    /// Apply step: raises an alarm (raising it twice changes nothing).
    /// The alarm, as etcd answers an activation; `None` for type NONE.
    pub fn activate(&self, member: u64, alarm: i32, batch: &mut WriteBatch) -> Option<AlarmMember> {
        if alarm == AlarmType::None as i32 {
            return None;
        }
        let m = AlarmMember {
            member_id: member,
            alarm,
        };
        if !self.lock().contains(&m) {
            self.change(batch, |v| {
                v.push(m);
                v.sort_by_key(|a| (a.member_id, a.alarm));
            });
        }
        Some(m)
    }

    /// Apply step: clears an alarm; the alarm if it was raised.
    pub fn deactivate(
        &self,
        member: u64,
        alarm: i32,
        batch: &mut WriteBatch,
    ) -> Option<AlarmMember> {
        let m = AlarmMember {
            member_id: member,
            alarm,
        };
        if !self.lock().contains(&m) {
            return None;
        }
        self.change(batch, |v| v.retain(|a| *a != m));
        Some(m)
    }

    /// Re-reads the alarms after a snapshot replaced the store.
    pub fn reload(&self) -> Result<()> {
        *self.lock() = load(&self.storage)?;
        Ok(())
    }

    fn change(&self, batch: &mut WriteBatch, f: impl FnOnce(&mut Vec<AlarmMember>)) {
        let mut v = self.lock();
        f(&mut v);
        let stored = StoredAlarms { alarms: v.clone() };
        batch.put_cf(
            self.storage.cf(CF_META),
            META_ALARMS,
            stored.encode_to_vec(),
        );
    }
}

fn load(storage: &Storage) -> Result<Vec<AlarmMember>> {
    decode(storage.db().get_cf(storage.cf(CF_META), META_ALARMS)?)
}

fn decode(raw: Option<Vec<u8>>) -> Result<Vec<AlarmMember>> {
    match raw {
        Some(raw) => Ok(StoredAlarms::decode(raw.as_slice())
            .map_err(Error::internal)?
            .alarms),
        None => Ok(Vec::new()),
    }
}

/// The alarms as `snap` holds them (for a backup of that moment).
pub fn alarms_at(storage: &Storage, snap: &rocksdb::Snapshot<'_>) -> Result<Vec<AlarmMember>> {
    decode(snap.get_cf(storage.cf(CF_META), META_ALARMS)?)
}

/// Restore: the alarms of a backup, stored as they were. etcd keeps them
/// too (a store restored from a full one is still full).
pub fn import(storage: &Storage, batch: &mut WriteBatch, mut alarms: Vec<AlarmMember>) {
    alarms.retain(|a| a.alarm != AlarmType::None as i32);
    alarms.sort_by_key(|a| (a.member_id, a.alarm));
    alarms.dedup();
    let stored = StoredAlarms { alarms };
    batch.put_cf(storage.cf(CF_META), META_ALARMS, stored.encode_to_vec());
}

/// An alarm as etcd prints it in Status errors and `etcdctl alarm list`
/// (protobuf's compact text form, trailing space included).
pub fn describe(a: &AlarmMember) -> String {
    let name = AlarmType::try_from(a.alarm)
        .map(|t| t.as_str_name())
        .unwrap_or("NONE");
    format!("memberID:{} alarm:{} ", a.member_id, name)
}
