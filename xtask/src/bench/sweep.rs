//! Scenario 7: the CPU time of one conntrack sweep of a full 1Mi-entry table.
//!
//! The XDP object is loaded (ephemeral maps) with `conntrack_size` = 1Mi, so `CONNTRACK` has
//! the daemon's definition; it is filled with 1Mi entries naming four live backends, and the
//! daemon's own sweep ([`xlb::sweep::sweep_once`]: `BPF_MAP_LOOKUP_BATCH` reads, verdicts,
//! `BPF_MAP_DELETE_BATCH` deletes) is timed with the thread's CPU clock
//! (`CLOCK_THREAD_CPUTIME_ID`: user and system time, the kernel's work in the batch calls
//! included). Cases: every entry live (nothing to delete: the steady state); half of them
//! idle past the timeout (read, then delete half); the table again full, all expired.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use aya::maps::IterableMap;
use lb_common::{BackendInfo, CtValue, FlowKey, AF_INET, BE_F_ACTIVE, BE_F_ESTABLISHED_OK};
use lb_common::{PROTO_TCP, PROTO_UDP};
use xlb::dataplane::{Dataplane, LoadOptions, Pinning};
use xlb::sweep::{self, SweepConfig};

use super::check_stop;
use super::results::{SweepCase, SweepResults};

/// Entries of the table: 1Mi, the size.
pub const TABLE: u32 = 1024 * 1024;

fn key(i: u32) -> FlowKey {
    let mut src = [0u8; 16];
    // Clients 198.18.0.0/16 .. (i >> 16 varies the third octet), one port each.
    src[..4].copy_from_slice(&[198, 18 + (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8]);
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&[198, 18, 100, 1]);
    FlowKey {
        src,
        dst,
        sport: (1024 + (i & 0xff) as u16).to_be_bytes(),
        dport: 80u16.to_be_bytes(),
        proto: if i % 4 == 3 { PROTO_UDP } else { PROTO_TCP },
        family: AF_INET,
        _pad: [0; 2],
    }
}

/// Fill `CONNTRACK` with `TABLE` entries; those with `expired(i)` last seen 1000 s ago.
fn fill(dp: &mut Dataplane, now: u64, expired: impl Fn(u32) -> bool) -> Result<u64> {
    let ct = &mut dp.forge_maps().conntrack;
    for i in 0..TABLE {
        if i % 65536 == 0 {
            check_stop()?;
        }
        let v = CtValue {
            backend_id: i % 4,
            service_id: 0,
            last_seen_ns: if expired(i) {
                now.saturating_sub(1000 * 1_000_000_000)
            } else {
                now
            },
            ..Default::default()
        };
        ct.insert(key(i), v, 0)
            .with_context(|| format!("inserting entry {i}"))?;
    }
    let fd = IterableMap::map(&dp.maps().conntrack).fd().as_fd();
    let mut n = 0u64;
    xlb::batch::lookup_batch::<FlowKey, CtValue>(fd, 8192, |k, _| {
        n += k.len() as u64;
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(n)
}

fn measure(dp: &Dataplane, name: &str, cfg: &SweepConfig, now: u64) -> Result<SweepCase> {
    let maps = dp.maps();
    let ct = IterableMap::map(&maps.conntrack).fd().as_fd();
    let backends = IterableMap::map(&maps.backends).fd().as_fd();
    let cpu0 = xlb::batch::thread_cpu_time();
    let (user0, sys0) = xlb::batch::thread_user_system_time();
    let t0 = Instant::now();
    let free = sweep::free_backends(backends)?;
    let s = sweep::sweep_once(ct, &free, cfg, now)?;
    let wall = t0.elapsed();
    let cpu = xlb::batch::thread_cpu_time() - cpu0;
    let (user1, sys1) = xlb::batch::thread_user_system_time();
    ensure!(
        s.stale.is_empty(),
        "{name}: entries of live backends reported as stale"
    );
    let case = SweepCase {
        name: name.to_owned(),
        entries: s.scanned,
        deleted: s.expired,
        open: s.open.values().sum(),
        cpu_ms: cpu.as_secs_f64() * 1e3,
        user_ms: (user1 - user0).as_secs_f64() * 1e3,
        system_ms: (sys1 - sys0).as_secs_f64() * 1e3,
        wall_ms: wall.as_secs_f64() * 1e3,
    };
    eprintln!(
        "bench:   {name}: {} entries read, {} deleted, {:.1} ms CPU (user {:.0}, kernel {:.0}; {:.1} ms wall)",
        case.entries, case.deleted, case.cpu_ms, case.user_ms, case.system_ms, case.wall_ms
    );
    Ok(case)
}

pub fn run() -> Result<SweepResults> {
    let mut dp = Dataplane::load(
        LoadOptions {
            ring_size: 1021,
            conntrack_size: TABLE,
            reverse_size: 1024,
            max_services: 1,
            hash_seed: 1,
        },
        Pinning::Ephemeral,
    )
    .context("loading the XDP object")?;
    for id in 0..4u32 {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 18, 2, 11 + id as u8]);
        dp.forge_maps().backends.set(
            id,
            BackendInfo {
                addr,
                port: 8080u16.to_be_bytes(),
                family: AF_INET,
                flags: BE_F_ACTIVE | BE_F_ESTABLISHED_OK,
            },
            0,
        )?;
    }
    let cfg = SweepConfig {
        tcp_idle: Duration::from_secs(350),
        udp_idle: Duration::from_secs(120),
    };
    let mut cases = Vec::new();
    let now = sweep::monotonic_coarse_ns();
    let filled = fill(&mut dp, now, |_| false)?;
    cases.push(measure(
        &dp,
        "all entries live (nothing to delete)",
        &cfg,
        now,
    )?);
    // Again, warm: the steady state of a sweep a second.
    cases.push(measure(&dp, "all entries live, second sweep", &cfg, now)?);
    check_stop()?;
    fill(&mut dp, now, |i| i % 2 == 1)?;
    cases.push(measure(
        &dp,
        "half the entries idle past the timeout (deleted)",
        &cfg,
        now,
    )?);
    check_stop()?;
    fill(&mut dp, now, |_| true)?;
    cases.push(measure(
        &dp,
        "every entry idle past the timeout (deleted)",
        &cfg,
        now,
    )?);
    let left = {
        let fd = IterableMap::map(&dp.maps().conntrack).fd().as_fd();
        let mut n = 0u64;
        xlb::batch::lookup_batch::<FlowKey, CtValue>(fd, 8192, |k, _| {
            n += k.len() as u64;
            std::ops::ControlFlow::Continue(())
        })?;
        n
    };
    ensure!(left == 0, "{left} expired entries left after the sweep");
    Ok(SweepResults {
        table_size: TABLE,
        filled,
        cases,
    })
}
