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
