//! The `xlb` daemon under benchmark: started in a namespace on a generated config, read
//! (pid, XDP program, its counters), reloaded, stopped and cleaned up.
//!
//! Written against both daemon generations: one that keeps nothing after it stops, and one
//! that pins its maps and links under `[daemon] pin_path` (and has `xlb stop --cleanup`). The
//! bench asks `xlb check` whether the private-path keys are understood, and `xlb --help`
//! whether `stop` exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use nix::sys::signal::Signal;
use xlb_lab::netns::{ChildGuard, Netns};

/// A running daemon. Dropping it stops it and removes what it left (pins, run directory).
pub struct Xlbd {
    bin: PathBuf,
    dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    name: String,
    ns: String,
    child: Option<ChildGuard>,
}

/// `[daemon]` lines that keep an instance's files private to `name` (if this xlb has them).
fn private_paths(name: &str) -> String {
    format!(
        "pin_path = \"/sys/fs/bpf/{name}\"\nstate_file = \"/run/{name}/state.json\"\napi_socket = \"/run/{name}/xlb.sock\"\n"
    )
}

fn output(cmd: &mut Command) -> Result<(bool, String)> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// `xlb check --config FILE`: Ok(()) or the error it printed.
pub fn check(bin: &Path, config: &Path) -> Result<std::result::Result<(), String>> {
    let (ok, text) = output(Command::new(bin).arg("check").arg("--config").arg(config))?;
    Ok(if ok {
        Ok(())
    } else {
        Err(text.trim().to_owned())
    })
}

/// Whether this xlb understands the private-path keys of [`private_paths`].
fn knows_private_paths(bin: &Path, dir: &Path) -> bool {
    static KNOWS: OnceLock<bool> = OnceLock::new();
    *KNOWS.get_or_init(|| {
        let probe = dir.join("probe-paths.toml");
        let text = format!(
            "[daemon]\ninterfaces = [\"lo\"]\n{}",
            private_paths("xlbbench-probe")
        );
        std::fs::write(&probe, text).is_ok() && matches!(check(bin, &probe), Ok(Ok(())))
    })
}

/// Whether this xlb has `xlb stop` (pinned, persistent data path).
fn has_stop(bin: &Path) -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        output(Command::new(bin).arg("--help"))
            .map(|(_, t)| t.lines().any(|l| l.trim_start().starts_with("stop")))
            .unwrap_or(false)
    })
}

