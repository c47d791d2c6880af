//! Scenario 5: the control plane's reaction times.
//!
//! - Backend death → removal from the table: measured when this xlb has health checks (`xlb
//!   check` accepts a `[target_group.health_check]`). b3's servers are killed; new TCP
//!   connections to the VIP are opened back to back; one that lands on b3 fails. The time is
//!   from the kill to the last such failure, once no failure has followed for a second.
//! - Scaling trigger → first packet at the new backend: measured when this xlb scales (`xlb
//!   check` accepts a `[target_group.scaling]`). The `web` group keeps b1 only, with min 1 and
//!   max 2 and a launch hook that creates a fresh backend namespace on the lab switch running
//!   the lab server (as `tests/tests/scaling.rs` does). Two triggers: `xlb scale web --desired
//!   2`, and a load step across a target_tracking target. Once the hook has started, new TCP
//!   connections to the VIP go back to back until one is answered by the new backend; the
//!   time is from the trigger to that connection's first packet. The steps in between come
//!   from the hook (it writes the time it starts and prints its address) and from `xlb events
//!   --json` (decision, backend added, healthy). Between samples the group is scaled back to 1
//!   and the scale-in hook removes the namespace.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use super::maglev::median;
use super::results::{ControlResults, Failover, Measured, Phase};
use super::topo::{self, BenchLab};
use super::xlbd::{self, Xlbd};
use super::{check_stop, Params};

/// Health check of the bench: HTTP on the lab server, every 200 ms, 2 failures to unhealthy.
const HEALTH_CHECK: &str =
    "\n[target_group.health_check]\nprotocol = \"http\"\npath = \"/health\"\n\
    interval = \"200ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 2\n";
const INTERVAL_MS: u64 = 200;
const UNHEALTHY_THRESHOLD: u64 = 2;
/// The scaling measurement's health check: as [`HEALTH_CHECK`], but 2 successes to healthy.
const SCALING_HEALTHY_THRESHOLD: u64 = 2;

/// The scaled group (the `web` service's).
const GROUP: &str = "web";
/// Namespaces the launch hook creates: `xlbbench-up1`, `xlbbench-up2`, ... (the lab's own are
/// `xlbbench-client`, `-lb`, `-sw`, `-bN`).
const HOOK_NS_PREFIX: &str = "xlbbench-up";
/// The policy trigger: target_tracking of new flows per second per backend at this target;
/// the load runs at [`BASE_RATE`] for [`BASE_TIME`], then steps to [`STEP_RATE`].
const POLICY_TARGET: u32 = 20;
const BASE_RATE: u32 = 10;
const STEP_RATE: u32 = 60;
const BASE_TIME: Duration = Duration::from_secs(3);
/// Gap between the probe's new connections.
const PROBE_GAP: Duration = Duration::from_millis(1);
/// How long a trigger may take to reach the new backend before the sample fails.
const SAMPLE_LIMIT: Duration = Duration::from_secs(20);

/// The bench body with a health check on the `web` group.
fn body_with_health_check() -> String {
    with_web_group(None, HEALTH_CHECK)
}

/// The bench body with `web`'s backends replaced by `backends` (if given) and `extra` (more
/// keys and sub-tables of the group) added at the end of its table.
fn with_web_group(backends: Option<&str>, extra: &str) -> String {
    let body = topo::xlb_body(&topo::dns_default());
    // The `web` group's table ends at the next blank line.
    let web = "[[target_group]]\nname = \"web\"\n";
    let at = body.find(web).expect("the body has a web group");
    let end = body[at..].find("\n\n").map_or(body.len(), |e| at + e);
    let table = match backends {
        Some(list) => format!("{web}backends = [{list}]"),
        None => body[at..end].to_owned(),
    };
    format!("{}{table}{extra}{}", &body[..at], &body[end..])
}

/// The bench body for the scaling measurement: `web` with b1 only, health checked (2
/// successes to healthy), scaling between 1 and 2 with the hooks `launch` and `terminate`;
/// with a target_tracking policy if `policy`.
fn body_with_scaling(launch: &Path, terminate: &Path, policy: bool) -> String {
    let b1 = format!("\"{}:{}\"", xlb_lab::lab::backend_v4(1), topo::HTTP_PORT);
    let mut extra = format!(
        "\nderegistration_delay = \"5s\"\n\
         \n[target_group.health_check]\nprotocol = \"http\"\npath = \"/health\"\n\
         interval = \"{INTERVAL_MS}ms\"\ntimeout = \"100ms\"\n\
         healthy_threshold = {SCALING_HEALTHY_THRESHOLD}\nunhealthy_threshold = {UNHEALTHY_THRESHOLD}\n\
         \n[target_group.scaling]\nmin = 1\nmax = 2\ndesired = 1\n\
         scale_out_command = \"{}\"\nscale_in_command = \"{}\"\n\
         cooldown = \"1s\"\nwarmup = \"1s\"\ngrace_period = \"20s\"\nhook_timeout = \"20s\"\n",
        launch.display(),
        terminate.display()
    );
    if policy {
        extra.push_str(&format!(
            "\n[[target_group.scaling.policy]]\ntype = \"target_tracking\"\n\
             metric = \"new_flows_per_second_per_backend\"\ntarget = {POLICY_TARGET}\n\
             disable_scale_in = true\n"
        ));
    }
    with_web_group(Some(&b1), &extra)
}

