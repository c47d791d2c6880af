//! The hook runner: `/bin/sh -c COMMAND` for the scale-out, scale-in and metric hooks, in
//! its own process group and a defined environment, output bounded, killed as a group on
//! timeout; and the [`Backoff`] between retries of a failing hook. The only I/O of scaling.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Hooks
// ---------------------------------------------------------------------------------------------

/// The most of a hook's stdout (the first bytes) and stderr (the last bytes) that is kept.
pub const HOOK_OUTPUT_LIMIT: usize = 64 * 1024;

/// After the shell exits, how long its pipes are still read (a background process it left
/// may hold them open; it should redirect its output).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// How much of stderr a [`HookError::Failed`] carries.
const STDERR_TAIL: usize = 2048;

/// What a hook that exited 0 printed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HookOutput {
    /// Stdout's lines (first [`HOOK_OUTPUT_LIMIT`] bytes, lossy UTF-8, without `\r\n`/`\n`).
    pub lines: Vec<String>,
    /// Stderr (last [`HOOK_OUTPUT_LIMIT`] bytes, lossy UTF-8).
    pub stderr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// `/bin/sh` could not be started (or waited for).
    #[error("could not run the hook: {0}")]
    Spawn(String),
    /// Still running after the timeout: its whole process group was killed.
    #[error("the hook did not finish within {} and was killed", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// Exited non-zero (`code`), or was killed by a signal (`code: None`).
    #[error("{}", failed_message(.code, .stderr_tail))]
    Failed {
        code: Option<i32>,
        /// The end of its stderr, trimmed.
        stderr_tail: String,
    },
}

fn failed_message(code: &Option<i32>, stderr_tail: &str) -> String {
    let mut m = match code {
        Some(c) => format!("the hook exited with code {c}"),
        None => "the hook was killed by a signal".to_string(),
    };
    if !stderr_tail.is_empty() {
        m += ": ";
        m += stderr_tail;
    }
    m
}

/// Kills the hook's process group when dropped while armed (the caller's future was dropped
/// or the hook timed out).
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Copy)]
enum Keep {
    Head,
    Tail,
}

async fn read_bounded(
    mut r: impl tokio::io::AsyncRead + Unpin,
    buf: Arc<Mutex<(Vec<u8>, bool)>>,
    keep: Keep,
) {
    use tokio::io::AsyncReadExt;
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut guard = buf.lock().unwrap_or_else(|e| e.into_inner());
        let (b, truncated) = &mut *guard;
        match keep {
            Keep::Head => {
                let room = HOOK_OUTPUT_LIMIT.saturating_sub(b.len());
                if n > room {
                    *truncated = true;
                }
                b.extend_from_slice(&chunk[..n.min(room)]);
            }
            Keep::Tail => {
                b.extend_from_slice(&chunk[..n]);
                if b.len() > HOOK_OUTPUT_LIMIT {
                    let cut = b.len() - HOOK_OUTPUT_LIMIT;
                    b.drain(..cut);
                    *truncated = true;
                }
            }
        }
    }
}

fn take(buf: &Mutex<(Vec<u8>, bool)>) -> (Vec<u8>, bool) {
    std::mem::take(&mut *buf.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Variables a hook gets from the daemon's environment (besides `XLB_*`); nothing else of it.
pub const HOOK_ENV_PASSED: [&str; 5] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

/// `PATH` for a hook when the daemon has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A hook's whole environment: from `daemon_env`, only [`HOOK_ENV_PASSED`] and `XLB_*`
/// variables (`PATH` defaulting to [`DEFAULT_PATH`]); then `env`, the hook's own `XLB_*`
/// values, which win.
pub fn hook_env(
    daemon_env: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    env: &[(&str, String)],
) -> BTreeMap<std::ffi::OsString, std::ffi::OsString> {
    let mut out: BTreeMap<std::ffi::OsString, std::ffi::OsString> = daemon_env
        .into_iter()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            HOOK_ENV_PASSED.contains(&k.as_ref()) || k.starts_with("XLB_")
        })
        .collect();
    out.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    for (k, v) in env {
        out.insert(k.into(), v.into());
    }
    out
}

