//! The status view (`xlb status`, `GET /v1/status`, the HTTP listener's snapshots): built
//! from the owner's state, the desired state and the data path's counters; changes nothing.
use std::{collections::HashMap, path::Path, time::Instant};

use crate::{
    config,
    dataplane::{Attachment, Dataplane, LoadOptions},
    fleet::{FingerprintCache, Fleet},
    model::{
        BackendStatus, GroupStatus, InterfaceStatus, ScalingStatus, ServiceStatus, Status,
        TrafficCounters,
    },
    state::{Desired, State},
};

/// The counters and table parameters the status view reads: the loaded [`Dataplane`]; a fake
/// in the tests.
pub trait CounterSource {
    fn service_counters(&self, id: u32) -> lb_common::Counters;
    fn backend_counters(&self, id: u32) -> lb_common::Counters;
    /// Global counters by name.
    fn global_counters(&self) -> Vec<(&'static str, u64)>;
    /// Maglev table size and hash seed (for the table fingerprints).
    fn load_options(&self) -> LoadOptions;
}

impl CounterSource for Dataplane {
    fn service_counters(&self, id: u32) -> lb_common::Counters {
        Dataplane::service_counters(self, id)
    }
    fn backend_counters(&self, id: u32) -> lb_common::Counters {
        Dataplane::backend_counters(self, id)
    }
    fn global_counters(&self) -> Vec<(&'static str, u64)> {
        Dataplane::global_counters(self)
    }
    fn load_options(&self) -> LoadOptions {
        self.opts
    }
}

/// What the status view is built from.
pub struct StatusView<'a> {
    pub state: &'a State,
    pub desired: &'a Desired,
    pub dp: &'a dyn CounterSource,
    /// Each service's table fingerprint (cached: recomputed when its table changes).
    pub fingerprints: &'a FingerprintCache,
    /// When the daemon started.
    pub started: Instant,
    pub config_path: &'a Path,
    pub attachments: &'a [Attachment],
    /// `[daemon.announce]`, when configured.
    pub fleet: Option<&'a Fleet>,
}

