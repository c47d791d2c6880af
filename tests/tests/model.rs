//! The model check: random and mutated frames through the XDP program (BPF_PROG_TEST_RUN),
//! every result compared with a reference model written from the README's packet table
//! (`model/spec.rs`): the action, the output frame byte for byte (fields the README leaves
//! open masked), every checksum recomputed, the connection-table and fragment-table entries
//! the case must leave, and the global counters.
//!
//! `XLB_MODEL_FRAMES` (default 20000) sets the number of frames, `XLB_MODEL_SEED` replays a
//! run (the seed is printed). `cargo xtask fuzz` runs 1,000,000.
mod common;
#[path = "model/gen.rs"]
mod gen;
#[path = "model/pkt.rs"]
mod pkt;
#[path = "model/spec.rs"]
mod spec;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::atomic::{AtomicUsize, Ordering},
};

use aya::programs::{TestRun, TestRunOptions};
use common::*;
use gen::{Gen, Lookup};
use lb_common::{
    global, BackendAddr, BackendAddrValue, BackendInfo, CtValue, FlowKey, FragKey, FragValue,
    RevValue, ServiceInfo, ServiceKey, AF_INET, FRAG_F_FORWARD, MAX_BACKENDS,
};
use pkt::{hex, verify_checksums};
use spec::{DirectKey, Expect, Out, Route, World};

struct FxWorld<'a> {
    fx: &'a Fixture,
    services: HashMap<ServiceKey, ServiceInfo>,
    tables: HashMap<(u32, u32), Vec<u32>>,
    backends: Vec<BackendInfo>,
    backend_addrs: HashMap<BackendAddr, BackendAddrValue>,
    vips: HashSet<([u8; 16], u8)>,
    backend_ips: HashSet<([u8; 16], u8)>,
    /// What `DIRECT` should hold, as the model said (the map is the program's own).
    direct: std::sync::Mutex<HashSet<DirectKey>>,
    /// Which of `frag_keys` the program uses (per family, IPv6 / IPv4), learnt from the
    /// first fragments' entries; usize::MAX until known.
    frag_encoding: [AtomicUsize; 2],
    /// What `TX_PORTS` holds during this chunk.
    tx_ports: Vec<u32>,
}

impl<'a> FxWorld<'a> {
    /// Snapshot of what does not change during a run (the daemon writes nothing meanwhile).
    fn new(fx: &'a Fixture, direct: HashSet<DirectKey>, tx_ports: Vec<u32>) -> Self {
        let services: HashMap<_, _> = fx.dp.maps().services.iter().map(|r| r.unwrap()).collect();
        let ring = fx.dp.opts.ring_size;
        let mut tables = HashMap::new();
        for info in services.values() {
            let base = fx.dp.table_base(info.id, info.slot);
            let t = (0..ring)
                .map(|i| fx.dp.maps().maglev.get(&(base + i), 0).unwrap())
                .collect();
            tables.insert((info.id, info.slot), t);
        }
        let backends = (0..MAX_BACKENDS)
            .map(|i| fx.dp.maps().backends.get(&i, 0).unwrap())
            .collect();
        let backend_addrs: HashMap<_, _> = fx
            .dp
            .maps()
            .backend_addrs
            .iter()
            .map(|r| r.unwrap())
            .collect();
        let vips = services.keys().map(|k| (k.addr, k.family)).collect();
        let backend_ips = backend_addrs.keys().map(|k| (k.addr, k.family)).collect();
        FxWorld {
            fx,
            services,
            tables,
            backends,
            backend_addrs,
            vips,
            backend_ips,
            direct: std::sync::Mutex::new(direct),
            frag_encoding: [AtomicUsize::new(usize::MAX), AtomicUsize::new(usize::MAX)],
            tx_ports,
        }
    }

