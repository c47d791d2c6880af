//! Scenario 5: the control plane's reaction times.
//!
//! - Backend death → removal from the table: measured when this xlb has health checks (`xlb
//!   check` accepts a `[target_group.health_check]`). b3's servers are killed; new TCP
//!   connections to the VIP are opened back to back; one that lands on b3 fails. The time is
//!   from the kill to the last such failure, once no failure has followed for a second.
//! - Scaling trigger → first packet at the new backend: pending until scaling exists.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::maglev::median;
use super::results::{ControlResults, Measured};
use super::topo::{self, BenchLab};
use super::xlbd::{self, Xlbd};
use super::{check_stop, Params};

/// Health check of the bench: HTTP on the lab server, every 200 ms, 2 failures to unhealthy.
const HEALTH_CHECK: &str =
    "\n[target_group.health_check]\nprotocol = \"http\"\npath = \"/health\"\n\
    interval = \"200ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 2\n";
const INTERVAL_MS: u64 = 200;
const UNHEALTHY_THRESHOLD: u64 = 2;

/// The bench body with a health check on the `web` group.
fn body_with_health_check() -> String {
    let body = topo::xlb_body(&topo::dns_default());
    // The `web` group's table ends at the next blank line.
    let web = "[[target_group]]\nname = \"web\"\n";
    let at = body.find(web).expect("the body has a web group");
    let end = body[at..].find("\n\n").map_or(body.len(), |e| at + e);
    format!("{}{}{}", &body[..end], HEALTH_CHECK, &body[end..])
}

pub fn run(lab: &mut BenchLab, p: &Params, dir: &Path) -> Result<ControlResults> {
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
    let scaling = match xlbd::check(&lab.bins.xlb, &scaling_cfg)? {
        Err(_) => Measured {
            status: "pending (needs scaling, issue 5)".into(),
            how: "not measured: this xlb rejects `[target_group.scaling]`".into(),
            ..Default::default()
        },
        Ok(()) => Measured {
            status: "pending (not measured by the bench yet)".into(),
            how: "this xlb has `[target_group.scaling]`; the bench does not drive it yet".into(),
            ..Default::default()
        },
    };
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
    let backend_death = match xlbd::check(&lab.bins.xlb, &probe_cfg)? {
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
    Ok(ControlResults {
        backend_death,
        scaling,
    })
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
    })
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
}
