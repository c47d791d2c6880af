//! The maps the reconciler keeps beside the services and backends, checked on the real maps of
//! a loaded program (the fixture harness): `ADDRS` (every VIP and backend address),
//! `NEXTHOPS` (reset when a backend id gets an address), `VLANS` and `TX_PORTS`.
//!
//! Needs root (skipped with a message otherwise).
mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use lb_common::{AddrKey, NextHop, VlanInfo, ADDR_F_BACKEND, ADDR_F_VIP};
use xlb::{model::BackendSource, reconcile::Links};

fn addrs(fx: &Fixture) -> HashMap<AddrKey, u32> {
    fx.dp.maps().addrs.iter().map(|r| r.unwrap()).collect()
}

fn key(ip: &str) -> AddrKey {
    let (addr, family) = xlb::dataplane::addr_bytes(ip.parse().unwrap());
    AddrKey {
        addr,
        port: [0; 2],
        proto: 0,
        family,
    }
}

/// Id of the backend of `group` at `addr`.
fn backend_id(fx: &mut Fixture, group: &str, addr: &str) -> u32 {
    let d = fx.state.desired().unwrap();
    d.backends
        .values()
        .find(|b| b.key.group == group && b.key.addr.to_string() == addr)
        .unwrap_or_else(|| panic!("no backend {addr} in {group}"))
        .id
}

fn junk_nexthop() -> NextHop {
    NextHop {
        ifindex: 99,
        mtu: 1500,
        vlan: 0,
        smac: [2, 0, 0, 0, 0, 0x99],
        dmac: [2, 0, 0, 0, 0, 0x98],
        flags: 0,
        expires_ns: u64::MAX,
    }
}

#[test]
fn addrs_follow_vips_and_backend_addresses() {
    if skip() {
        return;
    }
    let mut fx = Fixture::new();
    let want: HashMap<AddrKey, u32> = [
        ("198.18.100.1", ADDR_F_VIP),
        ("198.18.100.2", ADDR_F_VIP),
        ("198.18.100.3", ADDR_F_VIP),
        ("198.18.100.4", ADDR_F_VIP),
        ("2001:db8:100::1", ADDR_F_VIP),
        ("198.18.2.11", ADDR_F_BACKEND),
        ("198.18.2.12", ADDR_F_BACKEND),
        ("198.18.2.13", ADDR_F_BACKEND),
        ("198.18.1.5", ADDR_F_BACKEND),
        ("2001:db8:2::11", ADDR_F_BACKEND),
        ("2001:db8:2::12", ADDR_F_BACKEND),
    ]
    .into_iter()
    .map(|(a, f)| (key(a), f))
    .collect();
    assert_eq!(addrs(&fx), want);

    // A new backend address appears; removing the last backend at an address removes it.
    fx.state
        .add_backend("web", "198.18.2.14", None, BackendSource::Api)
        .unwrap();
    fx.apply();
    assert_eq!(addrs(&fx).get(&key("198.18.2.14")), Some(&ADDR_F_BACKEND));
    fx.state.remove_backend("web", "198.18.2.14").unwrap();
    fx.state
        .remove_backend("hairpin", "198.18.1.5:8080")
        .unwrap();
    fx.apply();
    let now = addrs(&fx);
    assert!(!now.contains_key(&key("198.18.2.14")), "{now:?}");
    assert!(!now.contains_key(&key("198.18.1.5")), "{now:?}");
    // 198.18.2.11 is still a backend of web and multi.
    assert_eq!(now.get(&key("198.18.2.11")), Some(&ADDR_F_BACKEND));
    assert_eq!(now.len(), want.len() - 1);
}

#[test]
fn nexthop_cache_is_reset_for_new_backend_ids_only() {
    if skip() {
        return;
    }
    let mut fx = Fixture::new();
    // An established backend's cache survives a weight change.
    let id = backend_id(&mut fx, "multi", "198.18.2.13");
    fx.dp
        .forge_maps()
        .nexthops
        .set(id, junk_nexthop(), 0)
        .unwrap();
    fx.state.set_weight("multi", "198.18.2.13", 5).unwrap();
    fx.apply();
    assert_eq!(fx.dp.maps().nexthops.get(&id, 0).unwrap(), junk_nexthop());

    // The slot the next backend will take holds a stale cache (as after an earlier use of
    // the id): writing the backend clears it.
    let ids: Vec<u32> = fx
        .state
        .desired()
        .unwrap()
        .backends
        .keys()
        .copied()
        .collect();
    for candidate in 0..=ids.iter().max().unwrap() + 1 {
        if !ids.contains(&candidate) {
            fx.dp
                .forge_maps()
                .nexthops
                .set(candidate, junk_nexthop(), 0)
                .unwrap();
        }
    }
    fx.state
        .add_backend("web", "198.18.2.14", None, BackendSource::Api)
        .unwrap();
    fx.apply();
    let new = backend_id(&mut fx, "web", "198.18.2.14");
    assert!(!ids.contains(&new));
    assert_eq!(
        fx.dp.maps().nexthops.get(&new, 0).unwrap(),
        NextHop::default(),
        "the new backend's next hop is looked up afresh"
    );
    assert_eq!(fx.dp.maps().nexthops.get(&id, 0).unwrap(), junk_nexthop());
}