    /// `FRAGS` keys the README does not fix the encoding of the id in: try the id as it is
    /// on the wire and as a number.
    fn frag_keys(src: &[u8; 16], dst: &[u8; 16], proto: u8, family: u8, id: u32) -> Vec<FragKey> {
        // `FragKey::id` is the IPv4 id / IPv6 identification as a number (lb-common): one
        // encoding, so no other datagram's entry can be taken for this one's.
        let _ = family;
        [id].into_iter()
            .map(|id| FragKey {
                src: *src,
                dst: *dst,
                id,
                proto,
                family,
                _pad: [0; 2],
            })
            .collect()
    }
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl World for FxWorld<'_> {
    fn service(&self, k: &ServiceKey) -> Option<ServiceInfo> {
        self.services.get(k).copied()
    }
    fn maglev(&self, service_id: u32, slot: u32, index: u32) -> u32 {
        self.tables[&(service_id, slot)][index as usize]
    }
    fn backend(&self, id: u32) -> BackendInfo {
        self.backends.get(id as usize).copied().unwrap_or_default()
    }
    fn conntrack(&self, k: &FlowKey) -> Option<CtValue> {
        let m = self.fx.dp.maps();
        m.conntrack
            .get(k, 0)
            .ok()
            .or_else(|| m.unconfirmed.get(k, 0).ok())
    }
    fn reverse(&self, k: &FlowKey) -> Option<RevValue> {
        self.fx.dp.maps().reverse.get(k, 0).ok()
    }
    fn backend_addr(&self, k: &BackendAddr) -> Option<BackendAddrValue> {
        self.backend_addrs.get(k).copied()
    }
    fn frag(
        &self,
        src: &[u8; 16],
        dst: &[u8; 16],
        proto: u8,
        family: u8,
        id: u32,
    ) -> Option<FragValue> {
        let lock = self.frag_encoding[(family == AF_INET) as usize].load(Ordering::Relaxed);
        Self::frag_keys(src, dst, proto, family, id)
            .iter()
            .enumerate()
            .filter(|(i, _)| lock == usize::MAX || *i == lock)
            .find_map(|(_, k)| self.fx.dp.maps().frags.get(k, 0).ok())
    }
    fn now_ns(&self) -> u64 {
        now_ns()
    }
    fn is_vip(&self, addr: &[u8; 16], family: u8) -> bool {
        self.vips.contains(&(*addr, family))
    }
    fn is_backend(&self, addr: &[u8; 16], family: u8) -> bool {
        self.backend_ips.contains(&(*addr, family))
    }
    /// The fixture namespace: 198.18.1.0/24 and 2001:db8:1::/64 on veth-client,
    /// 198.18.2.0/24 and 2001:db8:2::/64 on veth-backends (MTU 1500), static neighbours for
    /// the client, the hairpin backend and backends .11–.13; no other route.
    fn route(&self, a: &[u8; 16], family: u8) -> Route {
        let via = |client: bool, dmac: Option<[u8; 6]>| Route::Via {
            ifindex: if client {
                self.fx.ifindex_client
            } else {
                self.fx.ifindex_backends
            },
            mtu: 1500,
            smac: if client {
                LB_CLIENT_MAC
            } else {
                LB_BACKENDS_MAC
            },
            dmac,
            kernel: !self.tx_ports.contains(&if client {
                self.fx.ifindex_client
            } else {
                self.fx.ifindex_backends
            }),
        };
        if family == AF_INET {
            let b = &a[..4];
            if b[0] == 0 || b[0] == 127 || b[0] >= 224 {
                return Route::Special;
            }
            if b[..2] == [198, 18] && (b[2] == 1 || b[2] == 2) {
                let client = b[2] == 1;
                return match b[3] {
                    1 => Route::Local,
                    0 | 255 => Route::Special,
                    2 if client => via(true, Some(CLIENT_MAC)),
                    5 if client => via(true, Some(HAIRPIN_MAC)),
                    i @ 11..=13 if !client => via(false, Some(backend_mac(i - 10))),
                    _ => via(client, None),
                };
            }
            Route::Unreachable
        } else {
            if a[0] == 0xff || (a[0] == 0xfe && a[1] & 0xc0 == 0x80) || a[..8] == [0; 8] {
                return Route::Special;
            }
            let net1 = v6(0, 1);
            let net2 = v6(0, 2);
            for (net, client) in [(net1, true), (net2, false)] {
                if a[..8] == net[..8] {
                    let host = &a[8..];
                    let last = u16::from_be_bytes([a[14], a[15]]);
                    if host[..6] == [0; 6] {
                        match last {
                            0 => return Route::Special,
                            1 => return Route::Local,
                            2 if client => return via(true, Some(CLIENT_MAC)),
                            i @ 0x11..=0x13 if !client => {
                                return via(false, Some(backend_mac((i - 0x10) as u8)))
                            }
                            _ => {}
                        }
                    }
                    return via(client, None);
                }
            }
            Route::Unreachable
        }
    }
    fn direct_seen(&self, k: &DirectKey) -> bool {
        self.direct.lock().unwrap().contains(k)
    }
    fn services_with_backend(
        &self,
        addr: &[u8; 16],
        port: [u8; 2],
        proto: u8,
        family: u8,
    ) -> Vec<ServiceKey> {
        // A service has the backend when its live table names it (tables hold every
        // active member).
        self.services
            .iter()
            .filter(|(k, _)| k.proto == proto && k.family == family)
            .filter(|(_, info)| {
                self.tables[&(info.id, info.slot)].iter().any(|&id| {
                    id != lb_common::NO_BACKEND && {
                        let b = self.backend(id);
                        b.addr == *addr && b.port == port && b.family == family
                    }
                })
            })
            .map(|(k, _)| *k)
            .collect()
    }
    fn ring_size(&self) -> u32 {
        self.fx.dp.opts.ring_size
    }
    fn hash_seed(&self) -> u32 {
        self.fx.dp.opts.hash_seed
    }
}

