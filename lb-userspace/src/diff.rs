//! `xlb diff` / `xlb reload --dry-run`: what loading a config would change, computed by the
//! daemon on a copy of its state, so that nothing changes.
//!
//! The copy takes the new config exactly as a reload would ([`State::reload`]), then its
//! desired state is computed as for the data path, and each service's Maglev table is built
//! with the reconciler's own code ([`reconcile::service_table`]) for both the state in force
//! and the new one and compared entry by entry. Backends the reload adds are assumed to pass
//! their health checks (the table they join once they do is the one that matters), and
//! backends whose checks the reload resets keep the health they have now.
use std::{
    collections::{BTreeSet, HashMap},
    time::Instant,
};

use lb_common::NO_BACKEND;

use crate::{
    config::Config,
    health::HealthTracker,
    model::{BackendDiff, ChangePreview, ServiceDiff},
    reconcile,
    state::{BackendKey, ChangeError, Desired, DesiredService, State},
};

/// The moved entries of two tables of backend ids, comparing the backends (their keys) they
/// name: ids are stable for a backend, but an id freed and taken again names another one.
pub fn moved_entries(
    before: &[u32],
    before_keys: &HashMap<u32, BackendKey>,
    after: &[u32],
    after_keys: &HashMap<u32, BackendKey>,
) -> u64 {
    let name = |id: u32, keys: &HashMap<u32, BackendKey>| -> Option<BackendKey> {
        if id == NO_BACKEND {
            None
        } else {
            keys.get(&id).cloned()
        }
    };
    // Compare ids first (cheap), keys only where the ids differ or may name others.
    before
        .iter()
        .zip(after)
        .filter(|(&b, &a)| {
            if b == a && before_keys.get(&b) == after_keys.get(&a) {
                return false;
            }
            name(b, before_keys) != name(a, after_keys)
        })
        .count() as u64
}

fn keys(desired: &Desired) -> HashMap<u32, BackendKey> {
    desired
        .backends
        .iter()
        .map(|(id, b)| (*id, b.key.clone()))
        .collect()
}

fn active_count(desired: &Desired, svc: &DesiredService) -> usize {
    svc.backends
        .iter()
        .filter(|id| desired.backends.get(id).is_some_and(|b| b.active))
        .count()
}

