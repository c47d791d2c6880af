//! What the daemon learns about the namespace's interfaces over rtnetlink: the VLAN devices
//! (for `VLANS`: a reply the FIB routes out of a VLAN device leaves its parent with the tag)
//! and the ifindex and up flag of every interface xlb attaches to (for `TX_PORTS`, and so
//! that the daemon attaches XDP again to an interface that is re-created or comes back up).
//!
//! A watcher task dumps the links when it starts, again whenever the kernel announces a link
//! change (`RTNLGRP_LINK`), and at least every [`REFRESH`], and sends each snapshot that
//! differs from the last to the owner loop, which hands it to the reconciler (the one writer
//! of the maps).
use std::{collections::BTreeMap, time::Duration};

use futures_util::stream::{StreamExt, TryStreamExt};
use lb_common::{VlanInfo, MAX_VLANS};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, VlanProtocol,
};
use rtnetlink::{new_multicast_connection, MulticastGroup};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::reconcile::Links;

/// Links are dumped again at least this often, notifications or not.
pub const REFRESH: Duration = Duration::from_secs(10);
/// After a link notification, wait this long for more before dumping (a burst of changes
/// costs one dump).
const SETTLE: Duration = Duration::from_millis(100);

/// What one link message says, as far as xlb cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: Option<String>,
    /// `Some` for an 802.1Q VLAN device whose parent is in this namespace.
    pub vlan: Option<VlanInfo>,
    /// A VLAN device of a kind the data path does not tag for (802.1ad, or a parent in
    /// another namespace): its packets go through the kernel.
    pub unsupported_vlan: bool,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