#[test]
fn vlans_and_tx_ports_follow_the_links() {
    if skip() {
        return;
    }
    let mut fx = Fixture::new();
    let v = |parent, id| VlanInfo {
        parent_ifindex: parent,
        vlan_id: id,
        flags: 0,
    };
    let (ci, bi) = (fx.ifindex_client, fx.ifindex_backends);
    let links = Links {
        vlans: [(1000, v(ci, 100)), (1001, v(bi, 200))]
            .into_iter()
            .collect(),
        tx_ports: vec![bi, ci],
        ..Default::default()
    };
    fx.ns
        .enter(|| fx.reconciler.apply_links(&mut fx.dp, &links))
        .unwrap();
    let vlans: BTreeMap<u32, VlanInfo> = fx.dp.maps().vlans.iter().map(|r| r.unwrap()).collect();
    assert_eq!(vlans, links.vlans);
    let mut ports: Vec<u32> = fx.dp.maps().tx_ports.keys().map(|k| k.unwrap()).collect();
    ports.sort();
    let mut want = vec![ci, bi];
    want.sort();
    assert_eq!(ports, want);

    // A VLAN device gone, one changed; an interface no longer attached.
    let links = Links {
        vlans: [(1001, v(bi, 201))].into_iter().collect(),
        tx_ports: vec![ci],
        ..Default::default()
    };
    fx.ns
        .enter(|| fx.reconciler.apply_links(&mut fx.dp, &links))
        .unwrap();
    let vlans: BTreeMap<u32, VlanInfo> = fx.dp.maps().vlans.iter().map(|r| r.unwrap()).collect();
    assert_eq!(vlans, links.vlans);
    let ports: Vec<u32> = fx.dp.maps().tx_ports.keys().map(|k| k.unwrap()).collect();
    assert_eq!(ports, vec![ci]);
}

