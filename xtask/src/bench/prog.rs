//! Scenario 1: per-packet cost of the XDP program, with `BPF_PROG_TEST_RUN`.
//!
//! The program is loaded and its maps filled by the daemon's own code (config → desired state
//! → reconciler), in a namespace whose interfaces, routes and static neighbours make every FIB
//! lookup succeed, as in tests/tests/fixtures.rs.
//!
//! The program rewrites what it forwards, and with `repeat` > 1 the kernel would run every
//! repetition on the already rewritten frame (a different path). So every case is measured
//! with `repeat` = 1 over many calls, each on a fresh copy of its frame, and the kernel's
//! duration of each call is kept: it is the run of the program between two clock reads. The
//! same harness around `xlb_tx`, a program that only returns `XDP_TX`, is the floor; a case's
//! "net" cost is its mean minus the floor's mean.
//!
//! The per-call figure carries what a system call does to the caches, so every case is also
//! run in the kernel's own loop (`repeat` > 1) through a harness (`rawbpf::harness_prog`):
//! each repetition copies the next template frame over the packet and tail-calls the program.
//! The harness tail-calling `xlb_tx` instead, with the same templates, is its floor.
//!
//! The return code of every call is checked (in the loop: of its last repetition), and the
//! data path's own counters tell whether every packet took the path meant (a conntrack hit or
//! a miss, a pass, a reply).

use std::net::Ipv4Addr;

use anyhow::{bail, ensure, Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use lb_common::{CtValue, FlowKey, AF_INET, PROTO_TCP};
use xlb::dataplane::{Dataplane, LoadOptions, Pinning};
use xlb::reconcile::Reconciler;
use xlb::state::State;
use xlb_lab::netns::Netns;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::rawbpf;
use super::results::{self, ProgCase, ProgResults, RepeatedCase};
use super::{check_stop, Params};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
const LB_CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const LB_BACKENDS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const LB: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);

fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x02, 0x10 + i]
}

/// The connection table is sized for the largest case with room to spare, so the LRU
/// evicts nothing.
const CONNTRACK_SIZE: u32 = 2 * 1024 * 1024;
const FLOWS_64K: u64 = 64 * 1024;
const FLOWS_1M: u64 = 1024 * 1024;

fn config() -> String {
    let backends = "[\"198.18.2.11\", \"198.18.2.12\", \"198.18.2.13\"]";
    let dsr = |name: &str, port: u16, encap: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nvip = \"{VIP}\"\nport = {port}\nprotocol = \"tcp\"\n\
             target_group = \"dsr\"\nforwarding = \"dsr\"\ndsr_encap = \"{encap}\"\n\
             dsr_source_prefix = \"198.18.99.0/24\"\n\n"
        )
    };
    format!(
        "[daemon]\ninterfaces = [\"veth-client\", \"veth-backends\"]\nconntrack_size = {CONNTRACK_SIZE}\nhash_seed = 7\n\n\
         [[service]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"web\"\n\n\
         {}{}{}\
         [[target_group]]\nname = \"web\"\nport = 8080\nbackends = {backends}\n\n\
         [[target_group]]\nname = \"dsr\"\nbackends = {backends}\n",
        dsr("dsr-gue", DSR_GUE_PORT, "gue"),
        dsr("dsr-ipip", DSR_IPIP_PORT, "ipip"),
        // `l2`: MACs only, no source prefix.
        dsr("dsr-l2", DSR_L2_PORT, "l2").replace("dsr_source_prefix = \"198.18.99.0/24\"\n", ""),
    )
}

/// Service ports of the DSR services (same VIP; the backends serve these ports).
const DSR_GUE_PORT: u16 = 81;
const DSR_IPIP_PORT: u16 = 82;
const DSR_L2_PORT: u16 = 83;

impl Fixture {
    /// Run `frame` once through `program` (received on `ifindex`): its action.
    fn once(&self, program: &'static str, frame: &[u8], ifindex: u32) -> Result<u32> {
        let mut out = vec![0u8; 512];
        self.ns.enter(|| -> Result<u32> {
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
            let r = self.dp.program(program)?.test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..Default::default()
            })?;
            Ok(r.return_value)
        })
    }
}