/// Read a link message (a dump entry or a notification).
pub fn parse_link(msg: &LinkMessage) -> Link {
    let mut name = None;
    let mut parent = None;
    let mut other_netns = false;
    let mut is_vlan = false;
    let mut vlan_id = None;
    let mut protocol = VlanProtocol::Ieee8021Q;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Link(p) => parent = Some(*p),
            LinkAttribute::LinkNetNsId(_) => other_netns = true,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Vlan) => is_vlan = true,
                        LinkInfo::Data(InfoData::Vlan(data)) => {
                            for d in data {
                                match d {
                                    InfoVlan::Id(id) => vlan_id = Some(*id),
                                    InfoVlan::Protocol(p) => protocol = *p,
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let mut link = Link {
        ifindex: msg.header.index,
        name,
        vlan: None,
        unsupported_vlan: false,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    if !is_vlan {
        return link;
    }
    match (parent, vlan_id) {
        (Some(parent), Some(id))
            if parent != 0
                && !other_netns
                && protocol == VlanProtocol::Ieee8021Q
                && (1..4095).contains(&id) =>
        {
            link.vlan = Some(VlanInfo {
                parent_ifindex: parent,
                vlan_id: id,
                flags: 0,
            });
        }
        _ => link.unsupported_vlan = true,
    }
    link
}

/// Build the snapshot the reconciler writes from every link of the namespace and the names
/// of the interfaces xlb attaches to. A VLAN device on top of another VLAN device is left out
/// (the data path pushes one tag: the kernel handles those), and so are devices past
/// `MAX_VLANS`.
pub fn snapshot(links: &[Link], interfaces: &[String]) -> Links {
    let vlan_ifindexes: std::collections::HashSet<u32> = links
        .iter()
        .filter(|l| l.vlan.is_some() || l.unsupported_vlan)
        .map(|l| l.ifindex)
        .collect();
    let mut vlans = BTreeMap::new();
    for l in links {
        let Some(v) = l.vlan else { continue };
        if vlan_ifindexes.contains(&v.parent_ifindex) {
            continue;
        }
        if vlans.len() >= MAX_VLANS as usize {
            warn!(
                max = MAX_VLANS,
                "more VLAN devices than VLANS holds: the rest go through the kernel"
            );
            break;
        }
        vlans.insert(l.ifindex, v);
    }
    let mut tx_ports = Vec::new();
    let mut present = BTreeMap::new();
    for want in interfaces {
        if let Some(l) = links
            .iter()
            .find(|l| l.name.as_deref() == Some(want.as_str()))
        {
            tx_ports.push(l.ifindex);
            present.insert(want.clone(), (l.ifindex, l.up));
        }
    }
    Links {
        vlans,
        tx_ports,
        interfaces: present,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("dumping links: {0}")]
    Dump(#[from] rtnetlink::Error),
}

async fn dump(handle: &rtnetlink::Handle) -> Result<Vec<Link>, LinksError> {
    let mut out = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await? {
        out.push(parse_link(&msg));
    }
    Ok(out)
}

/// Start the watcher on the current tokio runtime (in the daemon's network namespace): every
/// snapshot that differs from the previous one goes to `tx`, the first one at once. Fails
/// only when no netlink socket can be opened; later errors are logged and retried.
pub fn spawn_watcher<M: From<Links> + Send + 'static>(
    interfaces: Vec<String>,
    tx: mpsc::Sender<M>,
) -> Result<tokio::task::JoinHandle<()>, LinksError> {
    let (conn, handle, mut events) = new_multicast_connection(&[MulticastGroup::Link])?;
    tokio::spawn(conn);
    Ok(tokio::spawn(async move {
        let mut last: Option<Links> = None;
        loop {
            match dump(&handle).await {
                Ok(links) => {
                    let snap = snapshot(&links, &interfaces);
                    if last.as_ref() != Some(&snap) {
                        debug!(?snap, "links changed");
                        if tx.send(M::from(snap.clone())).await.is_err() {
                            return;
                        }
                        last = Some(snap);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot read the links; VLANS and TX_PORTS stay as they are")
                }
            }
            // Wait for a link change or the refresh period, then let a burst settle.
            tokio::select! {
                ev = events.next() => {
                    if ev.is_none() {
                        // The socket closed: fall back to the periodic refresh alone.
                        tokio::time::sleep(REFRESH).await;
                    }
                }
                _ = tokio::time::sleep(REFRESH) => {}
            }
            tokio::time::sleep(SETTLE).await;
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, events.next()).await {}
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vlan_msg(index: u32, parent: Option<u32>, data: Vec<InfoVlan>, name: &str) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.into()));
        if let Some(p) = parent {
            m.attributes.push(LinkAttribute::Link(p));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vlan),
            LinkInfo::Data(InfoData::Vlan(data)),
        ]));
        m
    }

    fn plain(index: u32, name: &str) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m
    }

    #[test]
    fn an_8021q_vlan_device_becomes_its_parent_and_id() {
        let l = parse_link(&vlan_msg(
            7,
            Some(3),
            vec![
                InfoVlan::Id(100),
                InfoVlan::Protocol(VlanProtocol::Ieee8021Q),
            ],
            "eth0.100",
        ));
        assert_eq!(l.ifindex, 7);
        assert_eq!(l.name.as_deref(), Some("eth0.100"));
        assert_eq!(
            l.vlan,
            Some(VlanInfo {
                parent_ifindex: 3,
                vlan_id: 100,
                flags: 0
            })
        );
        // The protocol attribute is optional: 802.1Q is the default.
        let l = parse_link(&vlan_msg(8, Some(3), vec![InfoVlan::Id(4094)], "v"));
        assert_eq!(l.vlan.map(|v| v.vlan_id), Some(4094));
    }

    #[test]
    fn other_links_and_unusable_vlans_are_not_vlans() {
        let l = parse_link(&plain(2, "eth0"));
        assert_eq!((l.vlan, l.unsupported_vlan, l.up), (None, false, true));
        let mut down = plain(2, "eth0");
        down.header.flags = LinkFlags::empty();
        assert!(!parse_link(&down).up, "down");
        // A veth names its peer with IFLA_LINK too, but is no VLAN.
        let mut veth = plain(4, "veth0");
        veth.attributes.push(LinkAttribute::Link(5));
        assert_eq!(parse_link(&veth).vlan, None);

        let ad = parse_link(&vlan_msg(
            9,
            Some(3),
            vec![
                InfoVlan::Id(10),
                InfoVlan::Protocol(VlanProtocol::Ieee8021Ad),
            ],
            "ad",
        ));
        assert_eq!((ad.vlan, ad.unsupported_vlan), (None, true), "802.1ad");
        let no_parent = parse_link(&vlan_msg(9, None, vec![InfoVlan::Id(10)], "x"));
        assert!(no_parent.vlan.is_none() && no_parent.unsupported_vlan);
        let no_id = parse_link(&vlan_msg(9, Some(3), vec![], "x"));
        assert!(no_id.vlan.is_none() && no_id.unsupported_vlan);
        let mut elsewhere = vlan_msg(9, Some(3), vec![InfoVlan::Id(10)], "x");
        elsewhere.attributes.push(LinkAttribute::LinkNetNsId(1));
        assert!(
            parse_link(&elsewhere).vlan.is_none(),
            "a parent in another namespace"
        );
    }

    #[test]
    fn snapshot_keeps_single_tag_vlans_and_attached_interfaces() {
        let links: Vec<Link> = [
            plain(1, "lo"),
            plain(2, "veth-client"),
            plain(3, "veth-backends"),
            vlan_msg(10, Some(2), vec![InfoVlan::Id(100)], "veth-client.100"),
            vlan_msg(11, Some(3), vec![InfoVlan::Id(200)], "veth-backends.200"),
            // QinQ built from VLAN devices: a VLAN on a VLAN goes through the kernel.
            vlan_msg(12, Some(10), vec![InfoVlan::Id(300)], "inner"),
            vlan_msg(
                13,
                Some(2),
                vec![
                    InfoVlan::Id(20),
                    InfoVlan::Protocol(VlanProtocol::Ieee8021Ad),
                ],
                "ad",
            ),
            vlan_msg(14, Some(13), vec![InfoVlan::Id(30)], "on-ad"),
        ]
        .iter()
        .map(parse_link)
        .collect();
        let snap = snapshot(
            &links,
            &["veth-client".to_string(), "veth-backends".to_string()],
        );
        let want: BTreeMap<u32, VlanInfo> = [
            (
                10,
                VlanInfo {
                    parent_ifindex: 2,
                    vlan_id: 100,
                    flags: 0,
                },
            ),
            (
                11,
                VlanInfo {
                    parent_ifindex: 3,
                    vlan_id: 200,
                    flags: 0,
                },
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(snap.vlans, want);
        assert_eq!(snap.tx_ports, vec![2, 3]);
        let ifaces: Vec<(&str, u32)> = snap
            .interfaces
            .iter()
            .map(|(n, (i, _))| (n.as_str(), *i))
            .collect();
        assert_eq!(ifaces, vec![("veth-backends", 3), ("veth-client", 2)]);

        // An interface that does not exist (yet) is simply not a TX port.
        let snap = snapshot(&links, &["nope".to_string(), "veth-client".to_string()]);
        assert_eq!(snap.tx_ports, vec![2]);
    }

    /// The watcher reads this namespace's links for real (no root needed for a dump).
    #[tokio::test]
    async fn watcher_reports_the_loopback_interface() {
        let (tx, mut rx) = mpsc::channel::<Links>(4);
        let task = spawn_watcher(vec!["lo".into()], tx).expect("netlink socket");
        let snap = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a snapshot within 5 s")
            .expect("watcher alive");
        assert_eq!(snap.tx_ports, vec![1], "lo is ifindex 1 in every namespace");
        task.abort();
    }
}