/// Runs `/bin/sh -c COMMAND` in the environment [`hook_env`] makes of this process's and
/// `env` (not this process's whole environment), stdin
/// `/dev/null`, stdout and stderr captured (at most [`HOOK_OUTPUT_LIMIT`] each: stdout's
/// start, stderr's end), in a process group of its own. Async (tokio::process): never blocks
/// the runtime thread.
///
/// - Still running after `timeout`: SIGKILL to the whole process group (children it started
///   included), then [`HookError::Timeout`]. Dropping the future before it finishes kills
///   the group too.
/// - Exit non-zero or by signal: [`HookError::Failed`] with the end of stderr.
/// - `/bin/sh` cannot be started: [`HookError::Spawn`].
///
/// Processes the hook leaves running in the background after the shell exits are not
/// killed; its pipes are read for at most 500 ms more after the shell exits, then closed.
/// A process that leaves the hook's process group (`setsid`, `setpgid`) escapes the kill.
pub async fn run_hook(
    command: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<HookOutput, HookError> {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd.env_clear().envs(hook_env(std::env::vars_os(), env));
    let mut child = cmd.spawn().map_err(|e| HookError::Spawn(e.to_string()))?;
    // Declared after `child`, so dropped before it: the group is killed before the shell can
    // be reaped, while its pid (= the group id) cannot have been reused.
    let mut group = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));

    let out_buf = Arc::new(Mutex::new((Vec::new(), false)));
    let err_buf = Arc::new(Mutex::new((Vec::new(), false)));
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(read_bounded(
            stdout,
            out_buf.clone(),
            Keep::Head,
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(read_bounded(
            stderr,
            err_buf.clone(),
            Keep::Tail,
        )));
    }
    let abort_readers = |readers: &[tokio::task::JoinHandle<()>]| {
        for r in readers {
            r.abort();
        }
    };

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            abort_readers(&readers);
            return Err(HookError::Timeout(timeout));
        }
        Ok(Err(e)) => {
            group.kill();
            abort_readers(&readers);
            return Err(HookError::Spawn(format!("waiting for the hook: {e}")));
        }
        Ok(Ok(status)) => status,
    };
    group.disarm();
    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
        for r in &mut readers {
            let _ = r.await;
        }
    })
    .await;
    abort_readers(&readers);

    let (out, out_truncated) = take(&out_buf);
    let (err, _) = take(&err_buf);
    let stderr = String::from_utf8_lossy(&err).into_owned();
    if !status.success() {
        let trimmed = stderr.trim();
        let start = trimmed.len().saturating_sub(STDERR_TAIL);
        let start = (start..=trimmed.len())
            .find(|&i| trimmed.is_char_boundary(i))
            .unwrap_or(trimmed.len());
        return Err(HookError::Failed {
            code: status.code(),
            stderr_tail: trimmed[start..].to_string(),
        });
    }
    let text = String::from_utf8_lossy(&out);
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    if out_truncated {
        // The last line was cut: it is not one the hook printed.
        if !text.ends_with('\n') {
            lines.pop();
        }
        tracing::warn!(
            "hook printed more than {HOOK_OUTPUT_LIMIT} bytes; the rest was discarded: {command}"
        );
    }
    Ok(HookOutput { lines, stderr })
}