struct Fixture {
    ns: Netns,
    dp: Dataplane,
    if_client: u32,
    if_backends: u32,
    service_id: u32,
    backend_ids: Vec<u32>,
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn fixture() -> Result<Fixture> {
    // The program's maps are pinned (ephemerally) under /sys/fs/bpf: a fresh machine may not
    // have bpffs mounted yet.
    xlb::daemon::ensure_bpffs()?;
    let ns = Netns::new(format!("xlbbfx-{}", std::process::id()))?;
    let sh = |cmd: &str| -> Result<()> { ns.exec(cmd.split_whitespace()).map(drop) };
    sh("ip link add veth-client address 02:00:00:00:01:01 type veth peer name peer-client")?;
    sh("ip link add veth-backends address 02:00:00:00:02:01 type veth peer name peer-backends")?;
    for l in [
        "lo",
        "veth-client",
        "peer-client",
        "veth-backends",
        "peer-backends",
    ] {
        sh(&format!("ip link set {l} up"))?;
    }
    sh("ip addr add 198.18.1.1/24 dev veth-client")?;
    sh("ip addr add 198.18.2.1/24 dev veth-backends")?;
    sh("sysctl -qw net.ipv4.ip_forward=1")?;
    // The table's flows come from 198.19.0.0/16 (`flow`): their replies go back through the
    // client's side.
    sh(&format!(
        "ip route add 198.19.0.0/16 via {CLIENT} dev veth-client"
    ))?;
    sh(&format!(
        "ip neigh replace {CLIENT} lladdr {} dev veth-client nud permanent",
        mac(CLIENT_MAC)
    ))?;
    for i in 1..=3u8 {
        sh(&format!(
            "ip neigh replace 198.18.2.{} lladdr {} dev veth-backends nud permanent",
            10 + i,
            mac(backend_mac(i))
        ))?;
    }
    let (if_client, if_backends) = ns.enter(|| {
        (
            nix::net::if_::if_nametoindex("veth-client"),
            nix::net::if_::if_nametoindex("veth-backends"),
        )
    });
    let cfg =
        xlb::config::parse(&config(), "bench-prog.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut dp = Dataplane::load(
        LoadOptions {
            ring_size: cfg.daemon.maglev_table_size,
            conntrack_size: cfg.daemon.conntrack_size,
            reverse_size: cfg.daemon.reverse_size,
            max_services: cfg.daemon.max_services,
            hash_seed: cfg.daemon.hash_seed.unwrap_or(7),
        },
        Pinning::Ephemeral,
    )
    .context("loading the XDP object")?;
    let mut state = State::new(cfg);
    let mut desired = state.desired()?;
    for b in desired.backends.values_mut() {
        b.active = true;
    }
    Reconciler::new().apply(&mut dp, &desired)?;
    let (if_client, if_backends) = (if_client?, if_backends?);
    // Redirects go through the TX_PORTS devmap, as the daemon fills it after attaching.
    ns.enter(|| dp.set_tx_ports(&[if_client, if_backends]))
        .context("filling TX_PORTS")?;
    let svc = desired.services.first().context("no service")?;
    Ok(Fixture {
        service_id: svc.id,
        backend_ids: svc.backends.clone(),
        ns,
        dp,
        if_client,
        if_backends,
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Syn,
    Data,
}

fn tcp4(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    kind: Kind,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac, dmac).ipv4(src.octets(), dst.octets(), 64);
    let mut out = Vec::new();
    match kind {
        Kind::Syn => b.tcp(sport, dport, 1000, 64240).syn().write(&mut out, &[]),
        Kind::Data => b
            .tcp(sport, dport, 1001, 64240)
            .ack(5000)
            .psh()
            .write(&mut out, b"GET / HTTP/1.1\r\n\r\n"),
    }
    .expect("a valid packet");
    out
}

/// Flow `i` of the generated flows: a source address in 198.19.0.0/16 and a port.
fn flow(i: u64) -> (Ipv4Addr, u16) {
    let a = 0xc613_0000u32 + (i % 65_536) as u32; // 198.19.x.y
    (Ipv4Addr::from(a), 1024 + (i / 65_536) as u16)
}

fn flow_key(src: Ipv4Addr, sport: u16) -> FlowKey {
    let mut s = [0u8; 16];
    s[..4].copy_from_slice(&src.octets());
    let mut d = [0u8; 16];
    d[..4].copy_from_slice(&VIP.octets());
    FlowKey {
        src: s,
        dst: d,
        sport: sport.to_be_bytes(),
        dport: 80u16.to_be_bytes(),
        proto: PROTO_TCP,
        family: AF_INET,
        _pad: [0; 2],
    }
}

/// A small PRNG (xorshift64*) for picking flows.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

impl Fixture {
    fn counter(&self, name: &str) -> u64 {
        self.dp
            .global_counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| v)
    }

    /// Runs `program` once per frame (repeat = 1), as received on `ifindex`; checks every
    /// return code; returns the kernel's durations in ns.
    fn calls(
        &self,
        program: &'static str,
        frames: &[Vec<u8>],
        ifindex: u32,
        expect: u32,
    ) -> Result<Vec<u64>> {
        let prog = self.dp.program(program)?;
        self.ns.enter(|| {
            let mut out = vec![0u8; 4096];
            let mut durations = Vec::with_capacity(frames.len());
            for (i, frame) in frames.iter().enumerate() {
                // struct xdp_md { data, data_end, data_meta, ingress_ifindex, ... }
                let mut ctx = [0u8; 24];
                ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
                ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
                let r = prog
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        data_out: Some(&mut out),
                        ctx_in: Some(&ctx),
                        repeat: 1,
                        ..Default::default()
                    })
                    .context("BPF_PROG_TEST_RUN")?;
                if r.return_value != expect {
                    bail!(
                        "{program}: call {i} returned {}, expected {expect}",
                        r.return_value
                    );
                }
                durations.push(r.duration.as_nanos() as u64);
            }
            Ok(durations)
        })
    }

    /// One call with `repeat` repetitions; the kernel's duration per repetition in ns.
    fn repeated(
        &self,
        program: &'static str,
        frame: &[u8],
        ifindex: u32,
        expect: u32,
        repeat: u32,
    ) -> Result<f64> {
        let prog = self.dp.program(program)?;
        self.ns.enter(|| {
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&ctx),
                    repeat,
                    ..Default::default()
                })
                .context("BPF_PROG_TEST_RUN")?;
            ensure!(
                r.return_value == expect,
                "{program} returned {}",
                r.return_value
            );
            Ok(r.duration.as_nanos() as f64)
        })
    }

    /// Inserts connection-table entries for flows `from..to` (pinned to the backends in turn).
    fn fill(&mut self, from: u64, to: u64) -> Result<()> {
        for i in from..to {
            let (src, sport) = flow(i);
            let ct = CtValue {
                backend_id: self.backend_ids[(i % self.backend_ids.len() as u64) as usize],
                service_id: self.service_id,
                ..Default::default()
            };
            self.dp
                .forge_maps()
                .conntrack
                .insert(flow_key(src, sport), ct, 0)
                .with_context(|| format!("inserting flow {i}"))?;
        }
        Ok(())
    }
}