impl Lookup for FxWorld<'_> {
    fn backend_of(&self, k: &FlowKey) -> Option<([u8; 16], u16)> {
        let ct = self.conntrack(k)?;
        let b = self.backend(ct.backend_id);
        (b.family != 0).then(|| (b.addr, u16::from_be_bytes(b.port)))
    }
}

/// Counters compared with the model (the others are not named by the packet table).
const TRACKED: &[&str] = &[
    "passed",
    "dropped",
    "malformed",
    "fib_failed",
    "fib_no_neigh",
    "no_backend",
    "icmp",
    "forwarded",
    "replies",
    "redirect_failed",
    "icmp_to_backend",
    "icmp_to_client",
    "too_big_icmp",
    "too_big_kernel",
    "frags_followed",
    "frags_orphan",
    "ttl_exceeded",
    "stray_recreated",
    "stray_dropped",
    "egress_kernel",
    "ext_headers_passed",
];

fn counters(fx: &Fixture) -> Vec<u64> {
    (0..global::COUNT)
        .map(|i| {
            fx.dp
                .maps()
                .global_stats
                .get(&i, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        })
        .collect()
}

fn counter_index(name: &str) -> usize {
    global::NAMES.iter().position(|n| *n == name).unwrap()
}

fn expected_delta(e: &Expect) -> Vec<i64> {
    let mut d = vec![0i64; global::COUNT as usize];
    match e.action {
        Some(spec::XDP_PASS) => d[counter_index("passed")] += 1,
        Some(spec::XDP_DROP) => d[counter_index("dropped")] += 1,
        _ => {}
    }
    for c in [e.counter, e.also].into_iter().flatten() {
        d[counter_index(c)] += 1;
    }
    d
}

fn delta_diff(want: &[i64], before: &[u64], after: &[u64]) -> Option<String> {
    let mut out = Vec::new();
    for name in TRACKED {
        let i = counter_index(name);
        let got = after[i] as i64 - before[i] as i64;
        if got != want[i] {
            out.push(format!("{name} +{got} (model +{})", want[i]));
        }
    }
    (!out.is_empty()).then(|| out.join(", "))
}

/// Hex of an output frame, the first 320 bytes (the byte diffs name any later difference).
fn short_hex(b: &[u8]) -> String {
    if b.len() <= 320 {
        hex(b)
    } else {
        format!("{}… ({} bytes)", hex(&b[..320]), b.len())
    }
}

fn action_name(a: u32) -> &'static str {
    match a {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "?",
    }
}