/// Removes pins and run directories of earlier bench daemons named `prefix*`.
pub fn cleanup_stale(prefix: &str) {
    for dir in ["/sys/fs/bpf", "/run"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

impl Xlbd {
    /// The config text: `[daemon]` with `interfaces` and `daemon_extra` (plus private paths if
    /// supported), then `body` (services and target groups).
    pub fn config_text(&self, daemon_extra: &str, body: &str) -> String {
        compose(&self.bin, &self.name, &self.dir, daemon_extra, body)
    }

    /// Writes the config and starts `xlb run` in `ns` (on CPU `cpu`, if given); waits (at
    /// most `timeout`) for `xlb is running`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        bin: &Path,
        ns: &Netns,
        dir: &Path,
        name: &str,
        daemon_extra: &str,
        body: &str,
        cpu: Option<usize>,
        timeout: Duration,
    ) -> Result<Xlbd> {
        let config = dir.join(format!("{name}.toml"));
        let log = dir.join(format!("{name}.log"));
        let text = compose(bin, name, dir, daemon_extra, body);
        std::fs::write(&config, &text)?;
        if let Err(e) = check(bin, &config)? {
            bail!("xlb check rejects the bench config: {e}\n{text}");
        }
        if knows_private_paths(bin, dir) {
            std::fs::create_dir_all(format!("/run/{name}"))?;
        }
        let _ = std::fs::remove_file(&log);
        let out = std::fs::File::create(&log)?;
        // nsenter keeps the root mount namespace (and so bpffs pins); `ip netns exec` would
        // give the daemon a private one.
        let mut cmd = match cpu {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.args(["-c", &c.to_string(), "nsenter"]);
                t
            }
            None => Command::new("nsenter"),
        };
        cmd.arg(format!("--net={}", ns.path().display()))
            .arg(bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("XLB_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let mut child = ChildGuard::spawn(&mut cmd)?.with_grace(Duration::from_secs(5));
        xlb_lab::lab::wait_for_log(&mut child, &log, "xlb is running", timeout)?;
        Ok(Xlbd {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            config,
            log,
            name: name.to_owned(),
            ns: ns.name().to_owned(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Rewrites the config and sends SIGHUP.
    pub fn reload(&mut self, daemon_extra: &str, body: &str) -> Result<()> {
        let text = self.config_text(daemon_extra, body);
        std::fs::write(&self.config, text)?;
        self.signal(Signal::SIGHUP)
    }

    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        match self.child.as_mut() {
            Some(c) => c.signal(sig),
            None => bail!("xlb is not running"),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon and detaches/removes whatever it leaves behind.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.stop()?;
        }
        if has_stop(&self.bin) {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/var/run/netns/{}", self.ns))
                .arg(&self.bin)
                .args(["stop", "--cleanup", "--config"])
                .arg(&self.config);
            let _ = output(&mut cmd);
        }
        cleanup_stale(&self.name);
        Ok(())
    }
}

fn compose(bin: &Path, name: &str, dir: &Path, daemon_extra: &str, body: &str) -> String {
    let private = if knows_private_paths(bin, dir) {
        private_paths(name)
    } else {
        String::new()
    };
    format!("[daemon]\n{daemon_extra}{private}\n{body}")
}

impl Drop for Xlbd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping xlb: {e:#}");
        }
    }
}

/// Id of the XDP program attached to `iface` in `ns` (`ip -d -j link show`).
pub fn xdp_prog_id(ns: &Netns, iface: &str) -> Result<Option<u32>> {
    let out = ns.exec(["ip", "-d", "-j", "link", "show", "dev", iface])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.get(0)
        .and_then(|l| l.get("xdp"))
        .and_then(|x| {
            x.get("prog")
                .or_else(|| x.get("attached")?.get(0)?.get("prog"))
        })
        .and_then(|p| p.get("id"))
        .and_then(|id| id.as_u64())
        .map(|id| id as u32))
}

/// The `GLOBAL_STATS` counters of the XDP program `prog_id`, per CPU, by name.
pub fn global_stats(prog_id: u32) -> Result<BTreeMap<String, Vec<u64>>> {
    let prog = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == prog_id)
        .with_context(|| format!("no BPF program with id {prog_id}"))?;
    let ids = prog
        .map_ids()
        .context("map ids of the program")?
        .context("the kernel does not tell a program's maps")?;
    for id in ids {
        let info = aya::maps::MapInfo::from_id(id)?;
        if info.name_as_str() != Some(lb_common::MAP_GLOBAL_STATS) {
            continue;
        }
        let map = PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(MapData::from_id(id)?))?;
        let mut out = BTreeMap::new();
        for i in 0..lb_common::global::COUNT {
            let vals = map.get(&i, 0)?;
            let name = lb_common::global::NAMES
                .get(i as usize)
                .map_or_else(|| format!("counter{i}"), |n| (*n).to_owned());
            out.insert(name, vals.iter().copied().collect());
        }
        return Ok(out);
    }
    bail!(
        "program {prog_id} has no {} map",
        lb_common::MAP_GLOBAL_STATS
    )
}

/// `after - before`, per counter and CPU.
pub fn stats_delta(
    before: &BTreeMap<String, Vec<u64>>,
    after: &BTreeMap<String, Vec<u64>>,
) -> BTreeMap<String, Vec<u64>> {
    after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k);
            let d = a
                .iter()
                .enumerate()
                .map(|(i, v)| v.saturating_sub(b.and_then(|b| b.get(i)).copied().unwrap_or(0)))
                .collect();
            (k.clone(), d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_per_cpu() {
        let before = BTreeMap::from([("forwarded".to_string(), vec![5, 10])]);
        let after = BTreeMap::from([
            ("forwarded".to_string(), vec![7, 30]),
            ("dropped".to_string(), vec![1, 0]),
        ]);
        let d = stats_delta(&before, &after);
        assert_eq!(d["forwarded"], vec![2, 20]);
        assert_eq!(d["dropped"], vec![1, 0]);
    }
}