impl Fixture {
    /// Inserts `UNCONFIRMED` entries for `count` flows from `from` on (handshakes pinned to
    /// the backends in turn).
    fn fill_unconfirmed(&mut self, from: u64, count: u64) -> Result<()> {
        for i in from..from + count {
            let (src, sport) = flow(i);
            let ct = CtValue {
                backend_id: self.backend_ids[(i % self.backend_ids.len() as u64) as usize],
                service_id: self.service_id,
                ..Default::default()
            };
            self.dp
                .forge_maps()
                .unconfirmed
                .insert(flow_key(src, sport), ct, 0)
                .with_context(|| format!("inserting unconfirmed flow {i}"))?;
        }
        Ok(())
    }
}

/// The loop harness: its maps, and the programs it is built for.
struct Harness {
    counter: OwnedFd,
    templates: OwnedFd,
    progs: OwnedFd,
}

/// Most template frames a case cycles through.
const MAX_TEMPLATES: u32 = 65_536;

impl Harness {
    fn new() -> Result<Harness> {
        Ok(Harness {
            counter: rawbpf::map_create(rawbpf::MAP_ARRAY, 4, 8, 1)?,
            templates: rawbpf::map_create(
                rawbpf::MAP_ARRAY,
                4,
                rawbpf::TEMPLATE_BYTES,
                MAX_TEMPLATES,
            )?,
            progs: rawbpf::map_create(rawbpf::MAP_PROG_ARRAY, 4, 4, 1)?,
        })
    }

