//! Changes asked of the state through the API, the CLI or a scaling hook: add, remove, drain
//! and re-weight backends, set a scaling group's desired capacity, reload the config; and
//! their trail of events. A refused change is a [`ChangeError`]; the API layer maps its kind
//! to an HTTP status.
use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use lb_common::MAX_BACKENDS;

use super::{initial_health, Drain, Group, GroupScaling, Member, State};
use crate::{config::Config, endpoint::Endpoint, model::BackendSource};

/// Why the state refuses a change asked of it (through the API, the CLI or a hook). The
/// messages are shown as they are; the API layer maps each kind to its HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The request is malformed or out of range (an address, a weight, a capacity).
    #[error("{0}")]
    Invalid(String),
    /// No such target group or backend.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the current state (the backend exists or drains already,
    /// or it does not fit the maps).
    #[error("{0}")]
    Conflict(String),
}

/// Parse `ADDR`, `ADDR:PORT` or `[V6]:PORT` (an [`Endpoint`]).
pub fn parse_backend_ref(s: &str) -> Result<(IpAddr, Option<u16>), ChangeError> {
    let e: Endpoint = s
        .trim()
        .parse()
        .map_err(|e: crate::endpoint::EndpointError| ChangeError::Invalid(e.0))?;
    Ok((e.addr, e.port))
}

impl Group {
    fn find(&self, addr: IpAddr, port: Option<u16>) -> Result<usize, ChangeError> {
        let hits: Vec<usize> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.matches(addr, port, self.cfg.port))
            .map(|(i, _)| i)
            .collect();
        match hits.as_slice() {
            [i] => Ok(*i),
            [] => Err(ChangeError::NotFound(format!(
                "target group {:?} has no backend {}",
                self.cfg.name,
                Endpoint::new(addr, port)
            ))),
            _ => Err(ChangeError::Invalid(format!(
                "{addr} matches several backends of {:?}: give the port",
                self.cfg.name
            ))),
        }
    }
}

impl State {
    // ---- runtime changes (API) ----

    fn group_mut(&mut self, name: &str) -> Result<&mut Group, ChangeError> {
        let known: Vec<String> = self.groups.keys().cloned().collect();
        self.groups.get_mut(name).ok_or_else(|| {
            ChangeError::NotFound(format!(
                "no target group {name:?} (groups: {})",
                known.join(", ")
            ))
        })
    }

    pub fn add_backend(
        &mut self,
        group: &str,
        address: &str,
        weight: Option<u32>,
        source: BackendSource,
    ) -> Result<String, ChangeError> {
        let (addr, port) = parse_backend_ref(address)?;
        let weight = weight.unwrap_or(1);
        if weight == 0 || weight > crate::config::MAX_WEIGHT {
            return Err(ChangeError::Invalid(format!(
                "weight {weight} is out of range (1-{})",
                crate::config::MAX_WEIGHT
            )));
        }
        // The checks of every backend, as for the config's (unicast, not a VIP, the VIPs'
        // address family, Maglev slots per backend).
        let serving = self.groups.get(group).map_or(0, |g| {
            g.members.iter().filter(|m| m.drain.is_none()).count()
        });
        crate::endpoint::check_backend(&self.config, group, addr, serving + 1)
            .map_err(|e| ChangeError::Invalid(format!("{group}: {e}")))?;
        let total: usize = self.groups.values().map(|g| g.members.len()).sum();
        let now = Instant::now();
        let uid = self.uid();
        let g = self.group_mut(group)?;
        // Every member the address names, not only a unique one: `find` refuses an address
        // that names several, and skipping the checks then let an exact duplicate in.
        let named: Vec<usize> = (0..g.members.len())
            .filter(|&i| g.members[i].matches(addr, port, g.cfg.port))
            .collect();
        let taken_back = named
            .iter()
            .copied()
            .find(|&i| g.members[i].drain.is_some() && g.members[i].port == port);
        for i in taken_back.into_iter().chain(named.iter().copied()) {
            let m = &mut g.members[i];
            if m.drain.is_some() && m.port == port {
                m.drain = None;
                m.weight = weight;
                g.runtime_changed = true;
                return Ok(format!(
                    "{group}: {} re-registered (drain cancelled)",
                    m.display()
                ));
            }
            if m.port == port || port.is_none() || m.port.or(g.cfg.port) == port {
                return Err(ChangeError::Conflict(format!(
                    "{group} already has backend {}",
                    m.display()
                )));
            }
        }
        if total >= MAX_BACKENDS as usize {
            return Err(ChangeError::Conflict(format!(
                "the data path holds at most {MAX_BACKENDS} backends"
            )));
        }
        let mut m = Member::new(
            uid,
            addr,
            port,
            weight,
            source,
            initial_health(&g.cfg, now),
            now,
        );
        if source == BackendSource::Scaling {
            m.launched_at = Some(now);
        }
        let shown = m.display();
        let checked = g.cfg.health_check.is_some();
        g.members.push(m);
        if let Err(e) = self.check_capacity() {
            if let Some(g) = self.groups.get_mut(group) {
                g.members.pop();
            }
            return Err(ChangeError::Conflict(format!(
                "{group}: {shown} does not fit: {e}"
            )));
        }
        let g = self.group_mut(group)?;
        g.runtime_changed = true;
        Ok(if checked {
            format!("{group}: {shown} added; it receives traffic once it passes its health checks")
        } else {
            format!("{group}: {shown} added")
        })
    }

