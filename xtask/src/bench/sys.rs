//! What the benchmarks read from and set on the host: CPU affinity, per-CPU busy time
//! (`/proc/stat`), per-task run time (`schedstat`), threaded-NAPI kernel threads, a process's
//! memory and the BPF maps it holds.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde::Serialize;

/// Pins `pid` (0: the calling thread) to `cpu`. Threads and processes started afterwards by a
/// pinned thread inherit its affinity.
pub fn pin(pid: i32, cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(pid), &set)
        .with_context(|| format!("pinning pid {pid} to CPU {cpu}"))
}

/// Makes `pid` a real-time (SCHED_FIFO) task of priority `prio`.
pub fn fifo(pid: i32, prio: i32) -> Result<()> {
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: a valid sched_param for the call.
    if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("SCHED_FIFO for pid {pid}"));
    }
    Ok(())
}

/// Number of online CPUs (of the machine, whatever this thread's affinity).
pub fn cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as usize
}

/// `sysconf(_SC_CLK_TCK)`: the unit of `/proc/stat` and `/proc/PID/stat` times.
fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// One CPU's line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// Time spent doing work: user + nice + system + irq + softirq (not idle, iowait, steal).
    #[cfg(test)]
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq
    }

    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.busy() + self.idle + self.iowait + self.steal
    }

    pub fn since(&self, before: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(before.user),
            nice: self.nice.saturating_sub(before.nice),
            system: self.system.saturating_sub(before.system),
            idle: self.idle.saturating_sub(before.idle),
            iowait: self.iowait.saturating_sub(before.iowait),
            irq: self.irq.saturating_sub(before.irq),
            softirq: self.softirq.saturating_sub(before.softirq),
            steal: self.steal.saturating_sub(before.steal),
        }
    }
}

/// Parses the `cpuN` lines of `/proc/stat` (index = N).
pub fn parse_proc_stat(text: &str) -> Vec<CpuTimes> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        let Some(n) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
        if v.len() < 8 {
            continue;
        }
        if out.len() <= n {
            out.resize(n + 1, CpuTimes::default());
        }
        out[n] = CpuTimes {
            user: v[0],
            nice: v[1],
            system: v[2],
            idle: v[3],
            iowait: v[4],
            irq: v[5],
            softirq: v[6],
            steal: v[7],
        };
    }
    out
}

pub fn cpu_times() -> Result<Vec<CpuTimes>> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    Ok(parse_proc_stat(&text))
}

/// Time a CPU has spent idle, in ns: the sum of its cpuidle states' residency (µs, exact),
/// or, without cpuidle, `/proc/stat`'s idle + iowait.
pub fn idle_ns(cpu: usize) -> Result<u64> {
    let dir = format!("/sys/devices/system/cpu/cpu{cpu}/cpuidle");
    if let Ok(states) = std::fs::read_dir(&dir) {
        let mut total = 0u64;
        let mut any = false;
        for st in states.flatten() {
            if let Ok(t) = std::fs::read_to_string(st.path().join("time")) {
                if let Ok(us) = t.trim().parse::<u64>() {
                    total += us * 1000;
                    any = true;
                }
            }
        }
        if any {
            return Ok(total);
        }
    }
    let t = *cpu_times()?
        .get(cpu)
        .with_context(|| format!("no CPU {cpu} in /proc/stat"))?;
    Ok((t.idle + t.iowait) * (1_000_000_000 / clk_tck()))
}

/// Busy time of one CPU over an interval, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CpuBusy {
    pub cpu: usize,
    /// Wall time of the interval.
    pub wall_ns: u64,
    /// Wall time minus idle time (cpuidle residency, exact): everything the CPU ran.
    pub busy_ns: u64,
    /// busy / wall, in %.
    pub busy_pct: f64,
    /// `/proc/stat`'s split of the busy time (sampled at the tick, so rough): user, system,
    /// softirq + irq, in ns.
    pub stat_user_ns: u64,
    pub stat_system_ns: u64,
    pub stat_softirq_ns: u64,
}

/// Measures one CPU's busy time between [`CpuMeter::start`] and [`CpuMeter::stop`].
pub struct CpuMeter {
    cpu: usize,
    before: CpuTimes,
    idle0: u64,
    t0: std::time::Instant,
}

impl CpuMeter {
    pub fn start(cpu: usize) -> Result<CpuMeter> {
        let before = *cpu_times()?
            .get(cpu)
            .with_context(|| format!("no CPU {cpu} in /proc/stat"))?;
        Ok(CpuMeter {
            cpu,
            before,
            idle0: idle_ns(cpu)?,
            t0: std::time::Instant::now(),
        })
    }

    pub fn stop(&self) -> Result<CpuBusy> {
        let idle = idle_ns(self.cpu)?.saturating_sub(self.idle0);
        let wall_ns = self.t0.elapsed().as_nanos() as u64;
        let now = *cpu_times()?.get(self.cpu).context("CPU went away")?;
        let d = now.since(&self.before);
        let ns = 1_000_000_000 / clk_tck();
        let busy = wall_ns.saturating_sub(idle);
        Ok(CpuBusy {
            cpu: self.cpu,
            wall_ns,
            busy_ns: busy,
            busy_pct: busy as f64 * 100.0 / wall_ns.max(1) as f64,
            stat_user_ns: (d.user + d.nice) * ns,
            stat_system_ns: d.system * ns,
            stat_softirq_ns: (d.softirq + d.irq) * ns,
        })
    }
}

