//! ICMP: errors about balanced flows translated in both directions (errors about a DSR
//! service's replies sent on to the flow's backend untranslated, as its data packets go), and
//! the "fragmentation needed" / "packet too big" errors xlb sends itself.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    csum, global, hash::flow_hash, CtValue, FlowKey, NextHop, ServiceKey, AF_INET, BA_F_SHARED,
    BE_F_ACTIVE, BE_F_ESTABLISHED_OK, ICMP_QUOTE_MAX, MAX_BACKENDS, NH_F_KERNEL, NO_BACKEND,
    PORTS_BACKEND, PORTS_SERVICE, PROTO_TCP, PROTO_UDP, SVC_F_DSR, TCP_ACK, TCP_SYN,
};

use crate::{
    encap,
    maps::{
        count, hash_seed, passive, port_in, BACKENDS, BACKEND_ADDRS, CONNTRACK, NEXTHOPS,
        NH_SCRATCH, REVERSE, SERVICES, UNCONFIRMED,
    },
    nat::{csum_replace16, resolve, transmit, Target, DONE, NH_LOCAL, NH_NO_NEIGH, NH_OK},
    parse::{malformed, pass, ptr_at, Pkt, IPPROTO_ICMP, IPPROTO_ICMPV6},
    prog::table_backend,
};

/// Read `N` bytes at `off`.
#[inline(always)]
fn get<const N: usize>(ctx: &XdpContext, off: usize) -> Result<[u8; N], u32> {
    let p: *const [u8; N] = ptr_at(ctx, off).map_err(|_| XDP_PASS)?;
    // SAFETY: bounds checked by `ptr_at`.
    Ok(unsafe { *p })
}

/// Write `N` bytes at `off`.
#[inline(always)]
fn put<const N: usize>(ctx: &XdpContext, off: usize, v: &[u8; N]) -> Result<(), u32> {
    let p: *mut [u8; N] = ptr_at(ctx, off).map_err(|_| malformed())?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { *p = *v };
    Ok(())
}

/// An ICMP / ICMPv6 packet: translate it when it is an error about a balanced flow, else
/// pass it.
#[inline(never)]
pub fn handle(ctx: &XdpContext, p: &Pkt) -> u32 {
    match try_handle(ctx, p) {
        Ok(a) | Err(a) => a,
    }
}

#[inline(always)]
fn other_icmp() -> u32 {
    count(global::ICMP);
    pass()
}

