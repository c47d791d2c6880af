//! The conntrack sweeper: once a second, on a thread of its own, it reads the whole
//! connection table with `BPF_MAP_LOOKUP_BATCH` ([`crate::batch`]) and
//!
//! - counts the open flows of each backend (for drains and `xlb backends`);
//! - deletes, with `BPF_MAP_DELETE_BATCH`, the entries idle past `tcp_idle_timeout` /
//!   `udp_idle_timeout`, and those of TCP flows that saw a FIN or RST (`CT_F_CLOSING`) and
//!   have been quiet for [`CLOSED_DELETE_GRACE`]; each chunk's expired entries are deleted
//!   right after the chunk is read, so an entry that a packet refreshes meanwhile is lost only
//!   within that window of microseconds (its next packet is then balanced again);
//! - reports the entries that name a backend id free in `BACKENDS` (a backend that is gone)
//!   to the owner loop, which decides which to delete: an id taken since by a backend added
//!   while the sweep ran keeps its entries ([`crate::reconcile::Reconciler::remove_stale_flows`]).
use std::{
    collections::HashMap,
    io,
    ops::ControlFlow,
    os::fd::BorrowedFd,
    time::{Duration, Instant},
};

use lb_common::{BackendInfo, CtValue, FlowKey, CT_F_CLOSING, MAX_BACKENDS, PROTO_TCP};

use crate::batch;

/// A TCP flow that saw a FIN or RST counts as ended (no longer open) once it has been quiet
/// this long.
pub const CLOSING_GRACE: Duration = Duration::from_secs(2);
/// ... and its entry is deleted once it has been quiet this long (the last ACK and any
/// retransmitted FIN are well past by then).
pub const CLOSED_DELETE_GRACE: Duration = Duration::from_secs(10);
/// Entries of free backend ids one sweep reports at most (the rest wait for the next).
pub const SWEEP_STALE_MAX: usize = 65_536;
/// Entries read per `BPF_MAP_LOOKUP_BATCH` call.
pub const SWEEP_CHUNK: usize = 8192;

/// The sweeper uses at most 1 / this of one CPU: after a sweep that cost `c` of CPU it
/// pauses at least `c × (this − 1)`.
pub const CPU_SHARE_DIVISOR: u32 = 10;

/// How long to pause after a sweep that cost `used` of CPU: `every`, or longer for a table
/// so large that sweeping it every `every` would take more than 1 / [`CPU_SHARE_DIVISOR`]
/// of a CPU.
pub fn pause_after(used: Duration, every: Duration) -> Duration {
    every.max(used.saturating_mul(CPU_SHARE_DIVISOR - 1))
}

/// The idle timeouts of `[daemon]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepConfig {
    pub tcp_idle: Duration,
    pub udp_idle: Duration,
}

/// What one sweep saw and did.
#[derive(Debug)]
pub struct Sweep {
    /// When it started.
    pub at: Instant,
    /// Open flows per backend id.
    pub open: HashMap<u32, u64>,
    /// Entries naming a backend id that was free when they were read (key and that id), for
    /// the owner loop to decide on.
    pub stale: Vec<(FlowKey, u32)>,
    /// Entries read.
    pub scanned: u64,
    /// Entries left in the table (read less deleted), for the metrics.
    pub entries: u64,
    /// Expired entries deleted (idle, or closed and quiet).
    pub expired: u64,
}

/// What the sweep does with one entry (pure: the unit tests drive it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Open: counted for its backend.
    Open,
    /// Closing (FIN or RST seen), quiet past [`CLOSING_GRACE`]: ended, not counted, kept a
    /// little longer.
    Ended,
    /// Idle past its protocol's timeout, or closed and quiet past [`CLOSED_DELETE_GRACE`]:
    /// deleted.
    Expired,
}

