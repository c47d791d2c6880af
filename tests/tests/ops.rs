//! Operating xlb: `xlb diff` predicts how much of a change's traffic moves (and the change,
//! applied, moves that much), an `[[alert]]` command hears of a backend that dies and comes
//! back, `daemon.api_group` lets a non-root user read but not change, and `xlb top --once`
//! prints its frame.
//!
//! Needs root (skipped with a message otherwise).
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::Result;
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{CtValue, FlowKey};
use xlb_lab::{
    client,
    lab::{Lab, VIP_V4},
    xlbd::{cleanup_stale_pins, Xlbd},
};

fn skip() -> bool {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return true;
    }
    false
}

/// A UDP service on the lab servers' port 5353 behind `backends`.
fn dns_config(name: &str, backends: &str) -> String {
    format!(
        r#"[daemon]
interfaces = ["veth-client", "veth-backends"]
conntrack_size = 8192
{paths}
[[service]]
name = "dns"
vip = "198.18.100.1"
port = 53
protocol = "udp"
target_group = "dns-servers"

[[target_group]]
name = "dns-servers"
port = 5353
deregistration_delay = "0s"
backends = [{backends}]
"#,
        paths = Xlbd::daemon_paths(name)
    )
}

/// Each source port's answering backend: one UDP request per port (retried once: a busy
/// machine may lose a datagram).
fn names_by_port(lab: &Lab, ports: std::ops::Range<u16>) -> BTreeMap<u16, String> {
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), 53);
    lab.client_ns().enter(|| {
        ports
            .map(|p| {
                let t = Duration::from_secs(2);
                let name = client::udp_request_from(vip, p, t)
                    .or_else(|_| client::udp_request_from(vip, p, t))
                    .unwrap_or_else(|e| panic!("port {p}: {e:#}"));
                (p, name)
            })
            .collect()
    })
}

/// Delete every CONNTRACK and UNCONFIRMED entry of `client` (a UDP request answered once
/// waits in UNCONFIRMED): the next packets of its flows are new flows. Returns how many
/// entries there were.
fn forget_client(pin: &Path, client: IpAddr) -> Result<usize> {
    let (addr, _) = xlb::dataplane::addr_bytes(client);
    let mut gone = 0;
    for name in ["CONNTRACK", "UNCONFIRMED"] {
        let Ok(data) = MapData::from_pin(pin.join(name)) else {
            anyhow::ensure!(name != "CONNTRACK", "no CONNTRACK pin");
            continue;
        };
        let mut ct: BpfHashMap<MapData, FlowKey, CtValue> =
            BpfHashMap::try_from(Map::from_map_data(data)?)?;
        let keys: Vec<FlowKey> = ct
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.src == addr)
            .collect();
        for k in &keys {
            ct.remove(k)?;
        }
        gone += keys.len();
    }
    Ok(gone)
}