    /// Loads `frames` (a power of two of them, all of one length) as the templates; returns
    /// the harness program for them.
    fn load(&self, frames: &[Vec<u8>]) -> Result<OwnedFd> {
        let n = frames.len() as u32;
        ensure!(n.is_power_of_two() && n <= MAX_TEMPLATES, "{n} templates");
        let len = frames[0].len();
        ensure!(
            frames.iter().all(|f| f.len() == len),
            "frames of one length"
        );
        let mut buf = vec![0u8; rawbpf::TEMPLATE_BYTES as usize];
        for (i, f) in frames.iter().enumerate() {
            buf[..len].copy_from_slice(f);
            rawbpf::map_update(self.templates.as_fd(), &(i as u32).to_ne_bytes(), &buf)?;
        }
        rawbpf::map_update(
            self.counter.as_fd(),
            &0u32.to_ne_bytes(),
            &0u64.to_ne_bytes(),
        )?;
        rawbpf::prog_load(
            "xlbbench_harn",
            &rawbpf::harness_prog(
                self.counter.as_fd(),
                self.templates.as_fd(),
                self.progs.as_fd(),
                len as u32,
                n - 1,
            ),
        )
    }

    fn target(&self, prog: BorrowedFd<'_>) -> Result<()> {
        use std::os::fd::AsRawFd;
        rawbpf::map_update(
            self.progs.as_fd(),
            &0u32.to_ne_bytes(),
            &(prog.as_raw_fd() as u32).to_ne_bytes(),
        )
        .context("putting the program under test into the harness's program array")
    }
}

/// Sizes of the loop runs.
struct Loop {
    /// Repetitions per call when a case has one frame.
    reps: u32,
    calls: u32,
}

impl Loop {
    /// For cases with many template frames (each call runs every template once).
    fn of_templates(quick: bool) -> Loop {
        Loop {
            reps: 0,
            calls: if quick { 2 } else { 6 },
        }
    }
}

struct Bench<'a> {
    fx: &'a Fixture,
    harness: Harness,
    lp: Loop,
    calls: usize,
}

