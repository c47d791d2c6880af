//! UDP packet generator: `sendmmsg` on a raw IPv4 socket (`IPPROTO_RAW`, so `IP_HDRINCL`).
//!
//! Why this transmit path: every message of one `sendmmsg` call carries its own IP and UDP
//! header, so a batch spreads over many flows (source addresses and ports) in one system call,
//! while the client's own routing and neighbour tables still deliver it, as they would an
//! application's packets; no MAC addresses to craft. A plain UDP socket sends one flow per
//! socket (a batch is one flow). AF_PACKET would skip the client's IP stack (a little cheaper
//! per packet) and AF_XDP needs driver support the lab's veth peers do not give a sender; on a
//! two-core machine the generator shares a CPU with the backends anyway, so what matters is a
//! steady, paced, bounded stream, not the last few percent of generator speed.
//!
//! Packets are built once per flow (UDP checksum included; the kernel fills in the IP
//! checksum and total length) and sent round-robin over the flows at a fixed rate.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde::Serialize;

use super::pace::{sleep_until, Schedule};

/// What to send.
#[derive(Clone, Debug)]
pub struct UdpFlood {
    /// Source addresses (configured on the sending host).
    pub sources: Vec<Ipv4Addr>,
    /// Source ports per source address, from `base_port` up.
    pub ports_per_source: u16,
    pub base_port: u16,
    /// Destinations, spread over the flows.
    pub destinations: Vec<SocketAddrV4>,
    /// UDP payload bytes (the frame is 14 + 20 + 8 + payload).
    pub payload: usize,
    /// Packets per second.
    pub rate: f64,
    pub duration: Duration,
    /// Packets per `sendmmsg` call: the sender waits until this many are due and sends them
    /// in one burst.
    pub batch: usize,
}

/// What was sent.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UdpFloodResult {
    pub flows: u64,
    /// Packets the schedule called for.
    pub planned: u64,
    /// Packets the kernel accepted.
    pub sent: u64,
    /// Packets `sendmmsg` refused (the schedule moved on without them).
    pub refused: u64,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    pub sent_pps: f64,
    /// Calls that found more than two batches due (the sender fell behind its schedule).
    pub behind: u64,
}

impl UdpFlood {
    pub fn flows(&self) -> usize {
        self.sources.len() * self.ports_per_source as usize
    }

    /// Flow `f`'s (source, source port, destination).
    pub fn flow(&self, f: usize) -> (Ipv4Addr, u16, SocketAddrV4) {
        let s = self.sources.len();
        let src = self.sources[f % s];
        let sport = self.base_port + (f / s) as u16;
        let dst = self.destinations[f % self.destinations.len()];
        (src, sport, dst)
    }
}

/// An IPv4 + UDP packet (`IP_HDRINCL` form: the kernel fills the IP checksum and, if zero, the
/// id) with a valid UDP checksum and a payload of `payload` bytes.
pub fn build_packet(src: Ipv4Addr, sport: u16, dst: SocketAddrV4, payload: usize) -> Vec<u8> {
    let udp_len = 8 + payload;
    let total = 20 + udp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = libc::IPPROTO_UDP as u8;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = b"xlb-bench-"[i % 10];
    }
    let c = udp_checksum(&p[12..16], &p[16..20], &p[20..]);
    p[26..28].copy_from_slice(&c.to_be_bytes());
    p
}

/// The UDP checksum of `udp` (header with a zero checksum field, and payload) over the IPv4
/// pseudo-header; 0 is sent as 0xffff.
pub fn udp_checksum(src: &[u8], dst: &[u8], udp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u32::from(w);
        }
    };
    add(src);
    add(dst);
    add(&[0, libc::IPPROTO_UDP as u8]);
    add(&(udp.len() as u16).to_be_bytes());
    add(udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}

