//! Scenarios 2 and 3: UDP forwarding and TCP (connection rate, request latency) through xlb
//! and the baselines, in the bench lab, one system at a time, each measured the same way.

use std::time::Duration;

use anyhow::Result;

use super::load::{latency, tcp, udp};
use super::results::{ConnRun, ForwardingResults, LatencyRun, TcpResults, UdpRun, SYS_ROUTING};
use super::sys::{self, CpuMeter};
use super::topo::{self, BenchLab, Running, System};
use super::{check_stop, Params};

/// Traffic the client sends is done; let the last packets through before reading counters.
const DRAIN: Duration = Duration::from_millis(300);

/// UDP payload bytes: 14 + 20 + 8 + 18 = 60-byte frames, the Ethernet minimum.
const PAYLOAD: usize = 18;

/// Runs the selected parts for every system.
pub fn run(
    lab: &mut BenchLab,
    p: &Params,
    udp_on: bool,
    tcp_on: bool,
) -> Result<(Option<ForwardingResults>, Option<TcpResults>)> {
    let mut fwd = udp_on.then(|| ForwardingResults {
        offered_pps: p.udp_rate,
        duration_s: p.udp_duration.as_secs_f64(),
        frame_bytes: 14 + 20 + 8 + PAYLOAD,
        ..Default::default()
    });
    let mut tcpr = tcp_on.then(|| TcpResults {
        fixed_rate: p.conn_rate,
        fixed_workers: p.conn_workers,
        max_workers: p.max_workers,
        duration_s: p.tcp_duration.as_secs_f64(),
        latency_rate: p.latency_rate,
        latency_connections: p.latency_connections,
        ..Default::default()
    });
    // How busy the balancer CPU is with nothing to do (other tenants of the machine).
    if let Some(f) = fwd.as_mut() {
        let m = CpuMeter::start(topo::LB_CPU)?;
        std::thread::sleep(Duration::from_secs(1));
        f.idle_busy_pct = m.stop()?.busy_pct;
    }
    for system in System::ALL {
        check_stop()?;
        eprintln!("bench: {}", system.name());
        let running = match lab.start(system) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("not run: {e:#}");
                eprintln!("bench: {}: {why}", system.name());
                if let Some(f) = fwd.as_mut() {
                    if system.balances_udp() {
                        f.runs.push(skipped_udp(system, &why));
                    }
                }
                if let Some(t) = tcpr.as_mut() {
                    t.conn_fixed.push(skipped_conn(system, &why));
                    t.conn_max.push(skipped_conn(system, &why));
                    t.latency.push(LatencyRun {
                        system: system.name().into(),
                        skipped: Some(why.clone()),
                        ..Default::default()
                    });
                }
                continue;
            }
        };
        std::thread::sleep(Duration::from_millis(300));
        if let Some(f) = fwd.as_mut() {
            if system.balances_udp() {
                let r = udp_run(lab, &running, p)?;
                f.flows = r.generator.flows;
                f.runs.push(r);
            } else {
                f.runs
                    .push(skipped_udp(system, "HAProxy balances TCP only"));
            }
        }
        if let Some(t) = tcpr.as_mut() {
            check_stop()?;
            t.conn_fixed.push(conn_run(
                lab,
                &running,
                p,
                Some(p.conn_rate),
                p.conn_workers,
            )?);
            check_stop()?;
            t.conn_max
                .push(conn_run(lab, &running, p, None, p.max_workers)?);
            check_stop()?;
            t.latency.push(latency_run(lab, &running, p)?);
        }
        drop(running);
    }
    if let Some(t) = tcpr.as_mut() {
        let base = t
            .latency
            .iter()
            .find(|l| l.system == SYS_ROUTING && l.result.requests > 0)
            .map(|l| l.result.latency.p50_ns as f64);
        for l in &mut t.latency {
            if l.result.requests > 0 {
                l.added_p50_us = base.map(|b| (l.result.latency.p50_ns as f64 - b) / 1000.0);
            }
        }
    }
    Ok((fwd, tcpr))
}