impl SweepConfig {
    /// The verdict on an entry of protocol `proto` at `now_ns` (`CLOCK_MONOTONIC_COARSE`, the
    /// data path's `bpf_ktime_get_coarse_ns`).
    pub fn verdict(&self, proto: u8, ct: &CtValue, now_ns: u64) -> Verdict {
        let idle = Duration::from_nanos(now_ns.saturating_sub(ct.last_seen_ns));
        let limit = if proto == PROTO_TCP {
            self.tcp_idle
        } else {
            self.udp_idle
        };
        let closing = proto == PROTO_TCP && ct.flags & CT_F_CLOSING != 0;
        if idle >= limit || (closing && idle >= CLOSED_DELETE_GRACE) {
            Verdict::Expired
        } else if closing && idle >= CLOSING_GRACE {
            Verdict::Ended
        } else {
            Verdict::Open
        }
    }
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the clock of `CtValue::last_seen_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Backend ids free in `BACKENDS` (an all-zero element), as a bitmap indexed by id.
pub fn free_backends(backends: BorrowedFd<'_>) -> io::Result<Vec<bool>> {
    let mut free = vec![false; MAX_BACKENDS as usize];
    batch::lookup_batch::<u32, BackendInfo>(backends, MAX_BACKENDS as usize, |ids, infos| {
        for (id, info) in ids.iter().zip(infos) {
            if let Some(f) = free.get_mut(*id as usize) {
                *f = *info == BackendInfo::default();
            }
        }
        ControlFlow::Continue(())
    })?;
    Ok(free)
}

/// One sweep of the connection table `ct`, with `free` from [`free_backends`], at `now_ns`.
pub fn sweep_once(
    ct: BorrowedFd<'_>,
    free: &[bool],
    cfg: &SweepConfig,
    now_ns: u64,
) -> io::Result<Sweep> {
    sweep_table(ct, free, cfg, now_ns, false)
}

/// One sweep of `UNCONFIRMED` (flows not confirmed yet): an entry its backend answered (a
/// UDP flow with a reply, a handshake past its SYN-ACK) counts as open; idle ones are deleted
/// as in the connection table, and so are entries naming a free backend id (an unconfirmed
/// flow only loses its pin: its next packet is balanced again).
pub fn sweep_unconfirmed(
    table: BorrowedFd<'_>,
    free: &[bool],
    cfg: &SweepConfig,
    now_ns: u64,
) -> io::Result<Sweep> {
    sweep_table(table, free, cfg, now_ns, true)
}

fn sweep_table(
    ct: BorrowedFd<'_>,
    free: &[bool],
    cfg: &SweepConfig,
    now_ns: u64,
    unconfirmed: bool,
) -> io::Result<Sweep> {
    let mut s = Sweep {
        at: Instant::now(),
        open: HashMap::new(),
        stale: Vec::new(),
        scanned: 0,
        entries: 0,
        expired: 0,
    };
    let mut open = vec![0u64; MAX_BACKENDS as usize];
    let mut expired: Vec<FlowKey> = Vec::with_capacity(SWEEP_CHUNK);
    let mut delete_err = None;
    s.scanned = batch::lookup_batch::<FlowKey, CtValue>(ct, SWEEP_CHUNK, |keys, values| {
        expired.clear();
        for (key, v) in keys.iter().zip(values) {
            let id = v.backend_id as usize;
            if free.get(id).copied().unwrap_or(false) {
                if unconfirmed {
                    expired.push(*key);
                } else if s.stale.len() < SWEEP_STALE_MAX {
                    s.stale.push((*key, v.backend_id));
                }
                continue;
            }
            match cfg.verdict(key.proto, v, now_ns) {
                Verdict::Open if unconfirmed && v.flags & lb_common::CT_F_ANSWERED == 0 => {}
                Verdict::Open => {
                    if let Some(n) = open.get_mut(id) {
                        *n += 1;
                    }
                }
                Verdict::Ended => {}
                Verdict::Expired => expired.push(*key),
            }
        }
        if !expired.is_empty() {
            match batch::delete_batch(ct, &expired) {
                Ok(n) => s.expired += n,
                Err(e) => {
                    delete_err = Some(e);
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = delete_err {
        return Err(e);
    }
    s.entries = s.scanned.saturating_sub(s.expired);
    s.open = open
        .into_iter()
        .enumerate()
        .filter(|(_, n)| *n > 0)
        .map(|(id, n)| (id as u32, n))
        .collect();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn ct(last_seen_ns: u64, flags: u32) -> CtValue {
        CtValue {
            last_seen_ns,
            flags,
            ..Default::default()
        }
    }

    #[test]
    fn a_costly_sweep_pauses_longer() {
        let every = Duration::from_secs(1);
        assert_eq!(pause_after(Duration::from_millis(20), every), every);
        assert_eq!(pause_after(Duration::from_millis(111), every), every);
        assert_eq!(
            pause_after(Duration::from_millis(112), every),
            Duration::from_millis(1008)
        );
        assert_eq!(
            pause_after(Duration::from_millis(400), every),
            Duration::from_millis(3600)
        );
    }

    #[test]
    fn verdicts() {
        let cfg = SweepConfig {
            tcp_idle: Duration::from_secs(350),
            udp_idle: Duration::from_secs(120),
        };
        let now = 1000 * S;
        let tcp = PROTO_TCP;
        let udp = lb_common::PROTO_UDP;
        assert_eq!(cfg.verdict(tcp, &ct(now - 349 * S, 0), now), Verdict::Open);
        assert_eq!(
            cfg.verdict(tcp, &ct(now - 350 * S, 0), now),
            Verdict::Expired
        );
        assert_eq!(cfg.verdict(udp, &ct(now - 119 * S, 0), now), Verdict::Open);
        assert_eq!(
            cfg.verdict(udp, &ct(now - 120 * S, 0), now),
            Verdict::Expired
        );
        // A closing TCP flow: open while it talks, ended after 2 s, deleted after 10 s.
        assert_eq!(
            cfg.verdict(tcp, &ct(now - S, CT_F_CLOSING), now),
            Verdict::Open
        );
        assert_eq!(
            cfg.verdict(tcp, &ct(now - 2 * S, CT_F_CLOSING), now),
            Verdict::Ended
        );
        assert_eq!(
            cfg.verdict(tcp, &ct(now - 10 * S, CT_F_CLOSING), now),
            Verdict::Expired
        );
        // The flag means nothing to UDP.
        assert_eq!(
            cfg.verdict(udp, &ct(now - 60 * S, CT_F_CLOSING), now),
            Verdict::Open
        );
        // A timestamp ahead of the sweep's clock (read just before a packet) is fresh.
        assert_eq!(cfg.verdict(tcp, &ct(now + S, 0), now), Verdict::Open);
    }
}
