//! Desired state: what the data path should do, derived from the config (and, later, from
//! health checks and scaling decisions). Ids of services and backends are stable across
//! reloads so that connection-tracking entries keep pointing at the right backend.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use lb_common::{BackendInfo, ServiceKey, BE_F_ACTIVE, BE_F_ESTABLISHED_OK, MAX_BACKENDS};
use serde::Serialize;

use crate::{
    config::{Config, Protocol},
    dataplane::addr_bytes,
};

/// A backend as the data path knows it: one (target group, address, port).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BackendKey {
    pub group: String,
    pub addr: IpAddr,
    pub port: u16,
}

impl BackendKey {
    /// Stable identity bytes for Maglev's permutation.
    pub fn maglev_key(&self) -> String {
        match self.addr {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DesiredBackend {
    pub id: u32,
    pub key: BackendKey,
    pub weight: u32,
    /// May receive new flows.
    pub active: bool,
}

impl DesiredBackend {
    pub fn info(&self) -> BackendInfo {
        let (addr, family) = addr_bytes(self.key.addr);
        let mut flags = BE_F_ESTABLISHED_OK;
        if self.active {
            flags |= BE_F_ACTIVE;
        }
        BackendInfo {
            addr,
            port: self.key.port.to_be_bytes(),
            family,
            flags,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DesiredService {
    pub id: u32,
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub target_group: String,
    /// Backend ids, in the order Maglev sees them.
    pub backends: Vec<u32>,
}

impl DesiredService {
    pub fn key(&self) -> ServiceKey {
        let (addr, family) = addr_bytes(self.vip);
        ServiceKey {
            addr,
            port: self.port.to_be_bytes(),
            proto: self.protocol.number(),
            family,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Desired {
    pub services: Vec<DesiredService>,
    pub backends: BTreeMap<u32, DesiredBackend>,
}

/// Allocates small integer ids and remembers them by key.
#[derive(Debug)]
pub struct Ids<K> {
    by_key: HashMap<K, u32>,
    free: std::collections::VecDeque<u32>,
    next: u32,
    limit: u32,
}

impl<K: std::hash::Hash + Eq + Clone> Ids<K> {
    pub fn new(limit: u32) -> Self {
        Self {
            by_key: HashMap::new(),
            free: Default::default(),
            next: 0,
            limit,
        }
    }

    pub fn get(&mut self, key: &K) -> Option<u32> {
        if let Some(id) = self.by_key.get(key) {
            return Some(*id);
        }
        // Fresh ids first, then the id freed longest ago: a re-used id must not inherit
        // connection-tracking entries of the backend that had it.
        let id = if self.next < self.limit {
            self.next += 1;
            self.next - 1
        } else {
            self.free.pop_front()?
        };
        self.by_key.insert(key.clone(), id);
        Some(id)
    }

    /// Forget every key not in `keep`, freeing their ids.
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        let mut freed: Vec<u32> = Vec::new();
        self.by_key.retain(|k, id| {
            let k_ok = keep(k);
            if !k_ok {
                freed.push(*id);
            }
            k_ok
        });
        freed.sort_unstable();
        self.free.extend(freed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("too many services (the maps hold {0})")]
    TooManyServices(u32),
    #[error("too many backends (the maps hold {MAX_BACKENDS})")]
    TooManyBackends,
}

/// The one owner of desired state: the config plus the ids handed out so far.
pub struct State {
    pub config: Config,
    service_ids: Ids<String>,
    backend_ids: Ids<BackendKey>,
}

impl State {
    pub fn new(config: Config) -> Self {
        let max_services = config.daemon.max_services;
        Self {
            config,
            service_ids: Ids::new(max_services),
            backend_ids: Ids::new(MAX_BACKENDS),
        }
    }

    /// Compute what the data path should hold now.
    pub fn desired(&mut self) -> Result<Desired, StateError> {
        let cfg = &self.config;
        let mut out = Desired::default();
        for svc in &cfg.services {
            let id = self
                .service_ids
                .get(&svc.name)
                .ok_or(StateError::TooManyServices(cfg.daemon.max_services))?;
            let mut ids = Vec::new();
            if let Some(tg) = cfg.target_group(&svc.target_group) {
                for b in &tg.backends {
                    let key = BackendKey {
                        group: tg.name.clone(),
                        addr: b.address,
                        port: tg.backend_port(b, svc.port),
                    };
                    let bid = self
                        .backend_ids
                        .get(&key)
                        .ok_or(StateError::TooManyBackends)?;
                    out.backends.entry(bid).or_insert(DesiredBackend {
                        id: bid,
                        key,
                        weight: b.weight,
                        active: b.weight > 0,
                    });
                    ids.push(bid);
                }
            }
            out.services.push(DesiredService {
                id,
                name: svc.name.clone(),
                vip: svc.vip,
                port: svc.port,
                protocol: svc.protocol,
                target_group: svc.target_group.clone(),
                backends: ids,
            });
        }
        let names: std::collections::HashSet<&String> =
            cfg.services.iter().map(|s| &s.name).collect();
        self.service_ids.retain(|n| names.contains(n));
        let keys: std::collections::HashSet<BackendKey> =
            out.backends.values().map(|b| b.key.clone()).collect();
        self.backend_ids.retain(|k| keys.contains(k));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_reused_last() {
        let mut ids = Ids::new(3);
        assert_eq!(ids.get(&"a"), Some(0));
        assert_eq!(ids.get(&"b"), Some(1));
        assert_eq!(ids.get(&"a"), Some(0));
        ids.retain(|k| *k != "a");
        assert_eq!(
            ids.get(&"c"),
            Some(2),
            "a fresh id comes before a freed one"
        );
        assert_eq!(ids.get(&"d"), Some(0));
        assert_eq!(ids.get(&"e"), None, "the limit holds");
    }
}
