//! The results of a run (written as JSON), the targets they are judged against, and the
//! markdown report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::load::latency::LatencyResult;
use super::load::tcp::ConnResult;
use super::load::udp::UdpFloodResult;
use super::sys::{CpuBusy, HostInfo, MapMemory};

/// Everything one run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub meta: Meta,
    pub prog: Option<ProgResults>,
    pub forwarding: Option<ForwardingResults>,
    pub tcp: Option<TcpResults>,
    pub maglev: Option<MaglevResults>,
    pub control: Option<ControlResults>,
    pub memory: Option<MemoryResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetResults>,
    pub sweep: Option<SweepResults>,
    pub targets: Vec<TargetCheck>,
    /// Scenarios that failed: name → error.
    pub errors: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Meta {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// `YYYY-MM-DDTHH:MM:SSZ`.
    pub started: String,
    pub host: Option<HostInfo>,
    pub git_commit: String,
    pub git_dirty: bool,
    pub quick: bool,
    pub scenarios: Vec<String>,
    pub duration_s: f64,
    /// CPU of the client, the backends and everything else.
    pub client_cpu: usize,
    /// CPU of the balancer's packet processing (the lb namespace's NAPI threads, HAProxy).
    pub balancer_cpu: usize,
}

// ---- scenario 7: conntrack sweep ----

#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepResults {
    /// `conntrack_size` of the table swept.
    pub table_size: u32,
    /// Entries in it after filling (the LRU may have evicted a few).
    pub filled: u64,
    pub cases: Vec<SweepCase>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepCase {
    pub name: String,
    /// Entries read.
    pub entries: u64,
    /// Entries deleted (expired).
    pub deleted: u64,
    /// Entries counted open.
    pub open: u64,
    /// CPU time of the sweeping thread (user + system).
    pub cpu_ms: f64,
    /// Of which in user mode and in the kernel (`getrusage`, tick-based: coarser).
    pub user_ms: f64,
    pub system_ms: f64,
    pub wall_ms: f64,
}

// ---- scenario 1: per-packet cost ----