/// Retry delays for a failing hook: 1 s, 2 s, 4 s, … capped at 60 s; [`Backoff::reset`] after
/// a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// 1 s doubling up to 60 s.
    pub fn new() -> Self {
        Self::with_limits(Duration::from_secs(1), Duration::from_secs(60))
    }

    pub fn with_limits(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial.min(max),
        }
    }

    /// The delay before the next retry; doubles the one after (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = d.saturating_mul(2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::parse_backends;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new();
        let got: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.next_delay(), S);
        assert_eq!(b.next_delay(), 2 * S);
    }

    // --- run_hook ---------------------------------------------------------------------------

    fn alive(pid: i32) -> bool {
        // A zombie (killed, not yet reaped by its new parent) is not alive.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn hook_prints_addresses() {
        let out = run_hook(
            "echo 10.0.0.5; echo '[2001:db8::1]:8080'; echo oops; echo warn >&2",
            &[],
            5 * S,
        )
        .await
        .unwrap();
        assert_eq!(out.lines, vec!["10.0.0.5", "[2001:db8::1]:8080", "oops"]);
        assert_eq!(out.stderr, "warn\n");
        let (ok, bad) = parse_backends(&out.lines);
        assert_eq!(ok.len(), 2);
        assert_eq!(bad, vec!["oops"]);
    }

    #[tokio::test]
    async fn hook_sees_env_and_parent_env() {
        let out = run_hook(
            "echo \"$XLB_TARGET_GROUP|$XLB_COUNT|$XLB_REASON\"; test -n \"$PATH\" && echo path",
            &[
                ("XLB_TARGET_GROUP", "web".to_string()),
                ("XLB_COUNT", "2".to_string()),
                (
                    "XLB_REASON",
                    "step backend_cpu > 0.7 for 5m → +1".to_string(),
                ),
            ],
            5 * S,
        )
        .await
        .unwrap();
        assert_eq!(
            out.lines,
            vec!["web|2|step backend_cpu > 0.7 for 5m → +1", "path"]
        );
    }

    #[test]
    fn hook_env_is_defined_not_inherited() {
        let daemon = [
            ("PATH", "/opt/bin"),
            ("HOME", "/root"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("XLB_LOG", "debug"),
            ("XLB_HOOK_REGION", "eu"),
            ("XLB_TARGET_GROUP", "from-the-daemon"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let env = hook_env(daemon, &[("XLB_TARGET_GROUP", "web".to_string())]);
        let get = |k: &str| {
            env.get(std::ffi::OsStr::new(k))
                .map(|v| v.to_str().unwrap())
        };
        assert_eq!(get("PATH"), Some("/opt/bin"));
        assert_eq!(get("HOME"), Some("/root"));
        assert_eq!(get("XLB_HOOK_REGION"), Some("eu"));
        assert_eq!(
            get("XLB_TARGET_GROUP"),
            Some("web"),
            "the hook's own value wins"
        );
        assert_eq!(
            get("AWS_SECRET_ACCESS_KEY"),
            None,
            "nothing else of the daemon's"
        );
        let none = hook_env(std::iter::empty(), &[]);
        assert_eq!(
            none.get(std::ffi::OsStr::new("PATH")).unwrap(),
            DEFAULT_PATH,
            "PATH has a default"
        );
    }

    #[tokio::test]
    async fn hook_gets_only_its_environment() {
        // Whatever this test process has (cargo sets many CARGO_* variables), the hook sees
        // only the defined set (and what /bin/sh itself sets).
        let out = run_hook("env", &[("XLB_COUNT", "1".to_string())], 5 * S)
            .await
            .unwrap();
        let names: Vec<&str> = out
            .lines
            .iter()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        assert!(
            names.contains(&"XLB_COUNT") && names.contains(&"PATH"),
            "{names:?}"
        );
        let stray: Vec<&&str> = names
            .iter()
            .filter(|k| {
                !(HOOK_ENV_PASSED.contains(k)
                    || k.starts_with("XLB_")
                    || ["PWD", "OLDPWD", "SHLVL", "_"].contains(k))
            })
            .collect();
        assert!(
            stray.is_empty(),
            "the daemon's environment leaked: {stray:?}"
        );
    }

    #[tokio::test]
    async fn hook_failure_carries_code_and_stderr() {
        let e = run_hook(
            "echo partial; echo 'no capacity left' >&2; exit 3",
            &[],
            5 * S,
        )
        .await
        .unwrap_err();
        assert_eq!(
            e,
            HookError::Failed {
                code: Some(3),
                stderr_tail: "no capacity left".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "the hook exited with code 3: no capacity left"
        );
        let e = run_hook("kill -9 $$", &[], 5 * S).await.unwrap_err();
        assert!(matches!(e, HookError::Failed { code: None, .. }), "{e:?}");
    }

    #[tokio::test]
    async fn hook_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pids");
        let script = format!(
            "sleep 30 & echo $! > {p}.tmp; echo $$ >> {p}.tmp; mv {p}.tmp {p}; sleep 30",
            p = pidfile.display()
        );
        let start = std::time::Instant::now();
        let e = run_hook(&script, &[], Duration::from_millis(500))
            .await
            .unwrap_err();
        assert_eq!(e, HookError::Timeout(Duration::from_millis(500)));
        assert!(start.elapsed() < 5 * S, "{:?}", start.elapsed());
        assert!(e.to_string().contains("500ms"), "{e}");
        let pids: Vec<i32> = std::fs::read_to_string(&pidfile)
            .expect("the script wrote its pids")
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2);
        // SIGKILL is immediate, reaping by init may take a moment.
        let deadline = std::time::Instant::now() + 5 * S;
        while pids.iter().any(|&p| alive(p)) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for p in pids {
            assert!(!alive(p), "pid {p} survived the timeout");
        }
    }

    #[tokio::test]
    async fn hook_sleep_times_out() {
        let start = std::time::Instant::now();
        let e = run_hook("sleep 10", &[], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(e, HookError::Timeout(Duration::from_millis(200)));
        assert!(start.elapsed() < 3 * S);
    }

    #[tokio::test]
    async fn hook_spawn_failure() {
        // A NUL byte cannot be passed to exec.
        let e = run_hook("echo\0x", &[], S).await.unwrap_err();
        assert!(matches!(e, HookError::Spawn(_)), "{e:?}");
    }

    #[tokio::test]
    async fn hook_output_is_bounded() {
        let out = run_hook(
            "i=0; while [ $i -lt 20000 ]; do echo 10.0.0.1; i=$((i+1)); done; \
             head -c 200000 /dev/zero | tr '\\0' e >&2",
            &[],
            20 * S,
        )
        .await
        .unwrap();
        // 9 bytes a line: only whole lines within 64 KiB.
        assert_eq!(out.lines.len(), HOOK_OUTPUT_LIMIT / 9);
        assert!(out.lines.iter().all(|l| l == "10.0.0.1"));
        assert_eq!(out.stderr.len(), HOOK_OUTPUT_LIMIT);
    }

    #[tokio::test]
    async fn hook_background_child_does_not_hold_it() {
        // A backgrounded server that keeps stdout open: the hook returns shortly after the
        // shell exits, with what was printed, and the server is left running.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "sleep 30 & echo $! > {p}; echo 10.0.0.9",
            p = pidfile.display()
        );
        let start = std::time::Instant::now();
        let out = run_hook(&script, &[], 10 * S).await.unwrap();
        assert!(start.elapsed() < 3 * S);
        assert_eq!(out.lines, vec!["10.0.0.9"]);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(pid));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