#[inline(always)]
fn try_handle(ctx: &XdpContext, p: &Pkt) -> Result<u32, u32> {
    let v4 = p.key.family == AF_INET;
    let l4 = p.l4 & 0xffff;
    let hdr: [u8; 4] = get(ctx, l4).map_err(|_| other_icmp())?;
    let t = hdr[0];
    let is_error = if v4 {
        t == 3 || t == 11 || t == 12
    } else {
        (1..=4).contains(&t)
    };
    if !is_error {
        return Ok(other_icmp());
    }
    // The quoted packet: its IP header and at least 8 bytes of TCP/UDP header.
    let e3 = l4 + 8;
    let mut q = Quote {
        esrc: [0; 16],
        edst: [0; 16],
        e3,
        e4: 0,
        esport: [0; 2],
        edport: [0; 2],
        proto: 0,
        v4,
        dec_ttl: false,
    };
    if v4 {
        let h: *const [u8; 20] = ptr_at(ctx, e3).map_err(|_| other_icmp())?;
        // SAFETY: bounds checked by `ptr_at`.
        let h = unsafe { &*h };
        let eihl = ((h[0] & 0x0f) as usize) << 2;
        if h[0] >> 4 != 4 || eihl < 20 {
            return Ok(other_icmp());
        }
        // A quoted later fragment has no ports.
        if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
            return Ok(other_icmp());
        }
        q.proto = h[9];
        q.esrc[..4].copy_from_slice(&h[12..16]);
        q.edst[..4].copy_from_slice(&h[16..20]);
        q.e4 = e3 + (eihl & 0x3c);
    } else {
        let h: *const [u8; 40] = ptr_at(ctx, e3).map_err(|_| other_icmp())?;
        // SAFETY: bounds checked by `ptr_at`.
        let h = unsafe { &*h };
        if h[0] >> 4 != 6 {
            return Ok(other_icmp());
        }
        q.proto = h[6];
        q.esrc.copy_from_slice(&h[8..24]);
        q.edst.copy_from_slice(&h[24..40]);
        q.e4 = e3 + 40;
        // A quoted first fragment (a big datagram's "packet too big"): its fragment header
        // comes before the ports.
        if q.proto == IPPROTO_FRAGMENT {
            let fh: [u8; 8] = get(ctx, (e3 + 40) & 0xffff).map_err(|_| other_icmp())?;
            if u16::from_be_bytes([fh[2], fh[3]]) & 0xfff8 != 0 {
                return Ok(other_icmp());
            }
            q.proto = fh[0];
            q.e4 = e3 + 48;
        }
    }
    if q.proto != PROTO_TCP && q.proto != PROTO_UDP {
        return Ok(other_icmp());
    }
    // The quote must hold the quoted IP header and 8 bytes of TCP/UDP header inside the
    // ICMP message (not in padding after it).
    if q.e4 + 8 > p.l4 + p.l4_len {
        return Ok(other_icmp());
    }
    let ports: [u8; 8] = get(ctx, q.e4 & 0xffff).map_err(|_| other_icmp())?;
    q.esport = [ports[0], ports[1]];
    q.edport = [ports[2], ports[3]];
    if p.key.dst != q.esrc {
        return Ok(other_icmp());
    }
    if port_in(PORTS_SERVICE, q.esport) {
        let mut r = to_backend(ctx, p, &q);
        if r == DSR {
            // Called from here, not from `to_backend`: the verifier adds up the stack frames
            // of a call chain (512 bytes in all), and `to_backend`'s is large.
            r = to_dsr_backend(ctx, p, &q);
        }
        if r != NOT_OURS {
            return Ok(r);
        }
    }
    if port_in(PORTS_BACKEND, q.edport) {
        let r = to_client(ctx, p, &q);
        if r != NOT_OURS {
            return Ok(r);
        }
    }
    Ok(other_icmp())
}

/// IPv6 fragment extension header.
const IPPROTO_FRAGMENT: u8 = 44;

/// `to_backend` / `to_client`: the error is about no flow of theirs.
const NOT_OURS: u32 = u32::MAX;
/// `to_backend`: the quoted source is a DSR service's: for `to_dsr_backend`.
const DSR: u32 = u32::MAX - 1;

