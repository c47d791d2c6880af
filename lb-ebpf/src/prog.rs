//! Entry points and the per-packet path: parse, classify, pick a backend, rewrite, forward.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    global, hash::flow_hash, BackendAddrValue, BackendInfo, CtValue, FlowKey, NextHop, RevValue,
    ServiceInfo, ServiceKey, AF_INET, AF_INET6, BA_F_SHARED, BE_F_ACTIVE, BE_F_ESTABLISHED_OK,
    BE_F_SHARED, CT_F_CLOSING, LAST_SEEN_GRANULARITY_NS, NO_BACKEND, PORTS_BACKEND, PORTS_SERVICE,
    PROTO_TCP, PROTO_UDP, SLOTS_PER_SERVICE, SVC_F_EMPTY, TCP_FIN, TCP_RST,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    maps::{
        count, counters, hash_seed, port_in, ring_size, BACKENDS, BACKEND_ADDRS, BACKEND_STATS,
        CONNTRACK, MAGLEV, NEXTHOPS, REVERSE, SERVICES, SERVICE_STATS,
    },
    nat::{self, Pkt, Rewrite},
    parse::*,
};

#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    match try_xlb(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// Returns `XDP_PASS`: attached to the receiving end of veth pairs so that they accept
/// redirected frames (veth NAPI), and used as a benchmark floor.
#[xdp]
pub fn xlb_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Returns `XDP_TX`: the benchmark floor for a forwarding program.
#[xdp]
pub fn xlb_tx(_ctx: XdpContext) -> u32 {
    XDP_TX
}

#[inline(always)]
fn pass() -> u32 {
    count(global::PASSED);
    XDP_PASS
}

#[inline(always)]
fn malformed() -> u32 {
    count(global::MALFORMED);
    count(global::DROPPED);
    XDP_DROP
}

#[inline(always)]
fn try_xlb(ctx: &XdpContext) -> Result<u32, u32> {
    let eth: *const EthHdr = ptr_at(ctx, 0).map_err(|_| malformed())?;
    let mut ethertype =
        u16::from_be(unsafe { core::ptr::addr_of!((*eth).ether_type).read_unaligned() });
    let mut l3 = EthHdr::LEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag: *const [u8; 4] = ptr_at(ctx, l3).map_err(|_| malformed())?;
        let tag = unsafe { *tag };
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += 4;
    }
    let p = match ethertype {
        ETH_P_IPV4 => parse_v4(ctx, l3)?,
        ETH_P_IPV6 => parse_v6(ctx, l3)?,
        _ => return Ok(pass()),
    };

    // One key on the stack: the destination for services, then the source for backends.
    // The port bitmaps spare most other traffic both hash lookups.
    let mut key = ServiceKey {
        addr: p.key.dst,
        port: p.key.dport,
        proto: p.key.proto,
        family: p.key.family,
    };
    if port_in(PORTS_SERVICE, p.key.dport) {
        if let Some(svc) = SERVICES.get_ptr(&key) {
            return forward(ctx, &p, svc);
        }
    }
    if !port_in(PORTS_BACKEND, p.key.sport) {
        return Ok(pass());
    }
    key.addr = p.key.src;
    key.port = p.key.sport;
    if let Some(ba) = BACKEND_ADDRS.get_ptr(&key) {
        if unsafe { (*ba).flags } & BA_F_SHARED != 0 {
            if let Some(rv) = REVERSE.get_ptr_mut(&p.key) {
                return shared_reply(ctx, &p, rv);
            }
            // A flow pinned before the address became shared has no REVERSE entry: try the
            // service the entry names, as for an unshared address.
        }
        return reply(ctx, &p, ba);
    }
    Ok(pass())
}