impl StatusView<'_> {
    pub fn build(&self) -> Status {
        let now = Instant::now();
        let mut per_member: HashMap<u64, (TrafficCounters, bool)> = HashMap::new();
        for b in self.desired.backends.values() {
            let c = TrafficCounters::from(self.dp.backend_counters(b.id));
            let e = per_member.entry(b.member).or_default();
            e.0.packets += c.packets;
            e.0.bytes += c.bytes;
            e.0.new_flows += c.new_flows;
            e.0.reply_packets += c.reply_packets;
            e.0.reply_bytes += c.reply_bytes;
            e.0.dropped += c.dropped;
            e.0.syns += c.syns;
            e.1 |= b.active;
        }
        let services = self
            .desired
            .services
            .iter()
            .map(|s| ServiceStatus {
                name: s.name.clone(),
                vip: s.vip,
                port: s.port,
                protocol: s.protocol.to_string(),
                target_group: s.target_group.clone(),
                backends_in_table: s
                    .backends
                    .iter()
                    .filter(|id| self.desired.backends.get(id).is_some_and(|b| b.active))
                    .count(),
                counters: self.dp.service_counters(s.id).into(),
                forwarding: s.forwarding.dsr().map(|d| format!("dsr/{}", d.encap)),
                table_fingerprint: self.fingerprints.get(
                    s.id,
                    s.backends
                        .iter()
                        .filter_map(|id| self.desired.backends.get(id))
                        .filter(|b| b.active)
                        .map(|b| (b.key.maglev_key(), b.weight))
                        .collect(),
                    self.dp.load_options().ring_size,
                    self.dp.load_options().hash_seed,
                ),
            })
            .collect();
        let groups = self
            .state
            .groups
            .values()
            .map(|g| {
                let eligible = g.eligible();
                GroupStatus {
                    name: g.cfg.name.clone(),
                    port: g.cfg.port,
                    all_unhealthy: g.cfg.all_unhealthy.as_str().to_string(),
                    deregistration_delay_secs: g.cfg.deregistration_delay.as_secs_f64(),
                    health_check: g.cfg.health_check.as_ref().map(|hc| {
                        let port = hc.port.map_or(String::new(), |p| format!(" :{p}"));
                        match hc.protocol {
                            config::HealthProtocol::Http => format!(
                                "http GET {}{port} every {}",
                                hc.path,
                                humantime::format_duration(hc.interval)
                            ),
                            config::HealthProtocol::Tcp => format!(
                                "tcp connect{port} every {}",
                                humantime::format_duration(hc.interval)
                            ),
                        }
                    }),
                    failing_open: eligible.failing_open,
                    scaling: g.scaling.as_ref().map(|gs| ScalingStatus {
                        min: gs.scaler.min(),
                        max: gs.scaler.max(),
                        desired: gs.scaler.desired(),
                        in_service: g.members.iter().filter(|m| m.drain.is_none()).count() as u32,
                        launching: gs.launching,
                        hook: gs.hook_state(now),
                        last_decision: gs.last_decision.clone(),
                        metrics: gs.metrics.clone(),
                    }),
                    backends: g
                        .members
                        .iter()
                        .map(|m| {
                            let (counters, _) = per_member.get(&m.uid).copied().unwrap_or_default();
                            BackendStatus {
                                group: g.cfg.name.clone(),
                                address: m.addr,
                                port: m
                                    .port
                                    .or(g.cfg.port)
                                    .or_else(|| {
                                        self.state
                                            .config
                                            .services
                                            .iter()
                                            .find(|s| s.target_group == g.cfg.name)
                                            .map(|s| s.port)
                                    })
                                    .unwrap_or(0),
                                weight: m.weight,
                                state: m.state(),
                                reason: m.reason(),
                                since_secs: now
                                    .saturating_duration_since(m.health.since())
                                    .as_secs_f64(),
                                receiving_new_flows: eligible.uids.contains(&m.uid),
                                active_flows: m.active_flows,
                                source: m.source,
                                drain_remaining_secs: m.drain.as_ref().map(|d| {
                                    d.deadline.saturating_duration_since(now).as_secs_f64()
                                }),
                                counters,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            config_file: self.config_path.display().to_string(),
            interfaces: self
                .attachments
                .iter()
                .map(|a| InterfaceStatus {
                    name: a.iface.clone(),
                    mode: a.mode.to_string(),
                })
                .collect(),
            services,
            groups,
            global: self
                .dp
                .global_counters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            announce: self.fleet.map(|f| f.status(now)),
            maps_writing: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{state, CFG};

    /// Counters by id: a backend's packets are 100 + its id, a service's 1000 + its id.
    struct Fake;

    impl CounterSource for Fake {
        fn service_counters(&self, id: u32) -> lb_common::Counters {
            lb_common::Counters {
                packets: 1000 + u64::from(id),
                ..Default::default()
            }
        }
        fn backend_counters(&self, id: u32) -> lb_common::Counters {
            lb_common::Counters {
                packets: 100 + u64::from(id),
                new_flows: 1,
                ..Default::default()
            }
        }
        fn global_counters(&self) -> Vec<(&'static str, u64)> {
            vec![("no_backend", 7)]
        }
        fn load_options(&self) -> LoadOptions {
            LoadOptions {
                ring_size: 1021,
                conntrack_size: 1024,
                reverse_size: 1024,
                max_services: 4,
                hash_seed: 7,
            }
        }
    }

    fn view(s: &State, d: &Desired, fp: &FingerprintCache) -> Status {
        StatusView {
            state: s,
            desired: d,
            dp: &Fake,
            fingerprints: fp,
            started: Instant::now(),
            config_path: Path::new("/etc/xlb/xlb.toml"),
            attachments: &[],
            fleet: None,
        }
        .build()
    }

    #[test]
    fn status_shows_tables_counters_and_drains() {
        let mut s = state(CFG);
        let fp = FingerprintCache::default();
        let d = s.desired().unwrap();
        let st = view(&s, &d, &fp);
        assert_eq!(st.config_file, "/etc/xlb/xlb.toml");
        assert_eq!(st.global["no_backend"], 7);
        let svc = &st.services[0];
        assert_eq!(svc.backends_in_table, 3, "initial backends serve");
        assert_eq!(svc.counters.packets, 1000 + u64::from(d.services[0].id));
        let g = &st.groups[0];
        for (b, id) in g.backends.iter().zip(d.services[0].backends.iter()) {
            assert_eq!(b.port, 8080);
            assert_eq!(b.counters.packets, 100 + u64::from(*id));
            assert!(b.receiving_new_flows);
            assert_eq!(b.drain_remaining_secs, None);
        }
        s.drain_backend("g", "198.18.2.12", "test").unwrap();
        let d = s.desired().unwrap();
        let st = view(&s, &d, &fp);
        assert_eq!(st.services[0].backends_in_table, 2);
        let b = &st.groups[0].backends[1];
        assert_eq!(b.address.to_string(), "198.18.2.12");
        assert!(!b.receiving_new_flows);
        assert!(b.drain_remaining_secs.is_some_and(|r| r > 9.0 && r <= 10.0));
        assert_ne!(
            st.services[0].table_fingerprint,
            view(&state(CFG), &state(CFG).desired().unwrap(), &fp).services[0].table_fingerprint,
            "the table changed"
        );
    }

    #[test]
    fn a_member_behind_two_ports_sums_its_backend_ids() {
        // No group port: each member has one backend id per service port.
        let text = CFG.replace("port = 8080\n", "").replace(
            "[[target_group]]",
            "[[service]]\nname = \"web2\"\nvip = \"198.18.100.1\"\nport = 81\nprotocol = \"tcp\"\ntarget_group = \"g\"\n\n[[target_group]]",
        );
        let mut s = state(&text);
        let fp = FingerprintCache::default();
        let d = s.desired().unwrap();
        assert_eq!(d.backends.len(), 6);
        let st = view(&s, &d, &fp);
        let b = &st.groups[0].backends[0];
        let member = s.groups["g"].members[0].uid;
        let want: u64 = d
            .backends
            .values()
            .filter(|b| b.member == member)
            .map(|b| 100 + u64::from(b.id))
            .sum();
        assert_eq!(b.counters.packets, want);
        assert_eq!(b.counters.new_flows, 2, "one per backend id");
        assert_eq!(b.port, 80, "the first service's port");
    }
}
