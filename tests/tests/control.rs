//! The control plane end to end, in namespaces with real servers and real clients: health
//! checks, adding and draining backends under load, reload, and kill -9 with restart.
//!
//! Needs root (skipped with a message otherwise).
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xlb_lab::{
    client,
    lab::{Lab, VIP_V4},
    netns::ChildGuard,
    xlbd::{cleanup_stale_pins, Xlbd},
};

const T: Duration = Duration::from_secs(3);
/// Health check interval and timeout: short, yet long enough for a backend busy echoing 50
/// streams on a 2-CPU machine to answer in time.
const INTERVAL_MS: u64 = 300;
const UNHEALTHY: u64 = 3;
const HEALTHY: u64 = 2;

fn skip() -> bool {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return true;
    }
    false
}

fn config(name: &str, backends: &[&str]) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[daemon]
interfaces = ["veth-client", "veth-backends"]
conntrack_size = 65536
{paths}
[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "web-servers"

[[service]]
name = "echo"
vip = "198.18.100.1"
port = 7000
protocol = "tcp"
target_group = "echo-servers"

[[target_group]]
name = "web-servers"
port = 8080
deregistration_delay = "20s"
backends = [{list}]

[target_group.health_check]
protocol = "http"
path = "/health"
interval = "{INTERVAL_MS}ms"
timeout = "{INTERVAL_MS}ms"
healthy_threshold = {HEALTHY}
unhealthy_threshold = {UNHEALTHY}

[[target_group]]
name = "echo-servers"
port = 9000
deregistration_delay = "20s"
backends = [{list}]

[target_group.health_check]
protocol = "tcp"
interval = "{INTERVAL_MS}ms"
timeout = "{INTERVAL_MS}ms"
healthy_threshold = {HEALTHY}
unhealthy_threshold = {UNHEALTHY}
"#,
        paths = Xlbd::daemon_paths(name)
    )
}

struct Setup {
    lab: Lab,
    servers: Vec<ChildGuard>,
    xlb: Xlbd,
}

fn setup(name: &str, n_backends: usize, in_config: usize) -> Result<Setup> {
    cleanup_stale_pins(name);
    let lab = Lab::new(name, n_backends)?;
    let servers = lab.start_backend_servers(&xlb_lab::lab_bin()?, &[8080], &[], &[9000])?;
    let addrs: Vec<String> = (1..=in_config)
        .map(|i| format!("198.18.2.{}", 10 + i))
        .collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let xlb = Xlbd::start(&lab, name, &config(name, &refs))?;
    // Every configured backend passes its first checks.
    for a in &addrs {
        xlb.wait_for(&format!("{a} healthy"), Duration::from_secs(10), || {
            Ok(xlb
                .backend("web-servers", a)?
                .filter(|b| b["state"] == "healthy")
                .map(|_| ()))
        })?;
    }
    Ok(Setup { lab, servers, xlb })
}

fn web() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), 80)
}

fn echo() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), 7000)
}

