//! Running xlb as a service: `xlb run` under exactly the capabilities the systemd unit grants
//! (`setpriv --bounding-set`, as `CapabilityBoundingSet=` does for a root service) forwards
//! traffic, tells a (fake) service manager READY=1 and RELOADING=1 … READY=1 around a SIGHUP
//! reload, writes JSON logs when asked; and with one of them dropped it refuses to start,
//! naming the missing one.
//!
//! Needs root (skipped with a message otherwise).
use std::{
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixDatagram,
    time::Duration,
};

use nix::sys::signal::Signal;
use xlb_lab::{
    client,
    lab::{Lab, VIP_V4},
    xlbd::{cleanup_stale_pins, Launch, Xlbd},
};

/// The capabilities of contrib/systemd/xlb.service's CapabilityBoundingSet=.
const CAPS: [&str; 3] = ["bpf", "net_admin", "perfmon"];

fn skip() -> bool {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return true;
    }
    // The daemon below runs without CAP_SYS_ADMIN, so it cannot mount tracefs itself (a
    // minimal host may not have it mounted); the host's service manager would have.
    xlb::daemon::ensure_tracefs().expect("tracefs");
    false
}

fn config(name: &str) -> String {
    format!(
        r#"[daemon]
interfaces = ["veth-client", "veth-backends"]
conntrack_size = 4096
{paths}
[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "web-servers"

[[target_group]]
name = "web-servers"
port = 8080
backends = ["198.18.2.11", "198.18.2.12"]
"#,
        paths = Xlbd::daemon_paths(name)
    )
}

/// `setpriv` keeping only `caps` in the bounding set (and no inheritable ones): a root
/// process it starts has exactly those.
fn setpriv(caps: &[&str]) -> Vec<String> {
    let keep: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", keep.join(",")),
        "--inh-caps=-all".into(),
    ]
}

/// The contents of the next datagram on the fake NOTIFY_SOCKET.
fn next_notification(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn runs_with_only_its_capabilities() {
    if skip() {
        return;
    }
    let name = "xlbt-caps";
    cleanup_stale_pins(name);
    let lab = Lab::new(name, 2).expect("lab");
    let _servers = lab
        .start_backend_servers(&xlb_lab::lab_bin().unwrap(), &[8080], &[], &[])
        .expect("servers");
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let launch = Launch {
        wrapper: setpriv(&CAPS),
        env: vec![
            (
                "NOTIFY_SOCKET".into(),
                notify_path.to_string_lossy().into_owned(),
            ),
            ("XLB_LOG_FORMAT".into(), "json".into()),
        ],
    };
    let mut xlb = Xlbd::start_with(&lab, name, &config(name), launch).expect("xlb starts");

    // The daemon really runs with only those (CapEff of /proc/PID/status; nsenter and
    // setpriv exec it, so the child is xlb itself).
    let pid = xlb.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39.
    assert_eq!(cap_eff, 1 << 12 | 1 << 38 | 1 << 39, "{cap_eff:x}");
    let ready = next_notification(&notify);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains("STATUS=serving 1 services, 2 backends"),
        "{ready:?}"
    );

    // It forwards: connections through the VIP reach both backends.
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    let seen: std::collections::BTreeSet<String> = lab.client_ns().enter(|| {
        (0..40)
            .map(|_| client::http_get(vip, Duration::from_secs(3)).expect("answered"))
            .collect()
    });
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["b1", "b2"],
        "both backends answer"
    );

    // SIGHUP (ExecReload=) reloads between RELOADING=1 and READY=1.
    xlb.signal(Signal::SIGHUP).unwrap();
    let reloading = next_notification(&notify);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    let ready = next_notification(&notify);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    let events = xlb.cli_ok(&["events", "--json"]).unwrap();
    assert!(events.contains("SIGHUP"), "the reload happened: {events}");

    // JSON logs: every line an object; the running line with its fields.
    let log = xlb.log_text();
    let mut running = false;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        // Nothing degraded quietly for want of a capability (e.g. the xmit tracepoint).
        assert!(
            v["level"] != "WARN" && v["level"] != "ERROR",
            "{line}\n{log}"
        );
        if v["fields"]["message"] == "xlb is running" {
            assert_eq!(v["fields"]["services"], 1, "{v}");
            running = true;
        }
    }
    assert!(running, "{log}");

    let status = xlb.stop().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(next_notification(&notify), "STOPPING=1\n");
}

#[test]
fn names_the_missing_capability() {
    if skip() {
        return;
    }
    let name = "xlbt-capx";
    cleanup_stale_pins(name);
    let lab = Lab::new(name, 1).expect("lab");
    for dropped in CAPS {
        let keep: Vec<&str> = CAPS.into_iter().filter(|c| *c != dropped).collect();
        let launch = Launch {
            wrapper: setpriv(&keep),
            env: vec![],
        };
        let err = match Xlbd::start_with(&lab, name, &config(name), launch) {
            Ok(_) => panic!("xlb started without CAP_{}", dropped.to_uppercase()),
            Err(e) => format!("{e:#}"),
        };
        let wanted = format!(
            "xlb run lacks CAP_{}: it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON",
            dropped.to_uppercase()
        );
        assert!(err.contains(&wanted), "{err}");
        // Refused before touching anything: nothing pinned.
        assert!(
            !std::path::Path::new(&format!("/sys/fs/bpf/{name}/MAGLEV")).exists(),
            "{err}"
        );
    }
}

/// The unit file grants exactly the capabilities tested above, and systemd accepts it
/// (`systemd-analyze verify`, when installed).
#[test]
fn unit_file() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contrib/systemd/xlb.service"
    );
    let unit = std::fs::read_to_string(path).unwrap();
    let line = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"))
            .to_string()
    };
    let granted: Vec<String> = line("CapabilityBoundingSet=")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    assert_eq!(granted, CAPS);
    assert_eq!(line("Type="), "notify");
    assert_eq!(line("ExecReload="), "/bin/kill -HUP $MAINPID");
    assert_eq!(line("RuntimeDirectoryPreserve="), "yes");

    let Ok(bin) = xlb_lab::xlb_bin() else {
        eprintln!("skipped verify: no xlb binary");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("xlb.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/xlb", &bin.to_string_lossy()),
    )
    .unwrap();
    match std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
    {
        Err(_) => eprintln!("skipped verify: no systemd-analyze"),
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success() && text.trim().is_empty(), "{text}");
        }
    }
}