fn byte_diffs(a: &[u8], b: &[u8]) -> String {
    let mut d: Vec<String> = Vec::new();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i), b.get(i));
        if x != y {
            d.push(format!(
                "@{i}: {} != {}",
                x.map_or("--".into(), |v| format!("{v:02x}")),
                y.map_or("--".into(), |v| format!("{v:02x}"))
            ));
            if d.len() == 12 {
                d.push("…".into());
                break;
            }
        }
    }
    d.join(" ")
}

/// Compare one result with the model; None when they agree.
fn compare(e: &Expect, input: &[u8], rc: u32, out: &[u8]) -> Option<(String, String)> {
    let want = e.action?;
    if rc != want {
        return Some((
            format!(
                "{}: {} instead of {}",
                e.class,
                action_name(rc),
                action_name(want)
            ),
            String::new(),
        ));
    }
    let mismatch = |what: &str, exp: &[u8]| {
        Some((
            format!("{}: {what}", e.class),
            format!(
                "  expected {}\n  got      {}\n  differs  {}",
                short_hex(exp),
                short_hex(out),
                byte_diffs(exp, out)
            ),
        ))
    };
    match &e.out {
        Out::Any => {}
        Out::Same => {
            if out != input {
                return mismatch("output differs from the untouched input", input);
            }
        }
        Out::Exact(exp) => {
            // 0x0000 and 0xffff are the same ones' complement checksum (RFC 1624 §3):
            // compare after checking that the frame is otherwise equal.
            if out != &exp[..] {
                let equiv = out.len() == exp.len()
                    && verify_checksums(out).is_ok() == verify_checksums(exp).is_ok()
                    && out.iter().zip(exp.iter()).enumerate().all(|(i, (a, b))| {
                        a == b
                            || matches!((a, b), (0, 0xff) | (0xff, 0)) && {
                                let j = i & !1;
                                let w = |f: &[u8]| [f[j], f.get(j + 1).copied().unwrap_or(0)];
                                matches!(
                                    (w(out), w(exp)),
                                    ([0, 0], [0xff, 0xff]) | ([0xff, 0xff], [0, 0])
                                )
                            }
                    });
                if !equiv {
                    return mismatch("output differs", exp);
                }
            }
        }
        Out::Masked(exp, masks) => {
            let mut o = out.to_vec();
            if o.len() == exp.len() {
                for r in masks {
                    o[r.clone()].copy_from_slice(&exp[r.clone()]);
                }
            }
            if o != *exp {
                return mismatch("generated ICMP differs (IP id, TTL, TOS not compared)", exp);
            }
        }
    }
    if e.check_csums && !matches!(e.out, Out::Any | Out::Same) {
        if let Err(why) = verify_checksums(out) {
            return Some((
                format!("{}: bad checksum", e.class),
                format!("  {why}\n  got      {}", hex(out)),
            ));
        }
    }
    None
}