/// Waits (up to 30 s) for the balancer CPU to be quiet (≤ 3% busy) before a measurement;
/// returns how busy it was.
fn quiet() -> Result<f64> {
    let b = sys::wait_quiet(topo::LB_CPU, 3.0, Duration::from_secs(30))?;
    if b > 3.0 {
        eprintln!(
            "bench:   note: the balancer CPU is {b:.0}% busy with other work; figures will be high"
        );
    }
    Ok(b)
}

fn skipped_udp(system: System, why: &str) -> UdpRun {
    UdpRun {
        system: system.name().into(),
        skipped: Some(why.into()),
        ..Default::default()
    }
}

fn skipped_conn(system: System, why: &str) -> ConnRun {
    ConnRun {
        system: system.name().into(),
        skipped: Some(why.into()),
        ..Default::default()
    }
}

/// CPU time of the balancer's tasks: the lb veths' NAPI threads, and HAProxy.
fn lb_tasks_ns(lab: &BenchLab, running: &Running) -> u64 {
    lab.lb_napi_pids()
        .into_iter()
        .chain(running.pids.iter().copied())
        .map(sys::runtime_ns)
        .sum()
}

fn xlb_stats(
    lab: &BenchLab,
    running: &Running,
) -> Option<std::collections::BTreeMap<String, Vec<u64>>> {
    running.xlb.as_ref()?;
    let id = super::xlbd::xdp_prog_id(lab.lab.lb_ns(), xlb_lab::lab::LB_CLIENT_IFACE).ok()??;
    super::xlbd::global_stats(id).ok()
}

fn udp_run(lab: &BenchLab, running: &Running, p: &Params) -> Result<UdpRun> {
    let system = running.system;
    let flood = udp::UdpFlood {
        sources: topo::sources(),
        ports_per_source: p.udp_ports_per_source,
        base_port: 20000,
        destinations: system.udp_targets(),
        payload: PAYLOAD,
        rate: p.udp_rate,
        duration: p.udp_duration,
        batch: p.udp_burst,
    };
    let pre = quiet()?;
    let before = lab.snapshot()?;
    let xlb0 = xlb_stats(lab, running);
    let tasks0 = lb_tasks_ns(lab, running);
    let meter = CpuMeter::start(topo::LB_CPU)?;
    let client_meter = CpuMeter::start(topo::CLIENT_CPU)?;
    let gen = lab.lab.client_ns().enter(|| udp::run(&flood))?;
    std::thread::sleep(DRAIN);
    let cpu = meter.stop()?;
    let client_cpu = client_meter.stop()?;
    let tasks = lb_tasks_ns(lab, running).saturating_sub(tasks0);
    let after = lab.snapshot()?;
    let xlb1 = xlb_stats(lab, running);
    let per_backend = after.udp_since(&before);
    let received: u64 = per_backend.iter().sum();
    let lost = gen.sent.saturating_sub(received);
    let ns_per = cpu.busy_ns as f64 / received.max(1) as f64;
    let r = UdpRun {
        system: system.name().into(),
        skipped: None,
        received,
        per_backend,
        lost,
        loss_pct: lost as f64 * 100.0 / gen.sent.max(1) as f64,
        received_pps: received as f64 / gen.elapsed_s.max(1e-9),
        cpu,
        client_cpu,
        cpu_ns_per_packet: ns_per,
        capacity_mpps: 1000.0 / ns_per.max(1e-9),
        lb_tasks_ns: tasks,
        xlb_counters: match (xlb0, xlb1) {
            (Some(a), Some(b)) => Some(super::xlbd::stats_delta(&a, &b)),
            _ => None,
        },
        lb_links: after.links_since(&before),
        generator: gen,
        pre_busy_pct: pre,
    };
    eprintln!(
        "bench:   UDP: sent {} received {} lost {} | balancer CPU {:.1}% busy, {:.0} ns/packet (tasks {:.0} ns/packet) | client CPU {:.0}% busy",
        r.generator.sent,
        r.received,
        r.lost,
        r.cpu.busy_pct,
        r.cpu_ns_per_packet,
        r.lb_tasks_ns as f64 / r.received.max(1) as f64,
        r.client_cpu.busy_pct
    );
    Ok(r)
}