#[inline(always)]
fn l4_ok(ctx: &XdpContext, proto: u8, l4: usize, l4_len: usize) -> Result<([u8; 4], u8), u32> {
    // The ports are the first 4 bytes of both headers.
    let mut flags = 0;
    if proto == PROTO_TCP {
        let th: *const [u8; 20] = ptr_at(ctx, l4).map_err(|_| malformed())?;
        if l4_len < TcpHdr::LEN {
            return Err(malformed());
        }
        flags = unsafe { (*th)[13] };
    } else {
        let _: *const UdpHdr = ptr_at(ctx, l4).map_err(|_| malformed())?;
        if l4_len < UdpHdr::LEN {
            return Err(malformed());
        }
    }
    let ports: *const [u8; 4] = ptr_at(ctx, l4).map_err(|_| malformed())?;
    Ok((unsafe { *ports }, flags))
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3: usize) -> Result<Pkt, u32> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).map_err(|_| malformed())?;
    let ip = unsafe { &*ip };
    let vihl = ip.vihl;
    let ihl = ((vihl & 0x0f) as usize) << 2;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(malformed());
    }
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    if tot_len < ihl || l3 + tot_len > frame_len {
        return Err(malformed());
    }
    if u16::from_be_bytes(ip.frags) & IP_MF_OFFSET != 0 {
        count(global::FRAGMENTS);
        return Err(pass());
    }
    let proto = ip.proto;
    if proto == IPPROTO_ICMP {
        count(global::ICMP);
        return Err(pass());
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(pass());
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&ip.src_addr);
    dst[..4].copy_from_slice(&ip.dst_addr);
    let l4 = l3 + ihl;
    let (ports, tcp_flags) = l4_ok(ctx, proto, l4, tot_len - ihl)?;
    Ok(Pkt::new(src, dst, ports, proto, AF_INET, l3, l4, tcp_flags))
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3: usize) -> Result<Pkt, u32> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3).map_err(|_| malformed())?;
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(malformed());
    }
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    if l3 + Ipv6Hdr::LEN + payload_len > frame_len {
        return Err(malformed());
    }
    let proto = ip.next_hdr;
    if proto == IPPROTO_ICMPV6 {
        count(global::ICMP);
        return Err(pass());
    }
    // Extension headers and other protocols belong to the kernel.
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(pass());
    }
    let src = ip.src_addr;
    let dst = ip.dst_addr;
    let l4 = l3 + Ipv6Hdr::LEN;
    let (ports, tcp_flags) = l4_ok(ctx, proto, l4, payload_len)?;
    Ok(Pkt::new(
        src, dst, ports, proto, AF_INET6, l3, l4, tcp_flags,
    ))
}

#[inline(always)]
fn no_backend(service_id: u32) -> u32 {
    if let Some(c) = counters(&SERVICE_STATS, service_id) {
        c.dropped += 1;
    }
    count(global::NO_BACKEND);
    count(global::DROPPED);
    XDP_DROP
}

/// Client → VIP.
#[inline(never)]
fn forward(ctx: &XdpContext, p: &Pkt, svc: *const ServiceInfo) -> Result<u32, u32> {
    let (service_id, slot, flags) = unsafe { ((*svc).id, (*svc).slot, (*svc).flags) };
    let len = (ctx.data_end() - ctx.data()) as u64;
    let now = unsafe { bpf_ktime_get_coarse_ns() };

    // A flow keeps its backend while the backend is healthy or draining.
    let mut backend_id = NO_BACKEND;
    let mut be: *const BackendInfo = core::ptr::null();
    match CONNTRACK.get_ptr_mut(&p.key) {
        Some(ct) => unsafe {
            let id = (*ct).backend_id;
            if let Some(b) = BACKENDS.get_ptr(id) {
                if (*b).flags & BE_F_ESTABLISHED_OK != 0 {
                    backend_id = id;
                    be = b;
                    if now.wrapping_sub((*ct).last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
                        (*ct).last_seen_ns = now;
                    }
                    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                        (*ct).flags |= CT_F_CLOSING;
                    }
                }
            }
        },
        None => count(global::CONNTRACK_MISS),
    }
    let new_flow = be.is_null();
    if new_flow {
        if flags & SVC_F_EMPTY != 0 {
            return Ok(no_backend(service_id));
        }
        let ring = ring_size();
        let k = &p.key;
        let h = flow_hash(&k.src, &k.dst, k.sport, k.dport, k.proto, hash_seed());
        let Some(pos) = h.checked_rem(ring) else {
            return Ok(no_backend(service_id));
        };
        let idx = (service_id * SLOTS_PER_SERVICE + slot) * ring + pos;
        backend_id = match MAGLEV.get_ptr(idx) {
            Some(id) => unsafe { *id },
            None => NO_BACKEND,
        };
        match BACKENDS.get_ptr(backend_id) {
            Some(b) if unsafe { (*b).flags } & BE_F_ACTIVE != 0 => be = b,
            _ => return Ok(no_backend(service_id)),
        }
        pin_flow(p, service_id, backend_id, be, now);
    }
    let (addr, port) = unsafe { (&(*be).addr, (*be).port) };

    let nf = new_flow as u64;
    if let Some(c) = counters(&SERVICE_STATS, service_id) {
        c.packets += 1;
        c.bytes += len;
        c.new_flows += nf;
    }
    if let Some(c) = counters(&BACKEND_STATS, backend_id) {
        c.packets += 1;
        c.bytes += len;
        c.new_flows += nf;
    }

    let r = nat::rewrite(ctx, p, Rewrite::Dst, addr, port);
    if r != nat::DONE {
        return Err(r);
    }
    // Backend ids are below MAX_BACKENDS, the size of NEXTHOPS: the lookup cannot fail.
    let Some(nh) = NEXTHOPS.get_ptr_mut(backend_id) else {
        return Ok(no_backend(service_id));
    };
    Ok(nat::fib_forward(ctx, p, Rewrite::Dst, addr, unsafe {
        &mut *nh
    }))
}