fn post_checks(e: &Expect, world: &FxWorld) -> Option<(String, String)> {
    if let Some((key, bid)) = &e.pin {
        match world.conntrack(key) {
            Some(ct) if ct.backend_id == *bid => {}
            other => {
                return Some((
                    format!("{}: connection table not pinned as expected", e.class),
                    format!(
                        "  want backend {bid}, entry {:?}",
                        other.map(|c| c.backend_id)
                    ),
                ))
            }
        }
    }
    if let Some(key) = &e.no_pin {
        if world.conntrack(key).is_some() {
            return Some((
                format!("{}: malformed packet pinned a flow", e.class),
                String::new(),
            ));
        }
    }
    if let Some(r) = &e.frag_rec {
        let slot = &world.frag_encoding[(r.family == AF_INET) as usize];
        if slot.load(Ordering::Relaxed) == usize::MAX {
            let hits: Vec<usize> = FxWorld::frag_keys(&r.src, &r.dst, r.proto, r.family, r.id)
                .iter()
                .enumerate()
                .filter(|(_, k)| world.fx.dp.maps().frags.get(k, 0).is_ok())
                .map(|(i, _)| i)
                .collect();
            if let [one] = hits[..] {
                slot.store(one, Ordering::Relaxed);
            }
        }
        match world.frag(&r.src, &r.dst, r.proto, r.family, r.id) {
            Some(v) if v.addr == r.addr && (v.flags & FRAG_F_FORWARD != 0) == r.forward => {}
            other => {
                return Some((
                    format!("{}: FRAGS entry missing or wrong", e.class),
                    format!(
                        "  want addr {} forward {}, entry {:?}",
                        hex(&r.addr),
                        r.forward,
                        other.map(|v| (hex(&v.addr), v.flags))
                    ),
                ))
            }
        }
    }
    None
}

/// A health check result for a backend of "multi", as the daemon's checker reports it.
fn set_health(fx: &mut Fixture, addr: &str, ok: bool) {
    let uid = fx.state.groups["multi"]
        .members
        .iter()
        .find(|m| m.addr.to_string() == addr)
        .unwrap()
        .uid;
    let outcome = xlb::health::CheckOutcome {
        ok,
        reason: if ok { "connected" } else { "connect refused" }.into(),
        latency: std::time::Duration::ZERO,
        metrics: None,
    };
    fx.state.observe(&("multi".to_string(), uid), &outcome);
}