/// `n` new connections to the web VIP from the client: backend name → count, and failures.
fn connections(lab: &Lab, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    lab.client_ns().enter(|| {
        let mut seen = BTreeMap::new();
        let mut failed = Vec::new();
        for _ in 0..n {
            match client::http_get(web(), T) {
                Ok(name) => *seen.entry(name).or_insert(0) += 1,
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        (seen, failed)
    })
}

fn start_server(lab: &Lab, i: usize) -> Result<ChildGuard> {
    let ns = lab.backend_ns(i);
    let g = ns.spawn(
        xlb_lab::lab_bin()?,
        [
            "serve",
            "--name",
            &format!("b{i}"),
            "--http",
            "8080",
            "--echo",
            "9000",
        ],
    )?;
    let addr: SocketAddr = format!("198.18.2.{}:8080", 10 + i).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns
        .enter(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("server b{i} did not come up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(g)
}

#[test]
fn stopped_backend_leaves_and_comes_back() {
    if skip() {
        return;
    }
    let mut s = setup("xlbt-hc", 3, 3).expect("setup");
    let (before, failed) = connections(&s.lab, 60);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        before.contains_key("b2"),
        "b2 serves before it stops: {before:?}"
    );

    // Stop b2's servers.
    let stopped = Instant::now();
    s.servers[1].stop().unwrap();
    // interval × unhealthy_threshold + one interval, plus 500 ms for the poll and the writes.
    let bound = Duration::from_millis(INTERVAL_MS * (UNHEALTHY + 1) + 500);
    let (reason, took) = s
        .xlb
        .wait_for("b2 unhealthy", Duration::from_secs(10), || {
            Ok(s.xlb
                .backend("web-servers", "198.18.2.12")?
                .filter(|b| b["state"] == "unhealthy")
                .map(|b| b["reason"].as_str().unwrap_or_default().to_string()))
        })
        .unwrap();
    eprintln!("b2 marked unhealthy {took:?} after its server stopped ({reason})");
    assert!(
        reason.contains("refused"),
        "reason names the failure: {reason}"
    );
    std::thread::sleep(bound.saturating_sub(stopped.elapsed()));
    let (after, failed) = connections(&s.lab, 100);
    assert!(
        failed.is_empty(),
        "no new connection fails once b2 is out: {failed:?}"
    );
    assert!(
        !after.contains_key("b2"),
        "b2 gets no new connections: {after:?}"
    );
    assert_eq!(after.values().sum::<usize>(), 100);

    // It comes back after healthy_threshold checks.
    s.servers[1] = start_server(&s.lab, 2).unwrap();
    let (_, took) = s
        .xlb
        .wait_for("b2 healthy again", Duration::from_secs(10), || {
            Ok(s.xlb
                .backend("web-servers", "198.18.2.12")?
                .filter(|b| b["state"] == "healthy")
                .map(|_| ()))
        })
        .unwrap();
    eprintln!("b2 healthy again {took:?} after its server restarted");
    let (back, failed) = connections(&s.lab, 100);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        back.contains_key("b2"),
        "b2 receives connections again: {back:?}"
    );
}

#[test]
fn http_check_sees_503_while_port_accepts() {
    if skip() {
        return;
    }
    let s = setup("xlbt-503", 3, 3).expect("setup");
    let b1: SocketAddr = "198.18.2.11:8080".parse().unwrap();
    let r = s
        .lab
        .client_ns()
        .enter(|| client::http_post(b1, "/health/fail", T))
        .unwrap();
    assert_eq!(r.status, 200);
    let (reason, _) = s
        .xlb
        .wait_for("b1 unhealthy", Duration::from_secs(10), || {
            Ok(s.xlb
                .backend("web-servers", "198.18.2.11")?
                .filter(|b| b["state"] == "unhealthy")
                .map(|b| b["reason"].as_str().unwrap_or_default().to_string()))
        })
        .unwrap();
    assert_eq!(reason, "HTTP 503");
    // The backend list shows the health state at once; the maps follow when the writer has
    // written them (`backends_in_table` counts what the maps hold): new connections are
    // checked after that.
    wait_in_table(&s.xlb, "web", 2);
    // The port still accepts connections (only the HTTP check can tell).
    s.lab
        .client_ns()
        .enter(|| TcpStream::connect_timeout(&b1, T))
        .expect("b1's TCP port still accepts");
    let tcp_group = s
        .xlb
        .backend("echo-servers", "198.18.2.11")
        .unwrap()
        .unwrap();
    assert_eq!(
        tcp_group["state"], "healthy",
        "the TCP-checked group still has b1"
    );
    let (seen, failed) = connections(&s.lab, 60);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        !seen.contains_key("b1"),
        "no new connection reaches b1: {seen:?}"
    );

    // And back.
    s.lab
        .client_ns()
        .enter(|| client::http_post(b1, "/health/ok", T))
        .unwrap();
    s.xlb
        .wait_for("b1 healthy", Duration::from_secs(10), || {
            Ok(s.xlb
                .backend("web-servers", "198.18.2.11")?
                .filter(|b| b["state"] == "healthy")
                .map(|_| ()))
        })
        .unwrap();
}

#[test]
fn adding_a_backend_under_load_breaks_nothing() {
    if skip() {
        return;
    }
    let s = setup("xlbt-add", 4, 3).expect("setup");
    assert!(s
        .xlb
        .backend("web-servers", "198.18.2.14")
        .unwrap()
        .is_none());

    // 50 long-lived connections stream data while the fourth backend joins.
    let results = std::thread::scope(|scope| {
        let streams = scope.spawn(|| {
            s.lab.client_ns().enter(|| {
                let handles: Vec<_> = (0..50)
                    .map(|_| {
                        std::thread::spawn(|| {
                            client::echo_stream(echo(), Duration::from_secs(5), 4096)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("stream thread"))
                    .collect::<Vec<_>>()
            })
        });
        std::thread::sleep(Duration::from_secs(1));
        let out = s
            .xlb
            .cli_ok(&["backend", "add", "web-servers", "198.18.2.14"])
            .unwrap();
        assert!(out.contains("198.18.2.14"), "{out}");
        s.xlb
            .cli_ok(&[
                "backend",
                "add",
                "echo-servers",
                "198.18.2.14:9000",
                "--weight",
                "1",
            ])
            .unwrap();
        // Until it passes its checks it gets nothing; then new connections reach it.
        s.xlb
            .wait_for("b4 healthy", Duration::from_secs(10), || {
                Ok(s.xlb
                    .backend("web-servers", "198.18.2.14")?
                    .filter(|b| b["state"] == "healthy")
                    .map(|_| ()))
            })
            .unwrap();
        let (seen, failed) = connections(&s.lab, 80);
        assert!(
            failed.is_empty(),
            "{failed:?}\n{}\n{}",
            s.xlb.cli_ok(&["status"]).unwrap_or_default(),
            xlb_lab::lab::tail(&s.xlb.log_text(), 30)
        );
        assert!(
            seen.contains_key("b4"),
            "new connections reach b4: {seen:?}"
        );
        streams.join().expect("streams")
    });
    let mut total = 0;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(bytes) => total += bytes,
            Err(e) => panic!("stream {i} broke: {e:#}"),
        }
    }
    assert!(total > 0);
    // The echo group's new backend took new flows too.
    let (seen, failed) = connections(&s.lab, 1);
    assert!(failed.is_empty(), "{failed:?} {seen:?}");
    // The echo group's member passes its own checks (on a busy machine a little after the
    // web group's: a bounded wait, not a snapshot).
    s.xlb
        .wait_for("echo b4 healthy", Duration::from_secs(10), || {
            Ok(s.xlb
                .backend("echo-servers", "198.18.2.14")?
                .filter(|b| b["state"] == "healthy")
                .map(|_| ()))
        })
        .unwrap();
}

/// One HTTP/1.1 keep-alive connection: returns the backend name of each request.
struct KeepAlive {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl KeepAlive {
    fn open() -> Result<KeepAlive> {
        let s = TcpStream::connect_timeout(&web(), T)?;
        s.set_read_timeout(Some(T))?;
        Ok(KeepAlive {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn get(&mut self) -> Result<String> {
        self.w
            .write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: keep-alive\r\n\r\n")?;
        let mut len = None;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("bad status line {line:?}");
        }
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            let l = line.trim();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = Some(v.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; len.context("no content-length")?];
        self.r.read_exact(&mut body)?;
        Ok(String::from_utf8(body)?.trim().to_string())
    }
}

#[test]
fn draining_backend_keeps_its_connection_then_leaves() {
    if skip() {
        return;
    }
    let s = setup("xlbt-drain", 3, 3).expect("setup");
    s.lab.client_ns().enter(|| {
        let mut conn = KeepAlive::open().unwrap();
        let name = conn.get().unwrap();
        let i: usize = name.trim_start_matches('b').parse().unwrap();
        let addr = format!("198.18.2.{}", 10 + i);
        let out = s
            .xlb
            .cli_ok(&["backend", "drain", "web-servers", &addr])
            .unwrap();
        assert!(out.contains("draining"), "{out}");
        let b = s.xlb.backend("web-servers", &addr).unwrap().unwrap();
        assert_eq!(b["state"], "draining");

        // The established connection keeps its backend...
        for _ in 0..15 {
            assert_eq!(
                conn.get().unwrap(),
                name,
                "the drained connection stays on {name}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // ...no new connection goes there...
        let mut seen = BTreeMap::new();
        for _ in 0..60 {
            *seen.entry(client::http_get(web(), T).unwrap()).or_insert(0) += 1;
        }
        assert!(
            !seen.contains_key(&name),
            "no new connection reaches {name}: {seen:?}"
        );
        // ...and while it is open the backend stays in the group.
        let b = s.xlb.backend("web-servers", &addr).unwrap();
        assert!(b.is_some(), "{addr} stays while its connection is open");

        // Once the connection ends, the backend leaves, long before the 20 s delay.
        drop(conn);
        let closed = Instant::now();
        s.xlb
            .wait_for(&format!("{addr} to leave"), Duration::from_secs(12), || {
                Ok(s.xlb.backend("web-servers", &addr)?.is_none().then_some(()))
            })
            .unwrap();
        eprintln!(
            "{addr} left {:?} after its last connection closed",
            closed.elapsed()
        );
    });
}

#[test]
fn kill_9_and_restart_keep_a_transfer_intact() {
    if skip() {
        return;
    }
    let mut s = setup("xlbt-kill", 3, 3).expect("setup");
    let bytes = std::thread::scope(|scope| {
        let stream = scope.spawn(|| {
            s.lab
                .client_ns()
                .enter(|| client::echo_stream(echo(), Duration::from_secs(6), 8192))
        });
        std::thread::sleep(Duration::from_secs(1));
        s.xlb.kill9().unwrap();
        // Forwarding goes on with no daemon at all.
        std::thread::sleep(Duration::from_millis(1500));
        let (seen, failed) = connections(&s.lab, 20);
        assert!(
            failed.is_empty(),
            "forwarding while xlb is down: {failed:?} {seen:?}"
        );
        s.xlb.restart().unwrap();
        stream.join().expect("stream thread")
    });
    let bytes = bytes.expect("the transfer completes intact across kill -9 and restart");
    assert!(bytes > 100_000, "{bytes} bytes");
    let log = s.xlb.log_text();
    assert!(
        log.contains("adopted"),
        "the restart adopted the pinned maps:\n{log}"
    );
    let (seen, failed) = connections(&s.lab, 30);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(seen.len() >= 2, "{seen:?}");

    // A second daemon on the same state file is refused before it touches anything.
    let second = std::process::Command::new(&s.xlb.bin)
        .args(["run", "--config"])
        .arg(&s.xlb.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second xlb exits: {err}");
    assert!(err.contains("another xlb"), "with a clear message: {err}");
    assert!(s.xlb.is_running(), "the first one runs on");
    let (_, failed) = connections(&s.lab, 10);
    assert!(failed.is_empty(), "traffic unaffected: {failed:?}");

    // Something else pinned in pin_path is not xlb's to remove.
    let foreign = s.xlb.pin_path.join("not-xlbs");
    std::fs::create_dir(&foreign).unwrap();

    // `xlb stop --cleanup` stops the daemon, detaches XDP and removes the pins.
    let xdp_attached = |s: &Setup| {
        let out = s
            .lab
            .lb_ns()
            .exec(["ip", "link", "show", "veth-client"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    };
    assert!(xdp_attached(&s), "XDP is attached before the cleanup");
    let out = std::process::Command::new(&s.xlb.bin)
        .args(["stop", "--cleanup", "--config"])
        .arg(&s.xlb.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.xlb.is_running(), "the daemon stopped");
    assert!(!xdp_attached(&s), "XDP is detached after the cleanup");
    let left: Vec<String> = std::fs::read_dir(&s.xlb.pin_path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["not-xlbs"], "xlb's pins are gone, nothing else");
    let vip = s
        .lab
        .client_ns()
        .enter(|| client::http_get(web(), Duration::from_millis(500)));
    assert!(vip.is_err(), "nothing answers for the VIP any more");
}

#[test]
fn broken_reload_keeps_the_running_config() {
    if skip() {
        return;
    }
    let mut s = setup("xlbt-reload", 3, 3).expect("setup");
    let good = std::fs::read_to_string(&s.xlb.config).unwrap();
    let bad = good.replacen(
        "conntrack_size = 65536",
        "conntrack_size = 65536\nbogus = 1",
        1,
    );
    std::fs::write(&s.xlb.config, &bad).unwrap();

    let out = s.xlb.cli(&["reload"]).unwrap();
    assert!(!out.status.success(), "a broken reload fails");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("xlb.toml:4:1") && err.contains("daemon.bogus"),
        "the error names file, line, column and field: {err}"
    );
    // The rejected reload leaves a trail: an event and a log line.
    let events: Vec<serde_json::Value> =
        serde_json::from_str(&s.xlb.cli_ok(&["events", "--json"]).unwrap()).unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "rejected"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("reload rejected") && m.contains("daemon.bogus"))),
        "{events:?}"
    );
    assert!(
        s.xlb.log_text().contains("API: reload rejected"),
        "{}",
        s.xlb.log_text()
    );
    let check = std::process::Command::new(&s.xlb.bin)
        .args(["check", "--config"])
        .arg(&s.xlb.config)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stderr).trim(),
        err.trim().trim_start_matches("xlb: ").trim(),
        "reload gives the same error as xlb check"
    );
    // SIGHUP with the broken file: logged, not fatal. (The API's rejection above is in the
    // log already: wait for one more.)
    let rejected = || s.xlb.log_text().matches("reload rejected").count();
    let before = rejected();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_of(&s.xlb)),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    s.xlb
        .wait_for("reload rejected in the log", Duration::from_secs(5), || {
            Ok((rejected() > before).then_some(()))
        })
        .unwrap();
    assert!(s.xlb.is_running());
    let (seen, failed) = connections(&s.lab, 40);
    assert!(failed.is_empty(), "traffic unaffected: {failed:?}");
    assert_eq!(
        seen.len(),
        3,
        "the old config (3 backends) is in force: {seen:?}"
    );

    // A good reload applies: drop b3 from the web group (it drains, then leaves).
    let fixed = good.replacen(
        "backends = [\"198.18.2.11\", \"198.18.2.12\", \"198.18.2.13\"]",
        "backends = [\"198.18.2.11\", \"198.18.2.12\"]",
        1,
    );
    std::fs::write(&s.xlb.config, fixed).unwrap();
    let out = s.xlb.cli_ok(&["reload"]).unwrap();
    assert!(out.contains("web-servers"), "{out}");
    let events: Vec<serde_json::Value> =
        serde_json::from_str(&s.xlb.cli_ok(&["events", "--json"]).unwrap()).unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "change"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("config reloaded") && m.contains("web-servers"))),
        "the accepted reload is in the trail with what changed: {events:?}"
    );
    let (seen, failed) = connections(&s.lab, 40);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(!seen.contains_key("b3"), "{seen:?}");
}

/// Waits (bounded) until service `service`'s table in the maps holds `n` backends.
fn wait_in_table(x: &Xlbd, service: &str, n: u64) {
    x.wait_for(
        &format!("{n} backends in {service}'s table"),
        Duration::from_secs(10),
        || {
            let v: serde_json::Value = serde_json::from_str(&x.cli_ok(&["status", "--json"])?)?;
            let held = v["services"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["name"] == service))
                .and_then(|s| s["backends_in_table"].as_u64());
            Ok((held == Some(n)).then_some(()))
        },
    )
    .unwrap();
}

fn pid_of(x: &Xlbd) -> i32 {
    let status = x.cli_ok(&["status", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    v["pid"].as_i64().unwrap() as i32
}