impl Bench<'_> {
    /// Runs `frames` through `program` both ways (per call and in the loop), checking the
    /// action and, with `counter`, that it moved by `per_packet` for every packet run.
    #[allow(clippy::too_many_arguments)]
    fn case(
        &self,
        name: &str,
        flows: u64,
        frames: &[Vec<u8>],
        ifindex: u32,
        action: (u32, &str),
        counter: Option<(&str, u64)>,
        loop_frames: Option<&dyn Fn(u32) -> Vec<Vec<u8>>>,
    ) -> Result<ProgCase> {
        let fx = self.fx;
        let prog_name = lb_common::PROG_XDP_LB;
        let check = |before: u64, packets: u64, what: &str| -> Result<()> {
            if let Some((c, per)) = counter {
                let got = fx.counter(c) - before;
                ensure!(
                    got == per * packets,
                    "{name} ({what}): counter `{c}` moved by {got}, expected {}",
                    per * packets
                );
            }
            Ok(())
        };
        let read = |c: Option<(&str, u64)>| c.map_or(0, |(c, _)| fx.counter(c));

        // Per call.
        let per_call: Vec<Vec<u8>> = frames.iter().cycle().take(self.calls).cloned().collect();
        let before = read(counter);
        let d = fx.calls(prog_name, &per_call, ifindex, action.0)?;
        check(before, d.len() as u64, "per call")?;
        let mut sorted = d.clone();
        sorted.sort_unstable();
        let pick = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
        let mean = d.iter().sum::<u64>() as f64 / d.len() as f64;

        // In the loop: through the program, then through the floor, on the same templates.
        let xlb = fx.dp.program(prog_name)?.fd()?.as_fd();
        let tx = fx.dp.program(lb_common::PROG_XDP_TX)?.fd()?.as_fd();
        let mut sum = [0f64; 2];
        let mut reps_total = 0u64;
        let mut n_frames = 0u32;
        for call in 0..self.lp.calls {
            check_stop()?;
            let templates = match loop_frames {
                Some(f) => f(call),
                None => frames.to_vec(),
            };
            n_frames = templates.len() as u32;
            let reps = if n_frames == 1 {
                self.lp.reps
            } else {
                n_frames
            };
            let prog = self.harness.load(&templates)?;
            for (k, (target, expect)) in [(xlb, action.0), (tx, XDP_TX)].into_iter().enumerate() {
                self.harness.target(target)?;
                rawbpf::map_update(
                    self.harness.counter.as_fd(),
                    &0u32.to_ne_bytes(),
                    &0u64.to_ne_bytes(),
                )?;
                let before = read(counter);
                let (rc, ns) = fx
                    .ns
                    .enter(|| rawbpf::test_run(prog.as_fd(), &templates[0], ifindex, reps))?;
                ensure!(
                    rc == expect,
                    "{name} (loop): returned {rc}, expected {expect}{}",
                    if rc == 0 {
                        " (0: the harness's tail call failed)"
                    } else {
                        ""
                    }
                );
                if k == 0 {
                    check(before, reps as u64, "loop")?;
                    reps_total += reps as u64;
                }
                sum[k] += ns as f64;
            }
        }
        let loop_ns = sum[0] / self.lp.calls as f64;
        let floor_ns = sum[1] / self.lp.calls as f64;
        eprintln!(
            "bench:   {name}: loop {loop_ns:.1} ns − floor {floor_ns:.1} ns = {:.1} ns; per call mean {mean:.1} ns",
            loop_ns - floor_ns
        );
        Ok(ProgCase {
            name: name.into(),
            program: prog_name.into(),
            flows_in_table: flows,
            calls: d.len() as u64,
            action: action.1.into(),
            checked: counter.map_or("action".into(), |(c, per)| {
                format!("action; counter `{c}` + {per} per packet")
            }),
            mean_ns: mean,
            p50_ns: pick(0.5),
            p99_ns: pick(0.99),
            net_ns: 0.0,
            loop_ns: Some(loop_ns),
            loop_floor_ns: Some(floor_ns),
            loop_net_ns: Some(loop_ns - floor_ns),
            loop_reps: reps_total,
            loop_frames: n_frames,
        })
    }
}

