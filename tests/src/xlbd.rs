//! Running the real `xlb` daemon in a lab: a config with private pin, state and socket paths,
//! `nsenter` into the balancer's network namespace (not `ip netns exec`, whose private mount
//! namespace would take the bpffs pins down with the process), the CLI, kill -9 and restart.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use crate::{lab::Lab, netns::ChildGuard};

/// Remove bpffs pins and run directories a killed test run left behind.
pub fn cleanup_stale_pins(prefix: &str) {
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

/// xlb running in a lab's balancer namespace.
pub struct Xlbd {
    pub bin: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub socket: PathBuf,
    pub pin_path: PathBuf,
    pub run_dir: PathBuf,
    lb_ns: String,
    child: Option<ChildGuard>,
    launch: Launch,
}

/// How `xlb run` is started beyond the defaults: a wrapper command it runs under (e.g.
/// `setpriv --bounding-set=...`) and extra environment variables.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    pub wrapper: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Xlbd {
    /// The `[daemon]` lines that keep this instance's files private to `name`.
    pub fn daemon_paths(name: &str) -> String {
        format!(
            "pin_path = \"/sys/fs/bpf/{name}\"\nstate_file = \"/run/{name}/state.json\"\napi_socket = \"/run/{name}/xlb.sock\"\n"
        )
    }

    /// Write `config` (whose `[daemon]` table must include [`Xlbd::daemon_paths`]) and start
    /// xlb on it.
    pub fn start(lab: &Lab, name: &str, config: &str) -> Result<Xlbd> {
        Self::start_with(lab, name, config, Launch::default())
    }

    /// [`Xlbd::start`] under `launch`'s wrapper and with its environment.
    pub fn start_with(lab: &Lab, name: &str, config: &str, launch: Launch) -> Result<Xlbd> {
        Self::start_in(lab.lb_ns().name(), name, config, launch)
    }

    /// [`Xlbd::start_with`] in the network namespace named `netns` (e.g. one node of a
    /// fleet: each with its own `name`, so its pins, state and socket are its own).
    pub fn start_in(netns: &str, name: &str, config: &str, launch: Launch) -> Result<Xlbd> {
        let run_dir = PathBuf::from(format!("/run/{name}"));
        std::fs::create_dir_all(&run_dir)?;
        let cfg = run_dir.join("xlb.toml");
        std::fs::write(&cfg, config)?;
        let mut x = Xlbd {
            bin: crate::xlb_bin()?,
            config: cfg,
            log: run_dir.join("xlb.log"),
            socket: run_dir.join("xlb.sock"),
            pin_path: PathBuf::from(format!("/sys/fs/bpf/{name}")),
            run_dir,
            lb_ns: netns.to_string(),
            child: None,
            launch,
        };
        x.spawn()?;
        Ok(x)
    }

    fn spawn(&mut self) -> Result<()> {
        let before = std::fs::read_to_string(&self.log)
            .map(|s| s.len())
            .unwrap_or(0);
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.lb_ns))
            .args(&self.launch.wrapper)
            .arg(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("XLB_LOG", "info,xlb=debug")
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let mut child = ChildGuard::spawn(&mut cmd)?.with_grace(Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log
                .get(before..)
                .is_some_and(|l| l.contains("xlb is running"))
            {
                break;
            }
            if !child.is_running() || Instant::now() > deadline {
                bail!("xlb did not start:\n{}", crate::lab::tail(&log, 40));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Send `sig` to the daemon.
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        self.child.as_mut().context("not running")?.signal(sig)
    }

    /// Stop the daemon (SIGTERM, then SIGKILL after the grace time); its exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        self.child.take().context("not running")?.stop()
    }

    /// `kill -9` the daemon: nothing of it runs any more, its pins stay.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.signal(Signal::SIGKILL)?;
        child
            .wait_timeout(Duration::from_secs(5))?
            .context("xlb did not die")?;
        Ok(())
    }

    /// Start again on the same config (after `kill9` or a stop).
    pub fn restart(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.stop()?;
        }
        self.spawn()
    }

    /// Run `xlb ARGS... --socket S` (ARGS a client command).
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .context("running the xlb CLI")?;
        Ok(out)
    }

    /// Run the CLI and insist on success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
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

    /// The backends of `group` as `xlb backends GROUP --json` lists them, from a status
    /// taken while no change is being written to the maps (`maps_writing`: waited for, at
    /// most 10 s), so that the states read agree with what the data path does.
    pub fn backends(&self, group: &str) -> Result<Vec<serde_json::Value>> {
        let start = Instant::now();
        loop {
            let text = self.cli_ok(&["status", "--json"])?;
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {text}"))?;
            if v["maps_writing"] != true || start.elapsed() > Duration::from_secs(10) {
                let g = v["groups"]
                    .as_array()
                    .and_then(|gs| gs.iter().find(|g| g["name"] == group))
                    .with_context(|| format!("no group {group} in {text}"))?;
                return Ok(g["backends"].as_array().cloned().unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The backend of `group` at `addr` (e.g. "198.18.2.12"), if present.
    pub fn backend(&self, group: &str, addr: &str) -> Result<Option<serde_json::Value>> {
        Ok(self
            .backends(group)?
            .into_iter()
            .find(|b| b["address"].as_str() == Some(addr)))
    }

    /// Poll `f` every 50 ms until it returns Some, at most `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<Option<T>>,
    ) -> Result<(T, Duration)> {
        let start = Instant::now();
        loop {
            if let Some(v) = f()? {
                return Ok((v, start.elapsed()));
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    crate::lab::tail(&self.log_text(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Xlbd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.stop();
        }
        // Detach XDP and remove the pinned maps and the state file: inside the daemon's
        // namespace while it exists (a cleanup also withdraws announced routes there).
        let netns = PathBuf::from(format!("/run/netns/{}", self.lb_ns));
        let inside = netns.exists()
            && Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .arg(&self.bin)
                .args(["stop", "--cleanup", "--config"])
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !inside {
            let _ = Command::new(&self.bin)
                .args(["stop", "--cleanup", "--config"])
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.pin_path);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}