/// An error about a reply xlb sent (VIP → client): to the flow's backend.
#[inline(never)]
fn to_backend(ctx: &XdpContext, p: &Pkt, q: &Quote) -> u32 {
    let skey = ServiceKey {
        addr: q.esrc,
        port: q.esport,
        proto: q.proto,
        family: p.key.family,
    };
    let Some(svc) = SERVICES.get_ptr(&skey) else {
        return NOT_OURS;
    };
    // SAFETY: a map value pointer checked for null.
    if unsafe { (*svc).flags } & SVC_F_DSR != 0 {
        return DSR;
    }
    let key = FlowKey {
        src: q.edst,
        dst: q.esrc,
        sport: q.edport,
        dport: q.esport,
        proto: q.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    // A flow without an entry (a handshake's SYN-ACK among them) is not known here: the
    // error is the kernel's.
    let Some(ct) = flow_entry(&key) else {
        return NOT_OURS;
    };
    // SAFETY: map value pointers checked for null.
    let id = unsafe { (*ct).backend_id };
    let Some(be) = BACKENDS.get_ptr(id) else {
        return NOT_OURS;
    };
    // SAFETY: as above.
    let t = unsafe {
        if (*be).flags & BE_F_ESTABLISHED_OK == 0 {
            return NOT_OURS;
        }
        Target {
            addr: (*be).addr,
            port: (*be).port,
        }
    };
    let Some(nh) = NEXTHOPS.get_ptr_mut(id) else {
        return NOT_OURS;
    };
    // SAFETY: as above.
    let nh = unsafe { &mut *nh };
    let src = p.key.src;
    deliver(ctx, p, q, true, &t, &src, nh)
}

/// An error about a reply a DSR backend sent from the VIP (VIP → client): to the backend that
/// holds the flow, found as its data packets find it (the flow's entry, else the service's
/// Maglev table), unchanged but for its TTL, the way the service forwards (`encap`). The
/// backend's own stack then sees the error (and lowers its path MTU).
#[inline(never)]
fn to_dsr_backend(ctx: &XdpContext, p: &Pkt, q: &Quote) -> u32 {
    // The lookups in their own frame: this one is in the chain down to `encap`'s.
    let f = dsr_flow(p, q);
    if f == NO_FLOW {
        return NOT_OURS;
    }
    let id = (f & 0xffff) as u32;
    let Some(be) = BACKENDS.get_ptr(id) else {
        return NOT_OURS;
    };
    let Some(nh) = NEXTHOPS.get_ptr_mut(id) else {
        return NOT_OURS;
    };
    if p.ttl <= 1 {
        count(global::TTL_EXCEEDED);
        return pass();
    }
    // Flow hash << 32 | service id.
    let ids = (f & !0xffff_ffff) | ((f >> 16) & 0xffff);
    // SAFETY: map value pointers checked for null.
    let r = unsafe { encap::send_error(ctx, p, ids, &(*be).addr, &mut *nh) };
    if r == encap::TOO_BIG {
        // Too big once encapsulated (IPv4 without DF went to the kernel): no ICMP error about
        // an ICMP error.
        count(global::DROPPED);
        return XDP_DROP;
    }
    r
}

/// `dsr_flow`: no backend for the flow.
const NO_FLOW: u64 = u64::MAX;

// Backend and service ids fit in 16 bits (`dsr_flow`; services: at most 4096, the
// daemon's `max_services` limit).
const _: () = assert!(MAX_BACKENDS <= 1 << 16);

/// The client flow a DSR service's error is about (the quoted packet reversed): its flow
/// hash << 32 | service id << 16 | the backend it goes to (its entry's if it has one and the
/// backend takes established flows, else the Maglev table's if that backend is active), or
/// [`NO_FLOW`].
#[inline(never)]
fn dsr_flow(p: &Pkt, q: &Quote) -> u64 {
    let skey = ServiceKey {
        addr: q.esrc,
        port: q.esport,
        proto: q.proto,
        family: p.key.family,
    };
    let service_id = match SERVICES.get_ptr(&skey) {
        // SAFETY: a map value pointer checked for null.
        Some(svc) => unsafe { (*svc).id },
        None => return NO_FLOW,
    };
    let key = FlowKey {
        src: q.edst,
        dst: q.esrc,
        sport: q.edport,
        dport: q.esport,
        proto: q.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    let mut id = NO_BACKEND;
    if let Some(ct) = flow_entry(&key) {
        // SAFETY: map value pointers checked for null.
        unsafe {
            let b = (*ct).backend_id;
            if (*ct).service_id == service_id {
                if let Some(be) = BACKENDS.get_ptr(b) {
                    if (*be).flags & BE_F_ESTABLISHED_OK != 0 {
                        id = b;
                    }
                }
            }
        }
    }
    if id == NO_BACKEND {
        // No entry here (another node of a fleet saw the flow, or it was evicted): the node
        // that forwards its packets picks the backend by the same table.
        let b = table_backend(&key);
        match BACKENDS.get_ptr(b) {
            // SAFETY: as above.
            Some(be) if unsafe { (*be).flags } & BE_F_ACTIVE != 0 => id = b,
            _ => return NO_FLOW,
        }
    }
    ((key_hash(&key) as u64) << 32) | (((service_id & 0xffff) as u64) << 16) | (id & 0xffff) as u64
}

/// The flow hash of client flow `key` (its own frame: off the caller's stack).
#[inline(never)]
fn key_hash(key: &FlowKey) -> u32 {
    flow_hash(
        &key.src,
        &key.dst,
        key.sport,
        key.dport,
        key.proto,
        hash_seed(),
    )
}

/// Send a translated error on: TTL, next hop (the kernel's when there is no neighbour yet
/// or the egress cannot take XDP frames), translation, transmission.
#[inline(always)]
fn deliver(
    ctx: &XdpContext,
    p: &Pkt,
    q: &Quote,
    to_backend: bool,
    t: &Target,
    from: &[u8; 16],
    nh: &mut NextHop,
) -> u32 {
    if p.ttl <= 1 {
        count(global::TTL_EXCEEDED);
        return pass();
    }
    let (src, dst) = if to_backend {
        (from, &t.addr)
    } else {
        (&t.addr, from)
    };
    let rc = resolve(ctx, p, src, dst, nh);
    // The kernel's: no neighbour yet, an egress that cannot take XDP frames, or "not
    // forwarded" (local, or no route).
    let kernel =
        rc == NH_NO_NEIGH || rc == NH_LOCAL || (rc == NH_OK && nh.flags & NH_F_KERNEL != 0);
    if rc != NH_OK && !kernel {
        return NOT_OURS;
    }
    let q = Quote {
        dec_ttl: !kernel,
        ..*q
    };
    let r = translate(ctx, p, &q, to_backend, t);
    if r != DONE {
        return r;
    }
    if kernel {
        if rc == NH_NO_NEIGH {
            count(global::FIB_NO_NEIGH);
        } else if rc == NH_OK {
            count(global::EGRESS_KERNEL);
        }
        return pass();
    }
    let ok = if to_backend {
        global::ICMP_TO_BACKEND
    } else {
        global::ICMP_TO_CLIENT
    };
    transmit(ctx, p.tags, nh, ok)
}

/// An error about the client → backend leg (or from the backend): to the client, from the
/// VIP.
#[inline(never)]
fn to_client(ctx: &XdpContext, p: &Pkt, q: &Quote) -> u32 {
    let bkey = ServiceKey {
        addr: q.edst,
        port: q.edport,
        proto: q.proto,
        family: p.key.family,
    };
    let Some(ba) = BACKEND_ADDRS.get_ptr(&bkey) else {
        return NOT_OURS;
    };
    // SAFETY: map value pointers checked for null.
    let (mut backend_id, baflags) = unsafe { ((*ba).backend_id, (*ba).flags) };
    // SAFETY: as above.
    let mut t = unsafe {
        Target {
            addr: (*ba).vip,
            port: (*ba).vport,
        }
    };
    let nh: *mut NextHop;
    if baflags & BA_F_SHARED != 0 {
        // A shared address's flows are known by their reverse entries only.
        let rkey = FlowKey {
            src: q.edst,
            dst: q.esrc,
            sport: q.edport,
            dport: q.esport,
            proto: q.proto,
            family: p.key.family,
            _pad: [0; 2],
        };
        let Some(rv) = REVERSE.get_ptr_mut(&rkey) else {
            return NOT_OURS;
        };
        // SAFETY: as above.
        unsafe {
            t.addr = (*rv).vip;
            t.port = (*rv).vport;
            backend_id = (*rv).backend_id;
            nh = &mut (*rv).nh;
        }
        // The reverse entry (keyed without the VIP) counts only while the client's flow is
        // pinned to its backend.
        if !pinned_to(p, q, &t, backend_id) {
            return NOT_OURS;
        }
    } else {
        let key = FlowKey {
            src: q.esrc,
            dst: t.addr,
            sport: q.esport,
            dport: t.port,
            proto: q.proto,
            family: p.key.family,
            _pad: [0; 2],
        };
        match flow_entry(&key) {
            // SAFETY: as above.
            Some(ct) => unsafe {
                if (*ct).backend_id != backend_id {
                    return NOT_OURS;
                }
                nh = &mut (*ct).reply_nh;
            },
            // A handshake whose entry was evicted: ours if the table picks this backend.
            None => {
                if q.proto != PROTO_TCP || table_backend(&key) != backend_id {
                    return NOT_OURS;
                }
                let Some(s) = NH_SCRATCH.get_ptr_mut(0) else {
                    return NOT_OURS;
                };
                // An unset hop (`resolve` fills it): zero ifindex and expiry.
                // SAFETY: a per-CPU map value checked for null.
                unsafe {
                    (*s).ifindex = 0;
                    (*s).expires_ns = 0;
                }
                nh = s;
            }
        }
    }
    // SAFETY: a pointer into a map value checked for null.
    let nh = unsafe { &mut *nh };
    if q.proto == PROTO_TCP && refused_syn(ctx, p, q, backend_id, &t) {
        count(global::DROPPED);
        return XDP_DROP;
    }
    let client = p.key.dst;
    deliver(ctx, p, q, false, &t, &client, nh)
}

/// Whether the client's flow to `t` (the quoted client → backend packet's) is in the
/// connection table, pinned to `backend_id`.
#[inline(never)]
fn pinned_to(p: &Pkt, q: &Quote, t: &Target, backend_id: u32) -> bool {
    let key = FlowKey {
        src: q.esrc,
        dst: t.addr,
        sport: q.esport,
        dport: t.port,
        proto: q.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    match flow_entry(&key) {
        // SAFETY: a map value pointer checked for null.
        Some(ct) => unsafe { (*ct).backend_id == backend_id },
        None => false,
    }
}

/// Passive health: a "destination unreachable" about a client's SYN to `backend_id` counts
/// as a refused handshake; answers whether it is withheld from the client (`redispatch`).
#[inline(never)]
fn refused_syn(ctx: &XdpContext, p: &Pkt, q: &Quote, backend_id: u32, t: &Target) -> bool {
    let unreachable_type = if q.v4 { 3 } else { 1 };
    let Ok(h) = get::<2>(ctx, p.l4 & 0xffff) else {
        return false;
    };
    // The quoted TCP flags must be inside the message.
    if h[0] != unreachable_type || q.e4 + 14 > p.l4 + p.l4_len {
        return false;
    }
    // Data offset and flags (two bytes: one-byte reads confuse the verifier's bounds).
    let Ok(f) = get::<2>(ctx, (q.e4 + 12) & 0xffff) else {
        return false;
    };
    if f[1] & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return false;
    }
    let Some(c) = passive(backend_id) else {
        return false;
    };
    c.unreachable += 1;
    if crate::prog::refusal_withheld(p, backend_id, &t.addr, t.port, false) {
        c.redispatched += 1;
        return true;
    }
    false
}

/// A client flow's entry: in the connection table, or (a handshake, a UDP flow not answered
/// yet) in `UNCONFIRMED`.
#[inline(always)]
fn flow_entry(key: &FlowKey) -> Option<*mut CtValue> {
    match CONNTRACK.get_ptr_mut(key) {
        Some(ct) => Some(ct),
        None => UNCONFIRMED.get_ptr_mut(key),
    }
}

/// The quoted packet of an ICMP error.
#[derive(Clone, Copy)]
struct Quote {
    esrc: [u8; 16],
    edst: [u8; 16],
    /// Offsets of its IP and TCP/UDP headers.
    e3: usize,
    e4: usize,
    esport: [u8; 2],
    edport: [u8; 2],
    proto: u8,
    v4: bool,
    /// Decrement the outer TTL (the error leaves through XDP, not through the kernel).
    dec_ttl: bool,
}

/// Rewrite an ICMP error: `to_backend`: outer destination and quoted source become `t`'s
/// address, the quoted source port `t`'s port; else outer source and quoted destination and
/// destination port. Fixes the outer IPv4 checksum, the quoted IPv4 header checksum and the
/// ICMP checksum, and decrements the TTL. The quoted TCP/UDP checksum is left alone.
#[inline(never)]
fn translate(ctx: &XdpContext, p: &Pkt, q: &Quote, to_backend: bool, t: &Target) -> u32 {
    let r = if to_backend {
        try_translate::<true>(ctx, p, q, t)
    } else {
        try_translate::<false>(ctx, p, q, t)
    };
    match r {
        Ok(()) => DONE,
        Err(a) => a,
    }
}

#[inline(always)]
fn try_translate<const TO_BACKEND: bool>(
    ctx: &XdpContext,
    p: &Pkt,
    q: &Quote,
    t: &Target,
) -> Result<(), u32> {
    let l3 = p.l3 & 0xff;
    let l4 = p.l4 & 0xffff;
    let e3 = q.e3 & 0xffff;
    let e4 = q.e4 & 0xffff;
    // One pointer per header field: the verifier tracks the bounds of each pointer it
    // checked; constant offsets keep everything in registers.
    let ick: *mut [u8; 2] = ptr_at(ctx, l4 + 2).map_err(|_| malformed())?;
    let port: *mut [u8; 2] =
        ptr_at(ctx, if TO_BACKEND { e4 } else { e4 + 2 }).map_err(|_| malformed())?;
    // SAFETY: bounds checked by `ptr_at` (here and below).
    unsafe {
        let mut ck = csum::replace(u16::from_be_bytes(*ick), &*port, &t.port);
        *port = t.port;
        if q.v4 {
            let new: &[u8; 4] = &*(t.addr.as_ptr() as *const [u8; 4]);
            let ttl: *mut [u8; 12] = ptr_at(ctx, l3 + 8).map_err(|_| malformed())?;
            // Outer IPv4 header: checksum, source/destination (and the TTL when asked).
            let outer = if TO_BACKEND { 16 } else { 12 };
            let oa: *mut [u8; 4] = ptr_at(ctx, l3 + outer).map_err(|_| malformed())?;
            let h = &mut *ttl;
            let old_tp = [h[0], h[1]];
            let new_tp = [h[0] - q.dec_ttl as u8, h[1]];
            let mut c = csum::replace(u16::from_be_bytes([h[2], h[3]]), &old_tp, &new_tp);
            c = csum::replace(c, &*oa, new);
            h[0] = new_tp[0];
            let c = c.to_be_bytes();
            h[2] = c[0];
            h[3] = c[1];
            *oa = *new;
            // Quoted IPv4 header: address and its checksum, both covered by the ICMP
            // checksum.
            let inner = if TO_BACKEND { 12 } else { 16 };
            let qc: *mut [u8; 2] = ptr_at(ctx, e3 + 10).map_err(|_| malformed())?;
            let qa: *mut [u8; 4] = ptr_at(ctx, e3 + inner).map_err(|_| malformed())?;
            let old_qc = *qc;
            let new_qc = csum::replace(u16::from_be_bytes(old_qc), &*qa, new).to_be_bytes();
            ck = csum::replace(ck, &*qa, new);
            ck = csum::replace(ck, &old_qc, &new_qc);
            *qa = *new;
            *qc = new_qc;
        } else {
            // Outer IPv6 header: hop limit, and the address (in the ICMPv6 pseudo-header).
            let hl: *mut u8 = ptr_at(ctx, l3 + 7).map_err(|_| malformed())?;
            *hl -= q.dec_ttl as u8;
            let outer = if TO_BACKEND { 24 } else { 8 };
            let oa: *mut [u8; 16] = ptr_at(ctx, l3 + outer).map_err(|_| malformed())?;
            ck = csum_replace16(ck, oa, &t.addr);
            *oa = t.addr;
            let inner = if TO_BACKEND { 8 } else { 24 };
            let qa: *mut [u8; 16] = ptr_at(ctx, e3 + inner).map_err(|_| malformed())?;
            ck = csum_replace16(ck, qa, &t.addr);
            *qa = t.addr;
        }
        *ick = ck.to_be_bytes();
    }
    Ok(())
}

/// Answer `p` (too big for a link of `mtu` bytes, not to be fragmented) with ICMP
/// "fragmentation needed" / ICMPv6 "packet too big", from its destination to its source,
/// quoting its first bytes, out of the ingress interface.
#[inline(never)]
pub fn too_big(ctx: &XdpContext, p: &Pkt, mtu: u16) -> u32 {
    match try_too_big(ctx, p, mtu) {
        Ok(a) | Err(a) => a,
    }
}

#[inline(always)]
fn try_too_big(ctx: &XdpContext, p: &Pkt, mtu: u16) -> Result<u32, u32> {
    let v4 = p.key.family == AF_INET;
    let l2 = p.l3 & 0x1f;
    let iph: usize = if v4 { 20 } else { 40 };
    let grow = iph + 8;
    let mut quote = p.ip_len;
    if quote > ICMP_QUOTE_MAX {
        quote = ICMP_QUOTE_MAX;
    }
    quote &= !1;
    // The old L2 header (at most 22 bytes; the frame is longer, an IP header follows).
    let old_l2: [u8; 22] = get(ctx, 0).map_err(|_| malformed())?;
    // SAFETY: a helper taking the context.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -(grow as i32)) } != 0 {
        count(global::DROPPED);
        return Err(XDP_DROP);
    }
    let len = ctx.data_end() - ctx.data();
    let want = l2 + grow + quote;
    if want < len {
        // SAFETY: a helper taking the context.
        if unsafe { bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, (want as i32) - (len as i32)) } != 0
        {
            count(global::DROPPED);
            return Err(XDP_DROP);
        }
    }
    // L2: MACs swapped, tags and ethertype kept.
    let mut h = old_l2;
    h[..6].copy_from_slice(&old_l2[6..12]);
    h[6..12].copy_from_slice(&old_l2[..6]);
    put(ctx, 0, &h)?;
    let l3 = l2;
    let l4 = l3 + iph;
    let mut sum: u32;
    if v4 {
        let tot = ((iph + 8 + quote) as u16).to_be_bytes();
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2] = tot[0];
        ip[3] = tot[1];
        ip[8] = 64;
        ip[9] = IPPROTO_ICMP;
        ip[12..16].copy_from_slice(&p.key.dst[..4]);
        ip[16..20].copy_from_slice(&p.key.src[..4]);
        let c = csum::finish(csum::add(0, &ip)).to_be_bytes();
        ip[10] = c[0];
        ip[11] = c[1];
        put(ctx, l3, &ip)?;
        let m = mtu.to_be_bytes();
        let icmp = [3u8, 4, 0, 0, 0, 0, m[0], m[1]];
        sum = csum::add(0, &icmp);
        put(ctx, l4, &icmp)?;
    } else {
        let plen = ((8 + quote) as u16).to_be_bytes();
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4] = plen[0];
        ip[5] = plen[1];
        ip[6] = IPPROTO_ICMPV6;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&p.key.dst);
        ip[24..40].copy_from_slice(&p.key.src);
        put(ctx, l3, &ip)?;
        let m = (mtu as u32).to_be_bytes();
        let icmp = [2u8, 0, 0, 0, m[0], m[1], m[2], m[3]];
        put(ctx, l4, &icmp)?;
        // Pseudo-header: addresses, upper-layer length, next header.
        sum = csum::add(0, &p.key.dst);
        sum = csum::add(sum, &p.key.src);
        sum = csum::add(sum, &[0, 0, plen[0], plen[1], 0, 0, 0, IPPROTO_ICMPV6]);
        sum = csum::add(sum, &icmp);
    }
    // The quote: the first bytes of the original packet, already in place after the ICMP header.
    let qoff = l4 + 8;
    let mut i = 0usize;
    while i < ICMP_QUOTE_MAX / 2 {
        if 2 * i >= quote {
            break;
        }
        let w: [u8; 2] = get(ctx, (qoff + 2 * i) & 0xfff).map_err(|_| malformed())?;
        sum = csum::add(sum, &w);
        i += 1;
    }
    put(ctx, l4 + 2, &csum::finish(sum).to_be_bytes())?;
    count(global::TOO_BIG_ICMP);
    Ok(XDP_TX)
}