/// What loading `new` would change. `applied` is the desired state the maps hold, `ring` the
/// Maglev table size, `open` the open flows per backend id (the last conntrack sweep).
pub fn preview(
    state: &State,
    applied: &Desired,
    ring: u32,
    new: Config,
    config_file: &str,
    open: &HashMap<u32, u64>,
) -> Result<ChangePreview, ChangeError> {
    let now = Instant::now();
    let mut next = state.clone();
    let notes: Vec<String> = next
        .reload(new)
        .into_iter()
        .filter(|n| n.starts_with('['))
        .collect();
    // Health as the preview assumes it: members kept keep theirs, new ones pass their checks.
    let old_health: HashMap<u64, HealthTracker> = state
        .groups
        .values()
        .flat_map(|g| g.members.iter().map(|m| (m.uid, m.health.clone())))
        .collect();
    for g in next.groups.values_mut() {
        for m in &mut g.members {
            m.health = match old_health.get(&m.uid) {
                Some(h) => h.clone(),
                None => HealthTracker::healthy(now, "assumed to pass its checks"),
            };
        }
    }
    let after = next
        .desired()
        .map_err(|e| ChangeError::Conflict(format!("the new config does not fit: {e}")))?;
    let (before_keys, after_keys) = (keys(applied), keys(&after));
    let flows = |desired: &Desired, svc: &DesiredService| -> u64 {
        svc.backends
            .iter()
            .filter(|id| desired.backends.contains_key(id))
            .map(|id| open.get(id).copied().unwrap_or(0))
            .sum()
    };

    // Members draining after the change: they leave their services (their flows stay until
    // they end or the deregistration delay runs out).
    let draining_after: BTreeSet<u64> = next
        .groups
        .values()
        .flat_map(|g| {
            g.members
                .iter()
                .filter(|m| m.drain.is_some())
                .map(|m| m.uid)
        })
        .collect();

    let mut services = Vec::new();
    let names: BTreeSet<&String> = applied
        .services
        .iter()
        .map(|s| &s.name)
        .chain(after.services.iter().map(|s| &s.name))
        .collect();
    for name in names {
        let old = applied.services.iter().find(|s| &s.name == name);
        let new = after.services.iter().find(|s| &s.name == name);
        let mut d = ServiceDiff {
            name: name.clone(),
            change: String::new(),
            details: Vec::new(),
            backends_before: old.map_or(0, |s| active_count(applied, s)),
            backends_after: new.map_or(0, |s| active_count(&after, s)),
            table_size: ring,
            moved_entries: None,
            moved_share: None,
            open_flows: old.map_or(0, |s| flows(applied, s)),
            flows_on_leaving: 0,
        };
        match (old, new) {
            (Some(_), None) => {
                d.change = "removed".into();
                d.flows_on_leaving = d.open_flows;
            }
            (None, Some(_)) => d.change = "added".into(),
            (Some(o), Some(n)) => {
                if o.vip != n.vip || o.port != n.port {
                    d.details.push(format!(
                        "address {} → {}",
                        crate::state::fmt_addr_port(o.vip, o.port),
                        crate::state::fmt_addr_port(n.vip, n.port)
                    ));
                }
                if o.protocol != n.protocol {
                    d.details
                        .push(format!("protocol {} → {}", o.protocol, n.protocol));
                }
                if o.target_group != n.target_group {
                    d.details.push(format!(
                        "target_group {} → {}",
                        o.target_group, n.target_group
                    ));
                }
                let t_old = reconcile::service_table(applied, o, ring);
                let t_new = reconcile::service_table(&after, n, ring);
                let moved = moved_entries(&t_old, &before_keys, &t_new, &after_keys);
                d.moved_entries = Some(moved);
                d.moved_share = Some(if ring == 0 {
                    0.0
                } else {
                    moved as f64 / f64::from(ring)
                });
                let staying: BTreeSet<&BackendKey> = n
                    .backends
                    .iter()
                    .filter_map(|id| after.backends.get(id))
                    .filter(|b| !draining_after.contains(&b.member))
                    .map(|b| &b.key)
                    .collect();
                d.flows_on_leaving = o
                    .backends
                    .iter()
                    .filter(|id| before_keys.get(id).is_some_and(|k| !staying.contains(k)))
                    .map(|id| open.get(id).copied().unwrap_or(0))
                    .sum();
                let same = d.details.is_empty()
                    && moved == 0
                    && d.flows_on_leaving == 0
                    && d.backends_before == d.backends_after;
                d.change = if same { "unchanged" } else { "changed" }.into();
            }
            (None, None) => continue,
        }
        services.push(d);
    }

    // Backends, member by member (a reload keeps a member it keeps under the same uid).
    let open_of_member = |group: &str, uid: u64| -> u64 {
        applied
            .backends
            .values()
            .filter(|b| b.member == uid && b.key.group == group)
            .map(|b| open.get(&b.id).copied().unwrap_or(0))
            .sum()
    };
    let mut backends = Vec::new();
    for (gname, g) in &state.groups {
        let ng = next.groups.get(gname);
        for m in &g.members {
            let nm = ng.and_then(|ng| ng.members.iter().find(|x| x.uid == m.uid));
            let mut push = |change: &str, after: Option<u32>| {
                backends.push(BackendDiff {
                    group: gname.clone(),
                    backend: m.display(),
                    change: change.into(),
                    weight_before: Some(m.weight),
                    weight_after: after,
                    open_flows: open_of_member(gname, m.uid),
                })
            };
            match nm {
                None => push("removed", None),
                Some(nm) => {
                    if m.drain.is_none() && nm.drain.is_some() {
                        push("drained", Some(nm.weight));
                    } else if m.drain.is_some() && nm.drain.is_none() {
                        push("undrained", Some(nm.weight));
                    } else if m.weight != nm.weight {
                        push("reweighted", Some(nm.weight));
                    }
                }
            }
        }
    }
    for (gname, ng) in &next.groups {
        let old_uids: BTreeSet<u64> = state
            .groups
            .get(gname)
            .map(|g| g.members.iter().map(|m| m.uid).collect())
            .unwrap_or_default();
        for m in ng.members.iter().filter(|m| !old_uids.contains(&m.uid)) {
            backends.push(BackendDiff {
                group: gname.clone(),
                backend: m.display(),
                change: "added".into(),
                weight_before: None,
                weight_after: Some(m.weight),
                open_flows: 0,
            });
        }
    }

    let alerts = crate::alert::diff_rules(&state.config.alerts, &next.config.alerts);

    // Members the preview assumed healthy are not yet: say so when it matters.
    let mut notes = notes;
    let checked_new = backends.iter().any(|b| {
        b.change == "added"
            && next
                .groups
                .get(&b.group)
                .is_some_and(|g| g.cfg.health_check.is_some())
    });
    if checked_new {
        notes.push(
            "added backends are counted in the tables as if they passed their health checks \
             (until they do, new flows keep going to the others)"
                .into(),
        );
    }
    Ok(ChangePreview {
        config_file: config_file.to_string(),
        notes,
        services,
        backends,
        alerts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const RING: u32 = 1021;

    fn config(backends: &str, extra: &str) -> Config {
        parse(
            &format!(
                r#"[daemon]
interfaces = ["eth0"]
maglev_table_size = {RING}

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "web-servers"

[[target_group]]
name = "web-servers"
port = 8080
backends = [{backends}]
{extra}
"#
            ),
            "test.toml",
        )
        .unwrap()
    }

    fn running(cfg: Config) -> (State, Desired) {
        let mut s = State::new(cfg);
        let d = s.desired().unwrap();
        (s, d)
    }

    fn table(d: &Desired) -> Vec<u32> {
        reconcile::service_table(d, &d.services[0], RING)
    }

    /// Open flows: `n` on each backend id.
    fn open_each(d: &Desired, n: u64) -> HashMap<u32, u64> {
        d.backends.keys().map(|id| (*id, n)).collect()
    }

    const THREE: &str = r#""198.18.2.11", "198.18.2.12", "198.18.2.13""#;

    #[test]
    fn same_config_changes_nothing() {
        let (s, d) = running(config(THREE, ""));
        let p = preview(&s, &d, RING, config(THREE, ""), "t", &open_each(&d, 5)).unwrap();
        assert!(p.is_empty(), "{p:#?}");
        assert_eq!(p.services[0].moved_entries, Some(0));
        assert_eq!(p.services[0].open_flows, 15);
        assert_eq!(p.services[0].flows_on_leaving, 0);
    }

    #[test]
    fn adding_a_fourth_backend_moves_about_a_quarter() {
        let (s, d) = running(config(THREE, ""));
        let four = format!(r#"{THREE}, "198.18.2.14""#);
        let p = preview(&s, &d, RING, config(&four, ""), "t", &open_each(&d, 5)).unwrap();
        let svc = &p.services[0];
        assert_eq!(svc.change, "changed");
        assert_eq!((svc.backends_before, svc.backends_after), (3, 4));
        // Against the tables themselves: the new backend's share, and what else moved.
        let (mut s2, _) = running(config(THREE, ""));
        s2.reload(config(&four, ""));
        let d2 = s2.desired().unwrap();
        let (t1, t2) = (table(&d), table(&d2));
        let by_hand = t1.iter().zip(&t2).filter(|(a, b)| a != b).count() as u64;
        assert_eq!(svc.moved_entries, Some(by_hand));
        let new_id = d2
            .backends
            .values()
            .find(|b| b.key.addr.to_string() == "198.18.2.14")
            .unwrap()
            .id;
        let to_new = t2.iter().filter(|&&x| x == new_id).count() as u64;
        assert!(by_hand >= to_new, "{by_hand} {to_new}");
        let share = svc.moved_share.unwrap();
        assert!((0.2..0.35).contains(&share), "{share}");
        // No backend leaves: open flows all stay.
        assert_eq!(svc.flows_on_leaving, 0);
        assert_eq!(p.backends.len(), 1);
        assert_eq!(p.backends[0].change, "added");
        assert_eq!(p.backends[0].backend, "198.18.2.14");
    }

    #[test]
    fn removing_a_backend_drains_it_and_counts_its_flows() {
        let (s, d) = running(config(THREE, ""));
        let two = r#""198.18.2.11", "198.18.2.12""#;
        let mut open = open_each(&d, 0);
        let gone = d
            .backends
            .values()
            .find(|b| b.key.addr.to_string() == "198.18.2.13")
            .unwrap()
            .id;
        open.insert(gone, 7);
        let p = preview(&s, &d, RING, config(two, ""), "t", &open).unwrap();
        let svc = &p.services[0];
        assert_eq!(svc.flows_on_leaving, 7);
        assert_eq!(svc.open_flows, 7);
        // The leaving backend's entries move, and (Maglev's disruption is small, not zero) a
        // few others: exactly what the tables say.
        let in_table = table(&d).iter().filter(|&&x| x == gone).count() as u64;
        let (mut s2, _) = running(config(THREE, ""));
        s2.reload(config(two, ""));
        let d2 = s2.desired().unwrap();
        let by_hand = table(&d)
            .iter()
            .zip(&table(&d2))
            .filter(|(a, b)| a != b)
            .count() as u64;
        assert_eq!(svc.moved_entries, Some(by_hand));
        assert!(
            in_table <= by_hand && by_hand < in_table + in_table / 10,
            "{in_table} {by_hand}"
        );
        assert_eq!(p.backends.len(), 1);
        assert_eq!(p.backends[0].change, "drained");
        assert_eq!(p.backends[0].open_flows, 7);
    }

    #[test]
    fn reweighting_and_services_added_and_removed() {
        let (s, d) = running(config(THREE, ""));
        let heavy = r#""198.18.2.11", "198.18.2.12", { address = "198.18.2.13", weight = 3 }"#;
        let extra = r#"
[[service]]
name = "dns"
vip = "198.18.100.2"
port = 53
protocol = "udp"
target_group = "web-servers"
"#;
        let p = preview(&s, &d, RING, config(heavy, extra), "t", &open_each(&d, 1)).unwrap();
        let web = p.services.iter().find(|s| s.name == "web").unwrap();
        let dns = p.services.iter().find(|s| s.name == "dns").unwrap();
        assert_eq!(dns.change, "added");
        assert_eq!(dns.moved_entries, None);
        let share = web.moved_share.unwrap();
        // 1/3 → 3/5 of the table for the re-weighted one: at least 0.6 - 0.33 moves.
        assert!(share > 0.25, "{share}");
        assert_eq!(web.flows_on_leaving, 0);
        assert_eq!(p.backends[0].change, "reweighted");
        assert_eq!(
            (p.backends[0].weight_before, p.backends[0].weight_after),
            (Some(1), Some(3))
        );

        // And back: the dns service removed takes its flows with it.
        let (s2, d2) = running(config(THREE, extra));
        let p = preview(&s2, &d2, RING, config(THREE, ""), "t", &open_each(&d2, 1)).unwrap();
        let dns = p.services.iter().find(|s| s.name == "dns").unwrap();
        assert_eq!(dns.change, "removed");
        assert_eq!(dns.flows_on_leaving, dns.open_flows);
        assert!(dns.open_flows > 0);
    }

    #[test]
    fn the_running_state_is_not_touched() {
        let (s, d) = running(config(THREE, ""));
        let before = s.snapshot();
        let four = format!(r#"{THREE}, "198.18.2.14""#);
        preview(&s, &d, RING, config(&four, ""), "t", &HashMap::new()).unwrap();
        assert_eq!(
            serde_json::to_string(&s.snapshot()).unwrap(),
            serde_json::to_string(&before).unwrap()
        );
    }

    #[test]
    fn daemon_changes_are_noted() {
        let (s, d) = running(config(THREE, ""));
        let mut c = config(THREE, "");
        c.daemon.conntrack_size += 1;
        let p = preview(&s, &d, RING, c, "t", &HashMap::new()).unwrap();
        assert!(!p.is_empty());
        assert!(p.notes[0].contains("[daemon]"), "{:?}", p.notes);
    }

    #[test]
    fn ids_reused_for_other_backends_count_as_moved() {
        let k = |a: &str| BackendKey {
            group: "g".into(),
            addr: a.parse().unwrap(),
            port: 80,
        };
        let before: HashMap<u32, BackendKey> = [(0, k("198.18.2.11"))].into();
        let after: HashMap<u32, BackendKey> = [(0, k("198.18.2.12"))].into();
        assert_eq!(moved_entries(&[0, 0], &before, &[0, 0], &after), 2);
        assert_eq!(moved_entries(&[0, 0], &before, &[0, 0], &before), 0);
        assert_eq!(
            moved_entries(&[0, NO_BACKEND], &before, &[0, 0], &before),
            1
        );
    }
}
