//! Operating xlb: `[daemon] http_listen` in the lab, scraped by a real Prometheus server and
//! read by headless Chromium, both from the client namespace (as a monitoring host elsewhere
//! on the network would): the scrapes cross the XDP-attached interface to the balancer's own
//! address.
//!
//! Needs root (skipped with a message otherwise), and the Debian packages `prometheus` and
//! `chromium` (`cargo xtask setup` installs them; each test says so and skips only its part
//! when one is missing).
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use xlb_lab::{
    client,
    lab::{Lab, LB_CLIENT_V4, VIP_V4},
    netns::ChildGuard,
    xlbd::{cleanup_stale_pins, Xlbd},
};

const HTTP_PORT: u16 = 9470;
/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);
const T: Duration = Duration::from_secs(3);
/// A target group name full of markup: the status page must show it as text.
const ODD_GROUP: &str = "odd <b>group</b> & \\\"co\\\"";
const ODD_GROUP_TEXT: &str = "odd <b>group</b> & \"co\"";

fn skip() -> bool {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return true;
    }
    false
}

/// The program's path when the package that ships it is installed.
fn installed(program: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!(
            "skipped: `{program}` not found; the Debian package `{package}` provides it \
             (`cargo xtask setup` installs it)"
        );
    }
    found
}

fn config(name: &str) -> String {
    format!(
        r#"[daemon]
interfaces = ["veth-client", "veth-backends"]
conntrack_size = 65536
http_listen = "{LB_CLIENT_V4}:{HTTP_PORT}"
{paths}
[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "web-servers"

[[service]]
name = "dns"
vip = "198.18.100.1"
port = 53
protocol = "udp"
target_group = "dns-servers"

[[target_group]]
name = "web-servers"
port = 8080
backends = ["198.18.2.11", "198.18.2.12", "198.18.2.13"]

[target_group.health_check]
protocol = "http"
path = "/health"
interval = "500ms"
timeout = "500ms"
healthy_threshold = 2
unhealthy_threshold = 2

[[target_group]]
name = "dns-servers"
backends = ["198.18.2.11:5353", "198.18.2.12:5353"]
"#,
        paths = Xlbd::daemon_paths(name)
    )
}

/// A service and a target group whose name is full of markup, for a reload.
fn odd_group() -> String {
    format!(
        r#"
[[service]]
name = "odd"
vip = "198.18.100.1"
port = 81
protocol = "tcp"
target_group = "{ODD_GROUP}"

[[target_group]]
name = "{ODD_GROUP}"
port = 8080
backends = ["198.18.2.11"]
"#
    )
}

/// The backends of `web-servers` and the state each must reach: the server of the third is
/// stopped before xlb starts.
const WEB: [(&str, &str); 3] = [
    ("198.18.2.11:8080", "healthy"),
    ("198.18.2.12:8080", "healthy"),
    ("198.18.2.13:8080", "unhealthy"),
];

struct Setup {
    lab: Lab,
    _servers: Vec<ChildGuard>,
    xlb: Xlbd,
}

fn setup(name: &str) -> Result<Setup> {
    cleanup_stale_pins(name);
    let lab = Lab::new(name, 3)?;
    // Prometheus listens on the client's loopback.
    lab.client_ns().exec(["ip", "link", "set", "lo", "up"])?;
    let mut servers = lab.start_backend_servers(&xlb_lab::lab_bin()?, &[8080], &[5353], &[])?;
    // b3 refuses connections.
    servers.pop().context("three servers")?.stop()?;
    let xlb = Xlbd::start(&lab, name, &config(name))?;
    for (addr, state) in WEB {
        let ip = addr.split(':').next().unwrap_or_default();
        xlb.wait_for(&format!("{addr} {state}"), WAIT, || {
            Ok(xlb
                .backends("web-servers")?
                .into_iter()
                .find(|b| b["address"] == ip && b["state"] == state)
                .map(|_| ()))
        })?;
    }
    Ok(Setup {
        lab,
        _servers: servers,
        xlb,
    })
}

/// `n` requests to the web service from the client, each retried once (as a client would).
fn traffic(lab: &Lab, n: usize) -> Result<()> {
    let web = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    lab.client_ns().enter(|| {
        for i in 0..n {
            if client::http_get(web, T).is_err() {
                client::http_get(web, T).with_context(|| format!("request {i}, twice"))?;
            }
        }
        Ok(())
    })
}

/// `GET path` with HTTP/1.0 (no chunked answers), from the client namespace: status and body.
fn get(lab: &Lab, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    get_in(lab.client_ns().name(), addr, path)
}

fn xlb_http() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(LB_CLIENT_V4), HTTP_PORT)
}