fn conn_run(
    lab: &BenchLab,
    running: &Running,
    p: &Params,
    rate: Option<f64>,
    workers: usize,
) -> Result<ConnRun> {
    let test = tcp::ConnTest {
        targets: running.system.http_targets(),
        rate,
        duration: p.tcp_duration,
        workers,
        timeout: Duration::from_secs(2),
        source: Some(running.system.client_source().into()),
    };
    let pre = quiet()?;
    let before = lab.snapshot()?;
    let tasks0 = lb_tasks_ns(lab, running);
    let meter = CpuMeter::start(topo::LB_CPU)?;
    let client_meter = CpuMeter::start(topo::CLIENT_CPU)?;
    let debug = std::env::var_os("XLB_BENCH_DEBUG_TASKS").is_some();
    let threads0 = if debug {
        sys::all_threads()
    } else {
        Default::default()
    };
    let result = lab.lab.client_ns().enter(|| tcp::run(&test))?;
    if debug {
        let t1 = sys::all_threads();
        let mut d: Vec<(u64, String)> = t1
            .iter()
            .map(|(k, (c, ns))| {
                (
                    ns - threads0.get(k).map_or(0, |x| x.1).min(*ns),
                    format!("{c} ({}/{})", k.0, k.1),
                )
            })
            .collect();
        d.sort_unstable_by_key(|x| std::cmp::Reverse(x.0));
        for (ns, what) in d.iter().take(12) {
            eprintln!("bench:     task {what}: {:.1} ms", *ns as f64 / 1e6);
        }
    }
    std::thread::sleep(DRAIN);
    let cpu = meter.stop()?;
    let client_cpu = client_meter.stop()?;
    let tasks = lb_tasks_ns(lab, running).saturating_sub(tasks0);
    let after = lab.snapshot()?;
    let syns: u64 = after.syn_since(&before).iter().sum();
    let us_per = cpu.busy_ns as f64 / 1000.0 / result.ok.max(1) as f64;
    let r = ConnRun {
        system: running.system.name().into(),
        skipped: None,
        backend_syns: syns,
        cpu,
        client_cpu,
        cpu_us_per_conn: us_per,
        capacity_conn_per_s: 1e6 / us_per.max(1e-9),
        lb_tasks_ns: tasks,
        result,
        pre_busy_pct: pre,
    };
    eprintln!(
        "bench:   TCP {}: {} ok, {} failed, {:.0} conn/s | balancer CPU {:.1}% busy, {:.1} µs/connection (tasks {:.1}) | client CPU {:.0}% busy, {:.1} µs/connection",
        match rate {
            Some(r) => format!("at {r:.0}/s"),
            None => format!("max ({workers} workers)"),
        },
        r.result.ok,
        r.result.failed,
        r.result.conn_per_s,
        r.cpu.busy_pct,
        r.cpu_us_per_conn,
        r.lb_tasks_ns as f64 / 1000.0 / r.result.ok.max(1) as f64,
        r.client_cpu.busy_pct,
        r.client_cpu.busy_ns as f64 / 1000.0 / r.result.ok.max(1) as f64
    );
    Ok(r)
}

fn latency_run(lab: &BenchLab, running: &Running, p: &Params) -> Result<LatencyRun> {
    let test = latency::LatencyTest {
        targets: running.system.http_targets(),
        connections: p.latency_connections,
        rate: p.latency_rate,
        duration: p.tcp_duration,
        warmup: 20,
        timeout: Duration::from_secs(2),
        source: Some(running.system.client_source().into()),
    };
    let pre = quiet()?;
    let meter = CpuMeter::start(topo::LB_CPU)?;
    let result = lab.lab.client_ns().enter(|| latency::run(&test))?;
    let cpu = meter.stop()?;
    let l = &result.latency;
    eprintln!(
        "bench:   latency: {} requests, {} errors, p50 {:.1} µs p99 {:.1} µs p99.9 {:.1} µs",
        result.requests,
        result.errors,
        l.p50_ns as f64 / 1000.0,
        l.p99_ns as f64 / 1000.0,
        l.p999_ns as f64 / 1000.0
    );
    Ok(LatencyRun {
        system: running.system.name().into(),
        skipped: None,
        result,
        cpu,
        added_p50_us: None,
        pre_busy_pct: pre,
    })
}
