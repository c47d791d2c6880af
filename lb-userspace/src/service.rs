//! Running under a service manager: the capabilities `xlb run` needs (checked at start, with
//! an error naming what is missing), systemd readiness notification (`sd_notify`: READY=1 once
//! running, RELOADING=1 … READY=1 around reloads, STOPPING=1), and the log format.
use std::io;

use caps::{CapSet, Capability, CapsHashSet};
use tracing::debug;

/// What `xlb run` needs, measured by running it under `setpriv --bounding-set` with each
/// dropped in turn (before this check existed; `tests/tests/service.rs` runs it with exactly
/// these):
///
/// - `CAP_BPF`: create maps, load programs (without it: `failed to create map ...: Operation
///   not permitted`);
/// - `CAP_PERFMON`: the verifier refuses the XDP program's pointer arithmetic without it
///   (`Permission denied` after the verifier log), and the `xdp:xdp_devmap_xmit` tracepoint
///   needs it;
/// - `CAP_NET_ADMIN`: attach XDP to interfaces, the `TX_PORTS` devmap, netlink.
///
/// Adopting pinned maps and links (restart) needs nothing more. `CAP_SYS_ADMIN` implies
/// `CAP_BPF` and `CAP_PERFMON` (as the kernel's `bpf_capable()` and `perfmon_capable()` say).
pub const REQUIRED: [Capability; 3] = [
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_PERFMON,
];

/// Why `xlb run` cannot start with the capabilities it has.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error(
        "xlb run lacks {}: it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON{}. Run it as root, \
         or grant them (systemd: CapabilityBoundingSet= and AmbientCapabilities=, as in \
         contrib/systemd/xlb.service)",
        names(.missing),
        if *.mount { " (and CAP_SYS_ADMIN to mount bpffs, which is not mounted at /sys/fs/bpf)" } else { "" }
    )]
    Missing {
        missing: Vec<Capability>,
        mount: bool,
    },
    #[error("reading the effective capabilities: {0}")]
    Read(String),
}

fn names(caps: &[Capability]) -> String {
    caps.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The capabilities missing from `effective` for `xlb run`; `mount_bpffs` when it must mount
/// bpffs itself (which needs `CAP_SYS_ADMIN`).
pub fn missing(effective: &CapsHashSet, mount_bpffs: bool) -> Vec<Capability> {
    let has = |c: Capability| effective.contains(&c);
    let sys_admin = has(Capability::CAP_SYS_ADMIN);
    let mut out: Vec<Capability> = REQUIRED
        .into_iter()
        .filter(|&c| {
            !(has(c) || (sys_admin && matches!(c, Capability::CAP_BPF | Capability::CAP_PERFMON)))
        })
        .collect();
    if mount_bpffs && !sys_admin {
        out.push(Capability::CAP_SYS_ADMIN);
    }
    out
}

/// Check this process's effective capabilities for `xlb run`.
pub fn check_capabilities(mount_bpffs: bool) -> Result<(), CapsError> {
    let effective =
        caps::read(None, CapSet::Effective).map_err(|e| CapsError::Read(e.to_string()))?;
    let missing = missing(&effective, mount_bpffs);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CapsError::Missing {
            missing,
            mount: mount_bpffs,
        })
    }
}

/// Send `states` to the service manager when `NOTIFY_SOCKET` is set (nothing otherwise). A
/// failure is logged, never fatal.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// READY=1 with a status line: the daemon serves.
pub fn notify_ready(status: &str) {
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// RELOADING=1 (with MONOTONIC_USEC, which systemd 253 and newer require with it).
pub fn notify_reloading() {
    let mut states = vec![sd_notify::NotifyState::Reloading];
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}

/// STOPPING=1.
pub fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log collectors
    Json,
}

/// The subscriber every command logs through: filter from `XLB_LOG` (`info` when unset or
/// invalid), lines to `writer` in `format`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(b.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(b.json().with_current_span(false).finish()),
    }
}

/// Install the global subscriber: to stderr, colours when it is a terminal (text only).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("XLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = io::IsTerminal::is_terminal(&io::stderr());
    let _ = tracing::subscriber::set_global_default(subscriber(format, filter, io::stderr, ansi));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        os::unix::net::UnixDatagram,
        sync::{Arc, Mutex},
        time::Duration,
    };

    fn set(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    #[test]
    fn required_capabilities() {
        use Capability::*;
        assert!(missing(&set(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]), false).is_empty());
        assert_eq!(
            missing(&set(&[CAP_BPF, CAP_PERFMON]), false),
            [CAP_NET_ADMIN]
        );
        assert_eq!(
            missing(&set(&[CAP_BPF, CAP_NET_ADMIN]), false),
            [CAP_PERFMON]
        );
        assert_eq!(
            missing(&set(&[]), false),
            [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]
        );
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (older kernels have neither).
        assert!(missing(&set(&[CAP_SYS_ADMIN, CAP_NET_ADMIN]), true).is_empty());
        // Mounting bpffs needs CAP_SYS_ADMIN.
        assert_eq!(
            missing(&set(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]), true),
            [CAP_SYS_ADMIN]
        );
        let e = CapsError::Missing {
            missing: vec![CAP_NET_ADMIN],
            mount: false,
        }
        .to_string();
        assert!(
            e.starts_with(
                "xlb run lacks CAP_NET_ADMIN: it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON."
            ),
            "{e}"
        );
    }

    #[test]
    fn root_has_them() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        check_capabilities(false).expect("root has every capability");
    }

    /// A fake service manager: a datagram socket NOTIFY_SOCKET names. (The only test in this
    /// crate that sets NOTIFY_SOCKET.)
    #[test]
    fn notifications_reach_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        let mut buf = [0u8; 512];
        let mut recv = || {
            let n = sock.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        notify_ready("serving 2 services");
        assert_eq!(recv(), "READY=1\nSTATUS=serving 2 services\n");
        notify_reloading();
        let r = recv();
        assert!(r.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{r}");
        notify_stopping();
        assert_eq!(recv(), "STOPPING=1\n");
        std::env::remove_var("NOTIFY_SOCKET");
        // Without NOTIFY_SOCKET nothing is sent and nothing fails.
        notify_ready("x");
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_logs() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = subscriber(
            LogFormat::Json,
            tracing_subscriber::EnvFilter::new("info"),
            move || w.clone(),
            false,
        );
        tracing::subscriber::with_default(sub, || {
            tracing::info!(services = 2, config = "/etc/xlb/xlb.toml", "xlb is running");
            tracing::debug!("filtered out");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["fields"]["message"], "xlb is running");
        assert_eq!(v["fields"]["services"], 2);
        assert_eq!(v["fields"]["config"], "/etc/xlb/xlb.toml");
        assert!(v["timestamp"].is_string(), "{v}");
        assert!(v["target"].as_str().unwrap().starts_with("xlb"), "{v}");

        let buf = Buf::default();
        let w = buf.clone();
        let sub = subscriber(
            LogFormat::Text,
            tracing_subscriber::EnvFilter::new("info"),
            move || w.clone(),
            false,
        );
        tracing::subscriber::with_default(sub, || tracing::info!(n = 1, "plain"));
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains(" INFO ") && text.contains("plain n=1"),
            "{text}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
    }
}
