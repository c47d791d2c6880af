//! The one writer of the BPF maps: makes the data path match a [`Desired`] state.
//!
//! Order of writes: backends first (so every id a table names is valid), then each service's
//! Maglev table into its *inactive* slot, then the service entry that flips the slot (one
//! atomic map update, so no packet sees a half-written table), and last the removal of
//! services and backends nothing refers to any more.
use std::collections::HashMap;

use lb_common::{
    BackendAddr, BackendAddrValue, BackendInfo, ServiceInfo, ServiceKey, BA_F_SHARED, NO_BACKEND,
    SVC_F_EMPTY,
};
use tracing::{debug, info};

use crate::{
    dataplane::Dataplane,
    maglev::{self, MaglevBackend},
    state::Desired,
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("writing {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> ReconcileError {
    move |source| ReconcileError::Map { map, source }
}

struct WrittenService {
    key: ServiceKey,
    slot: u32,
    flags: u32,
}

/// What the maps hold, as far as this process wrote them.
#[derive(Default)]
pub struct Reconciler {
    services: HashMap<u32, WrittenService>,
    /// What each (service id, slot) table holds, to write only what changes.
    tables: HashMap<(u32, u32), TableSource>,
    backends: HashMap<u32, BackendInfo>,
    /// Maps adopted from a previous instance: tables not seen yet hold unknown contents.
    adopted: bool,
    /// What `BACKEND_ADDRS` holds.
    addrs: HashMap<BackendAddr, BackendAddrValue>,
    /// What `PORTS` holds (word index → bits); absent words are zero.
    ports: HashMap<u32, u64>,
}

/// What one `apply` changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub tables_swapped: usize,
    pub table_entries_written: usize,
    pub services_removed: usize,
    pub backends_written: usize,
    pub backends_removed: usize,
}

/// A table entry no backend id can equal: marks table contents not known to this process.
const UNKNOWN: u32 = u32::MAX - 1;

/// What a Maglev table slot holds, kept as what built it rather than the table itself (a
/// table is 256 KiB at the default size; rebuilding one to diff against takes about a
/// millisecond).
#[derive(Debug, Clone, PartialEq, Eq)]
enum TableSource {
    /// Never written: zeros (a fresh map).
    Zero,
    /// Not known (adopted maps, or a write that failed half way).
    Unknown,
    /// Built by Maglev from these backends: (identity key, weight, backend id).
    Built(Vec<(String, u32, u32)>),
}