#[test]
fn xdp_program_agrees_with_the_model() {
    if skip() {
        return;
    }
    let frames: u64 = std::env::var("XLB_MODEL_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("XLB_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("model check: {frames} frames, XLB_MODEL_SEED={seed}");
    let max_shown: usize = std::env::var("XLB_MODEL_SHOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // XLB_MODEL_SHOW_CLASS: print every mismatch whose class contains this.
    let show_class = std::env::var("XLB_MODEL_SHOW_CLASS").ok();
    // Per-frame counter checks for the first frames, then every `BATCH` frames.
    const PER_FRAME_COUNTERS: u64 = 20_000;
    const BATCH: u64 = 1000;

    // The daemon changes the backends of "multi" every `CHURN` frames (health checks
    // failing and passing), so that flows move, drains and empty tables are exercised.
    const CHURN: u64 = 4000;
    const HEALTH: [u8; 8] = [0b111, 0b011, 0b101, 0b110, 0b111, 0b001, 0b000, 0b111];

    let mut fx = Fixture::new();
    let mut gen = Gen::new(seed, fx.ifindex_client, fx.ifindex_backends);
    let started = std::time::Instant::now();

    struct Stats {
        classes: BTreeMap<String, u64>,
        unspecified: BTreeMap<String, u64>,
        mismatches: BTreeMap<String, (u64, String)>,
        total_mismatches: u64,
        run_errors: u64,
        counter_mismatches: BTreeMap<String, (u64, String)>,
    }
    let mut st = Stats {
        classes: BTreeMap::new(),
        unspecified: BTreeMap::new(),
        mismatches: BTreeMap::new(),
        total_mismatches: 0,
        run_errors: 0,
        counter_mismatches: BTreeMap::new(),
    };

    // One thread in the fixture namespace for the whole run (the FIB lookups of
    // BPF_PROG_TEST_RUN use the calling thread's namespace).
    let mut done = 0u64;
    let mut phase = 0usize;
    let mut direct = HashSet::new();
    while done < frames {
        let healthy = HEALTH[phase % HEALTH.len()];
        phase += 1;
        for (bit, addr) in ["198.18.2.11", "198.18.2.12", "198.18.2.13"]
            .iter()
            .enumerate()
        {
            set_health(&mut fx, addr, healthy & (1 << bit) != 0);
        }
        fx.apply();
        // In the third chunk the backends' interface is not in TX_PORTS (it cannot take
        // redirected frames): rewritten packets to it go through the kernel. Next hops are
        // cached for NEXTHOP_TTL_NS with what TX_PORTS said, so each change waits that long.
        let tx_ports = if phase == 3 {
            vec![fx.ifindex_client]
        } else {
            vec![fx.ifindex_client, fx.ifindex_backends]
        };
        if phase == 3 || phase == 4 {
            let Fixture { ns, dp, .. } = &mut fx;
            ns.enter(|| dp.set_tx_ports(&tx_ports)).expect("TX_PORTS");
            std::thread::sleep(std::time::Duration::from_nanos(
                lb_common::NEXTHOP_TTL_NS + 100_000_000,
            ));
        }
        let world = FxWorld::new(&fx, std::mem::take(&mut direct), tx_ports);
        let prog = fx.dp.program(lb_common::PROG_XDP_LB).unwrap();
        let chunk_end = (done + CHURN).min(frames);
        fx.ns.enter(|| {
            let mut out = vec![0u8; 8192];
            let mut batch_want = vec![0i64; global::COUNT as usize];
            let mut batch_before = counters(&fx);
            let mut batch_exact = true;
            let mut batch_classes: BTreeMap<String, u64> = BTreeMap::new();
            for i in done..chunk_end {
                let fr = gen.next(&world);
                let e = spec::decide(&fr.bytes, fr.ingress, &world);
                let per_frame = i < PER_FRAME_COUNTERS;
                // The counters after the previous frame are the ones before this one.
                let before = per_frame.then(|| batch_before.clone());
                let mut ctx = [0u8; 24];
                ctx[4..8].copy_from_slice(&(fr.bytes.len() as u32).to_ne_bytes());
                ctx[12..16].copy_from_slice(&fr.ingress.to_ne_bytes());
                let r = prog.test_run(TestRunOptions {
                    data_in: Some(&fr.bytes),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    repeat: 1,
                    ..Default::default()
                });
                let (rc, n) = match r {
                    Ok(r) => (r.return_value, r.data_size_out as usize),
                    Err(err) => {
                        st.run_errors += 1;
                        if st.run_errors <= 3 {
                            println!(
                                "BPF_PROG_TEST_RUN refused a {}-byte frame: {err}",
                                fr.bytes.len()
                            );
                        }
                        continue;
                    }
                };
                let got = &out[..n.min(out.len())];
                *st.classes.entry(e.class.clone()).or_default() += 1;
                if e.action.is_none() {
                    *st.unspecified.entry(e.class.clone()).or_default() += 1;
                }
                let mut problems = Vec::new();
                // The model's own output must carry valid checksums too (a bug of the model).
                if let (true, Out::Exact(exp) | Out::Masked(exp, _)) = (e.check_csums, &e.out) {
                    if let Err(why) = verify_checksums(exp) {
                        problems.push((
                            format!("MODEL BUG {}: expected frame has a bad checksum", e.class),
                            format!("  {why}\n  expected {}", hex(exp)),
                        ));
                    }
                }
                if let Some(m) = compare(&e, &fr.bytes, rc, got) {
                    problems.push(m);
                }
                if e.action.is_some() {
                    if let Some(m) = post_checks(&e, &world) {
                        problems.push(m);
                    }
                }
                if let (Some(k), spec::XDP_PASS) = (e.direct_rec, rc) {
                    world.direct.lock().unwrap().insert(k);
                }
                // Counters.
                let want = expected_delta(&e);
                if let Some(before) = before {
                    let after = counters(&fx);
                    if e.action.is_some() {
                        if let Some(d) = delta_diff(&want, &before, &after) {
                            problems.push((format!("{}: counters {d}", e.class), String::new()));
                        }
                    }
                    batch_before = after;
                } else {
                    batch_exact &= e.action.is_some();
                    *batch_classes.entry(e.class.clone()).or_default() += 1;
                    for (a, b) in batch_want.iter_mut().zip(&want) {
                        *a += b;
                    }
                    if (i + 1) % BATCH == 0 || i + 1 == chunk_end {
                        let after = counters(&fx);
                        if batch_exact {
                            if let Some(d) = delta_diff(&batch_want, &batch_before, &after) {
                                // Keyed by which counters differ; the first batch is shown.
                                let names: Vec<&str> =
                                    d.split(", ").filter_map(|s| s.split(' ').next()).collect();
                                let c = st
                                    .counter_mismatches
                                    .entry(names.join(" "))
                                    .or_insert((0, String::new()));
                                c.0 += 1;
                                if c.1.is_empty() {
                                    c.1 = format!(
                                        "frames ..{}: {d}; classes {:?}",
                                        i + 1,
                                        batch_classes
                                    );
                                }
                            }
                        }
                        batch_before = after;
                        batch_want.iter_mut().for_each(|v| *v = 0);
                        batch_exact = true;
                        batch_classes.clear();
                    }
                }
                for (class, detail) in problems {
                    st.total_mismatches += 1;
                    let entry = st
                        .mismatches
                        .entry(class.clone())
                        .or_insert((0, String::new()));
                    entry.0 += 1;
                    if entry.0 as usize <= max_shown
                        || show_class.as_deref().is_some_and(|c| class.contains(c))
                    {
                        let text = format!(
                        "MISMATCH #{} frame {i} ({}) ingress {}: {class}\n  input    {}\n{detail}",
                        entry.0,
                        fr.kind,
                        if fr.ingress == fx.ifindex_client { "client" } else { "backends" },
                        hex(&fr.bytes),
                    );
                        println!("{text}");
                        if entry.1.is_empty() {
                            entry.1 = text;
                        }
                    }
                }
            }
        });
        direct = world.direct.into_inner().unwrap();
        done = chunk_end;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{frames} frames in {secs:.1} s ({:.0} frames/s), seed {seed}",
        frames as f64 / secs
    );
    println!("cases:");
    for (c, n) in &st.classes {
        println!("  {n:>8}  {c}");
    }
    if !st.unspecified.is_empty() {
        println!(
            "not compared (the README does not say): {:?}",
            st.unspecified
        );
    }
    if st.counter_mismatches.len() > 5 {
        println!(
            "COUNTERS differ in {} ways over batches; the first 5:",
            st.counter_mismatches.len()
        );
    }
    for (d, (n, ex)) in st.counter_mismatches.iter().take(5) {
        println!("COUNTERS {d} differ in {n} batches of {BATCH} frames; first: {ex}");
    }
    if !st.mismatches.is_empty() {
        println!("disagreement classes (count, class):");
        for (c, (n, _)) in &st.mismatches {
            println!("  {n:>8}  {c}");
        }
    }
    assert_eq!(st.run_errors, 0, "BPF_PROG_TEST_RUN refused frames");
    assert!(
        st.mismatches.is_empty() && st.counter_mismatches.is_empty(),
        "{} mismatches in {} classes (seed {seed}; XLB_MODEL_SEED={seed} replays)",
        st.total_mismatches,
        st.mismatches.len()
    );
    // The generator must have reached the cases it is there for.
    for class in [
        "to service, new flow",
        "to service, established",
        "reply",
        "malformed",
    ] {
        let hit = st.classes.keys().any(|c| c.starts_with(class))
            || (class == "malformed" && st.classes.keys().any(|c| c.contains("truncated")));
        assert!(hit || frames < 1000, "no frame reached {class}");
    }
}