#[derive(Clone, Debug, Default, Serialize)]
pub struct ProgResults {
    /// `BPF_PROG_TEST_RUN` calls per case (repeat = 1 each, a fresh frame each).
    pub calls: u64,
    /// The harness floor: `xlb_tx`, a program that only returns `XDP_TX`, measured the same way.
    pub floor: ProgCase,
    pub cases: Vec<ProgCase>,
    /// Programs that do not rewrite the frame, also measured with `repeat` > 1 in one call.
    pub repeated: Vec<RepeatedCase>,
    /// The calls in each subprogram of the verifier's translated `xlb` program (empty when
    /// bpftool could not be run; `calls_error` says why).
    pub calls_by_fn: Vec<super::calls::FnCalls>,
    pub calls_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ProgCase {
    pub name: String,
    pub program: String,
    /// Flows in the connection table while measuring.
    pub flows_in_table: u64,
    pub calls: u64,
    /// The action every call had to return (checked).
    pub action: String,
    /// What else was checked.
    pub checked: String,
    /// Mean of the per-call durations the kernel reports.
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    /// `mean_ns` minus the floor's mean: the program's own cost.
    pub net_ns: f64,
    /// In the kernel's loop (`repeat` > 1) through the harness that restores a fresh frame
    /// and tail-calls the program: ns per repetition, through the program and through the
    /// floor program (the harness's own cost), and their difference.
    pub loop_ns: Option<f64>,
    pub loop_floor_ns: Option<f64>,
    pub loop_net_ns: Option<f64>,
    /// Repetitions measured in the loop (over all calls).
    pub loop_reps: u64,
    /// Distinct frames the harness cycles through.
    pub loop_frames: u32,
}

impl ProgCase {
    /// The program's own cost per packet: in the loop if measured there, else per call.
    pub fn cost_ns(&self) -> f64 {
        self.loop_net_ns.unwrap_or(self.net_ns)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RepeatedCase {
    pub name: String,
    pub repeat: u32,
    pub calls: u64,
    /// Kernel-reported duration per repetition, mean over the calls.
    pub mean_ns: f64,
}

// ---- scenario 2: forwarding ----

#[derive(Clone, Debug, Default, Serialize)]
pub struct ForwardingResults {
    pub offered_pps: f64,
    pub duration_s: f64,
    /// Ethernet frame size of every packet (without FCS).
    pub frame_bytes: usize,
    pub flows: u64,
    /// The balancer CPU's busy share while nothing was sent, just before the runs.
    pub idle_busy_pct: f64,
    pub runs: Vec<UdpRun>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct UdpRun {
    pub system: String,
    /// Why the system was not run (e.g. HAProxy balances no UDP).
    pub skipped: Option<String>,
    pub generator: UdpFloodResult,
    /// The balancer CPU's busy share just before the run (other tenants of the machine).
    pub pre_busy_pct: f64,
    /// Packets the backends received (their ingress counters).
    pub received: u64,
    pub per_backend: Vec<u64>,
    pub lost: u64,
    pub loss_pct: f64,
    pub received_pps: f64,
    pub cpu: CpuBusy,
    /// The client CPU (client, switch, backends) over the run.
    pub client_cpu: CpuBusy,
    /// Balancer CPU busy time per forwarded packet (= ms per million packets).
    pub cpu_ns_per_packet: f64,
    /// Packets per second one balancer CPU would forward at 100% busy, at that cost.
    pub capacity_mpps: f64,
    /// Run time of the lb namespace's NAPI threads (and HAProxy), ns.
    pub lb_tasks_ns: u64,
    /// xlb's own counters over the run (GLOBAL_STATS deltas), per CPU.
    pub xlb_counters: Option<BTreeMap<String, Vec<u64>>>,
    /// Interface counters of the lb namespace over the run: iface → counter → delta.
    pub lb_links: BTreeMap<String, BTreeMap<String, u64>>,
}

// ---- scenario 3: TCP ----

#[derive(Clone, Debug, Default, Serialize)]
pub struct TcpResults {
    pub fixed_rate: f64,
    pub fixed_workers: usize,
    pub max_workers: usize,
    pub duration_s: f64,
    pub latency_rate: f64,
    pub latency_connections: usize,
    pub conn_fixed: Vec<ConnRun>,
    pub conn_max: Vec<ConnRun>,
    pub latency: Vec<LatencyRun>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnRun {
    pub system: String,
    pub skipped: Option<String>,
    pub result: ConnResult,
    pub pre_busy_pct: f64,
    /// SYNs the backends received.
    pub backend_syns: u64,
    pub cpu: CpuBusy,
    /// The client CPU (client, switch, backends) over the run.
    pub client_cpu: CpuBusy,
    /// Balancer CPU busy time per successful connection, µs (= ms per thousand connections).
    pub cpu_us_per_conn: f64,
    /// Connections per second one balancer CPU would carry at 100% busy, at that cost.
    pub capacity_conn_per_s: f64,
    pub lb_tasks_ns: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyRun {
    pub system: String,
    pub skipped: Option<String>,
    pub result: LatencyResult,
    pub pre_busy_pct: f64,
    pub cpu: CpuBusy,
    /// p50 minus the no-balancer path's p50, µs.
    pub added_p50_us: Option<f64>,
}

// ---- scenario 4: Maglev ----

#[derive(Clone, Debug, Default, Serialize)]
pub struct MaglevResults {
    pub builds: Vec<MaglevBuild>,
    pub changes: Vec<TableChange>,
    pub daemon_change: Option<DaemonChange>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MaglevBuild {
    pub backends: usize,
    pub m: u32,
    pub reps: usize,
    pub median_ms: f64,
    pub min_ms: f64,
}

/// A backend change applied in process: desired state, table build, map writes, slot flip.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TableChange {
    pub backends: usize,
    pub m: u32,
    pub changes: usize,
    /// The first change after start (the inactive table slot is still empty: written whole).
    pub first_ms: f64,
    /// The changes after it.
    pub median_ms: f64,
    pub median_entries_written: usize,
}

/// A backend added to the running daemon's config, then SIGHUP: time until a new flow
/// reaches it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DaemonChange {
    pub samples_ms: Vec<f64>,
    pub median_ms: f64,
    pub probe_interval_us: u64,
    pub how: String,
}

// ---- scenario 7: fleet ----

/// Three nodes behind a BIRD router with ECMP, long-lived connections, nodes failing.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetResults {
    /// Long-lived TCP connections exchanging 64 bytes every 20 ms.
    pub connections: usize,
    pub events: Vec<FleetEvent>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetEvent {
    pub event: String,
    /// From the event until the router's route to the VIP has its new next hops.
    pub route_changed_ms: f64,
    /// Connections that failed (reset, closed, echo wrong, 15 s without an answer).
    pub broken: usize,
    /// Connections whose longest gap between exchanges around the event was over 200 ms.
    pub stalled: usize,
    pub stall_p50_ms: f64,
    /// The longest gap of any connection around the event.
    pub stall_max_ms: f64,
    /// For a drain: from `xlb node drain` until `xlb status` says drained.
    pub drained_after_ms: Option<f64>,
}

// ---- scenario 5: control plane ----

#[derive(Clone, Debug, Default, Serialize)]
pub struct ControlResults {
    pub backend_death: Measured,
    /// Scaling triggered by hand (`xlb scale GROUP --desired N`).
    pub scaling: Measured,
    /// Scaling triggered by a target_tracking policy (a load step across its target).
    pub scaling_policy: Measured,
    /// A backend's server killed under 600 new connections a second: active checks only,
    /// passive health, passive health with redispatch.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<Failover>,
}

/// One failover run (see [`ControlResults::failover`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Failover {
    pub mode: String,
    /// `measured`, `failed: ...` or `pending (...)`.
    pub status: String,
    /// Achieved new connections per second.
    pub rate: f64,
    pub requests_after_kill: usize,
    pub failed: usize,
    /// Answered, but after a SYN retransmission (over 800 ms).
    pub delayed: usize,
    /// From the kill to the start of the last request the dead backend got (failed or
    /// delayed).
    pub time_to_stop_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Measured {
    /// `measured`, or `pending (...)`.
    pub status: String,
    pub how: String,
    pub samples_ms: Vec<f64>,
    pub median_ms: Option<f64>,
    /// Where the time goes: the moments of each step, in ms since the trigger.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breakdown: Vec<Phase>,
}

/// One step of a [`Measured`] sequence: its moment in each sample (ms since the trigger).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase {
    pub what: String,
    pub samples_ms: Vec<f64>,
    pub median_ms: Option<f64>,
}

// ---- scenario 6: memory ----

#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryResults {
    pub runs: Vec<MemoryRun>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryRun {
    pub services: usize,
    pub backends: usize,
    pub max_services: u32,
    pub conntrack_size: u32,
    pub maglev_table_size: u32,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub maps: Vec<MapMemory>,
    pub maps_bytes: u64,
}

// ---- targets ----

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

fn check(target: &str, measured: String, met: Option<bool>) -> TargetCheck {
    TargetCheck {
        target: target.to_owned(),
        measured,
        met,
    }
}

fn not_measured(target: &str) -> TargetCheck {
    check(target, "not measured in this run".into(), None)
}

pub const SYS_XLB: &str = "xlb";
pub const SYS_ROUTING: &str = "kernel routing (no balancer)";
pub const SYS_NFT: &str = "nftables DNAT";
pub const SYS_HAPROXY: &str = "HAProxy (TCP mode)";

impl Results {
    fn prog_case(&self, name: &str) -> Option<&ProgCase> {
        self.prog.as_ref()?.cases.iter().find(|c| c.name == name)
    }

    fn udp_run(&self, system: &str) -> Option<&UdpRun> {
        self.forwarding
            .as_ref()?
            .runs
            .iter()
            .find(|r| r.system == system && r.skipped.is_none() && r.received > 0)
    }

    fn conn_run<'a>(runs: &'a [ConnRun], system: &str) -> Option<&'a ConnRun> {
        runs.iter()
            .find(|r| r.system == system && r.skipped.is_none() && r.result.ok > 0)
    }

    fn latency_run(&self, system: &str) -> Option<&LatencyRun> {
        self.tcp
            .as_ref()?
            .latency
            .iter()
            .find(|r| r.system == system && r.skipped.is_none() && r.result.requests > 0)
    }

    /// Judges the targets on what this run measured.
    pub fn judge(&mut self) {
        let mut t = Vec::new();
        // Per-packet cost.
        for (name, target, limit) in [
            // Issue 9's targets (AMD EPYC VM; Katran's figures measured the same way there).
            (CASE_EST_1, "Per-packet cost, established flow (1 flow in the table): ≤ 100 ns (Katran 133 ns)", 100.0),
            (CASE_EST_64K, "Per-packet cost, established flow, 64Ki flows in the table: ≤ 250 ns", 250.0),
            (CASE_EST_1M, "Per-packet cost, established flow, 1Mi flows in the table: ≤ 250 ns (Katran 375 ns)", 250.0),
            (CASE_REPLY_1M, "Per-packet cost, reply of an established flow, 1Mi flows in the table: ≤ 270 ns", 270.0),
            (CASE_PASS, "Per-packet cost, non-service traffic: ≤ 30 ns", 30.0),
            (CASE_NEW, "Per-packet cost, new flow (SYN, miss, insert into UNCONFIRMED): ≤ 500 ns (Katran 786 ns)", 500.0),
            (CASE_NEW_FULL, "Per-packet cost, new flow while the table is full (insert evicts): ≤ 600 ns", 600.0),
        ] {
            t.push(match self.prog_case(name) {
                Some(c) => check(
                    target,
                    match (c.loop_ns, c.loop_floor_ns) {
                        (Some(l), Some(f)) => format!(
                            "{:.0} ns (harness loop {l:.1} − harness floor {f:.1} ns; per call: {:.0} ns)",
                            c.cost_ns(),
                            c.net_ns
                        ),
                        _ => format!(
                            "{:.0} ns (call mean {:.0} ns − floor {:.0} ns)",
                            c.net_ns,
                            c.mean_ns,
                            c.mean_ns - c.net_ns
                        ),
                    },
                    Some(c.cost_ns() <= limit),
                ),
                None => not_measured(target),
            });
        }
        // Balancer CPU per forwarded UDP packet.
        let target = "Balancer CPU per forwarded UDP packet ≤ ⅓ of nftables DNAT's and ≤ ½ of kernel routing's, with zero loss";
        t.push(
            match (
                self.udp_run(SYS_XLB),
                self.udp_run(SYS_NFT),
                self.udp_run(SYS_ROUTING),
            ) {
                (Some(x), Some(n), Some(r)) => {
                    let (vn, vr) = (
                        x.cpu_ns_per_packet / n.cpu_ns_per_packet,
                        x.cpu_ns_per_packet / r.cpu_ns_per_packet,
                    );
                    check(
                        target,
                        format!(
                            "xlb {:.0} ns/packet = {:.2} × nftables ({:.0}), {:.2} × routing ({:.0}); loss {} of {} ({:.3}%)",
                            x.cpu_ns_per_packet,
                            vn,
                            n.cpu_ns_per_packet,
                            vr,
                            r.cpu_ns_per_packet,
                            x.lost,
                            x.generator.sent,
                            x.loss_pct
                        ),
                        Some(vn <= 1.0 / 3.0 && vr <= 0.5 && x.lost == 0),
                    )
                }
                _ => not_measured(target),
            },
        );
        // Balancer CPU per TCP connection, and connection rate.
        let target = "Balancer CPU per TCP connection ≤ ⅓ of HAProxy's";
        let tcp = self.tcp.as_ref();
        t.push(
            match tcp.and_then(|tc| {
                Some((
                    Self::conn_run(&tc.conn_fixed, SYS_XLB)?,
                    Self::conn_run(&tc.conn_fixed, SYS_HAPROXY)?,
                ))
            }) {
                Some((x, h)) => {
                    let v = x.cpu_us_per_conn / h.cpu_us_per_conn;
                    check(
                        target,
                        format!(
                            "xlb {:.1} µs/connection = {:.2} × HAProxy ({:.1} µs)",
                            x.cpu_us_per_conn, v, h.cpu_us_per_conn
                        ),
                        Some(v <= 1.0 / 3.0),
                    )
                }
                None => not_measured(target),
            },
        );
        let target = "TCP connections per second through xlb not below the no-balancer path's";
        t.push(
            match tcp.and_then(|tc| {
                Some((
                    Self::conn_run(&tc.conn_max, SYS_XLB)?,
                    Self::conn_run(&tc.conn_max, SYS_ROUTING)?,
                ))
            }) {
                Some((x, r)) => {
                    let v = x.result.conn_per_s / r.result.conn_per_s;
                    // Runs of a few seconds on a shared machine differ by a few percent
                    // between identical paths: within 3% counts as "not below".
                    check(
                        target,
                        format!(
                            "xlb {:.0}/s vs routing {:.0}/s ({:.1}%{}), failures {} vs {}",
                            x.result.conn_per_s,
                            r.result.conn_per_s,
                            v * 100.0,
                            if (0.97..1.0).contains(&v) {
                                "; below, but within the 3% that identical paths differ by \
                                 between runs here"
                            } else {
                                ""
                            },
                            x.result.failed,
                            r.result.failed
                        ),
                        Some(v >= 0.97 && x.result.failed == 0),
                    )
                }
                None => not_measured(target),
            },
        );
        let target = "Added latency over the no-balancer path: p50 ≤ 10 µs";
        t.push(
            match (self.latency_run(SYS_XLB), self.latency_run(SYS_ROUTING)) {
                (Some(x), Some(r)) => {
                    let added =
                        (x.result.latency.p50_ns as f64 - r.result.latency.p50_ns as f64) / 1000.0;
                    check(
                        target,
                        format!(
                            "p50 {:.1} µs vs {:.1} µs: {added:+.1} µs",
                            x.result.latency.p50_ns as f64 / 1000.0,
                            r.result.latency.p50_ns as f64 / 1000.0
                        ),
                        Some(added <= 10.0 && x.result.errors == 0),
                    )
                }
                _ => not_measured(target),
            },
        );
        let target = "Maglev build, 1000 backends, M = 65537: ≤ 2 ms";
        t.push(
            match self
                .maglev
                .as_ref()
                .and_then(|m| m.builds.iter().find(|b| b.backends == 1000 && b.m == 65537))
            {
                Some(b) => check(
                    target,
                    format!("{:.2} ms (median of {})", b.median_ms, b.reps),
                    Some(b.median_ms <= 2.0),
                ),
                None => not_measured(target),
            },
        );
        let target = "Daemon RSS with 100 services: ≤ 30 MiB";
        t.push(
            match self
                .memory
                .as_ref()
                .and_then(|m| m.runs.iter().find(|r| r.services == 100))
            {
                Some(r) => check(
                    target,
                    format!(
                        "{:.1} MiB (peak {:.1} MiB)",
                        r.rss_kib as f64 / 1024.0,
                        r.peak_rss_kib as f64 / 1024.0
                    ),
                    Some(r.rss_kib <= 30 * 1024),
                ),
                None => not_measured(target),
            },
        );
        let target =
            "One conntrack sweep of a full 1Mi-entry table (batch map calls) costs ≤ 200 ms of CPU";
        t.push(match self.sweep.as_ref().and_then(|s| s.cases.first()) {
            Some(c) => check(
                target,
                format!(
                    "{:.0} ms CPU ({:.0} ms wall) for {} entries; deleting every entry too: {}",
                    c.cpu_ms,
                    c.wall_ms,
                    thousands(c.entries),
                    self.sweep
                        .as_ref()
                        .and_then(|s| s.cases.last())
                        .map_or("-".into(), |d| format!("{:.0} ms", d.cpu_ms))
                ),
                Some(c.cpu_ms <= 200.0),
            ),
            None => not_measured(target),
        });
        self.targets = t;
    }
}

#[cfg_attr(not(feature = "xlb"), allow(dead_code))]
pub const CASE_FLOOR: &str = "floor: xlb_tx (returns XDP_TX)";
pub const CASE_NEW: &str = "new TCP flow (SYN): Maglev + UNCONFIRMED insert";
pub const CASE_EST_1: &str = "established flow, 1 flow in the table";
pub const CASE_EST_64K: &str = "established flow, 64Ki flows in the table";
pub const CASE_EST_1M: &str = "established flow, 1Mi flows in the table";
#[cfg_attr(not(feature = "xlb"), allow(dead_code))]
pub const CASE_REPLY: &str = "reply (reverse NAT)";
pub const CASE_REPLY_1M: &str = "reply (reverse NAT), 1Mi flows in the table";
pub const CASE_PASS: &str = "non-service traffic (XDP_PASS)";
pub const CASE_NEW_FULL: &str =
    "new TCP flow (SYN) while UNCONFIRMED is full: Maglev + insert evicting";
pub const CASE_DSR_L2: &str = "established flow, DSR l2 (MACs rewritten)";
pub const CASE_DSR_IPIP: &str = "established flow, DSR ipip (IPIP encapsulation)";
pub const CASE_DSR_GUE: &str = "established flow, DSR gue (GUE encapsulation)";

/// The balancer's CPU in DSR mode next to NAT mode, from one run's per-packet costs: per
/// client → server packet, and per flow whose server answers every client packet with one
/// reply (NAT handles that reply too; DSR never sees it).
pub fn dsr_vs_nat(p: &ProgResults) -> Option<String> {
    let cost = |name: &str| p.cases.iter().find(|c| c.name == name).map(|c| c.cost_ns());
    let (est, reply) = (cost(CASE_EST_1)?, cost(CASE_REPLY)?);
    let mut out = format!(
        "DSR next to NAT (1 flow in the table, loop net): NAT costs {est:.0} ns per client → \
         server packet and {reply:.0} ns per reply, {:.0} ns per request/reply pair.",
        est + reply
    );
    for (name, mode) in [
        (CASE_DSR_L2, "l2"),
        (CASE_DSR_IPIP, "ipip"),
        (CASE_DSR_GUE, "gue"),
    ] {
        if let Some(d) = cost(name) {
            out.push_str(&format!(
                " DSR {mode}: {d:.0} ns per client → server packet ({:.2}× NAT's), nothing per \
                 reply: {:.2}× NAT's CPU per pair.",
                d / est,
                d / (est + reply)
            ));
        }
    }
    Some(out)
}

// ---- markdown ----

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn pct(v: f64) -> String {
    format!("{v:.1}%")
}

fn ratio(v: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 && v > 0.0 => format!("{:.2}×", v / b),
        _ => "–".into(),
    }
}

fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "–",
    }
}

