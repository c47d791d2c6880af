//! Scenario 4: Maglev table build times (in process), a backend change applied to a loaded
//! data path (in process), and a backend change to the running daemon until a new flow
//! reaches the new backend.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::Signal;

use super::results::{DaemonChange, MaglevResults};
use super::topo::{self, BenchLab};
use super::xlbd::Xlbd;
use super::{check_stop, Params};

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(lab: &mut BenchLab, p: &Params, dir: &Path) -> Result<MaglevResults> {
    let mut r = MaglevResults::default();
    in_process(&mut r, p)?;
    check_stop()?;
    r.daemon_change = Some(daemon_change(lab, p, dir)?);
    Ok(r)
}

#[cfg(not(feature = "xlb"))]
fn in_process(_: &mut MaglevResults, _: &Params) -> Result<()> {
    bail!(
        "this xtask was built without its `xlb` feature (run `cargo xtask bench`, which builds it)"
    )
}

#[cfg(feature = "xlb")]
fn in_process(r: &mut MaglevResults, p: &Params) -> Result<()> {
    use super::results::MaglevBuild;
    use xlb::maglev::{build, MaglevBackend};

    let key = |i: usize| format!("10.{}.{}.{}:8080", i >> 16 & 255, i >> 8 & 255, i & 255);
    for n in [10usize, 100, 1000] {
        let keys: Vec<String> = (0..n).map(key).collect();
        let backends: Vec<MaglevBackend<'_>> = keys
            .iter()
            .map(|k| MaglevBackend {
                key: k.as_bytes(),
                weight: 1,
            })
            .collect();
        for m in [65_537u32, 655_373] {
            check_stop()?;
            // One untimed build first (page faults of the first allocation).
            std::hint::black_box(build(&backends, m));
            let mut times: Vec<f64> = (0..p.maglev_reps)
                .map(|_| {
                    let t = Instant::now();
                    let table = build(&backends, m);
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    std::hint::black_box(table);
                    ms
                })
                .collect();
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            let med = median(&mut times);
            eprintln!("bench:   build {n} backends, M = {m}: median {med:.2} ms");
            r.builds.push(MaglevBuild {
                backends: n,
                m,
                reps: p.maglev_reps,
                median_ms: med,
                min_ms: min,
            });
        }
    }
    // Changes: the config requires M > 100 × backends, so 1000 backends get M = 655373.
    for (n, m) in [(10usize, 65_537u32), (100, 65_537), (1000, 655_373)] {
        check_stop()?;
        r.changes.push(changes(n, m, p.table_changes)?);
        let c = r.changes.last().expect("pushed");
        eprintln!(
            "bench:   change with {n} backends, M = {m}: first {:.1} ms, then {:.1} ms",
            c.first_ms, c.median_ms
        );
    }
    Ok(())
}

/// Loads a data path (not attached anywhere) with one service of `n` backends, then takes
/// backends out of the table one by one, timing each apply.
#[cfg(feature = "xlb")]
fn changes(n: usize, m: u32, count: usize) -> Result<super::results::TableChange> {
    use anyhow::Context;
    use xlb::dataplane::{Dataplane, LoadOptions, Pinning};
    use xlb::reconcile::Reconciler;
    use xlb::state::State;

    let backends = (0..n)
        .map(|i| format!("\"10.1.{}.{}:8080\"", i / 250, i % 250 + 1))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "[daemon]\ninterfaces = [\"lo\"]\nmaglev_table_size = {m}\nmax_services = 1\nconntrack_size = 1024\nhash_seed = 1\n\n\
         [[service]]\nname = \"s\"\nvip = \"198.18.100.9\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"g\"\n\n\
         [[target_group]]\nname = \"g\"\nbackends = [{backends}]\n"
    );
    let cfg = xlb::config::parse(&text, "bench-maglev.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut dp = Dataplane::load(
        LoadOptions {
            ring_size: m,
            conntrack_size: 1024,
            reverse_size: 1024,
            max_services: 1,
            hash_seed: 1,
        },
        Pinning::Ephemeral,
    )
    .context("loading the XDP object")?;
    let mut state = State::new(cfg);
    let mut desired = state.desired()?;
    for b in desired.backends.values_mut() {
        b.active = true;
    }
    let mut rec = Reconciler::new();
    rec.apply(&mut dp, &desired)?;
    // Each change takes one more backend out: every change is a new table.
    let ids: Vec<u32> = desired.backends.keys().copied().collect();
    let count = count.min(ids.len().saturating_sub(2));
    let mut times = Vec::new();
    let mut written = Vec::new();
    for &id in ids.iter().take(count + 1) {
        desired.backends.get_mut(&id).expect("known id").active = false;
        let t = Instant::now();
        let report = rec.apply(&mut dp, &desired)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        written.push(report.table_entries_written);
    }
    let first = times.remove(0);
    written.remove(0);
    written.sort_unstable();
    Ok(super::results::TableChange {
        backends: n,
        m,
        changes: count,
        first_ms: first,
        median_ms: median(&mut times),
        median_entries_written: written.get(written.len() / 2).copied().unwrap_or(0),
    })
}