    /// Add a member without the checks of [`State::add_backend`] (tests of capacities).
    #[cfg(test)]
    pub fn add_backend_unchecked(&mut self, group: &str, addr: IpAddr) {
        let now = Instant::now();
        let uid = self.uid();
        let g = self.groups.get_mut(group).expect("a group of the config");
        let health = initial_health(&g.cfg, now);
        g.members.push(Member::new(
            uid,
            addr,
            None,
            1,
            BackendSource::Api,
            health,
            now,
        ));
    }

    pub fn remove_backend(&mut self, group: &str, address: &str) -> Result<String, ChangeError> {
        let (addr, port) = parse_backend_ref(address)?;
        let g = self.group_mut(group)?;
        let i = g.find(addr, port)?;
        let m = g.members.remove(i);
        g.runtime_changed = true;
        Ok(format!(
            "{group}: {} removed ({} open flows moved to other backends)",
            m.display(),
            m.active_flows
        ))
    }

    pub fn drain_backend(
        &mut self,
        group: &str,
        address: &str,
        reason: &str,
    ) -> Result<String, ChangeError> {
        let (addr, port) = parse_backend_ref(address)?;
        let g = self.group_mut(group)?;
        let i = g.find(addr, port)?;
        let delay = g.cfg.deregistration_delay;
        let m = &mut g.members[i];
        if m.drain.is_some() {
            return Err(ChangeError::Conflict(format!(
                "{group}: {} is already draining",
                m.display()
            )));
        }
        let now = Instant::now();
        m.drain = Some(Drain {
            started: now,
            deadline: now + delay,
            reason: reason.to_string(),
        });
        let shown = m.display();
        g.runtime_changed = true;
        Ok(format!(
            "{group}: {shown} draining: no new flows; it leaves when its {} open flows end, at most {}",
            g.members[i].active_flows,
            humantime::format_duration(delay)
        ))
    }

    pub fn set_weight(
        &mut self,
        group: &str,
        address: &str,
        weight: u32,
    ) -> Result<String, ChangeError> {
        if weight == 0 || weight > crate::config::MAX_WEIGHT {
            return Err(ChangeError::Invalid(format!(
                "weight {weight} is out of range (1-{})",
                crate::config::MAX_WEIGHT
            )));
        }
        let (addr, port) = parse_backend_ref(address)?;
        let g = self.group_mut(group)?;
        let i = g.find(addr, port)?;
        let m = &mut g.members[i];
        let old = m.weight;
        m.weight = weight;
        let shown = m.display();
        g.runtime_changed = true;
        Ok(format!(
            "{group}: {shown} weight {old} → {weight} (new flows only)"
        ))
    }