/// File names of the charts drawn for a run, by chart.
#[derive(Clone, Debug, Default)]
pub struct ChartFiles {
    pub prog: Option<String>,
    pub forwarding: Option<String>,
    pub tcp_cpu: Option<String>,
    pub tcp_rate: Option<String>,
    pub latency: Option<String>,
    pub maglev: Option<String>,
}

/// The markdown report of a run. `charts` are paths relative to where the markdown goes.
pub fn markdown(r: &Results, charts: &ChartFiles) -> String {
    let mut m = String::new();
    let meta = &r.meta;
    let host = meta.host.as_ref();
    let _ = writeln!(
        m,
        "Run of {} on `{}` ({}, {} CPUs, {:.0} GiB, Linux {}), commit `{}`{}{}, {:.0} s.\n",
        meta.started,
        host.map_or("?", |h| h.host.as_str()),
        host.map_or("?", |h| h.cpu_model.as_str()),
        host.map_or(0, |h| h.cpus),
        host.map_or(0.0, |h| h.mem_gib),
        host.map_or("?", |h| h.kernel.as_str()),
        meta.git_commit,
        if meta.git_dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        if meta.quick {
            ", **quick** (short runs: rough figures)"
        } else {
            ""
        },
        meta.duration_s
    );

    // Targets first: the verdict at a glance.
    if !r.targets.is_empty() {
        let _ = writeln!(
            m,
            "### Targets\n\n| target | measured | verdict |\n|---|---|---|"
        );
        for t in &r.targets {
            let _ = writeln!(m, "| {} | {} | {} |", t.target, t.measured, met(t.met));
        }
        m.push('\n');
    }
    for (name, e) in &r.errors {
        let _ = writeln!(
            m,
            "**Scenario `{name}` failed:** `{}`\n",
            e.replace('\n', " ")
        );
    }

    if let Some(s) = &r.sweep {
        let _ = writeln!(
            m,
            "### 8. Conntrack sweep\n\n\
             The daemon's sweep (`xlb::sweep::sweep_once`) over `CONNTRACK` loaded with \
             `conntrack_size` = {} ({} entries after filling): `BPF_MAP_LOOKUP_BATCH` reads of \
             8192 entries, a verdict per entry, `BPF_MAP_DELETE_BATCH` of each chunk's expired \
             entries. CPU time of the sweeping thread (`CLOCK_THREAD_CPUTIME_ID`, the kernel's \
             work in the batch calls included).\n\n\
             | case | entries read | deleted | CPU | of which user / kernel | wall |\n|---|---:|---:|---:|---:|---:|",
            thousands(s.table_size.into()),
            thousands(s.filled)
        );
        for c in &s.cases {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {:.0} ms | {:.0} / {:.0} ms | {:.0} ms |",
                c.name,
                thousands(c.entries),
                thousands(c.deleted),
                c.cpu_ms,
                c.user_ms,
                c.system_ms,
                c.wall_ms
            );
        }
        m.push('\n');
    }
    if let Some(p) = &r.prog {
        let _ = writeln!(
            m,
            "### 1. Per-packet cost of the XDP program (`BPF_PROG_TEST_RUN`)\n\n\
             **In the kernel's loop** (`repeat` > 1): a harness program copies the next of a set \
             of template frames over the packet and tail-calls the program; the same harness \
             tail-calling `xlb_tx` (which only returns `XDP_TX`) is its floor, subtracted. \
             **Per call**: {} calls per case with `repeat` = 1, a fresh frame each; the \
             kernel's duration of a call includes two clock reads and the caches the system call \
             disturbed; the floor program measured the same way is subtracted. Every call's \
             action is checked, and the program's own counters confirm the path (conntrack hits \
             or misses, passes, replies).\n\n\
             | case | flows in table | frames | action | **loop: net** | loop: through harness | per call: mean / p50 / p99 | per call: net |\n|---|---:|---:|---|---:|---:|---:|---:|",
            thousands(p.calls)
        );
        for c in std::iter::once(&p.floor).chain(&p.cases) {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | **{}** | {} | {:.0} / {} / {} ns | {:.0} ns |",
                c.name,
                thousands(c.flows_in_table),
                thousands(c.loop_frames.into()),
                c.action,
                c.loop_net_ns.map_or("–".into(), |v| format!("{v:.1} ns")),
                match (c.loop_ns, c.loop_floor_ns) {
                    (Some(l), Some(f)) => format!("{l:.1} ns (floor {f:.1})"),
                    _ => "–".into(),
                },
                c.mean_ns,
                c.p50_ns,
                c.p99_ns,
                c.net_ns
            );
        }
        if let Some(line) = dsr_vs_nat(p) {
            let _ = writeln!(m, "\n{line}");
        }
        if !p.repeated.is_empty() {
            let _ = writeln!(
                m,
                "\nPrograms that leave the frame as it is, also with the kernel repeating them in one call (no per-call overhead):\n\n| program | repeat | per repetition |\n|---|---:|---:|"
            );
            for c in &p.repeated {
                let _ = writeln!(
                    m,
                    "| {} | {} | {:.1} ns |",
                    c.name,
                    thousands(c.repeat.into()),
                    c.mean_ns
                );
            }
        }
        if !p.calls_by_fn.is_empty() {
            let _ = writeln!(
                m,
                "\nCalls in the verifier's translated `xlb` program (`bpftool prog dump xlated`), per subprogram: every BPF-to-BPF call and every helper or kernel-function call (hash-map lookups included; array lookups are inlined and leave none). The paths that run each subprogram are in BENCHMARKS.md.\n\n| subprogram | instructions | BPF-to-BPF calls | helper calls |\n|---|---:|---:|---|"
            );
            for f in &p.calls_by_fn {
                let helpers = f
                    .helpers
                    .iter()
                    .map(|(h, n)| format!("{h} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    m,
                    "| `{}` | {} | {} | {} |",
                    f.name, f.insns, f.bpf_calls, helpers
                );
            }
        } else if let Some(e) = &p.calls_error {
            let _ = writeln!(m, "\nCall counts: not read ({e}).");
        }
        if let Some(f) = &charts.prog {
            let _ = writeln!(m, "\n![per-packet cost]({f})");
        }
        m.push('\n');
    }

    if let Some(f) = &r.forwarding {
        let routing = f
            .runs
            .iter()
            .find(|x| x.system == SYS_ROUTING && x.received > 0)
            .map(|x| x.cpu_ns_per_packet);
        let nft = f
            .runs
            .iter()
            .find(|x| x.system == SYS_NFT && x.received > 0)
            .map(|x| x.cpu_ns_per_packet);
        let _ = writeln!(
            m,
            "### 2. UDP forwarding at a fixed offered rate\n\n\
             {} packets/s offered for {:.0} s, {}-byte frames, {} flows. Balancer CPU idle \
             before the runs: {} busy.\n\n\
             | system | sent | received | lost | balancer CPU busy | CPU per packet | vs routing | vs nftables | projected capacity | balancer threads per packet |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            thousands(f.offered_pps as u64),
            f.duration_s,
            f.frame_bytes,
            thousands(f.flows),
            pct(f.idle_busy_pct)
        );
        for x in &f.runs {
            if let Some(why) = &x.skipped {
                let _ = writeln!(m, "| {} | {why} | | | | | | | | |", x.system);
                continue;
            }
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} ({:.3}%) | {} ({} before) | **{:.0} ns** | {} | {} | {:.2} Mpps | {:.0} ns |",
                x.system,
                thousands(x.generator.sent),
                thousands(x.received),
                thousands(x.lost),
                x.loss_pct,
                pct(x.cpu.busy_pct),
                pct(x.pre_busy_pct),
                x.cpu_ns_per_packet,
                ratio(x.cpu_ns_per_packet, routing),
                ratio(x.cpu_ns_per_packet, nft),
                x.capacity_mpps,
                x.lb_tasks_ns as f64 / x.received.max(1) as f64
            );
        }
        if let Some(x) = f.runs.iter().find(|x| x.system == SYS_XLB) {
            if let Some(c) = &x.xlb_counters {
                let sum = |k: &str| c.get(k).map_or(0, |v| v.iter().sum::<u64>());
                let per_cpu = c
                    .get("forwarded")
                    .map(|v| {
                        v.iter()
                            .enumerate()
                            .map(|(i, n)| format!("CPU {i}: {}", thousands(*n)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    m,
                    "\nxlb's own counters over its run: forwarded {} ({per_cpu}), conntrack misses {}, dropped {}, passed {}, redirect failures {}.",
                    thousands(sum("forwarded")),
                    thousands(sum("conntrack_miss")),
                    thousands(sum("dropped")),
                    thousands(sum("passed")),
                    thousands(sum("redirect_failed"))
                );
            }
        }
        if let Some(c) = &charts.forwarding {
            let _ = writeln!(m, "\n![balancer CPU per packet]({c})");
        }
        m.push('\n');
    }

    if let Some(t) = &r.tcp {
        let routing_fixed = t
            .conn_fixed
            .iter()
            .find(|x| x.system == SYS_ROUTING && x.result.ok > 0)
            .map(|x| x.cpu_us_per_conn);
        let haproxy_fixed = t
            .conn_fixed
            .iter()
            .find(|x| x.system == SYS_HAPROXY && x.result.ok > 0)
            .map(|x| x.cpu_us_per_conn);
        let _ = writeln!(
            m,
            "### 3. TCP: connections and request latency\n\n\
             **Fixed rate**: {} connections/s offered for {:.0} s ({} workers), each: connect, \
             `GET /` with `Connection: close`, read to the end, close.\n\n\
             | system | ok | failed | conn/s | connection time p50 / p99 | balancer CPU busy | CPU per connection | vs routing | vs HAProxy | projected capacity | balancer threads per connection |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            thousands(t.fixed_rate as u64),
            t.duration_s,
            t.fixed_workers
        );
        for x in &t.conn_fixed {
            if let Some(why) = &x.skipped {
                let _ = writeln!(m, "| {} | {why} | | | | | | | | | |", x.system);
                continue;
            }
            let _ = writeln!(
                m,
                "| {} | {} | {} | {:.0} | {} / {} µs | {} ({} before) | **{:.1} µs** | {} | {} | {} conn/s | {:.1} µs |",
                x.system,
                thousands(x.result.ok),
                thousands(x.result.failed),
                x.result.conn_per_s,
                us(x.result.time.p50_ns),
                us(x.result.time.p99_ns),
                pct(x.cpu.busy_pct),
                pct(x.pre_busy_pct),
                x.cpu_us_per_conn,
                ratio(x.cpu_us_per_conn, routing_fixed),
                ratio(x.cpu_us_per_conn, haproxy_fixed),
                thousands(x.capacity_conn_per_s as u64),
                x.lb_tasks_ns as f64 / 1000.0 / x.result.ok.max(1) as f64
            );
        }
        let routing_max = t
            .conn_max
            .iter()
            .find(|x| x.system == SYS_ROUTING && x.result.ok > 0)
            .map(|x| x.result.conn_per_s);
        let _ = writeln!(
            m,
            "\n**As fast as the client goes**: {} concurrent connections for {:.0} s (the client's CPU saturates first).\n\n\
             | system | ok | failed | conn/s | vs routing | balancer CPU busy | CPU per connection |\n|---|---:|---:|---:|---:|---:|---:|",
            t.max_workers, t.duration_s
        );
        for x in &t.conn_max {
            if let Some(why) = &x.skipped {
                let _ = writeln!(m, "| {} | {why} | | | | | |", x.system);
                continue;
            }
            let _ = writeln!(
                m,
                "| {} | {} | {} | **{:.0}** | {} | {} | {:.1} µs |",
                x.system,
                thousands(x.result.ok),
                thousands(x.result.failed),
                x.result.conn_per_s,
                ratio(x.result.conn_per_s, routing_max),
                pct(x.cpu.busy_pct),
                x.cpu_us_per_conn
            );
        }
        let _ = writeln!(
            m,
            "\n**Latency**: {} requests/s over {} keep-alive connections for {:.0} s, from the write of a request to the last byte of its response.\n\n\
             | system | requests | errors | p50 | p99 | p99.9 | max | added p50 |\n|---|---:|---:|---:|---:|---:|---:|---:|",
            thousands(t.latency_rate as u64),
            t.latency_connections,
            t.duration_s
        );
        for x in &t.latency {
            if let Some(why) = &x.skipped {
                let _ = writeln!(m, "| {} | {why} | | | | | | |", x.system);
                continue;
            }
            let l = &x.result.latency;
            let _ = writeln!(
                m,
                "| {} | {} | {} | **{} µs** | {} µs | {} µs | {} µs | {} |",
                x.system,
                thousands(x.result.requests),
                thousands(x.result.errors),
                us(l.p50_ns),
                us(l.p99_ns),
                us(l.p999_ns),
                us(l.max_ns),
                x.added_p50_us.map_or("–".into(), |a| format!("{a:+.1} µs"))
            );
        }
        for c in [&charts.tcp_cpu, &charts.tcp_rate, &charts.latency]
            .into_iter()
            .flatten()
        {
            let _ = writeln!(m, "\n![tcp]({c})");
        }
        m.push('\n');
    }

    if let Some(g) = &r.maglev {
        let _ = writeln!(
            m,
            "### 4. Maglev\n\nTable build (`xlb::maglev::build`, one thread):\n\n| backends | M | median | min |\n|---:|---:|---:|---:|"
        );
        for b in &g.builds {
            let _ = writeln!(
                m,
                "| {} | {} | **{:.2} ms** | {:.2} ms |",
                thousands(b.backends as u64),
                thousands(b.m.into()),
                b.median_ms,
                b.min_ms
            );
        }
        if !g.changes.is_empty() {
            let _ = writeln!(
                m,
                "\nA backend change applied to a loaded data path in process (desired state, table build, map writes, slot flip), one service:\n\n| backends | M | first change | later changes (median) | table entries written (median) |\n|---:|---:|---:|---:|---:|"
            );
            for c in &g.changes {
                let _ = writeln!(
                    m,
                    "| {} | {} | {:.1} ms | **{:.1} ms** | {} |",
                    thousands(c.backends as u64),
                    thousands(c.m.into()),
                    c.first_ms,
                    c.median_ms,
                    thousands(c.median_entries_written as u64)
                );
            }
        }
        if let Some(d) = &g.daemon_change {
            let _ = writeln!(
                m,
                "\nThe running daemon: {}. Samples: {} ms; median **{:.1} ms**.",
                d.how,
                d.samples_ms
                    .iter()
                    .map(|s| format!("{s:.1}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                d.median_ms
            );
        }
        if let Some(c) = &charts.maglev {
            let _ = writeln!(m, "\n![maglev]({c})");
        }
        m.push('\n');
    }

    if let Some(c) = &r.control {
        let _ = writeln!(
            m,
            "### 5. Control plane\n\n| measure | status | result |\n|---|---|---|"
        );
        for (name, x) in [
            ("backend death → removal from the table", &c.backend_death),
            (
                "scaling trigger → first packet at the new backend",
                &c.scaling,
            ),
            (
                "load crossing a target_tracking target → first packet at the new backend",
                &c.scaling_policy,
            ),
        ] {
            if x.status.is_empty() {
                continue;
            }
            let breakdown = if x.breakdown.is_empty() {
                String::new()
            } else {
                format!(
                    "; from the trigger (medians): {}",
                    x.breakdown
                        .iter()
                        .map(|p| match p.median_ms {
                            Some(v) => format!("{} +{v:.0} ms", p.what),
                            None => format!("{} (not seen)", p.what),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let result = match x.median_ms {
                Some(v) => format!(
                    "median **{v:.0} ms** (samples {} ms){breakdown}; {}",
                    x.samples_ms
                        .iter()
                        .map(|s| format!("{s:.0}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    x.how
                ),
                None => x.how.clone(),
            };
            let _ = writeln!(m, "| {name} | {} | {result} |", x.status);
        }
        m.push('\n');
        if !c.failover.is_empty() {
            let _ = writeln!(
                m,
                "Failover: 600 new TCP connections a second (5 s) to three backends with TCP \
                 checks every 1 s, unhealthy after 2; b3's server killed after 1.5 s. Time to \
                 stop: from the kill to the last new connection that reached b3 (refused, or \
                 delayed by a withheld refusal); failed: share of the requests started after \
                 the kill.\n\n| mode | status | time to stop | failed | delayed | rate |\n\
                 |---|---|---|---|---|---|"
            );
            for f in &c.failover {
                let stop = f
                    .time_to_stop_ms
                    .map_or("-".to_string(), |v| format!("{v:.0} ms"));
                let share = 100.0 * f.failed as f64 / f.requests_after_kill.max(1) as f64;
                let _ = writeln!(
                    m,
                    "| {} | {} | {stop} | {} of {} ({share:.2} %) | {} | {:.0}/s |",
                    f.mode, f.status, f.failed, f.requests_after_kill, f.delayed, f.rate
                );
            }
            m.push('\n');
        }
    }

    if let Some(f) = &r.fleet {
        let _ = writeln!(
            m,
            "### 7. Fleet failover

Three xlb nodes (NAT, same config and hash seed) behind a \
             router running BIRD (BGP hold 3 s, `merge paths`, `fib_multipath_hash_policy = 1`); \
             {} long-lived TCP connections exchanging 64 bytes every 20 ms. Route change: from \
             the event until the router's kernel route has its new next hops (polled every \
             5 ms). Stalled: connections whose longest gap between exchanges around the event \
             was over 200 ms (they had packets on the path that went and waited for TCP's \
             retransmission).\n\n| event | route changed | broken | stalled | stall p50 | longest gap | drained after |\n|---|---:|---:|---:|---:|---:|---:|",
            f.connections
        );
        for e in &f.events {
            let _ = writeln!(
                m,
                "| {} | {:.0} ms | **{}** | {} | {:.0} ms | {:.0} ms | {} |",
                e.event,
                e.route_changed_ms,
                e.broken,
                e.stalled,
                e.stall_p50_ms,
                e.stall_max_ms,
                e.drained_after_ms
                    .map_or("-".to_string(), |d| format!("{:.1} s", d / 1000.0))
            );
        }
        m.push('\n');
    }

    if let Some(mem) = &r.memory {
        let _ = writeln!(
            m,
            "### 6. Memory\n\n| services | backends | max_services | conntrack_size | daemon RSS | peak RSS | BPF maps |\n|---:|---:|---:|---:|---:|---:|---:|"
        );
        for x in &mem.runs {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | **{:.1} MiB** | {:.1} MiB | {:.1} MiB |",
                x.services,
                x.backends,
                x.max_services,
                thousands(x.conntrack_size.into()),
                x.rss_kib as f64 / 1024.0,
                x.peak_rss_kib as f64 / 1024.0,
                x.maps_bytes as f64 / 1048576.0
            );
        }
        if let Some(x) = mem.runs.last() {
            let mut maps = x.maps.clone();
            maps.sort_by_key(|m| std::cmp::Reverse(m.bytes));
            let _ = writeln!(
                m,
                "\nBPF maps with {} services (the kernel's own accounting, `memlock` of fdinfo):\n\n| map | entries | key + value | memory |\n|---|---:|---:|---:|",
                x.services
            );
            for map in &maps {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} + {} B | {:.2} MiB |",
                    map.name,
                    thousands(map.max_entries),
                    map.key_size,
                    map.value_size,
                    map.bytes as f64 / 1048576.0
                );
            }
        }
        m.push('\n');
    }
    m
}

/// `(year, month, day)` of a count of days since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (`YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ`) of a UNIX time.
pub fn utc_stamp(unix_s: u64) -> (String, String) {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    let (y, mo, d) = civil_from_days(days);
    let date = format!("{y:04}-{mo:02}-{d:02}");
    let full = format!(
        "{date}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    (date, full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(
            utc_stamp(1_700_000_000),
            ("2023-11-14".into(), "2023-11-14T22:13:20Z".into())
        );
    }

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_048_576), "1,048,576");
        assert_eq!(ratio(50.0, Some(200.0)), "0.25×");
        assert_eq!(ratio(50.0, None), "–");
    }

    fn udp(system: &str, ns: f64, lost: u64) -> UdpRun {
        UdpRun {
            system: system.into(),
            received: 1000,
            lost,
            cpu_ns_per_packet: ns,
            ..Default::default()
        }
    }

    #[test]
    fn targets_are_judged_from_the_same_run() {
        let mut r = Results {
            prog: Some(ProgResults {
                cases: vec![
                    ProgCase {
                        name: CASE_EST_1.into(),
                        mean_ns: 120.0,
                        net_ns: 80.0,
                        ..Default::default()
                    },
                    ProgCase {
                        name: CASE_PASS.into(),
                        mean_ns: 90.0,
                        net_ns: 50.0,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            forwarding: Some(ForwardingResults {
                runs: vec![
                    udp(SYS_XLB, 100.0, 0),
                    udp(SYS_NFT, 400.0, 0),
                    udp(SYS_ROUTING, 250.0, 0),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        r.judge();
        let get = |r: &Results, prefix: &str| {
            r.targets
                .iter()
                .find(|t| t.target.starts_with(prefix))
                .unwrap()
                .clone()
        };
        assert_eq!(
            get(&r, "Per-packet cost, established flow (1").met,
            Some(true)
        );
        assert_eq!(get(&r, "Per-packet cost, non-service").met, Some(false));
        assert_eq!(get(&r, "Per-packet cost, new flow").met, None);
        let fwd = get(&r, "Balancer CPU per forwarded");
        assert_eq!(fwd.met, Some(true), "{fwd:?}");
        assert!(fwd.measured.contains("0.25 × nftables"), "{fwd:?}");

        // Any loss misses the target.
        r.forwarding.as_mut().unwrap().runs[0].lost = 1;
        r.judge();
        assert_eq!(get(&r, "Balancer CPU per forwarded").met, Some(false));
        assert_eq!(get(&r, "Daemon RSS").met, None);

        let md = markdown(&r, &ChartFiles::default());
        assert!(
            md.contains("| established flow, 1 flow in the table |"),
            "{md}"
        );
        assert!(md.contains("**missed**"), "{md}");
        assert!(md.contains("0.40×"), "xlb vs routing ratio: {md}");
    }
}