/// The batch sweeper on the real `CONNTRACK` map: 20,000 entries (several batches) of which
/// the idle ones (past each protocol's timeout) and the closed ones (FIN seen, quiet past the
/// grace) are deleted with `BPF_MAP_DELETE_BATCH`, the live ones are kept and counted per
/// backend, and those naming a free backend id are reported, not deleted.
#[test]
fn batch_sweep_deletes_idle_entries_and_keeps_live_ones() {
    use std::{net::IpAddr, os::fd::AsFd};

    use aya::maps::IterableMap;
    use lb_common::{CtValue, FlowKey, CT_F_CLOSING, PROTO_TCP, PROTO_UDP};
    use xlb::sweep::{self, SweepConfig};

    if skip() {
        return;
    }
    let mut fx = Fixture::new();
    let web = backend_id(&mut fx, "web", "198.18.2.11");
    let dns = backend_id(&mut fx, "dns", "198.18.2.12");
    let free_id = lb_common::MAX_BACKENDS - 1;
    let cfg = SweepConfig {
        tcp_idle: std::time::Duration::from_secs(300),
        udp_idle: std::time::Duration::from_secs(60),
    };
    let s = 1_000_000_000u64;
    let now = sweep::monotonic_coarse_ns().max(1000 * s);
    let client: IpAddr = "198.18.1.2".parse().unwrap();
    let vip: IpAddr = "198.18.100.1".parse().unwrap();
    // (kind, proto, backend, idle, flags), 2000 flows of each kind.
    let kinds: [(&str, u8, u32, u64, u32); 10] = [
        ("live tcp", PROTO_TCP, web, 5 * s, 0),
        ("live udp", PROTO_UDP, dns, 5 * s, 0),
        ("idle tcp", PROTO_TCP, web, 301 * s, 0),
        ("idle udp", PROTO_UDP, dns, 61 * s, 0),
        ("udp idle 200s", PROTO_UDP, dns, 200 * s, 0),
        (
            "tcp idle 200s (under its limit)",
            PROTO_TCP,
            web,
            200 * s,
            0,
        ),
        ("closing, talking", PROTO_TCP, web, 0, CT_F_CLOSING),
        ("closed, ended", PROTO_TCP, web, 3 * s, CT_F_CLOSING),
        ("closed, quiet", PROTO_TCP, web, 11 * s, CT_F_CLOSING),
        ("free backend", PROTO_TCP, free_id, 0, 0),
    ];
    let mut keys: Vec<(usize, FlowKey)> = Vec::new();
    {
        let ct = &mut fx.dp.forge_maps().conntrack;
        for (k, (_, proto, backend, idle, flags)) in kinds.iter().enumerate() {
            for i in 0..2000u16 {
                let key = flow_key(client, vip, 10_000 + k as u16 * 2000 + i, 80, *proto);
                let v = CtValue {
                    backend_id: *backend,
                    last_seen_ns: now - idle,
                    flags: *flags,
                    ..Default::default()
                };
                ct.insert(key, v, 0).unwrap();
                keys.push((k, key));
            }
        }
    }
    let maps = fx.dp.maps();
    let ct_fd = IterableMap::map(&maps.conntrack).fd().as_fd();
    let free = sweep::free_backends(IterableMap::map(&maps.backends).fd().as_fd()).unwrap();
    assert!(free[free_id as usize] && !free[web as usize] && !free[dns as usize]);
    let out = sweep::sweep_once(ct_fd, &free, &cfg, now).unwrap();
    assert_eq!(out.scanned, 20_000, "every entry is read once");
    assert_eq!(
        out.expired,
        3 * 2000 + 2000,
        "idle tcp, idle udp, udp 200s, closed quiet"
    );
    assert_eq!(
        out.open.get(&web),
        Some(&(3 * 2000)),
        "live, 200s and talking tcp"
    );
    assert_eq!(out.open.get(&dns), Some(&2000));
    assert_eq!(out.stale.len(), 2000);
    assert!(out.stale.iter().all(|(_, id)| *id == free_id));
    let expired = [2, 3, 4, 8];
    for (k, key) in &keys {
        assert_eq!(
            fx.has_flow(key),
            !expired.contains(k),
            "{}: entry kept or deleted wrongly",
            kinds[*k].0
        );
    }
    // A second sweep finds nothing more to delete; the batch delete skips keys gone already.
    let again = sweep::sweep_once(ct_fd, &free, &cfg, now).unwrap();
    assert_eq!((again.scanned, again.expired), (12_000, 0));
    let gone: Vec<FlowKey> = keys.iter().take(3).map(|(_, k)| *k).collect();
    let mut with_gone = gone.clone();
    with_gone.push(keys[4 * 2000 + 1].1); // the first "udp 200s": deleted already
    with_gone.push(keys[2000].1); // a live udp one
    let n = xlb::batch::delete_batch(ct_fd, &with_gone).unwrap();
    assert_eq!(
        n, 4,
        "three live tcp and one udp deleted, the missing key skipped"
    );
    assert!(!fx.has_flow(&keys[2000].1));
}

/// `REVERSE` has its own size (`[daemon] reverse_size`): the loader makes it that size, and a
/// restart adopting the pinned maps refuses another size with the message to clean up.
#[test]
fn reverse_table_has_its_own_size_checked_on_adopt() {
    use xlb::dataplane::{Dataplane, DataplaneError, LoadOptions, Pinning};

    if skip() {
        return;
    }
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/xlbt-reverse-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let opts = LoadOptions {
        ring_size: 1021,
        conntrack_size: 4096,
        reverse_size: 2048,
        max_services: 2,
        hash_seed: 1,
    };
    {
        let dp = Dataplane::load(opts, Pinning::Dir(dir.clone())).expect("load");
        assert!(!dp.adopted);
        let info = aya::maps::MapInfo::from_pin(dir.join(lb_common::MAP_REVERSE)).unwrap();
        assert_eq!(info.max_entries(), 2048);
        let info = aya::maps::MapInfo::from_pin(dir.join(lb_common::MAP_CONNTRACK)).unwrap();
        assert_eq!(info.max_entries(), 4096);
    }
    let other = LoadOptions {
        reverse_size: 4096,
        ..opts
    };
    match Dataplane::load(other, Pinning::Dir(dir.clone())) {
        Err(e @ DataplaneError::Incompatible { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("REVERSE holds 2048 entries, this configuration needs 4096"),
                "{msg}"
            );
            assert!(msg.contains("xlb stop --cleanup"), "{msg}");
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a REVERSE of another size was adopted"),
    }
    let dp = Dataplane::load(opts, Pinning::Dir(dir.clone())).expect("adopt");
    assert!(dp.adopted);
}