/// Remember a new flow's backend (and, for a backend address several services share, how to
/// rewrite its replies).
#[inline(never)]
fn pin_flow(p: &Pkt, service_id: u32, backend_id: u32, be: *const BackendInfo, now: u64) {
    let ct = CtValue {
        backend_id,
        service_id,
        last_seen_ns: now,
        flags: if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            CT_F_CLOSING
        } else {
            0
        },
        _pad: 0,
        reply_nh: NO_HOP,
    };
    let _ = CONNTRACK.insert(&p.key, &ct, 0);
    if unsafe { (*be).flags } & BE_F_SHARED == 0 {
        return;
    }
    let rkey = FlowKey {
        src: unsafe { (*be).addr },
        dst: p.key.src,
        sport: unsafe { (*be).port },
        dport: p.key.sport,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    let rv = RevValue {
        vip: p.key.dst,
        vport: p.key.dport,
        _pad: [0; 2],
        service_id,
        backend_id,
        _pad2: 0,
        nh: NO_HOP,
    };
    let _ = REVERSE.insert(&rkey, &rv, 0);
}

const NO_HOP: NextHop = NextHop {
    ifindex: 0,
    mtu: 0,
    vlan: 0,
    smac: [0; 6],
    dmac: [0; 6],
    flags: 0,
    expires_ns: 0,
};

/// Backend → client: restore the VIP as the source. The flow is found in `CONNTRACK` under
/// the client's key, rebuilt from the service the backend address serves.
#[inline(never)]
fn reply(ctx: &XdpContext, p: &Pkt, ba: *const BackendAddrValue) -> Result<u32, u32> {
    let (vip, vport, service_id, backend_id) =
        unsafe { ((*ba).vip, (*ba).vport, (*ba).service_id, (*ba).backend_id) };
    let key = FlowKey {
        src: p.key.dst,
        dst: vip,
        sport: p.key.dport,
        dport: vport,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    let Some(ct) = CONNTRACK.get_ptr_mut(&key) else {
        return Ok(pass());
    };
    // Not a flow of ours to this backend (e.g. moved to another one): the kernel's.
    if unsafe { (*ct).backend_id } != backend_id {
        return Ok(pass());
    }
    count_reply(ctx, service_id, backend_id);
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        unsafe { (*ct).flags |= CT_F_CLOSING };
    }
    let r = nat::rewrite(ctx, p, Rewrite::Src, &vip, vport);
    if r != nat::DONE {
        return Err(r);
    }
    let nh = unsafe { &mut (*ct).reply_nh };
    Ok(nat::fib_forward(ctx, p, Rewrite::Src, &vip, nh))
}

#[inline(always)]
fn count_reply(ctx: &XdpContext, service_id: u32, backend_id: u32) {
    let len = (ctx.data_end() - ctx.data()) as u64;
    if let Some(c) = counters(&SERVICE_STATS, service_id) {
        c.reply_packets += 1;
        c.reply_bytes += len;
    }
    if let Some(c) = counters(&BACKEND_STATS, backend_id) {
        c.reply_packets += 1;
        c.reply_bytes += len;
    }
}

/// A reply from a backend address several services share: its flow's `REVERSE` entry says
/// which VIP to restore.
#[inline(never)]
fn shared_reply(ctx: &XdpContext, p: &Pkt, rv: *mut RevValue) -> Result<u32, u32> {
    let (vip, vport, service_id, backend_id) =
        unsafe { ((*rv).vip, (*rv).vport, (*rv).service_id, (*rv).backend_id) };
    count_reply(ctx, service_id, backend_id);
    // A backend ending the flow marks the client's conntrack entry too.
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        mark_closing(p, &vip, vport);
    }
    let r = nat::rewrite(ctx, p, Rewrite::Src, &vip, vport);
    if r != nat::DONE {
        return Err(r);
    }
    let nh = unsafe { &mut (*rv).nh };
    Ok(nat::fib_forward(ctx, p, Rewrite::Src, &vip, nh))
}

#[inline(never)]
fn mark_closing(p: &Pkt, vip: &[u8; 16], vport: [u8; 2]) {
    let key = FlowKey {
        src: p.key.dst,
        dst: *vip,
        sport: p.key.dport,
        dport: vport,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    if let Some(ct) = CONNTRACK.get_ptr_mut(&key) {
        unsafe { (*ct).flags |= CT_F_CLOSING };
    }
}