/// xlb's `/metrics` as (name with labels as written → value).
fn scrape(lab: &Lab) -> Result<BTreeMap<String, f64>> {
    let (status, body) = get(lab, xlb_http(), "/metrics")?;
    ensure!(status == 200, "/metrics answered {status}: {body}");
    let mut out = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("sample line {line:?}"))?;
        let v: f64 = value
            .parse()
            .with_context(|| format!("value of {line:?}"))?;
        out.insert(series.to_string(), v);
    }
    Ok(out)
}

fn sample(m: &BTreeMap<String, f64>, series: &str) -> Result<f64> {
    m.get(series)
        .copied()
        .with_context(|| format!("{series} missing from /metrics"))
}

#[test]
fn prometheus_scrapes_metrics_across_a_restart() {
    if skip() {
        return;
    }
    let mut s = setup("xlbt-prom").expect("setup");
    traffic(&s.lab, 40).expect("traffic through the VIP");

    // Our own scrape first: the values the snapshot carries.
    let web = r#"service="web",group="web-servers""#;
    let (before, _) = s
        .xlb
        .wait_for("40 new flows in /metrics", WAIT, || {
            let m = scrape(&s.lab)?;
            let n = sample(&m, &format!("xlb_service_new_flows_total{{{web}}}"))?;
            Ok((n >= 40.0).then_some(m))
        })
        .expect("metrics");
    for (b, state) in WEB {
        let l = format!(r#"group="web-servers",backend="{b}""#);
        let up = sample(&before, &format!("xlb_backend_up{{{l}}}")).unwrap();
        assert_eq!(up, f64::from(state == "healthy"), "{b}");
        let st = sample(
            &before,
            &format!("xlb_backend_state{{{l},state=\"{state}\"}}"),
        )
        .unwrap();
        assert_eq!(st, 1.0, "{b} {state}");
    }
    let refused = r#"group="web-servers",backend="198.18.2.13:8080",reason="connect_refused""#;
    assert!(
        sample(
            &before,
            &format!("xlb_health_check_failures_total{{{refused}}}")
        )
        .unwrap()
            >= 1.0
    );
    let checks = r#"group="web-servers",backend="198.18.2.11:8080""#;
    assert!(
        sample(
            &before,
            &format!("xlb_health_check_duration_seconds_count{{{checks}}}")
        )
        .unwrap()
            >= 2.0
    );
    let forwarded_before =
        sample(&before, r#"xlb_datapath_packets_total{action="forwarded"}"#).unwrap();
    assert!(forwarded_before > 0.0);
    assert_eq!(sample(&before, "xlb_conntrack_capacity").unwrap(), 65536.0);
    assert!(before
        .keys()
        .any(|k| k.starts_with("xlb_build_info{version=")));

    // Prometheus itself, when installed.
    let prometheus = installed("prometheus", "prometheus")
        .map(|bin| Prometheus::start(&s.lab, &bin).expect("prometheus starts and becomes ready"));
    if let Some(p) = &prometheus {
        // The backends as PromQL sees them.
        let result = p
            .wait_for(
                "3 backends in xlb_backend_up",
                |r| r.len() == 3,
                "xlb_backend_up{group=\"web-servers\"}",
            )
            .expect("xlb_backend_up");
        let got: BTreeMap<String, f64> = result
            .iter()
            .map(|(labels, v)| (labels["backend"].clone(), *v))
            .collect();
        for (b, state) in WEB {
            assert_eq!(
                got.get(b),
                Some(&f64::from(state == "healthy")),
                "{b}: {got:?}"
            );
        }
        p.wait_for(
            "up",
            |r| r.iter().all(|(_, v)| *v == 1.0) && !r.is_empty(),
            "up{job=\"xlb\"}",
        )
        .expect("the target is up");
        p.wait_for(
            "40 new flows",
            |r| r.first().is_some_and(|(_, v)| *v >= 40.0),
            "sum(xlb_backend_new_flows_total{group=\"web-servers\"})",
        )
        .expect("new flows");
    }
    let started = sample(&before, "xlb_start_time_seconds").unwrap();

    // A restart adopts the pinned maps: no counter goes back.
    s.xlb.restart().expect("restart");
    let after = scrape(&s.lab).expect("metrics after the restart");
    assert!(sample(&after, "xlb_start_time_seconds").unwrap() >= started);
    for series in [
        format!("xlb_service_new_flows_total{{{web}}}"),
        format!("xlb_service_packets_total{{{web},direction=\"request\"}}"),
        format!("xlb_service_bytes_total{{{web},direction=\"reply\"}}"),
        r#"xlb_backend_new_flows_total{group="web-servers",backend="198.18.2.11:8080"}"#.into(),
        r#"xlb_backend_new_flows_total{group="web-servers",backend="198.18.2.12:8080"}"#.into(),
        r#"xlb_datapath_packets_total{action="forwarded"}"#.into(),
        r#"xlb_datapath_packets_total{action="replies"}"#.into(),
    ] {
        let (b, a) = (
            sample(&before, &series).unwrap(),
            sample(&after, &series).unwrap(),
        );
        assert!(b > 0.0, "{series} counted before the restart");
        assert!(a >= b, "{series} went back across the restart: {b} → {a}");
    }
    traffic(&s.lab, 10).expect("traffic after the restart");

    if let Some(p) = &prometheus {
        // Prometheus scraped the new daemon, and saw no counter reset across the restart.
        p.wait_for(
            "a scrape of the restarted daemon",
            |r| r.first().is_some_and(|(_, v)| *v >= 50.0),
            "sum(xlb_backend_new_flows_total{group=\"web-servers\"})",
        )
        .expect("scrapes after the restart");
        p.wait_for(
            "the restarted daemon's start time",
            |r| r.first().is_some_and(|(_, v)| *v > started),
            "xlb_start_time_seconds",
        )
        .expect("a scrape of the restarted daemon");
        for q in [
            "resets(xlb_service_new_flows_total{service=\"web\"}[10m])",
            "sum(resets(xlb_backend_new_flows_total[10m]))",
            "resets(xlb_datapath_packets_total{action=\"forwarded\"}[10m])",
        ] {
            let r = p.query(q).expect(q);
            assert!(!r.is_empty(), "{q}: no result");
            for (labels, v) in &r {
                assert_eq!(*v, 0.0, "{q} {labels:?}: a counter went back");
            }
        }
    }
    assert!(s.xlb.is_running(), "{}", s.xlb.log_text());
}

/// PromQL results: (labels, value) per series.
type Vector = Vec<(BTreeMap<String, String>, f64)>;

/// A Prometheus server in the client namespace scraping xlb every second; stopped on drop.
struct Prometheus {
    _child: ChildGuard,
    addr: SocketAddr,
    ns: String,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Prometheus {
    fn start(lab: &Lab, bin: &Path) -> Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let port = lab.client_ns().enter(|| -> Result<u16> {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            Ok(l.local_addr()?.port())
        })?;
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: xlb\n    static_configs:\n      - targets: ['{}']\n",
                xlb_http()
            ),
        )?;
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = lab.client_ns().command(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = ChildGuard::spawn(&mut cmd)?.with_grace(Duration::from_secs(5));
        let p = Prometheus {
            _child: child,
            addr,
            ns: lab.client_ns().name().to_string(),
            _dir: dir,
            log,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok((200, _)) = p.get("/-/ready") {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready within {WAIT:?}:\n{}", p.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_tail(&self) -> String {
        xlb_lab::lab::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 20)
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        get_in(&self.ns, self.addr, path)
    }

    /// An instant query through the HTTP API.
    fn query(&self, promql: &str) -> Result<Vector> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = self.get(&path)?;
        ensure!(status == 200, "{promql}: HTTP {status}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        ensure!(v["status"] == "success", "{promql}: {body}");
        let mut out = Vector::new();
        for r in v["data"]["result"].as_array().cloned().unwrap_or_default() {
            let labels = r["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let value = r["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("value of {r}"))?;
            out.push((labels, value));
        }
        Ok(out)
    }

    /// Query until `ok` holds for the result, at most [`WAIT`].
    fn wait_for(&self, what: &str, ok: impl Fn(&Vector) -> bool, promql: &str) -> Result<Vector> {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = match self.query(promql) {
                Ok(r) if ok(&r) => return Ok(r),
                other => other,
            };
            if Instant::now() > deadline {
                bail!(
                    "{what}: `{promql}` never satisfied within {WAIT:?}; last {last:?}\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// `GET path` with HTTP/1.0 (no chunked answers) from the namespace called `ns`: status and
/// body.
fn get_in(ns: &str, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    std::thread::scope(|sc| {
        sc.spawn(move || -> Result<(u16, String)> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let mut s = TcpStream::connect_timeout(&addr, T)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut buf = Vec::new();
            s.take(8 << 20).read_to_end(&mut buf)?;
            let text = String::from_utf8_lossy(&buf).into_owned();
            let (head, body) = text
                .split_once("\r\n\r\n")
                .with_context(|| format!("no response head: {text:?}"))?;
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("status line of {head:?}"))?;
            Ok((status, body.to_string()))
        })
        .join()
        .unwrap_or_else(|_| bail!("request thread panicked"))
    })
}

/// Percent-encoding for a query string value (everything but unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Run headless Chromium in the client namespace with `args` and then `url`; its stdout. Killed
/// (by its guard) if it has not finished within a minute.
fn chromium(lab: &Lab, bin: &Path, dir: &Path, args: &[String], url: &str) -> Result<String> {
    let out_path = dir.join("chromium.out");
    let err_path = dir.join("chromium.err");
    let mut cmd = lab.client_ns().command(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", dir.join("profile").display()))
    .args(args)
    .arg(url)
    .env("HOME", dir)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&out_path)?)
    .stderr(std::fs::File::create(&err_path)?);
    let mut child = ChildGuard::spawn(&mut cmd)?;
    let status = child.wait_timeout(Duration::from_secs(60))?;
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(st) if st.success() => Ok(std::fs::read_to_string(&out_path)?),
        Some(st) => bail!(
            "chromium exited with {st}:\n{}",
            xlb_lab::lab::tail(&err, 20)
        ),
        None => bail!(
            "chromium did not finish in 60 s:\n{}",
            xlb_lab::lab::tail(&err, 20)
        ),
    }
}

/// The value of attribute `name` in the start tag `tag` (as Chromium serializes it), unescaped.
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(
        tag[start..start + len]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#39;", "'")
            .replace("&amp;", "&"),
    )
}

/// Requests to the web and dns services from the client, about 40 a second, until `stop` (or
/// a minute); failures are ignored (this is only for the rates on the screenshot).
fn background_traffic(lab: &Lab, stop: &AtomicBool) {
    let web = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    let dns = SocketAddr::new(IpAddr::V4(VIP_V4), 53);
    let until = Instant::now() + Duration::from_secs(60);
    lab.client_ns().enter(|| {
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            let _ = client::http_get(web, T);
            let _ = client::udp_request(dns, Duration::from_secs(1));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// `dom` with every attribute value emptied (a serialized value never holds a `"`).
fn without_attribute_values(dom: &str) -> String {
    let mut out = String::with_capacity(dom.len());
    let mut rest = dom;
    while let Some(i) = rest.find("=\"") {
        out.push_str(&rest[..i + 2]);
        rest = &rest[i + 2..];
        match rest.find('"') {
            Some(end) => rest = &rest[end..],
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// Start tags `<tr ...>` of class `class`.
fn rows<'a>(dom: &'a str, class: &str) -> Vec<&'a str> {
    let open = format!("<tr class=\"{class}\"");
    dom.match_indices(&open)
        .filter_map(|(i, _)| dom[i..].find('>').map(|end| &dom[i..=i + end]))
        .collect()
}

#[test]
fn status_page_in_chromium() {
    if skip() {
        return;
    }
    let Some(bin) = installed("chromium", "chromium") else {
        return;
    };
    let s = setup("xlbt-page").expect("setup");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", xlb_http());

    // A screenshot under a steady trickle of requests (so that the rates show): a PNG of the
    // page, kept where XLB_STATUS_SCREENSHOT says (`docs/status-page.png` is one).
    let stop = AtomicBool::new(false);
    let png = dir.path().join("status-page.png");
    std::thread::scope(|sc| {
        sc.spawn(|| background_traffic(&s.lab, &stop));
        let shot = (|| -> Result<()> {
            s.xlb.wait_for("new flows in /metrics", WAIT, || {
                let m = scrape(&s.lab)?;
                let n = sample(
                    &m,
                    r#"xlb_service_new_flows_total{service="web",group="web-servers"}"#,
                )?;
                Ok((n >= 20.0).then_some(()))
            })?;
            // Two more snapshots, so that the rates cover a second of traffic.
            std::thread::sleep(Duration::from_millis(2500));
            chromium(
                &s.lab,
                &bin,
                dir.path(),
                &[
                    format!("--screenshot={}", png.display()),
                    "--window-size=1200,800".into(),
                ],
                &url,
            )?;
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        shot.expect("screenshot");
    });
    let bytes = std::fs::read(&png).expect("the screenshot file");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
        "a PNG"
    );
    if let Some(keep) = std::env::var_os("XLB_STATUS_SCREENSHOT") {
        std::fs::copy(&png, &keep).expect("copying the screenshot");
    }

    // A reload adds a target group named with markup; a rejected one leaves an event whose
    // text holds markup (the file's own words).
    let cfg = format!("{}{}", config("xlbt-page"), odd_group());
    std::fs::write(&s.xlb.config, &cfg).unwrap();
    s.xlb
        .cli_ok(&["reload"])
        .expect("reload adding the odd group");
    std::fs::write(
        &s.xlb.config,
        cfg.replacen(
            "target_group = \"web-servers\"",
            "target_group = \"<i>nope</i>\"",
            1,
        ),
    )
    .unwrap();
    assert!(!s.xlb.cli(&["reload"]).unwrap().status.success());
    std::fs::write(&s.xlb.config, &cfg).unwrap();
    s.xlb
        .wait_for("the page shows the rejected reload", WAIT, || {
            let (st, body) = get(&s.lab, xlb_http(), "/")?;
            Ok((st == 200 && body.contains("rejected")).then_some(()))
        })
        .expect("page");
    let dom = chromium(&s.lab, &bin, dir.path(), &["--dump-dom".into()], &url).expect("dump-dom");
    assert!(dom.contains("<title>xlb status</title>"), "{dom}");
    assert!(!dom.contains("<script"), "no scripts");

    let backends = rows(&dom, "backend");
    let found: BTreeMap<(String, String), String> = backends
        .iter()
        .map(|t| {
            (
                (
                    attr(t, "data-group").unwrap_or_default(),
                    attr(t, "data-backend").unwrap_or_default(),
                ),
                attr(t, "data-state").unwrap_or_default(),
            )
        })
        .collect();
    for (b, state) in WEB {
        assert_eq!(
            found
                .get(&("web-servers".to_string(), b.to_string()))
                .map(String::as_str),
            Some(state),
            "{b} in the DOM: {found:?}"
        );
    }
    assert_eq!(
        found
            .get(&(ODD_GROUP_TEXT.to_string(), "198.18.2.11:8080".to_string()))
            .map(String::as_str),
        Some("healthy"),
        "the odd group's backend: {found:?}"
    );
    for b in ["198.18.2.11:5353", "198.18.2.12:5353"] {
        assert_eq!(
            found
                .get(&("dns-servers".to_string(), b.to_string()))
                .map(String::as_str),
            Some("healthy"),
            "{b} in the DOM: {found:?}"
        );
    }
    assert_eq!(found.len(), 6, "{found:?}");
    // The group name and the event text are text, not elements.
    let markup = without_attribute_values(&dom);
    assert!(
        !markup.contains("<b>"),
        "markup in a name became an element:\n{dom}"
    );
    assert!(
        !markup.contains("<i>"),
        "markup in an event became an element:\n{dom}"
    );
    assert!(
        dom.contains("odd &lt;b&gt;group&lt;/b&gt; &amp; \"co\""),
        "{dom}"
    );
    assert!(
        dom.contains("&lt;i&gt;nope&lt;/i&gt;"),
        "the rejected reload's event:\n{dom}"
    );
    let services = rows(&dom, "service");
    assert_eq!(services.len(), 3, "{services:?}");
    assert!(rows(&dom, "event")
        .iter()
        .any(|t| attr(t, "data-kind").as_deref() == Some("rejected")));
}