pub fn run(p: &Params) -> Result<ProgResults> {
    let mut fx = fixture()?;
    let n = p.prog_calls as usize;
    let (ci, bi) = (fx.if_client, fx.if_backends);
    let prog = lb_common::PROG_XDP_LB;
    let lp = if p.quick {
        Loop {
            reps: 20_000,
            calls: 2,
        }
    } else {
        Loop {
            reps: 200_000,
            calls: 6,
        }
    };

    let syn_a = tcp4(CLIENT_MAC, LB_CLIENT_MAC, CLIENT, VIP, 40000, 80, Kind::Syn);
    let data_a = tcp4(
        CLIENT_MAC,
        LB_CLIENT_MAC,
        CLIENT,
        VIP,
        40000,
        80,
        Kind::Data,
    );
    let own = tcp4(CLIENT_MAC, LB_CLIENT_MAC, CLIENT, LB, 40001, 22, Kind::Syn);

    // Floor, per call: xlb_tx.
    let d = fx.calls(lb_common::PROG_XDP_TX, &vec![data_a.clone(); n], ci, XDP_TX)?;
    let floor_mean = d.iter().sum::<u64>() as f64 / d.len() as f64;
    let mut sorted = d.clone();
    sorted.sort_unstable();
    eprintln!("bench:   floor per call: mean {floor_mean:.1} ns");

    // The SYN of flow A, so that its data packets are an established flow (not measured).
    let mut out = vec![0u8; 256];
    let backend_a = fx.ns.enter(|| -> Result<Ipv4Addr> {
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(syn_a.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ci.to_ne_bytes());
        let r = fx.dp.program(prog)?.test_run(TestRunOptions {
            data_in: Some(&syn_a),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })?;
        ensure!(
            r.return_value == XDP_REDIRECT,
            "the SYN returned {}",
            r.return_value
        );
        let backend = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
        Ok(backend)
    })?;
    let reply = tcp4(
        backend_mac(backend_a.octets()[3].saturating_sub(10)),
        LB_BACKENDS_MAC,
        backend_a,
        CLIENT,
        8080,
        40000,
        Kind::Data,
    );
    // The backend's answer, then the client's next packet, confirm flow A (moved from
    // UNCONFIRMED to the connection table): the measured packets are an established flow's.
    for (frame, ifindex) in [(&reply, bi), (&data_a, ci)] {
        let rc = fx.once(prog, frame, ifindex)?;
        ensure!(rc == XDP_REDIRECT, "confirming flow A: {rc}");
    }

    let mut cases = Vec::new();
    let mut floor = ProgCase {
        name: results::CASE_FLOOR.into(),
        program: lb_common::PROG_XDP_TX.into(),
        calls: d.len() as u64,
        action: "XDP_TX".into(),
        checked: "action".into(),
        mean_ns: floor_mean,
        p50_ns: sorted[sorted.len() / 2],
        p99_ns: sorted[(sorted.len() - 1) * 99 / 100],
        ..Default::default()
    };
    {
        let b = Bench {
            fx: &fx,
            harness: Harness::new()?,
            lp,
            calls: n,
        };
        cases.push(b.case(
            results::CASE_PASS,
            1,
            std::slice::from_ref(&own),
            ci,
            (XDP_PASS, "XDP_PASS"),
            Some(("passed", 1)),
            None,
        )?);
        cases.push(b.case(
            results::CASE_EST_1,
            1,
            std::slice::from_ref(&data_a),
            ci,
            (XDP_REDIRECT, "XDP_REDIRECT"),
            Some(("conntrack_miss", 0)),
            None,
        )?);
        cases.push(b.case(
            results::CASE_REPLY,
            1,
            &[reply],
            bi,
            (XDP_REDIRECT, "XDP_REDIRECT"),
            Some(("replies", 1)),
            None,
        )?);
        // Direct server return: an established flow's packet, sent on with its MACs rewritten
        // (l2) or encapsulated (IPIP, GUE). DSR never sees the replies.
        for (port, name) in [
            (DSR_L2_PORT, results::CASE_DSR_L2),
            (DSR_IPIP_PORT, results::CASE_DSR_IPIP),
            (DSR_GUE_PORT, results::CASE_DSR_GUE),
        ] {
            let syn = tcp4(
                CLIENT_MAC,
                LB_CLIENT_MAC,
                CLIENT,
                VIP,
                40100,
                port,
                Kind::Syn,
            );
            let data = tcp4(
                CLIENT_MAC,
                LB_CLIENT_MAC,
                CLIENT,
                VIP,
                40100,
                port,
                Kind::Data,
            );
            // The SYN waits in UNCONFIRMED; the client's next packet confirms the flow.
            for f in [&syn, &data] {
                let rc = fx.once(prog, f, ci)?;
                ensure!(rc == XDP_REDIRECT, "{name}: priming returned {rc}");
            }
            cases.push(b.case(
                name,
                1,
                std::slice::from_ref(&data),
                ci,
                (XDP_REDIRECT, "XDP_REDIRECT"),
                Some(("conntrack_miss", 0)),
                None,
            )?);
        }
        // New flows: a SYN of a flow never seen, every packet. Per call: flows 0..n; in the
        // loop: 64Ki fresh flows per call from 1.5Mi on.
        let syns: Vec<Vec<u8>> = (0..n as u64)
            .map(|i| {
                let (src, sport) = flow(i);
                tcp4(CLIENT_MAC, LB_CLIENT_MAC, src, VIP, sport, 80, Kind::Syn)
            })
            .collect();
        let fresh = |call: u32| -> Vec<Vec<u8>> {
            let base = 1_572_864 + u64::from(call) * u64::from(MAX_TEMPLATES);
            (0..u64::from(MAX_TEMPLATES))
                .map(|i| {
                    let (src, sport) = flow(base + i);
                    tcp4(CLIENT_MAC, LB_CLIENT_MAC, src, VIP, sport, 80, Kind::Syn)
                })
                .collect()
        };
        cases.push(b.case(
            results::CASE_NEW,
            1,
            &syns,
            ci,
            (XDP_REDIRECT, "XDP_REDIRECT"),
            Some(("conntrack_miss", 1)),
            Some(&fresh),
        )?);
    }
    // New flows while `UNCONFIRMED` is full: every insert evicts. The table is filled with
    // flows from 8Mi on; the packets are SYNs of flows from 12Mi on (per call) and 16Mi on
    // (in the loop), never seen.
    {
        check_stop()?;
        let cap = xlb::dataplane::unconfirmed_size(CONNTRACK_SIZE);
        eprintln!("bench:   filling UNCONFIRMED to its {cap} entries");
        fx.fill_unconfirmed(8 << 20, u64::from(cap))?;
        let held = fx.dp.forge_maps().unconfirmed.keys().count() as u64;
        // The LRU keeps a few free entries per CPU in reserve: full is within those.
        ensure!(
            held + 1024 >= u64::from(cap),
            "UNCONFIRMED holds {held} of {cap} entries after filling"
        );
        eprintln!("bench:   UNCONFIRMED holds {held} of {cap} entries");
        let syns: Vec<Vec<u8>> = (0..n as u64)
            .map(|i| {
                let (src, sport) = flow((12 << 20) + i);
                tcp4(CLIENT_MAC, LB_CLIENT_MAC, src, VIP, sport, 80, Kind::Syn)
            })
            .collect();
        let fresh = |call: u32| -> Vec<Vec<u8>> {
            let base = (16 << 20) + u64::from(call) * u64::from(MAX_TEMPLATES);
            (0..u64::from(MAX_TEMPLATES))
                .map(|i| {
                    let (src, sport) = flow(base + i);
                    tcp4(CLIENT_MAC, LB_CLIENT_MAC, src, VIP, sport, 80, Kind::Syn)
                })
                .collect()
        };
        let b = Bench {
            fx: &fx,
            harness: Harness::new()?,
            lp: Loop::of_templates(p.quick),
            calls: n,
        };
        // `unconfirmed` counts successful inserts: one per packet, each into a full table.
        cases.push(b.case(
            results::CASE_NEW_FULL,
            u64::from(cap),
            &syns,
            ci,
            (XDP_REDIRECT, "XDP_REDIRECT"),
            Some(("unconfirmed", 1)),
            Some(&fresh),
        )?);
        let after = fx.dp.forge_maps().unconfirmed.keys().count() as u64;
        ensure!(
            after <= u64::from(cap),
            "UNCONFIRMED holds {after} entries, more than its {cap}"
        );
    }
    // The per-call new flows wait in UNCONFIRMED: the connection table is filled from 0.
    let mut in_table = 0;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (flows, name) in [
        (FLOWS_64K, results::CASE_EST_64K),
        (FLOWS_1M, results::CASE_EST_1M),
    ] {
        check_stop()?;
        if in_table < flows {
            eprintln!("bench:   filling the connection table to {flows} flows");
            fx.fill(in_table, flows)?;
            in_table = flows;
        }
        let mut random = |count: usize| -> Vec<Vec<u8>> {
            (0..count)
                .map(|_| {
                    let (src, sport) = flow(rng.below(flows));
                    tcp4(CLIENT_MAC, LB_CLIENT_MAC, src, VIP, sport, 80, Kind::Data)
                })
                .collect()
        };
        let frames = random(n);
        let templates = random(MAX_TEMPLATES as usize);
        let b = Bench {
            fx: &fx,
            harness: Harness::new()?,
            lp: Loop::of_templates(p.quick),
            calls: n,
        };
        let same = |_: u32| templates.clone();
        cases.push(b.case(
            name,
            flows + 1,
            &frames,
            ci,
            (XDP_REDIRECT, "XDP_REDIRECT"),
            Some(("conntrack_miss", 0)),
            Some(&same),
        )?);
    }

    // Replies of established flows with 1Mi flows in the table: backend → client, 64Ki flows
    // picked at random. The per-call run goes first over the same flows, so that the loop
    // meets their replies' next hops cached and their flows answered (the steady state; a
    // flow's cached next hop lives 1 s, and the loop's calls pay for those that expire).
    {
        check_stop()?;
        let backends = fx
            .backend_ids
            .iter()
            .map(|&id| {
                let b = fx.dp.maps().backends.get(&id, 0)?;
                Ok((
                    Ipv4Addr::new(b.addr[0], b.addr[1], b.addr[2], b.addr[3]),
                    u16::from_be_bytes(b.port),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let templates: Vec<Vec<u8>> = (0..MAX_TEMPLATES)
            .map(|_| {
                let i = rng.below(in_table);
                let (client, cport) = flow(i);
                // `fill` pins flow i to backend_ids[i % len].
                let (addr, port) = backends[(i % backends.len() as u64) as usize];
                tcp4(
                    backend_mac(addr.octets()[3].saturating_sub(10)),
                    LB_BACKENDS_MAC,
                    addr,
                    client,
                    port,
                    cport,
                    Kind::Data,
                )
            })
            .collect();
        let b = Bench {
            fx: &fx,
            harness: Harness::new()?,
            lp: Loop::of_templates(p.quick),
            calls: n.max(MAX_TEMPLATES as usize),
        };
        let same = |_: u32| templates.clone();
        cases.push(b.case(
            results::CASE_REPLY_1M,
            in_table + 1,
            &templates,
            bi,
            (XDP_REDIRECT, "XDP_REDIRECT"),
            Some(("replies", 1)),
            Some(&same),
        )?);
    }

    for c in &mut cases {
        c.net_ns = c.mean_ns - floor_mean;
    }
    floor.loop_ns = cases.first().and_then(|c| c.loop_floor_ns);
    floor.loop_floor_ns = floor.loop_ns;
    floor.loop_net_ns = Some(0.0);
    floor.loop_frames = 1;

    // Programs that do not rewrite, repeated by the kernel on one frame (no harness).
    let mut repeated = Vec::new();
    let calls = 50u64;
    for (name, program, frame, expect) in [
        ("xlb_tx (floor)", lb_common::PROG_XDP_TX, &data_a, XDP_TX),
        ("xlb, non-service traffic", prog, &own, XDP_PASS),
    ] {
        let repeat = 10_000u32;
        let mut sum = 0.0;
        for _ in 0..calls {
            sum += fx.repeated(program, frame, ci, expect, repeat)?;
        }
        repeated.push(RepeatedCase {
            name: name.into(),
            repeat,
            calls,
            mean_ns: sum / calls as f64,
        });
    }
    let (calls_by_fn, calls_error) = match call_counts(&fx) {
        Ok(c) => (c, None),
        Err(e) => {
            eprintln!("bench:   call counts not read: {e:#}");
            (Vec::new(), Some(format!("{e:#}")))
        }
    };
    let res = ProgResults {
        calls: n as u64,
        floor,
        cases,
        repeated,
        calls_by_fn,
        calls_error,
    };
    if let Some(line) = results::dsr_vs_nat(&res) {
        eprintln!("bench:   {line}");
    }
    Ok(res)
}

/// The calls in each subprogram of the loaded `xlb` program, read with bpftool (installed
/// with apt when missing, as HAProxy is).
fn call_counts(fx: &Fixture) -> Result<Vec<super::calls::FnCalls>> {
    super::ensure_package("bpftool", "bpftool", "the call counts of the XDP program")?;
    let id = fx.dp.program(lb_common::PROG_XDP_LB)?.info()?.id();
    let fns = super::calls::count(id)?;
    for f in &fns {
        eprintln!(
            "bench:   calls in {}: {} BPF-to-BPF, helpers {:?}",
            f.name, f.bpf_calls, f.helpers
        );
    }
    Ok(fns)
}