pub fn run(lab: &mut BenchLab, p: &Params, dir: &Path) -> Result<ControlResults> {
    // Does this xlb know health checks?
    let probe_cfg = dir.join("probe-health.toml");
    std::fs::write(
        &probe_cfg,
        format!(
            "[daemon]\n{}\n{}",
            topo::xlb_daemon(),
            body_with_health_check()
        ),
    )?;
    let health = xlbd::check(&lab.bins.xlb, &probe_cfg)?;
    let backend_death = match &health {
        Err(e) => Measured {
            status: "pending (needs health checks)".into(),
            how: format!(
                "not measured: this xlb rejects `[target_group.health_check]` ({})",
                e.lines().next().unwrap_or("").trim()
            ),
            ..Default::default()
        },
        Ok(()) => backend_death(lab, p, dir)?,
    };
    // Does this xlb scale? (`[target_group.scaling]` accepted by `xlb check`.)
    let scaling_cfg = dir.join("probe-scaling.toml");
    std::fs::write(
        &scaling_cfg,
        format!(
            "[daemon]\n{}\n{}\n[target_group.scaling]\nmin = 3\nmax = 3\n",
            topo::xlb_daemon(),
            topo::xlb_body(&topo::dns_default())
        ),
    )?;
    let pending = |status: &str, how: &str| Measured {
        status: status.into(),
        how: how.into(),
        ..Default::default()
    };
    let (scaling, scaling_policy) = if xlbd::check(&lab.bins.xlb, &scaling_cfg)?.is_err() {
        let m = pending(
            "pending (needs scaling, issue 5)",
            "not measured: this xlb rejects `[target_group.scaling]`",
        );
        (m.clone(), m)
    } else if health.is_err() {
        let m = pending(
            "pending (needs health checks)",
            "not measured: the new backend's first packet is timed once it is healthy",
        );
        (m.clone(), m)
    } else {
        let hooks = Hooks::new(dir, &lab.bins.lab)?;
        let manual = or_failed(scaling(lab, p, dir, &hooks, Trigger::Manual))?;
        let policy = or_failed(scaling(lab, p, dir, &hooks, Trigger::Policy))?;
        (manual, policy)
    };
    // Does this xlb know passive health? (`[target_group.passive_health]` accepted.)
    let passive_cfg = dir.join("probe-passive.toml");
    std::fs::write(
        &passive_cfg,
        format!(
            "[daemon]\n{}\n{}",
            topo::xlb_daemon(),
            body_with_failover(Some(false))
        ),
    )?;
    let passive = xlbd::check(&lab.bins.xlb, &passive_cfg)?.is_ok();
    let mut failover = Vec::new();
    if health.is_ok() {
        for (mode, ph) in [
            ("active checks only", None),
            ("passive", Some(false)),
            ("passive + redispatch", Some(true)),
        ] {
            check_stop()?;
            if ph.is_some() && !passive {
                failover.push(Failover {
                    mode: mode.into(),
                    status: "pending (needs passive health, issue 11)".into(),
                    ..Default::default()
                });
                continue;
            }
            let f = match failover_run(lab, dir, ph) {
                Ok(f) => f,
                Err(e) => {
                    check_stop()?;
                    eprintln!("bench:   failover ({mode}) failed: {e:#}");
                    Failover {
                        status: format!("failed: {e:#}"),
                        ..Default::default()
                    }
                }
            };
            failover.push(Failover {
                mode: mode.into(),
                ..f
            });
        }
        check_stop()?;
        let f = haproxy_failover_run(lab).unwrap_or_else(|e| {
            eprintln!("bench:   failover (HAProxy) failed: {e:#}");
            Failover {
                status: format!("failed: {e:#}"),
                ..Default::default()
            }
        });
        failover.push(Failover {
            mode: "HAProxy (checks 1 s × 2, option redispatch, retries 3)".into(),
            ..f
        });
    }
    Ok(ControlResults {
        backend_death,
        scaling,
        scaling_policy,
        failover,
    })
}