fn raw_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Sends the flood from the calling thread (inside the sender's namespace); blocks until the
/// schedule is done or `duration` + 2 s have passed.
pub fn run(cfg: &UdpFlood) -> Result<UdpFloodResult> {
    ensure!(
        !cfg.sources.is_empty() && !cfg.destinations.is_empty() && cfg.ports_per_source > 0,
        "a flood needs sources, ports and destinations"
    );
    ensure!(cfg.batch > 0 && cfg.batch <= 1024, "batch must be 1..=1024");
    super::tight_timer_slack();
    let flows = cfg.flows();
    let mut packets = Vec::with_capacity(flows);
    let mut addrs = Vec::with_capacity(flows);
    for f in 0..flows {
        let (src, sport, dst) = cfg.flow(f);
        packets.push(build_packet(src, sport, dst, cfg.payload));
        addrs.push(sockaddr(dst));
    }
    let sock = raw_socket()?;
    let sched = Schedule::for_duration(cfg.rate, cfg.duration);
    let mut iovs: Vec<libc::iovec> = vec![
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        cfg.batch
    ];
    // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; cfg.batch];

    let mut res = UdpFloodResult {
        flows: flows as u64,
        planned: sched.total(),
        ..Default::default()
    };
    let start = Instant::now();
    let deadline = start + cfg.duration + Duration::from_secs(2);
    let mut done: u64 = 0;
    let mut next_flow = 0usize;
    while done < sched.total() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let due = sched.due(now - start);
        // Send in bursts: wait until a whole batch is due (or the last packets are).
        let want = (done + cfg.batch as u64).min(sched.total());
        if due < want {
            sleep_until(start + sched.at(want - 1));
            continue;
        }
        if due - done > 2 * cfg.batch as u64 {
            res.behind += 1;
        }
        let n = ((due - done) as usize).min(cfg.batch);
        for j in 0..n {
            let f = (next_flow + j) % flows;
            iovs[j].iov_base = packets[f].as_ptr() as *mut libc::c_void;
            iovs[j].iov_len = packets[f].len();
            let h = &mut msgs[j].msg_hdr;
            h.msg_name = &addrs[f] as *const libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[j];
            h.msg_iovlen = 1;
            msgs[j].msg_len = 0;
        }
        // SAFETY: msgs[..n] point at live buffers (packets, addrs, iovs) for the call.
        let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as _, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            res.refused += n as u64;
            res.first_error.get_or_insert_with(|| e.to_string());
        } else {
            res.sent += r as u64;
            res.refused += (n - r as usize) as u64;
        }
        done += n as u64;
        next_flow = (next_flow + n) % flows;
    }
    let elapsed = start.elapsed().as_secs_f64();
    res.elapsed_s = elapsed;
    res.sent_pps = res.sent as f64 / elapsed.max(1e-9);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(mut s: u32) -> u16 {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn packets_carry_valid_checksums() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 100, 1), 9000);
        for payload in [0, 1, 18, 1000] {
            let p = build_packet(Ipv4Addr::new(198, 18, 1, 100), 40000, dst, payload);
            assert_eq!(p.len(), 28 + payload);
            assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
            assert_eq!(u16::from_be_bytes([p[24], p[25]]) as usize, 8 + payload);
            // Summing the pseudo-header and the UDP datagram with its checksum gives 0xffff.
            let mut sum = 0u32;
            let mut words = |b: &[u8]| {
                for c in b.chunks(2) {
                    sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
                }
            };
            words(&p[12..20]);
            words(&[0, 17]);
            words(&((8 + payload) as u16).to_be_bytes());
            words(&p[20..]);
            assert_eq!(fold(sum), 0xffff, "payload {payload}");
        }
    }

    #[test]
    fn flows_are_distinct_and_spread() {
        let cfg = UdpFlood {
            sources: (100..104).map(|i| Ipv4Addr::new(198, 18, 1, i)).collect(),
            ports_per_source: 8,
            base_port: 20000,
            destinations: (11..14)
                .map(|i| SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, i), 9000))
                .collect(),
            payload: 18,
            rate: 1.0,
            duration: Duration::from_secs(1),
            batch: 1,
        };
        assert_eq!(cfg.flows(), 32);
        let mut seen = std::collections::HashSet::new();
        let mut per_dst = std::collections::BTreeMap::new();
        for f in 0..cfg.flows() {
            let (src, sport, dst) = cfg.flow(f);
            assert!(seen.insert((src, sport)), "flow {f} repeats");
            *per_dst.entry(dst).or_insert(0) += 1;
        }
        assert_eq!(per_dst.len(), 3);
        assert!(per_dst.values().all(|&n| (10..=11).contains(&n)));
    }
}