#[test]
fn diff_predicts_the_share_of_flows_that_moves() {
    if skip() {
        return;
    }
    let name = "xlbt-opsdiff";
    cleanup_stale_pins(name);
    let lab = Lab::new(name, 4).expect("lab");
    let _servers = lab
        .start_backend_servers(&xlb_lab::lab_bin().unwrap(), &[], &[5353], &[])
        .expect("servers");
    let three = r#""198.18.2.11", "198.18.2.12", "198.18.2.13""#;
    let four = format!(r#"{three}, "198.18.2.14""#);
    let xlb = Xlbd::start(&lab, name, &dns_config(name, three)).expect("xlb starts");

    // Its own config file: nothing would change.
    let out = xlb.cli_ok(&["reload", "--dry-run"]).unwrap();
    assert!(out.contains("would change nothing"), "{out}");

    const N: u16 = 400;
    let before = names_by_port(&lab, 21000..21000 + N);
    let used: std::collections::BTreeSet<&String> = before.values().collect();
    assert_eq!(used.len(), 3, "three backends answer: {used:?}");

    // Open flows on leaving backends: a config without b3 names exactly b3's flows (once
    // the conntrack sweep, every second, has counted them).
    let new_cfg = xlb.run_dir.join("new.toml");
    let cfg = new_cfg.to_str().unwrap();
    std::fs::write(
        &new_cfg,
        dns_config(name, r#""198.18.2.11", "198.18.2.12""#),
    )
    .unwrap();
    let on_b3 = before.values().filter(|n| n.as_str() == "b3").count() as u64;
    let (dns, _) = xlb
        .wait_for(
            "the sweep to count the open flows",
            Duration::from_secs(15),
            || {
                let json: serde_json::Value =
                    serde_json::from_str(&xlb.cli_ok(&["diff", "--config", cfg, "--json"])?)?;
                let dns = json["services"][0].clone();
                Ok((dns["open_flows"].as_u64() == Some(u64::from(N))).then_some(dns))
            },
        )
        .unwrap();
    assert_eq!(dns["flows_on_leaving"].as_u64(), Some(on_b3), "{dns}");
    assert_eq!(
        (
            dns["backends_before"].as_u64(),
            dns["backends_after"].as_u64()
        ),
        (Some(3), Some(2))
    );

    // The change, previewed from another file: a fourth backend.
    std::fs::write(&new_cfg, dns_config(name, &four)).unwrap();
    let text = xlb.cli_ok(&["diff", "--config", cfg]).unwrap();
    assert!(
        text.contains("198.18.2.14") && text.contains("added"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&xlb.cli_ok(&["diff", "--config", cfg, "--json"]).unwrap()).unwrap();
    let dns = &json["services"][0];
    assert_eq!(dns["name"], "dns", "{json}");
    assert_eq!(
        (
            dns["backends_before"].as_u64(),
            dns["backends_after"].as_u64()
        ),
        (Some(3), Some(4))
    );
    assert_eq!(dns["flows_on_leaving"], 0, "no backend leaves: {json}");
    let predicted = dns["moved_share"].as_f64().expect("a moved share");
    assert!((0.15..0.40).contains(&predicted), "{json}");

    // A broken config is refused with its position, as a reload would; nothing changes.
    std::fs::write(
        &new_cfg,
        "[daemon]\ninterfaces = [\"veth-client\"]\nbogus = 1\n",
    )
    .unwrap();
    let bad = xlb.cli(&["diff", "--config", cfg]).unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains(&format!("{cfg}:3:1: daemon.bogus")),
        "{err}"
    );

    // Applied: the same source ports, as new flows, land elsewhere in about that share.
    std::fs::write(&xlb.config, dns_config(name, &four)).unwrap();
    let out = xlb.cli_ok(&["reload"]).unwrap();
    assert!(out.contains("config reloaded"), "{out}");
    let out = xlb.cli_ok(&["reload", "--dry-run"]).unwrap();
    assert!(out.contains("would change nothing"), "{out}");
    let gone = forget_client(&xlb.pin_path, IpAddr::V4(lab.client_v4())).unwrap();
    assert!(
        gone >= N as usize / 2,
        "the first round's flows were in the table: {gone}"
    );
    let after = names_by_port(&lab, 21000..21000 + N);
    let moved: Vec<(&String, &String)> = before
        .iter()
        .filter_map(|(p, b)| {
            let a = &after[p];
            (a != b).then_some((b, a))
        })
        .collect();
    let measured = moved.len() as f64 / f64::from(N);
    let to_new = moved.iter().filter(|(_, a)| a.as_str() == "b4").count();
    eprintln!(
        "predicted {:.1}% of the table moves; measured {:.1}% of {N} flows ({to_new} to b4)",
        predicted * 100.0,
        measured * 100.0
    );
    // A sample of 400 flows: the standard error of a 25% share is about 2.2 points; 8
    // points is more than three of them.
    assert!(
        (measured - predicted).abs() <= 0.08,
        "predicted {predicted:.3}, measured {measured:.3}"
    );
    assert!(
        to_new * 10 >= moved.len() * 8,
        "most moved flows go to the new backend: {moved:?}"
    );
}

#[test]
fn an_alert_command_hears_a_backend_die_and_come_back() {
    if skip() {
        return;
    }
    let name = "xlbt-opsalert";
    cleanup_stale_pins(name);
    let lab = Lab::new(name, 2).expect("lab");
    let lab_bin = xlb_lab::lab_bin().unwrap();
    let mut servers = lab
        .start_backend_servers(&lab_bin, &[8080], &[], &[])
        .expect("servers");
    let alerts = Path::new("/run").join(name).join("alerts.jsonl");
    let config = format!(
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
health_check = {{ protocol = "tcp", interval = "300ms", timeout = "300ms", healthy_threshold = 2, unhealthy_threshold = 2 }}

[[alert]]
name = "backend-down"
when = "backend_unhealthy"
group = "web-servers"
command = "cat >> {alerts}"

[[alert]]
name = "never"
when = "backend_unhealthy"
service = "web"
command = "exit 3"
"#,
        paths = Xlbd::daemon_paths(name),
        alerts = alerts.display()
    );
    let xlb = Xlbd::start(&lab, name, &config).expect("xlb starts");
    let state = |addr: &str| -> Result<Option<String>> {
        Ok(xlb
            .backend("web-servers", addr)?
            .and_then(|b| b["state"].as_str().map(String::from)))
    };
    // b2's events (a check of b1 that times out on a very busy machine is none of this
    // test's business).
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&alerts)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON event a line"))
            .filter(|e| e["backend"] == "198.18.2.12")
            .collect()
    };
    let t = Duration::from_secs(20);
    for a in ["198.18.2.11", "198.18.2.12"] {
        xlb.wait_for("healthy", t, || {
            Ok((state(a)?.as_deref() == Some("healthy")).then_some(()))
        })
        .unwrap();
    }
    assert!(lines().is_empty(), "nothing to say while all is well");

    // b2's server dies.
    servers[1].stop().unwrap();
    let (fired, _) = xlb
        .wait_for("the firing alert", t, || Ok(lines().first().cloned()))
        .unwrap();
    assert_eq!(fired["name"], "backend-down");
    assert_eq!(fired["state"], "firing");
    assert_eq!(fired["when"], "backend_unhealthy");
    assert_eq!(fired["group"], "web-servers");
    assert_eq!(fired["backend"], "198.18.2.12");
    // Still dead a while later: one notification only.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lines().len(), 1, "{:?}", lines());

    // It comes back.
    let _b2 = lab
        .backend_ns(2)
        .spawn(&lab_bin, ["serve", "--name", "b2", "--http", "8080"])
        .unwrap();
    let (resolved, _) = xlb
        .wait_for("the resolved alert", t, || Ok(lines().get(1).cloned()))
        .unwrap();
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["backend"], "198.18.2.12");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lines().len(), 2, "{:?}", lines());
    // The failing command of the other rule was logged, and xlb runs on.
    let log = xlb.log_text();
    assert!(log.contains("sending an alert failed"), "{log}");
    xlb.cli_ok(&["status"]).unwrap();
}