    // ---- reload ----

    /// Apply a new config: groups the config did not change keep their runtime changes;
    /// changed groups take the config's backends (keeping the health of those that stay;
    /// backends no longer listed drain). `[daemon]` is kept as it is (it needs a restart).
    pub fn reload(&mut self, mut new: Config) -> Vec<String> {
        let mut notes = Vec::new();
        if new.daemon != self.config.daemon {
            notes.push("[daemon] changes need a restart; they were not applied".to_string());
            new.daemon = self.config.daemon.clone();
        }
        let now = Instant::now();
        let mut groups = std::mem::take(&mut self.groups);
        for tg in &new.target_groups {
            match groups.remove(&tg.name) {
                None => {
                    notes.push(format!("target group {} added", tg.name));
                    let g = self.group_from_config(tg, now);
                    self.groups.insert(tg.name.clone(), g);
                }
                Some(g) if g.cfg == *tg => {
                    self.groups.insert(tg.name.clone(), g);
                }
                Some(mut g) => {
                    notes.push(format!("target group {} changed", tg.name));
                    let mut members = Vec::new();
                    let mut old = std::mem::take(&mut g.members);
                    for b in &tg.backends {
                        if let Some(i) = old
                            .iter()
                            .position(|m| m.addr == b.address && m.port == b.port)
                        {
                            let mut m = old.remove(i);
                            m.weight = b.weight;
                            m.source = BackendSource::Config;
                            m.drain = None;
                            if g.cfg.health_check != tg.health_check {
                                m.health = initial_health(tg, now);
                            }
                            members.push(m);
                        } else {
                            let uid = self.uid();
                            members.push(Member::new(
                                uid,
                                b.address,
                                b.port,
                                b.weight,
                                BackendSource::Config,
                                initial_health(tg, now),
                                now,
                            ));
                        }
                    }
                    for mut m in old {
                        // Backends a scale-out launched belong to the scaling group, not to
                        // the config's list.
                        if m.source == BackendSource::Scaling && tg.scaling.is_some() {
                            members.push(m);
                            continue;
                        }
                        if m.drain.is_none() {
                            m.drain = Some(Drain {
                                started: now,
                                deadline: now + tg.deregistration_delay,
                                reason: "removed from the config".into(),
                            });
                        }
                        members.push(m);
                    }
                    g.members = members;
                    g.scaling = match (g.scaling.take(), &tg.scaling) {
                        (Some(mut gs), Some(sc)) => {
                            gs.scaler.reconfigure(sc, now);
                            Some(gs)
                        }
                        (_, Some(sc)) => Some(GroupScaling::new(sc, now)),
                        (_, None) => None,
                    };
                    g.cfg = tg.clone();
                    g.runtime_changed = false;
                    self.groups.insert(tg.name.clone(), g);
                }
            }
        }
        for name in groups.keys() {
            notes.push(format!("target group {name} removed"));
        }
        self.config = new;
        notes
    }

    /// The trail of changes: a change asked through the API or CLI (`origin`), accepted or
    /// rejected, becomes an event (`change` or `rejected`) and a log line saying what changed
    /// or why it was refused.
    pub fn record_change(
        &mut self,
        group: &str,
        origin: &str,
        what: &str,
        result: &Result<String, impl std::fmt::Display>,
    ) {
        match result {
            Ok(m) => self.push_event(group, "change", format!("{origin}: {m}"), BTreeMap::new()),
            Err(e) => {
                let keeps = if what == "reload" {
                    ", the running config stays in force"
                } else {
                    ""
                };
                tracing::warn!(group, origin, "{what} rejected{keeps}: {e}");
                let msg = format!("{origin}: {what} rejected{keeps}: {e}");
                self.push_event(group, "rejected", msg, BTreeMap::new());
            }
        }
    }