/// One UDP request from a new socket (a new flow): the answering backend's name.
fn probe(to: SocketAddr, timeout: Duration) -> Option<String> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.send_to(b"probe", to).ok()?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// Starts xlb with the dns group on b1..b3, then, per sample, adds `b4:PORT` (a new backend,
/// a port not used before) to the config, sends SIGHUP, and probes with new flows until one is
/// answered by b4.
fn daemon_change(lab: &mut BenchLab, p: &Params, dir: &Path) -> Result<DaemonChange> {
    let mut x = Xlbd::start(
        &lab.bins.xlb,
        lab.lab.lb_ns(),
        dir,
        "xlbbench-change",
        &topo::xlb_daemon(),
        &topo::xlb_body(&topo::dns_default()),
        Some(topo::LB_CPU),
        Duration::from_secs(30),
    )?;
    lab.pin_napi()?;
    let vip = SocketAddr::from((xlb_lab::lab::VIP_V4, topo::VIP_UDP_PORT));
    let client = lab.lab.client_ns();
    // The service answers.
    if client
        .enter(|| probe(vip, Duration::from_secs(1)))
        .is_none()
    {
        bail!("the dns service does not answer through xlb");
    }
    let b4 = xlb_lab::lab::backend_v4(topo::BACKENDS + 1);
    let mut samples = Vec::new();
    let mut intervals = Vec::new();
    for k in 0..p.daemon_samples.min(topo::UDP_PORTS.len() - 1) {
        check_stop()?;
        let mut group = topo::dns_default();
        group.push(format!("{b4}:{}", topo::UDP_PORTS[k + 1]));
        let text = x.config_text(&topo::xlb_daemon(), &topo::xlb_body(&group));
        std::fs::write(&x.config, text)?;
        let (ms, probes) = client.enter(|| -> Result<(f64, u64)> {
            let t0 = Instant::now();
            x.signal(Signal::SIGHUP)?;
            let mut n = 0u64;
            while t0.elapsed() < Duration::from_secs(10) {
                n += 1;
                if probe(vip, Duration::from_millis(100)).as_deref() == Some("b4") {
                    return Ok((t0.elapsed().as_secs_f64() * 1e3, n));
                }
            }
            bail!("no new flow reached b4 within 10 s of the reload")
        })?;
        intervals.push(ms * 1000.0 / probes as f64);
        eprintln!("bench:   backend added → first new flow at it: {ms:.1} ms");
        samples.push(ms);
        // Back to three backends (not timed); let the reload finish.
        x.reload(&topo::xlb_daemon(), &topo::xlb_body(&topo::dns_default()))?;
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = x.log_text();
    drop(x);
    lab.pin_napi()?;
    if samples.is_empty() {
        bail!("no sample; xlb log:\n{}", xlb_lab::lab::tail(&log, 20));
    }
    let mut sorted = samples.clone();
    Ok(DaemonChange {
        median_ms: median(&mut sorted),
        samples_ms: samples,
        probe_interval_us: median(&mut intervals) as u64,
        how: "a 4th backend added to the config file, SIGHUP, then new UDP flows \
              (one request each, back to back) until one is answered by the new backend"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0]), 3.0);
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
