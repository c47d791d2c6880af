//! Named network namespaces (`ip netns`) and guards for processes running in them.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd;

/// A named network namespace, created by [`Netns::new`] and deleted (`ip netns del`) when the
/// guard is dropped, also while unwinding from a panic. Processes still inside are killed first.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`. Fails if it already exists.
    pub fn new(name: impl Into<String>) -> Result<Netns> {
        let name = name.into();
        cmd::ip(["netns", "add", &name])?;
        Ok(Netns { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/NAME`, the bind mount that keeps the namespace alive.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// A `Command` that runs `program` inside the namespace (`ip netns exec NAME program`; `ip`
    /// execs the program, so the child's pid is the program's). Configure and spawn it yourself,
    /// or use [`Netns::exec`] / [`Netns::spawn`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `args[0] args[1..]` inside the namespace to completion; fails (with its stderr) unless
    /// it exits 0.
    pub fn exec<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args = args.into_iter();
        let Some(program) = args.next() else {
            bail!("Netns::exec: no program given");
        };
        let mut c = self.command(program);
        c.args(args);
        cmd::run(&mut c)
    }

    /// Starts `program args` inside the namespace (stdin null, stdout/stderr inherited, own
    /// process group so a terminal's Ctrl-C reaches only us and we stop it in order). The
    /// returned guard stops it on drop.
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<ChildGuard>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args).stdin(Stdio::null());
        ChildGuard::spawn(&mut c)
    }

    /// Runs `f` on a fresh thread that first joins this namespace (`setns(CLONE_NEWNET)`), and
    /// returns its result (a panic in `f` is resumed here). Sockets created inside belong to the
    /// namespace and keep working wherever they are used afterwards.
    ///
    /// Panics if the namespace cannot be entered.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(s, move || {
                    let ns = File::open(&path)
                        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
                    setns(&ns, CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns({}): {e}", path.display()));
                    drop(ns);
                    f()
                })
                .expect("cannot spawn a thread");
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Sets a sysctl of this namespace, e.g. `sysctl("net.ipv4.ip_forward", "1")` (net.* keys
    /// are per namespace and resolved for the writing thread's namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))
            .with_context(|| format!("{}: sysctl {key}={value}", self.name))
    }

    /// Pids of the processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<i32>> {
        pids_of(&self.name)
    }

    /// Names of all named namespaces (`ip netns list`).
    pub fn list() -> Result<Vec<String>> {
        let out = cmd::ip(["netns", "list"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect())
    }

    /// Kills what runs inside the named namespace and deletes it.
    pub fn delete(name: &str) -> Result<()> {
        for pid in pids_of(name).unwrap_or_default() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        cmd::ip(["netns", "del", name]).map(drop)
    }
}

fn pids_of(name: &str) -> Result<Vec<i32>> {
    let out = cmd::ip(["netns", "pids", name])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = Netns::delete(&self.name) {
            eprintln!("warning: cannot delete netns {}: {e:#}", self.name);
        }
    }
}

/// A child process that is stopped and reaped when the guard is dropped: SIGTERM, then SIGKILL
/// after a grace period (default 2 s) if it is still alive.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    what: String,
    grace: Duration,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` in its own process group and guards it.
    pub fn spawn(cmd: &mut Command) -> Result<ChildGuard> {
        let what = cmd::render(cmd);
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        Ok(ChildGuard {
            child,
            what,
            grace: Duration::from_secs(2),
            status: None,
        })
    }

    /// Sets how long a stop waits after SIGTERM before SIGKILL.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.what
    }

    /// Its exit status if it has exited (reaps it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends `sig` if it still runs.
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        if self.try_wait()?.is_none() {
            kill(Pid::from_raw(self.child.id() as i32), sig)?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, wait up to the grace period, then SIGKILL; returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        self.signal(Signal::SIGTERM)?;
        if let Some(st) = self.wait_timeout(self.grace)? {
            return Ok(st);
        }
        self.child.kill()?;
        let st = self.child.wait()?;
        self.status = Some(st);
        Ok(st)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: cannot stop `{}`: {e:#}", self.what);
        }
    }
}