    /// `xlb scale GROUP --desired N`.
    pub fn scale(&mut self, group: &str, desired: u32) -> Result<String, ChangeError> {
        let now = Instant::now();
        let g = self.group_mut(group)?;
        let gs = g.scaling.as_mut().ok_or_else(|| {
            ChangeError::Invalid(format!(
                "target group {group:?} has no [target_group.scaling]"
            ))
        })?;
        let d = gs
            .scaler
            .set_desired(desired, now)
            .map_err(ChangeError::Invalid)?;
        let msg = format!("{group}: desired {} → {} ({})", d.from, d.to, d.reason);
        gs.last_decision = Some(d.reason.clone());
        self.push_event(group, "manual", msg.clone(), d.metrics);
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BackendState;
    use crate::state::tests::{state, CFG, SCALING};

    /// Found by `cargo xtask fuzz` (api_body): when an address named several members, the
    /// duplicate checks were skipped and the same ADDR:PORT could be added twice.
    #[test]
    fn add_backend_refuses_a_duplicate_when_the_address_names_several() {
        let text = CFG.replace("port = 8080\n", "");
        let mut s = state(&text);
        s.add_backend("g", "198.18.2.30", None, BackendSource::Api)
            .unwrap();
        s.add_backend("g", "198.18.2.30:9001", None, BackendSource::Api)
            .unwrap();
        assert!(matches!(
            s.add_backend("g", "198.18.2.30:9001", Some(2), BackendSource::Api),
            Err(ChangeError::Conflict(_))
        ));
        assert!(matches!(
            s.add_backend("g", "198.18.2.30", None, BackendSource::Api),
            Err(ChangeError::Conflict(_))
        ));
        assert_eq!(s.groups["g"].members.len(), 5);
        s.add_backend("g", "198.18.2.30:9002", None, BackendSource::Api)
            .unwrap();
        assert_eq!(s.groups["g"].members.len(), 6);
    }

    #[test]
    fn runtime_changes_survive_reloads_until_the_group_changes() {
        let mut s = state(CFG);
        s.add_backend("g", "198.18.2.14", Some(3), BackendSource::Api)
            .unwrap();
        assert!(matches!(
            s.add_backend("g", "198.18.2.14", None, BackendSource::Api),
            Err(ChangeError::Conflict(_))
        ));
        assert!(matches!(
            s.add_backend("g", "2001:db8::1", None, BackendSource::Api),
            Err(ChangeError::Invalid(_))
        ));
        assert!(matches!(
            s.add_backend("nope", "198.18.2.15", None, BackendSource::Api),
            Err(ChangeError::NotFound(_))
        ));
        // Same config again: the runtime backend stays.
        let notes = s.reload(crate::config::parse(CFG, "t.toml").unwrap());
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(s.groups["g"].members.len(), 4);
        // The config changes the group: its backends are the config's, removed ones drain.
        let changed = CFG.replace("\"198.18.2.13\"]", "\"198.18.2.13\", \"198.18.2.15\"]");
        s.reload(crate::config::parse(&changed, "t.toml").unwrap());
        let g = &s.groups["g"];
        let addrs: Vec<(String, BackendState)> = g
            .members
            .iter()
            .map(|m| (m.addr.to_string(), m.state()))
            .collect();
        assert_eq!(addrs.len(), 5, "{addrs:?}");
        assert!(addrs.contains(&("198.18.2.15".into(), BackendState::Initial)));
        assert!(addrs.contains(&("198.18.2.14".into(), BackendState::Draining)));
    }

    #[test]
    fn changes_leave_a_trail_accepted_or_rejected() {
        use crate::model::{AddBackend, BackendRef, Request};
        let mut s = state(CFG);
        let add = Request::AddBackend {
            group: "g".into(),
            body: AddBackend {
                address: "198.18.2.14".into(),
                weight: Some(2),
            },
        };
        let (group, what) = add.change().expect("a change");
        assert_eq!(
            (group.as_str(), what.as_str()),
            ("g", "add backend 198.18.2.14 with weight 2")
        );
        let r = s.add_backend("g", "198.18.2.14", Some(2), BackendSource::Api);
        s.record_change(&group, "API", &what, &r);
        let r = s.add_backend("g", "198.18.2.14", Some(2), BackendSource::Api);
        assert!(r.is_err());
        s.record_change(&group, "API", &what, &r);
        let drain = Request::DrainBackend {
            group: "g".into(),
            body: BackendRef {
                address: "198.18.9.9".into(),
            },
        };
        let (group, what) = drain.change().unwrap();
        let r = s.drain_backend(&group, "198.18.9.9", "drained by API");
        s.record_change(&group, "API", &what, &r);
        s.record_change(
            "",
            "SIGHUP",
            "reload",
            &Err(ChangeError::Invalid(
                "xlb.toml:4:1: daemon.bogus: unknown key".into(),
            )),
        );
        assert!(Request::Status.change().is_none());
        let trail: Vec<(String, String)> = s
            .events
            .iter()
            .map(|e| (e.kind.clone(), e.message.clone()))
            .collect();
        assert_eq!(trail.len(), 4, "{trail:?}");
        assert_eq!(trail[0].0, "change");
        assert!(
            trail[0].1.starts_with("API: g: 198.18.2.14 added"),
            "{trail:?}"
        );
        assert_eq!(trail[1].0, "rejected");
        assert!(
            trail[1]
                .1
                .contains("add backend 198.18.2.14 with weight 2 rejected")
                && trail[1].1.contains("already has"),
            "{trail:?}"
        );
        assert!(
            trail[2].1.contains("drain backend 198.18.9.9 rejected"),
            "{trail:?}"
        );
        assert_eq!(
            trail[3].1,
            "SIGHUP: reload rejected, the running config stays in force: \
             xlb.toml:4:1: daemon.bogus: unknown key"
        );
    }

    #[test]
    fn api_and_hook_backends_pass_the_configs_checks() {
        // 1021 Maglev slots hold at most 10 backends (100 slots each).
        let cfg = SCALING.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nmaglev_table_size = 1021",
        );
        let mut s = state(&cfg);
        for bad in ["198.18.100.1", "0.0.0.0", "224.0.0.1", "2001:db8::1"] {
            assert!(
                matches!(
                    s.add_backend("g", bad, None, BackendSource::Api),
                    Err(ChangeError::Invalid(_))
                ),
                "{bad}"
            );
        }
        let e = s
            .add_backend("g", "198.18.100.1:8080", None, BackendSource::Api)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be a VIP"), "{e}");
        for i in 12..=20 {
            s.add_backend("g", &format!("198.18.2.{i}"), None, BackendSource::Api)
                .unwrap();
        }
        let e = s
            .add_backend("g", "198.18.2.21", None, BackendSource::Api)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Maglev"), "the 11th backend: {e}");
        // A scale-out hook printing a VIP: refused the same way, and said so.
        let mut s = state(&cfg);
        s.groups
            .get_mut("g")
            .unwrap()
            .scaling
            .as_mut()
            .unwrap()
            .launching = 1;
        let added = s.launch_done(
            "g",
            Ok(crate::scaling::HookOutput {
                lines: vec!["198.18.100.1".into()],
                stderr: String::new(),
            }),
        );
        assert!(!added);
        assert_eq!(s.groups["g"].members.len(), 1);
        assert!(
            s.events
                .iter()
                .any(|e| e.message.contains("cannot be a VIP")),
            "{:?}",
            s.events
        );
    }

    #[test]
    fn backend_refs() {
        assert_eq!(
            parse_backend_ref("198.18.2.11").unwrap(),
            ("198.18.2.11".parse().unwrap(), None)
        );
        assert_eq!(
            parse_backend_ref("198.18.2.11:8080").unwrap(),
            ("198.18.2.11".parse().unwrap(), Some(8080))
        );
        assert_eq!(
            parse_backend_ref("[2001:db8::1]:80").unwrap(),
            ("2001:db8::1".parse().unwrap(), Some(80))
        );
        assert_eq!(parse_backend_ref("2001:db8::1").unwrap().1, None);
        assert!(parse_backend_ref("nope").is_err());
        assert!(parse_backend_ref("1.2.3.4:0").is_err());
    }
}