#[test]
fn api_group_reads_but_only_root_changes() {
    if skip() {
        return;
    }
    let name = "xlbt-opsgrp";
    cleanup_stale_pins(name);
    let lab = Lab::new(name, 2).expect("lab");
    let _servers = lab
        .start_backend_servers(&xlb_lab::lab_bin().unwrap(), &[], &[5353], &[])
        .expect("servers");
    let config = dns_config(name, r#""198.18.2.11", "198.18.2.12""#).replacen(
        "[daemon]\n",
        "[daemon]\napi_group = \"nogroup\"\n",
        1,
    );
    let xlb = Xlbd::start(&lab, name, &config).expect("xlb starts");
    let meta = std::fs::metadata(&xlb.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 65534, "the socket belongs to nogroup");

    // nobody, in nogroup: reads.
    let as_user = |gid: u32, args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
            .arg(&xlb.bin)
            .args(args)
            .arg("--socket")
            .arg(&xlb.socket)
            .output()
            .expect("setpriv runs")
    };
    for args in [
        &["status"][..],
        &["backends", "dns-servers"],
        &["events"],
        &["diff"],
        &["top", "--once"],
    ] {
        let out = as_user(65534, args);
        assert!(
            out.status.success(),
            "xlb {args:?} as nobody: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let top = String::from_utf8_lossy(&as_user(65534, &["top", "--once"]).stdout).into_owned();
    assert!(
        top.contains("CONN/S") && top.contains("198.18.2.12:5353"),
        "{top}"
    );

    // Changes: refused, saying why; root's go through.
    for args in [
        &["backend", "drain", "dns-servers", "198.18.2.12"][..],
        &["reload"],
        &["scale", "dns-servers", "--desired", "1"],
    ] {
        let out = as_user(65534, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "xlb {args:?} as nobody succeeded");
        assert!(err.contains("changes need root"), "{args:?}: {err}");
    }
    assert_eq!(
        xlb.backend("dns-servers", "198.18.2.12").unwrap().unwrap()["state"],
        "healthy",
        "nothing was drained"
    );
    xlb.cli_ok(&["backend", "drain", "dns-servers", "198.18.2.12"])
        .unwrap();

    // Not in the group: the socket itself is closed to it.
    let out = as_user(65533, &["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("permission denied"),
        "{err}"
    );
}
