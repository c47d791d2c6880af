//! A packet capture on one interface of a lab namespace (an `AF_PACKET` socket: what tcpdump
//! would see), for tests that must know the addresses packets really carried on the wire.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::netns::Netns;

/// One captured IP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The frame was sent by this host (else received).
    pub outgoing: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol (IPv6: the first header after the fixed one).
    pub proto: u8,
    /// TCP/UDP ports when the packet carries them (not for later fragments).
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// Length of the frame as captured.
    pub len: usize,
}

/// Captures every frame through one interface from [`Capture::start`] on.
pub struct Capture {
    fd: OwnedFd,
}

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;

impl Capture {
    /// Open a capture on `iface` inside `ns`.
    pub fn start(ns: &Netns, iface: &str) -> Result<Capture> {
        let iface = iface.to_owned();
        let fd = ns
            .enter(move || -> Result<OwnedFd> {
                let ifindex = nix::net::if_::if_nametoindex(iface.as_str())
                    .with_context(|| format!("no interface {iface}"))?;
                // SAFETY: plain socket(2)/bind(2)/setsockopt(2) calls on a fresh descriptor
                // owned by the OwnedFd from here on.
                unsafe {
                    let raw = libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                        (ETH_P_ALL.to_be()) as i32,
                    );
                    if raw < 0 {
                        return Err(io::Error::last_os_error()).context("AF_PACKET socket");
                    }
                    let fd = OwnedFd::from_raw_fd(raw);
                    let mut sll: libc::sockaddr_ll = zeroed();
                    sll.sll_family = libc::AF_PACKET as u16;
                    sll.sll_protocol = ETH_P_ALL.to_be();
                    sll.sll_ifindex = ifindex as i32;
                    if libc::bind(
                        raw,
                        &sll as *const _ as *const libc::sockaddr,
                        size_of::<libc::sockaddr_ll>() as u32,
                    ) < 0
                    {
                        return Err(io::Error::last_os_error()).context("binding the capture");
                    }
                    let tv = libc::timeval {
                        tv_sec: 0,
                        tv_usec: 50_000,
                    };
                    libc::setsockopt(
                        raw,
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        &tv as *const _ as *const libc::c_void,
                        size_of::<libc::timeval>() as u32,
                    );
                    Ok(fd)
                }
            })
            .with_context(|| format!("capture in {}", ns.name()))?;
        Ok(Capture { fd })
    }

    /// The IP packets captured so far and during the next `wait` (frames that are not IP are
    /// left out).
    pub fn packets(&self, wait: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: recvfrom into a buffer and a sockaddr_ll of the sizes given.
            let (n, pkttype) = unsafe {
                let mut sll: libc::sockaddr_ll = zeroed();
                let mut len = size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                );
                (n, sll.sll_pkttype)
            };
            if n > 0 {
                if let Some(p) = parse(&buf[..n as usize], pkttype == PACKET_OUTGOING) {
                    out.push(p);
                }
            }
            if Instant::now() >= deadline {
                return out;
            }
        }
    }
}

/// An Ethernet frame (up to two VLAN tags) → its IP packet's addresses.
pub fn parse(frame: &[u8], outgoing: bool) -> Option<Packet> {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
    off += 2;
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = u16::from_be_bytes(frame.get(off + 2..off + 4)?.try_into().ok()?);
            off += 4;
        }
    }
    let ip = frame.get(off..)?;
    let (src, dst, proto, l4, first) = match ethertype {
        0x0800 => {
            let ihl = (*ip.first()? & 0x0f) as usize * 4;
            let frag = u16::from_be_bytes(ip.get(6..8)?.try_into().ok()?);
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
                ip[9],
                ip.get(ihl..),
                frag & 0x1fff == 0,
            )
        }
        0x86dd => {
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            let next = ip[6];
            // A fragment header: the ports are in the first fragment only.
            let (proto, l4, first) = if next == 44 {
                let fh = ip.get(40..48)?;
                let offset = u16::from_be_bytes([fh[2], fh[3]]) >> 3;
                (fh[0], ip.get(48..), offset == 0)
            } else {
                (next, ip.get(40..), true)
            };
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                proto,
                l4,
                first,
            )
        }
        _ => return None,
    };
    let ports = match (proto, l4) {
        (6 | 17, Some(l4)) if first && l4.len() >= 4 => Some((
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )),
        _ => None,
    };
    Some(Packet {
        outgoing,
        src,
        dst,
        proto,
        sport: ports.map(|p| p.0),
        dport: ports.map(|p| p.1),
        len: frame.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_v6_tagged_and_fragments() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64, 0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip.extend_from_slice(&[198, 18, 100, 1, 198, 18, 1, 2]);
        ip.extend_from_slice(&[0, 53, 0x80, 0x01, 0, 8, 0, 0]);
        f.extend_from_slice(&ip);
        let p = parse(&f, false).unwrap();
        assert_eq!(p.src, "198.18.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.dst, "198.18.1.2".parse::<IpAddr>().unwrap());
        assert_eq!((p.proto, p.sport, p.dport), (17, Some(53), Some(0x8001)));

        let mut f6 = vec![0u8; 12];
        f6.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 16, 44, 64]);
        f6.extend_from_slice(&"2001:db8:2::11".parse::<Ipv6Addr>().unwrap().octets());
        f6.extend_from_slice(&"2001:db8:1::2".parse::<Ipv6Addr>().unwrap().octets());
        // Fragment header: next UDP, offset 1 (a later fragment).
        f6.extend_from_slice(&[17, 0, 0, 8, 0, 0, 0, 1]);
        f6.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let p = parse(&f6, true).unwrap();
        assert_eq!(p.src, "2001:db8:2::11".parse::<IpAddr>().unwrap());
        assert_eq!((p.proto, p.sport, p.outgoing), (17, None, true));

        assert_eq!(parse(&[0u8; 10], false), None);
    }
}