impl TableSource {
    fn table(&self, ring: u32) -> Vec<u32> {
        match self {
            Self::Zero => vec![0; ring as usize],
            Self::Unknown => vec![UNKNOWN; ring as usize],
            Self::Built(members) => {
                let mb: Vec<MaglevBackend<'_>> = members
                    .iter()
                    .map(|(k, w, _)| MaglevBackend {
                        key: k.as_bytes(),
                        weight: *w,
                    })
                    .collect();
                maglev::build(&mb, ring)
                    .into_iter()
                    .map(|i| {
                        if i == NO_BACKEND {
                            NO_BACKEND
                        } else {
                            members[i as usize].2
                        }
                    })
                    .collect()
            }
        }
    }
}

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Learn what maps adopted from a previous instance hold: which slot of each service is
    /// live, and the backends. Table contents are unknown, so the next change of a service
    /// writes its idle table in full before flipping to it.
    pub fn adopt(dp: &Dataplane) -> Result<Self, ReconcileError> {
        let mut r = Self {
            adopted: true,
            ..Self::default()
        };
        for item in dp.services.iter() {
            let (key, info) = item.map_err(map_err("SERVICES"))?;
            r.services.insert(
                info.id,
                WrittenService {
                    key,
                    slot: info.slot,
                    flags: info.flags,
                },
            );
            for slot in 0..lb_common::SLOTS_PER_SERVICE {
                r.tables.insert((info.id, slot), TableSource::Unknown);
            }
        }
        for id in 0..lb_common::MAX_BACKENDS {
            let info = dp.backends.get(&id, 0).map_err(map_err("BACKENDS"))?;
            if info != BackendInfo::default() {
                r.backends.insert(id, info);
            }
        }
        for item in dp.backend_addrs.iter() {
            let (k, v) = item.map_err(map_err("BACKEND_ADDRS"))?;
            r.addrs.insert(k, v);
        }
        for i in 0..2 * lb_common::PORT_WORDS {
            let w = dp.ports.get(&i, 0).map_err(map_err("PORTS"))?;
            if w != 0 {
                r.ports.insert(i, w);
            }
        }
        Ok(r)
    }

    pub fn apply(
        &mut self,
        dp: &mut Dataplane,
        desired: &Desired,
    ) -> Result<ApplyReport, ReconcileError> {
        let mut report = ApplyReport::default();
        let ring = dp.opts.ring_size;

        // 0. Port bitmaps: new ports first (a port of a new service or backend must pass the
        // filter before its map entries exist); ports no longer used are cleared at the end.
        let mut want_ports: HashMap<u32, u64> = HashMap::new();
        for svc in &desired.services {
            let (w, bit) = lb_common::port_bit(lb_common::PORTS_SERVICE, svc.port);
            *want_ports.entry(w).or_default() |= bit;
            for id in &svc.backends {
                if let Some(b) = desired.backends.get(id) {
                    let (w, bit) = lb_common::port_bit(lb_common::PORTS_BACKEND, b.key.port);
                    *want_ports.entry(w).or_default() |= bit;
                }
            }
        }
        for (w, bits) in &want_ports {
            let have = self.ports.get(w).copied().unwrap_or(0);
            if have | bits != have {
                dp.ports.set(*w, have | bits, 0).map_err(map_err("PORTS"))?;
                self.ports.insert(*w, have | bits);
            }
        }

        // 1. Backends.
        for (id, b) in &desired.backends {
            let info = b.info();
            if self.backends.get(id) != Some(&info) {
                if !self.backends.contains_key(id) {
                    Dataplane::reset_counters(&mut dp.backend_stats, *id);
                }
                dp.backends.set(*id, info, 0).map_err(map_err("BACKENDS"))?;
                self.backends.insert(*id, info);
                report.backends_written += 1;
            }
        }

        // 2. Tables and service entries.
        for svc in &desired.services {
            let members: Vec<_> = svc
                .backends
                .iter()
                .filter_map(|id| desired.backends.get(id))
                .filter(|b| b.active)
                .collect();
            let source = TableSource::Built(
                members
                    .iter()
                    .map(|b| (b.key.maglev_key(), b.weight, b.id))
                    .collect(),
            );
            let flags = if members.is_empty() { SVC_F_EMPTY } else { 0 };
            let key = svc.key();

            let current = self.services.get(&svc.id);
            let live_slot = current.filter(|w| w.key == key).map(|w| w.slot);
            if let Some(slot) = live_slot {
                let same_table = self.tables.get(&(svc.id, slot)) == Some(&source);
                if same_table && current.map(|w| w.flags) == Some(flags) {
                    continue;
                }
            }
            if current.is_none() {
                Dataplane::reset_counters(&mut dp.service_stats, svc.id);
            }
            // Stale entry under another key (the VIP changed): remove it first.
            if let Some(w) = current.filter(|w| w.key != key) {
                let _ = dp.services.remove(&w.key);
            }
            let slot = live_slot.map_or(0, |s| s ^ 1);
            let base = dp.table_base(svc.id, slot);
            let unseen = if self.adopted {
                TableSource::Unknown
            } else {
                TableSource::Zero
            };
            let old = self
                .tables
                .get(&(svc.id, slot))
                .unwrap_or(&unseen)
                .table(ring);
            let table = source.table(ring);
            // What is written is recorded as it goes: a failed write leaves the slot Unknown.
            self.tables.insert((svc.id, slot), TableSource::Unknown);
            for (i, (&new, &was)) in table.iter().zip(old.iter()).enumerate() {
                if new != was {
                    dp.maglev
                        .set(base + i as u32, new, 0)
                        .map_err(map_err("MAGLEV"))?;
                    report.table_entries_written += 1;
                }
            }
            self.tables.insert((svc.id, slot), source);
            let info = ServiceInfo {
                id: svc.id,
                slot,
                flags,
                _pad: 0,
            };
            dp.services
                .insert(key, info, 0)
                .map_err(map_err("SERVICES"))?;
            self.services
                .insert(svc.id, WrittenService { key, slot, flags });
            report.tables_swapped += 1;
            debug!(service = %svc.name, slot, backends = members.len(), "table swapped");
        }

        // 3. Where replies from each backend address go: the one service it serves, or
        // "shared" (several services: replies use the flows' REVERSE entries).
        let mut want: HashMap<BackendAddr, BackendAddrValue> = HashMap::new();
        for svc in &desired.services {
            let (vip, _) = crate::dataplane::addr_bytes(svc.vip);
            for id in &svc.backends {
                let Some(b) = desired.backends.get(id) else {
                    continue;
                };
                let v = BackendAddrValue {
                    vip,
                    vport: svc.port.to_be_bytes(),
                    _pad: [0; 2],
                    service_id: svc.id,
                    backend_id: b.id,
                    flags: if b.shared { BA_F_SHARED } else { 0 },
                };
                want.insert(b.addr_key(svc.protocol), v);
            }
        }
        for (k, v) in &want {
            if self.addrs.get(k) != Some(v) {
                dp.backend_addrs
                    .insert(k, v, 0)
                    .map_err(map_err("BACKEND_ADDRS"))?;
                self.addrs.insert(*k, *v);
            }
        }

        // 4. Services that are gone.
        let live: std::collections::HashSet<u32> = desired.services.iter().map(|s| s.id).collect();
        let gone: Vec<u32> = self
            .services
            .keys()
            .copied()
            .filter(|id| !live.contains(id))
            .collect();
        for id in gone {
            if let Some(w) = self.services.remove(&id) {
                dp.services.remove(&w.key).map_err(map_err("SERVICES"))?;
                report.services_removed += 1;
            }
        }

        // 5. Backend addresses and backends that are gone: established flows to them are
        // re-balanced by the data path, since their entry no longer allows traffic.
        let stale: Vec<BackendAddr> = self
            .addrs
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            dp.backend_addrs
                .remove(&k)
                .map_err(map_err("BACKEND_ADDRS"))?;
            self.addrs.remove(&k);
        }
        let words: Vec<u32> = self.ports.keys().copied().collect();
        for w in words {
            let want = want_ports.get(&w).copied().unwrap_or(0);
            if self.ports.get(&w).copied().unwrap_or(0) != want {
                dp.ports.set(w, want, 0).map_err(map_err("PORTS"))?;
                if want == 0 {
                    self.ports.remove(&w);
                } else {
                    self.ports.insert(w, want);
                }
            }
        }
        let gone: Vec<u32> = self
            .backends
            .keys()
            .copied()
            .filter(|id| !desired.backends.contains_key(id))
            .collect();
        for id in gone {
            dp.backends
                .set(id, BackendInfo::default(), 0)
                .map_err(map_err("BACKENDS"))?;
            self.backends.remove(&id);
            report.backends_removed += 1;
        }
        if report != ApplyReport::default() {
            info!(?report, "data path updated");
        }
        Ok(report)
    }
}