/// Waits (at most `max`) until `cpu` is at most `pct` % busy over 300 ms; returns the last
/// busy share seen.
pub fn wait_quiet(cpu: usize, pct: f64, max: std::time::Duration) -> Result<f64> {
    let deadline = std::time::Instant::now() + max;
    loop {
        let m = CpuMeter::start(cpu)?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let b = m.stop()?.busy_pct;
        if b <= pct || std::time::Instant::now() >= deadline {
            return Ok(b);
        }
    }
}

/// CPU time a thread or process (all its threads) has run, in ns (`schedstat`).
pub fn runtime_ns(pid: i32) -> u64 {
    let task_dir = format!("/proc/{pid}/task");
    let tids: Vec<String> = match std::fs::read_dir(&task_dir) {
        Ok(d) => d
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return 0,
    };
    tids.iter()
        .filter_map(|t| std::fs::read_to_string(format!("{task_dir}/{t}/schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Run time (ns) of every thread on the machine: (pid, tid) → (comm, ns).
pub fn all_threads() -> BTreeMap<(i32, i32), (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let base = format!("/proc/{pid}/task/{tid}");
            let ns = std::fs::read_to_string(format!("{base}/schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            let comm = std::fs::read_to_string(format!("{base}/comm")).unwrap_or_default();
            out.insert((pid, tid), (comm.trim().to_owned(), ns));
        }
    }
    out
}

/// `comm` and parent pid of a process, from `/proc/PID/stat`.
fn comm_and_ppid(pid: i32) -> Option<(String, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let ppid = stat[close + 1..].split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

/// Kernel threads of threaded NAPI (`napi/IFNAME-ID`; the name is cut to 15 bytes): pid → comm.
pub fn napi_threads() -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((comm, ppid)) = comm_and_ppid(pid) {
            // Children of kthreadd.
            if ppid == 2 && comm.starts_with("napi/") {
                out.insert(pid, comm);
            }
        }
    }
    out
}

/// Resident set size and its peak, in KiB (`VmRSS`, `VmHWM` of `/proc/PID/status`).
pub fn rss_kib(pid: i32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A BPF map a process holds, as `/proc/PID/fdinfo` and the kernel's map info describe it.
#[derive(Clone, Debug, Serialize)]
pub struct MapMemory {
    pub id: u32,
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u64,
    /// What the kernel charges for the map (`memlock` of fdinfo: its memory use).
    pub bytes: u64,
}

/// Parses the fdinfo of a BPF map fd into (key → value); `None` unless it is a map.
pub fn parse_map_fdinfo(text: &str) -> Option<BTreeMap<String, String>> {
    let kv: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    kv.contains_key("map_id").then_some(kv)
}

/// Every BPF map `pid` has an fd of (each once).
pub fn bpf_maps_of(pid: i32) -> Result<Vec<MapMemory>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut maps: BTreeMap<u32, MapMemory> = BTreeMap::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(e?.path()) else {
            continue;
        };
        let Some(kv) = parse_map_fdinfo(&text) else {
            continue;
        };
        let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let id = num("map_id") as u32;
        let name = aya::maps::MapInfo::from_id(id)
            .ok()
            .and_then(|i| i.name_as_str().map(str::to_owned))
            .unwrap_or_default();
        maps.insert(
            id,
            MapMemory {
                id,
                name,
                map_type: num("map_type") as u32,
                key_size: num("key_size") as u32,
                value_size: num("value_size") as u32,
                max_entries: num("max_entries"),
                bytes: num("memlock"),
            },
        );
    }
    Ok(maps.into_values().collect())
}

/// Host facts for the result file.
#[derive(Clone, Debug, Serialize)]
pub struct HostInfo {
    pub host: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_gib: f64,
}

pub fn host_info() -> HostInfo {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let host = match read("/proc/sys/kernel/hostname") {
        h if h.is_empty() => "unknown".to_owned(),
        h => h,
    };
    let kernel = read("/proc/sys/kernel/osrelease");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    HostInfo {
        host,
        kernel,
        cpu_model,
        cpus: cpus(),
        mem_gib,
    }
}

/// Fails unless `program` is on PATH.
pub fn require_program(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("`{program}` is not installed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  10 0 5 100 1 0 2 0 0 0\n\
                    cpu0 4 0 2 50 1 0 1 0 0 0\n\
                    cpu1 6 1 3 50 0 1 1 2 0 0\n\
                    intr 1 2 3\n";
        let cpus = parse_proc_stat(text);
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[0].busy(), 4 + 2 + 1);
        assert_eq!(cpus[1].busy(), 6 + 1 + 3 + 1 + 1);
        assert_eq!(cpus[1].total(), 12 + 50 + 2);
        let later = CpuTimes { user: 9, ..cpus[1] };
        assert_eq!(later.since(&cpus[1]).busy(), 3);
    }

    #[test]
    fn parses_map_fdinfo() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1\nmap_type:\t1\n\
                   key_size:\t40\nvalue_size:\t24\nmax_entries:\t1000\nmap_flags:\t0x0\n\
                   map_extra:\t0x0\nmemlock:\t123456\nmap_id:\t77\nfrozen:\t0\n";
        let kv = parse_map_fdinfo(map).unwrap();
        assert_eq!(kv["memlock"], "123456");
        assert_eq!(kv["map_id"], "77");
        assert!(parse_map_fdinfo("pos:\t0\nflags:\t02\n").is_none());
    }
}