/// A failed scaling measurement is reported as such (the rest of the scenario stands);
/// an interruption still stops the bench.
fn or_failed(r: Result<Measured>) -> Result<Measured> {
    match r {
        Ok(m) => Ok(m),
        Err(e) => {
            check_stop()?;
            eprintln!("bench:   scaling measurement failed: {e:#}");
            Ok(Measured {
                status: "failed".into(),
                how: format!("{e:#}"),
                ..Default::default()
            })
        }
    }
}

/// One connection to `vip`, `GET /`: Ok(backend name) or Err (refused, reset, timeout).
fn request(vip: SocketAddr) -> std::result::Result<String, ()> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&vip, Duration::from_millis(300)).map_err(drop)?;
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .map_err(drop)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        .map_err(drop)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(drop)?;
    let text = String::from_utf8_lossy(&buf);
    text.split("\r\n\r\n")
        .nth(1)
        .map(|b| b.trim().to_owned())
        .ok_or(())
}

fn backend_death(lab: &mut BenchLab, p: &Params, dir: &Path) -> Result<Measured> {
    let x = Xlbd::start(
        &lab.bins.xlb,
        lab.lab.lb_ns(),
        dir,
        "xlbbench-health",
        &topo::xlb_daemon(),
        &body_with_health_check(),
        Some(topo::LB_CPU),
        Duration::from_secs(30),
    )?;
    lab.pin_napi()?;
    let vip = SocketAddr::from((xlb_lab::lab::VIP_V4, topo::VIP_HTTP_PORT));
    let victim = topo::BACKENDS;
    let victim_name = xlb_lab::lab::backend_name(victim);
    let mut samples = Vec::new();
    let result = (|| -> Result<()> {
        for _ in 0..p.daemon_samples.clamp(1, 3) {
            check_stop()?;
            // Wait until new connections reach the victim (healthy, in the table).
            let deadline = Instant::now() + Duration::from_secs(15);
            while lab.lab.client_ns().enter(|| request(vip)).ok().as_deref()
                != Some(victim_name.as_str())
            {
                if Instant::now() > deadline {
                    bail!("{victim_name} never served through xlb");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let killed = Instant::now();
            lab.kill_servers(victim)?;
            let last_failure = lab.lab.client_ns().enter(|| -> Result<Duration> {
                let mut last = Duration::ZERO;
                loop {
                    let now = killed.elapsed();
                    if now > Duration::from_secs(20) {
                        bail!("new connections still fail 20 s after the backend died");
                    }
                    if request(vip).is_err() {
                        last = killed.elapsed();
                    } else if now - last > Duration::from_secs(1) && last > Duration::ZERO {
                        return Ok(last);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })?;
            let ms = last_failure.as_secs_f64() * 1e3;
            eprintln!("bench:   backend died → last failed new connection after {ms:.0} ms");
            samples.push(ms);
            lab.restart_servers(victim)?;
        }
        Ok(())
    })();
    drop(x);
    lab.pin_napi()?;
    result?;
    let mut sorted = samples.clone();
    Ok(Measured {
        status: "measured".into(),
        how: format!(
            "HTTP health check every {INTERVAL_MS} ms, unhealthy after {UNHEALTHY_THRESHOLD} \
             failures; b3's server killed, new connections back to back until none has failed \
             for 1 s; time from the kill to the last failure (expected at most about \
             interval × (threshold + 1) = {} ms)",
            INTERVAL_MS * (UNHEALTHY_THRESHOLD + 1)
        ),
        median_ms: Some(median(&mut sorted)),
        samples_ms: samples,
        ..Default::default()
    })
}

// ---- failover ----

/// The failover runs' load: new connections a second, for how long, and the kill.
const FAILOVER_RATE: u32 = 600;
const FAILOVER_LOAD: Duration = Duration::from_secs(5);
const FAILOVER_KILL_AT: Duration = Duration::from_millis(1500);
const FAILOVER_WORKERS: u32 = 12;

/// The bench body for a failover run: TCP checks every 1 s, unhealthy after 2 (as the issue
/// measured); with `[target_group.passive_health]` if `passive` (its `redispatch` the value).
fn body_with_failover(passive: Option<bool>) -> String {
    let mut extra = "\n[target_group.health_check]\nprotocol = \"tcp\"\ninterval = \"1s\"\n\
                     timeout = \"500ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n"
        .to_string();
    if let Some(redispatch) = passive {
        extra.push_str(&format!(
            "\n[target_group.passive_health]\nredispatch = {redispatch}\n"
        ));
    }
    with_web_group(None, &extra)
}

/// One connection to `vip`, `GET /`, within 3 s (a SYN retransmission fits): Ok(backend
/// name) or Err.
fn request_slow(vip: SocketAddr) -> std::result::Result<String, ()> {
    use std::io::{Read, Write};
    let t = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&vip, t).map_err(drop)?;
    s.set_read_timeout(Some(t)).map_err(drop)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        .map_err(drop)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(drop)?;
    let text = String::from_utf8_lossy(&buf);
    text.split("\r\n\r\n")
        .nth(1)
        .map(|b| b.trim().to_owned())
        .ok_or(())
}

/// One failover run: a daemon with `body_with_failover(passive)`, a paced load, b3's server
/// killed during it, then restarted.
fn failover_run(lab: &mut BenchLab, dir: &Path, passive: Option<bool>) -> Result<Failover> {
    let x = Xlbd::start(
        &lab.bins.xlb,
        lab.lab.lb_ns(),
        dir,
        "xlbbench-failover",
        &topo::xlb_daemon(),
        &body_with_failover(passive),
        Some(topo::LB_CPU),
        Duration::from_secs(30),
    )?;
    lab.pin_napi()?;
    let result = failover_load(lab, &format!("{passive:?}"));
    let restarted = lab.restart_servers(topo::BACKENDS);
    drop(x);
    lab.pin_napi()?;
    restarted?;
    result
}

/// The same failover run through HAProxy (TCP checks every 1 s, down after 2, `option
/// redispatch`, 3 retries).
fn haproxy_failover_run(lab: &mut BenchLab) -> Result<Failover> {
    super::ensure_haproxy()?;
    let run = lab.start_with(topo::System::Haproxy, Some(topo::haproxy_failover_config()))?;
    // Its checks see every backend up first.
    std::thread::sleep(Duration::from_secs(3));
    let result = failover_load(lab, "HAProxy");
    let restarted = lab.restart_servers(topo::BACKENDS);
    drop(run);
    lab.pin_napi()?;
    restarted?;
    result
}

/// A paced load through the VIP while the last backend's server is killed: what failed and
/// when traffic to it stopped.
fn failover_load(lab: &mut BenchLab, label: &str) -> Result<Failover> {
    let vip = SocketAddr::from((xlb_lab::lab::VIP_V4, topo::VIP_HTTP_PORT));
    let victim = topo::BACKENDS;
    let victim_name = xlb_lab::lab::backend_name(victim);
    let result = (|| -> Result<Failover> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while lab.lab.client_ns().enter(|| request(vip)).ok().as_deref()
            != Some(victim_name.as_str())
        {
            if Instant::now() > deadline {
                bail!("{victim_name} never served through xlb");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let total = FAILOVER_RATE * FAILOVER_LOAD.as_secs() as u32;
        let gap = Duration::from_secs(1) / FAILOVER_RATE;
        let t0 = Instant::now() + Duration::from_millis(100);
        let end = t0 + FAILOVER_LOAD + Duration::from_secs(6);
        let client = lab.lab.client_ns();
        let pid = nix::unistd::Pid::from_raw(lab.server_pid(victim) as i32);
        let (mut reqs, killed) = std::thread::scope(|s| -> Result<_> {
            let h = s.spawn(|| {
                client.enter(|| {
                    std::thread::scope(|s| {
                        let ws: Vec<_> = (0..FAILOVER_WORKERS)
                            .map(|w| {
                                s.spawn(move || {
                                    let mut out = Vec::new();
                                    let mut k = w;
                                    while k < total && Instant::now() < end {
                                        let due = t0 + gap * k;
                                        if let Some(d) = due.checked_duration_since(Instant::now())
                                        {
                                            std::thread::sleep(d);
                                        }
                                        let start = Instant::now();
                                        let ok = request_slow(vip).is_ok();
                                        out.push((start - t0, start.elapsed(), ok));
                                        k += FAILOVER_WORKERS;
                                    }
                                    out
                                })
                            })
                            .collect();
                        ws.into_iter()
                            .flat_map(|h| h.join().unwrap_or_default())
                            .collect::<Vec<_>>()
                    })
                })
            });
            std::thread::sleep((t0 + FAILOVER_KILL_AT).saturating_duration_since(Instant::now()));
            let killed = t0.elapsed();
            let k = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let reqs = h.join().map_err(|_| anyhow::anyhow!("the load panicked"))?;
            k.context("killing the victim's servers")?;
            Ok((reqs, killed))
        })?;
        // Reaps it.
        lab.kill_servers(victim)?;
        reqs.sort_by_key(|r| r.0);
        let after: Vec<_> = reqs.iter().filter(|r| r.0 >= killed).collect();
        let failed = after.iter().filter(|r| !r.2).count();
        let delayed = after
            .iter()
            .filter(|r| r.2 && r.1 > Duration::from_millis(800))
            .count();
        let last = after
            .iter()
            .filter(|r| !r.2 || r.1 > Duration::from_millis(800))
            .map(|r| r.0)
            .max();
        let span = reqs.last().map_or(1.0, |r| r.0.as_secs_f64().max(1e-3));
        let f = Failover {
            mode: String::new(),
            status: "measured".into(),
            rate: reqs.len() as f64 / span,
            requests_after_kill: after.len(),
            failed,
            delayed,
            time_to_stop_ms: last.map(|l| (l - killed).as_secs_f64() * 1e3),
        };
        eprintln!(
            "bench:   failover ({label}): stop {:?} ms, {failed} of {} failed, {delayed} delayed",
            f.time_to_stop_ms,
            after.len()
        );
        Ok(f)
    })();
    result
}

// ---- scaling ----

/// The hook scripts of the scaling measurement and their files. Dropping it removes the
/// namespaces the hooks created.
struct Hooks {
    dir: PathBuf,
    launch: PathBuf,
    terminate: PathBuf,
}

/// The scale-out hook: per backend asked for, a fresh namespace on the lab switch (address
/// 198.18.2.(100 + n), n counted in `next` across runs, so no address is reused within a
/// bench run), the lab server in it on the client CPU, waits until it listens, warms the
/// gateway's neighbour entry, prints `ADDR:PORT`. Writes `start TIME` and `printed TIME`
/// (wall clock) to `times`. Holds `lock` while it runs.
fn launch_script(dir: &Path, lab: &Path) -> String {
    format!(
        r#"#!/bin/bash
set -euo pipefail
echo "start $(date +%s.%N)" >> {dir}/times
exec 9>{dir}/lock
flock 9
for _ in $(seq 1 "${{XLB_COUNT:-1}}"); do
  n=$(cat {dir}/next 2>/dev/null || echo 1)
  if [ "$n" -gt 150 ]; then echo "no addresses left" >&2; exit 1; fi
  echo $((n + 1)) > {dir}/next
  ns={HOOK_NS_PREFIX}$n
  addr=198.18.2.$((100 + n))
  ip netns add $ns
  ip -n $ns link set lo up
  ip link add eth0 netns $ns type veth peer name u$n netns {sw}
  ip -n {sw} link set u$n master {bridge} up
  ip -n $ns addr add $addr/24 dev eth0
  ip -n $ns link set eth0 up
  ip -n $ns route add default via {gw}
  ip netns exec $ns ethtool -K eth0 tx off >/dev/null
  setsid taskset -c {cpu} ip netns exec $ns {lab} serve --name u$n --http {port} </dev/null >/dev/null 2>&1 9>&- &
  for _ in $(seq 1 200); do
    if ip netns exec $ns bash -c "exec 3<>/dev/tcp/$addr/{port}" 2>/dev/null; then break; fi
    sleep 0.01
  done
  ip netns exec $ns ping -c1 -W1 {gw} >/dev/null 2>&1 || true
  echo "printed $(date +%s.%N)" >> {dir}/times
  echo $addr:{port}
done
"#,
        dir = dir.display(),
        lab = lab.display(),
        sw = format!("{}-sw", topo::PREFIX),
        bridge = xlb_lab::lab::SW_BRIDGE,
        gw = xlb_lab::lab::LB_BACKENDS_V4,
        cpu = topo::CLIENT_CPU,
        port = topo::HTTP_PORT,
    )
}

/// The scale-in hook: removes the namespace of `XLB_BACKEND` (only one the launch hook made),
/// appends the backend to `terminated`.
fn terminate_script(dir: &Path) -> String {
    format!(
        r#"#!/bin/bash
set -euo pipefail
exec 9>{dir}/lock
flock 9
addr=${{XLB_BACKEND%:*}}
n=$(( ${{addr##*.}} - 100 ))
if [ "$n" -ge 1 ]; then
  ns={HOOK_NS_PREFIX}$n
  for pid in $(ip netns pids $ns 2>/dev/null); do kill -9 $pid 2>/dev/null || true; done
  ip netns del $ns 2>/dev/null || true
fi
echo "$XLB_BACKEND" >> {dir}/terminated
"#,
        dir = dir.display()
    )
}

impl Hooks {
    /// Writes the hooks into `dir/scale-hooks`; `lab` is the lab binary (the server).
    fn new(dir: &Path, lab: &Path) -> Result<Hooks> {
        use std::os::unix::fs::PermissionsExt;
        let dir = dir.join("scale-hooks");
        std::fs::create_dir_all(&dir)?;
        let hooks = Hooks {
            launch: dir.join("launch.sh"),
            terminate: dir.join("terminate.sh"),
            dir,
        };
        for (path, text) in [
            (&hooks.launch, launch_script(&hooks.dir, lab)),
            (&hooks.terminate, terminate_script(&hooks.dir)),
        ] {
            std::fs::write(path, text)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(hooks)
    }

    /// `start` and `printed` of `times`, as seconds since the epoch (last of each).
    fn times(&self) -> (Option<f64>, Option<f64>) {
        let text = std::fs::read_to_string(self.dir.join("times")).unwrap_or_default();
        let mut out = (None, None);
        for line in text.lines() {
            let mut w = line.split_whitespace();
            let (Some(k), Some(t)) = (w.next(), w.next().and_then(|t| t.parse().ok())) else {
                continue;
            };
            match k {
                "start" => out.0 = Some(t),
                "printed" => out.1 = Some(t),
                _ => {}
            }
        }
        out
    }

    fn clear_times(&self) -> Result<()> {
        Ok(std::fs::write(self.dir.join("times"), "")?)
    }

    fn terminated(&self, backend: &str) -> bool {
        std::fs::read_to_string(self.dir.join("terminated"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim() == backend)
    }

    /// Removes every namespace the launch hook made (and kills what runs in them), after any
    /// hook still running has finished (it holds the lock; a daemon killed past its grace
    /// leaves its hook running).
    fn cleanup(&self) {
        let _ = Command::new("flock")
            .args(["-w", "30"])
            .arg(self.dir.join("lock"))
            .arg("true")
            .stdin(Stdio::null())
            .status();
        if let Err(e) = xlb_lab::lab::Lab::cleanup_stale(HOOK_NS_PREFIX) {
            eprintln!("warning: removing the scaling hooks' namespaces: {e:#}");
        }
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        self.cleanup();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// `xlb scale web --desired 2`.
    Manual,
    /// New connections at [`BASE_RATE`], then [`STEP_RATE`] across the policy's target.
    Policy,
}

/// The moments of one sample, in ms since the trigger.
#[derive(Clone, Copy, Debug, Default)]
struct Moments {
    decision: Option<f64>,
    hook_started: Option<f64>,
    printed: Option<f64>,
    added: Option<f64>,
    healthy: Option<f64>,
    first_flow: f64,
}

/// `xlb ARGS --config CONFIG` against the daemon `x`: its stdout, or an error.
fn cli(bin: &Path, x: &Xlbd, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .arg("--config")
        .arg(&x.config)
        .stdin(Stdio::null())
        .output()
        .context("running the xlb CLI")?;
    if !out.status.success() {
        bail!(
            "xlb {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cli_json(bin: &Path, x: &Xlbd, args: &[&str]) -> Result<serde_json::Value> {
    let text = cli(bin, x, args)?;
    serde_json::from_str(&text).with_context(|| format!("parsing the output of xlb {args:?}"))
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Waits until `web` is b1 alone, healthy, and new connections through the VIP reach it.
fn wait_ready(lab: &BenchLab, x: &Xlbd, vip: SocketAddr) -> Result<()> {
    let b1 = xlb_lab::lab::backend_v4(1).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_stop()?;
        let v = cli_json(&lab.bins.xlb, x, &["backends", GROUP, "--json"])?;
        let list = v.as_array().cloned().unwrap_or_default();
        let alone_healthy = list.len() == 1
            && list[0]["address"].as_str() == Some(b1.as_str())
            && list[0]["state"] == "healthy";
        if alone_healthy && lab.lab.client_ns().enter(|| request(vip)).as_deref() == Ok("b1") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("`{GROUP}` did not settle at b1 alone and healthy within 30 s: {v}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// New connections to `vip` at `rate` per second (0: none) until `stop`, for at most
/// `limit`.
fn load(vip: SocketAddr, rate: &AtomicU32, stop: &AtomicBool, limit: Duration) {
    let started = Instant::now();
    let mut current = 0;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        let r = rate.load(Ordering::Relaxed);
        if r != current {
            current = r;
            next = Instant::now();
        }
        if r == 0 {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(5)));
            continue;
        }
        let _ = request(vip);
        next += Duration::from_secs_f64(1.0 / f64::from(r));
        // After a stall, go on at the rate rather than catch up in a burst.
        let now = Instant::now();
        if next + Duration::from_millis(100) < now {
            next = now;
        }
    }
}

/// Sets the flag when dropped (stops the load thread on every path).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs one daemon with the scaling group and takes its samples for `trigger`.
fn scaling(
    lab: &mut BenchLab,
    p: &Params,
    dir: &Path,
    hooks: &Hooks,
    trigger: Trigger,
) -> Result<Measured> {
    let policy = trigger == Trigger::Policy;
    let n = if policy {
        p.daemon_samples.clamp(1, 3)
    } else {
        p.daemon_samples.clamp(1, 5)
    };
    let x = Xlbd::start(
        &lab.bins.xlb,
        lab.lab.lb_ns(),
        dir,
        "xlbbench-scale",
        &topo::xlb_daemon(),
        &body_with_scaling(&hooks.launch, &hooks.terminate, policy),
        Some(topo::LB_CPU),
        Duration::from_secs(30),
    )?;
    let result = lab.pin_napi().and_then(|_| {
        let lab = &*lab;
        let vip = SocketAddr::from((xlb_lab::lab::VIP_V4, topo::VIP_HTTP_PORT));
        let rate = AtomicU32::new(0);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let _stop_load = SetOnDrop(&stop);
            if policy {
                s.spawn(|| {
                    lab.lab.client_ns().enter(|| {
                        load(vip, &rate, &stop, Duration::from_secs(600));
                    })
                });
            }
            let mut out = Vec::new();
            for _ in 0..n {
                let m = sample(lab, &x, hooks, vip, policy.then_some(&rate))?;
                eprintln!(
                    "bench:   {} → first new flow at the new backend after {:.0} ms \
                     (decision {}, hook started {}, address printed {}, added {}, healthy {})",
                    if policy { "load step" } else { "xlb scale" },
                    m.first_flow,
                    fmt_ms(m.decision),
                    fmt_ms(m.hook_started),
                    fmt_ms(m.printed),
                    fmt_ms(m.added),
                    fmt_ms(m.healthy),
                );
                out.push(m);
            }
            Ok(out)
        })
    });
    drop(x);
    // After the daemon: no hook can start any more.
    hooks.cleanup();
    lab.pin_napi()?;
    let samples = result?;
    Ok(summarize(&samples, trigger))
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "not seen".into(), |v| format!("+{v:.0} ms"))
}

/// One scale-out from b1 alone to 2 backends and back.
fn sample(
    lab: &BenchLab,
    x: &Xlbd,
    hooks: &Hooks,
    vip: SocketAddr,
    rate: Option<&AtomicU32>,
) -> Result<Moments> {
    let bin = &lab.bins.xlb;
    wait_ready(lab, x, vip)?;
    if let Some(rate) = rate {
        // The policy sees the base load, below its target, for a few rate samples.
        rate.store(BASE_RATE, Ordering::Relaxed);
        std::thread::sleep(BASE_TIME);
        let v = cli_json(bin, x, &["backends", GROUP, "--json"])?;
        if v.as_array().map_or(0, Vec::len) != 1 {
            bail!("the base load ({BASE_RATE}/s) already changed `{GROUP}`: {v}");
        }
    }
    hooks.clear_times()?;
    check_stop()?;

    // The trigger.
    let t0 = SystemTime::now();
    match rate {
        Some(rate) => rate.store(STEP_RATE, Ordering::Relaxed),
        None => {
            cli(bin, x, &["scale", GROUP, "--desired", "2"])?;
        }
    }
    let since = |t: f64| (t - epoch_secs(t0)) * 1e3;

    // Wait for the launch hook, then new connections back to back until the new backend
    // answers one (it cannot before the hook has printed its address and it passed 2 checks).
    let deadline = Instant::now() + SAMPLE_LIMIT;
    while hooks.times().0.is_none() {
        check_stop()?;
        if Instant::now() > deadline {
            bail!("no launch hook ran within {SAMPLE_LIMIT:?} of the trigger");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let probe = lab
        .lab
        .client_ns()
        .enter(|| -> Result<(SystemTime, String)> {
            loop {
                check_stop()?;
                if Instant::now() > deadline {
                    bail!("the new backend answered no new connection within {SAMPLE_LIMIT:?}");
                }
                let sent = SystemTime::now();
                match request(vip) {
                    Ok(name) if name != "b1" => return Ok((sent, name)),
                    _ => std::thread::sleep(PROBE_GAP),
                }
            }
        });
    if let Some(rate) = rate {
        rate.store(0, Ordering::Relaxed);
    }
    let (first, name) = probe?;

    // The steps in between.
    let (start, printed) = hooks.times();
    let events = cli_json(bin, x, &["events", "--json", "--group", GROUP])?;
    let events: Vec<&serde_json::Value> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["time"]
                .as_f64()
                .is_some_and(|t| t >= epoch_secs(t0) - 0.01)
        })
        .collect();
    let at = |pred: &dyn Fn(&str, &str) -> bool| {
        events
            .iter()
            .find(|e| {
                pred(
                    e["kind"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or(""),
                )
            })
            .and_then(|e| e["time"].as_f64())
    };
    let decision_kind = if rate.is_some() {
        "scale_out"
    } else {
        "manual"
    };
    let decision = at(&|k, _| k == decision_kind);
    // "launched 198.18.2.101:8080"
    let backend = events
        .iter()
        .find(|e| e["kind"] == "launched")
        .and_then(|e| e["message"].as_str())
        .and_then(|m| m.strip_prefix("launched "))
        .map(|m| m.trim().to_owned());
    let added = at(&|k, _| k == "launched");
    // "198.18.2.101:8080 initial → healthy (...)"
    let healthy = backend
        .as_deref()
        .and_then(|b| at(&|k, m| k == "health" && m.starts_with(b) && m.contains("→ healthy")));
    let m = Moments {
        decision: decision.map(since),
        hook_started: start.map(since),
        printed: printed.map(since),
        added: added.map(since),
        healthy: healthy.map(since),
        first_flow: since(epoch_secs(first)),
    };

    // Back to 1: the new backend drains, then the scale-in hook removes it.
    let Some(backend) = backend else {
        bail!("{name} answered, but no `launched` event names it: {events:?}");
    };
    if rate.is_some() {
        // The probe's flows must leave the policy's rate window (1 s), or it scales out
        // again at once.
        std::thread::sleep(Duration::from_millis(2500));
    }
    cli(bin, x, &["scale", GROUP, "--desired", "1"])?;
    let deadline = Instant::now() + Duration::from_secs(40);
    while !hooks.terminated(&backend) {
        check_stop()?;
        if Instant::now() > deadline {
            bail!("{backend} was not drained and terminated within 40 s of scaling back to 1");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(m)
}

/// The moments `f` of the samples that saw it, and their median.
fn phase(what: &str, samples: &[Moments], f: impl Fn(&Moments) -> Option<f64>) -> Phase {
    let v: Vec<f64> = samples.iter().filter_map(f).collect();
    let median_ms = (!v.is_empty()).then(|| median(&mut v.clone()));
    Phase {
        what: what.into(),
        samples_ms: v,
        median_ms,
    }
}

fn summarize(samples: &[Moments], trigger: Trigger) -> Measured {
    let firsts: Vec<f64> = samples.iter().map(|m| m.first_flow).collect();
    let common = format!(
        "`web` with b1 listed and `[target_group.scaling]` min 1, max 2; HTTP health check \
         every {INTERVAL_MS} ms, healthy after {SCALING_HEALTHY_THRESHOLD} successes; launch \
         hook (bash): a new namespace with a veth on the lab switch, the lab server, wait until \
         it listens, print ADDR:PORT; once the hook has started, new TCP connections to the VIP \
         back to back ({} ms apart) until one is answered by the new backend: the figure is from \
         the trigger to that connection's SYN; scaled back to 1 (drain, scale-in hook) between \
         samples",
        PROBE_GAP.as_millis()
    );
    let (how, decision) = match trigger {
        Trigger::Manual => (
            format!("trigger: `xlb scale web --desired 2` (the CLI started); {common}"),
            "desired set (`manual` event)",
        ),
        Trigger::Policy => (
            format!(
                "target_tracking `new_flows_per_second_per_backend`, target {POLICY_TARGET}; \
                 trigger: new connections step from {BASE_RATE}/s (held {} s) to {STEP_RATE}/s; \
                 xlb samples the rates once a second, so the decision comes 0–2 s after the \
                 step; {common}",
                BASE_TIME.as_secs()
            ),
            "`scale_out` decision",
        ),
    };
    Measured {
        status: "measured".into(),
        how,
        median_ms: Some(median(&mut firsts.clone())),
        samples_ms: firsts,
        breakdown: vec![
            phase(decision, samples, |m| m.decision),
            phase("hook started", samples, |m| m.hook_started),
            phase("address printed", samples, |m| m.printed),
            phase("added (`launched` event)", samples, |m| m.added),
            phase("healthy (`health` event)", samples, |m| m.healthy),
            phase("first flow at it", samples, |m| Some(m.first_flow)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_check_goes_into_the_web_group() {
        let b = body_with_health_check();
        let web = b.find("name = \"web\"").unwrap();
        let hc = b.find("[target_group.health_check]").unwrap();
        let dns = b.find("name = \"dns\"\nbackends").unwrap();
        assert!(web < hc && hc < dns, "{b}");
    }

    #[test]
    fn scaling_goes_into_the_web_group() {
        let b = body_with_scaling(Path::new("/h/launch.sh"), Path::new("/h/term.sh"), true);
        let web = b
            .find("name = \"web\"\nbackends = [\"198.18.2.11:8080\"]\n")
            .unwrap();
        let sc = b.find("[target_group.scaling]\nmin = 1\nmax = 2").unwrap();
        let pol = b.find("target = 20").unwrap();
        let dns = b.find("name = \"dns\"\nbackends").unwrap();
        assert!(web < sc && sc < pol && pol < dns, "{b}");
        assert!(b.contains("healthy_threshold = 2\n"), "{b}");
        assert!(b.contains("scale_out_command = \"/h/launch.sh\""), "{b}");
        assert!(!body_with_scaling(Path::new("/l"), Path::new("/t"), false).contains("policy"));
    }
}
