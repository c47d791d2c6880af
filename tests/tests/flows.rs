//! `xlb flows` and `xlb lookup` against real traffic in the lab: a TCP connection held open
//! and a UDP exchange go through xlb, the lab servers answer with their name, and both
//! commands name the backend that answered. `xlb lookup` of flows that have sent nothing yet
//! predicts (from the live Maglev slot) the backend their first packet then reaches.
//!
//! Needs root (skipped with a message otherwise).
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use xlb_lab::{
    client,
    config::DEMO_CONFIG,
    lab::{backend_name, backend_v4, Lab, VIP_V4},
    xlbd::Xlbd,
};

const T: Duration = Duration::from_secs(3);

fn skip() -> bool {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return true;
    }
    false
}

/// The lab server's name (`b1`, ...) of a backend address as the API prints it.
fn name_of(backend: &Value, n: usize) -> Option<String> {
    let addr: SocketAddr = backend.as_str()?.parse().ok()?;
    (1..=n)
        .find(|&i| addr.ip() == IpAddr::V4(backend_v4(i)))
        .map(backend_name)
}

/// One HTTP/1.1 request on `s` (kept open): the body, the server's name.
fn http_keepalive(s: &mut std::net::TcpStream) -> Result<String> {
    s.set_read_timeout(Some(T))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: xlb\r\n\r\n")?;
    let mut buf = Vec::new();
    let deadline = Instant::now() + T;
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .context("no Content-Length")?;
            if body.len() >= len {
                return Ok(body[..len].trim().to_string());
            }
        }
        if Instant::now() > deadline {
            bail!("no full answer within {T:?}: {text:?}");
        }
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("closed before a full answer: {text:?}");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn json(xlb: &Xlbd, args: &[&str]) -> Result<Value> {
    let mut a = args.to_vec();
    a.push("--json");
    let text = xlb.cli_ok(&a)?;
    serde_json::from_str(&text).with_context(|| format!("parsing {text}"))
}

/// The entry of the flow from `client` in `xlb flows --service S --json`.
fn flow_entry(xlb: &Xlbd, service: &str, client: SocketAddr) -> Result<Value> {
    let list = json(xlb, &["flows", "--service", service, "--limit", "100000"])?;
    list["flows"]
        .as_array()
        .context("no flows array")?
        .iter()
        .find(|f| f["client"].as_str() == Some(client.to_string().as_str()))
        .cloned()
        .with_context(|| format!("no flow from {client} in {list}"))
}

fn lookup(xlb: &Xlbd, proto: &str, client: SocketAddr, vip: SocketAddr) -> Result<Value> {
    json(
        xlb,
        &["lookup", proto, &client.to_string(), &vip.to_string()],
    )
}

#[test]
fn flows_and_lookup_name_the_backend_that_answered() {
    if skip() {
        return;
    }
    let prefix = "xlbt-flows";
    let lab = Lab::new(prefix, 3).expect("lab");
    let lab_bin = xlb_lab::lab_bin().expect("lab binary");
    let _servers = lab
        .start_backend_servers(&lab_bin, &[8080], &[5353], &[])
        .expect("servers");
    let paths = Xlbd::daemon_paths(prefix);
    let config = DEMO_CONFIG.replacen("[daemon]\n", &format!("[daemon]\n{paths}"), 1);
    let mut xlb = Xlbd::start(&lab, prefix, &config).expect("xlb");
    let n = lab.n_backends();
    let web = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    let dns = SocketAddr::new(IpAddr::V4(VIP_V4), 53);
    let me = IpAddr::V4(lab.client_v4());

    // A TCP connection, held open: its entry is open and answered, and names the backend
    // whose server answered on it; lookup says the connection table decides, the same one.
    let tcp_port = 41000;
    let (mut conn, tcp_name) = lab.client_ns().enter(|| {
        let mut last = None;
        // A real client retries a connection that fails on a busy machine.
        for _ in 0..3 {
            match client::connect(web, Some(tcp_port), T)
                .and_then(|mut s| http_keepalive(&mut s).map(|name| (s, name)))
            {
                Ok(ok) => return ok,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("HTTP through the VIP: {:#}", last.unwrap());
    });
    let client_tcp = SocketAddr::new(me, tcp_port);
    let e = flow_entry(&xlb, "web", client_tcp).expect("flows");
    assert_eq!(name_of(&e["backend"], n), Some(tcp_name.clone()), "{e}");
    assert_eq!(e["protocol"], "tcp");
    assert_eq!(e["vip"], web.to_string());
    assert_eq!(e["group"], "web-servers");
    assert_eq!(e["backend_state"], "healthy");
    assert_eq!(e["state"], "open", "{e}");
    assert_eq!(e["answered"], true, "{e}");
    let l = lookup(&xlb, "tcp", client_tcp, web).expect("lookup");
    assert_eq!(l["via"], "connection_table", "{l}");
    assert_eq!(l["entry_usable"], true, "{l}");
    assert_eq!(name_of(&l["backend"], n), Some(tcp_name.clone()), "{l}");
    // The connection still works after both reads (they changed nothing).
    let again = lab
        .client_ns()
        .enter(|| http_keepalive(&mut conn))
        .expect("second request on the connection");
    assert_eq!(again, tcp_name);

    // A UDP exchange: the same for its entry.
    let udp_port = 42000;
    let udp_name = lab
        .client_ns()
        .enter(|| {
            client::udp_request_from(dns, udp_port, T)
                .or_else(|_| client::udp_request_from(dns, udp_port, T))
        })
        .expect("UDP through the VIP");
    let client_udp = SocketAddr::new(me, udp_port);
    let e = flow_entry(&xlb, "dns", client_udp).expect("flows");
    assert_eq!(name_of(&e["backend"], n), Some(udp_name.clone()), "{e}");
    assert_eq!(
        (&e["protocol"], &e["answered"]),
        (&"udp".into(), &true.into()),
        "{e}"
    );
    let l = lookup(&xlb, "udp", client_udp, dns).expect("lookup");
    assert_eq!(l["via"], "connection_table", "{l}");
    assert_eq!(name_of(&l["backend"], n), Some(udp_name), "{l}");

    // Flows that have sent nothing: lookup reads the live Maglev slot; their first packets
    // then reach the backend it named. Several ports, so that more than one backend shows.
    let mut predicted = Vec::new();
    for i in 0..6u16 {
        let (tp, up) = (43000 + i, 44000 + i);
        let lt = lookup(&xlb, "tcp", SocketAddr::new(me, tp), web).expect("lookup");
        assert_eq!(lt["via"], "maglev", "{lt}");
        assert!(lt["entry"].is_null() && lt["slot"].is_u64(), "{lt}");
        let lu = lookup(&xlb, "udp", SocketAddr::new(me, up), dns).expect("lookup");
        assert_eq!(lu["via"], "maglev", "{lu}");
        predicted.push((
            tp,
            name_of(&lt["backend"], n).expect("a backend"),
            up,
            name_of(&lu["backend"], n).expect("a backend"),
        ));
    }
    let got: Vec<(String, String)> = lab.client_ns().enter(|| {
        predicted
            .iter()
            .map(|(tp, _, up, _)| {
                let t = client::http_get_from(web, *tp, T)
                    .or_else(|_| client::http_get_from(web, *tp, T))
                    .expect("HTTP");
                let u = client::udp_request_from(dns, *up, T)
                    .or_else(|_| client::udp_request_from(dns, *up, T))
                    .expect("UDP");
                (t, u)
            })
            .collect()
    });
    for ((tp, want_t, up, want_u), (t, u)) in predicted.iter().zip(&got) {
        assert_eq!(t, want_t, "tcp from port {tp}");
        assert_eq!(u, want_u, "udp from port {up}");
    }

    // Filters and the limit.
    let b = e["backend"].as_str().unwrap().to_string();
    let only = json(&xlb, &["flows", "--backend", &b]).expect("flows --backend");
    let flows = only["flows"].as_array().unwrap();
    assert!(
        !flows.is_empty() && flows.iter().all(|f| f["backend"] == b.as_str()),
        "{only}"
    );
    let one = json(&xlb, &["flows", "--limit", "1"]).expect("flows --limit 1");
    assert_eq!(one["flows"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["truncated"], true, "{one}");
    // The table as a human reads it.
    let text = xlb.cli_ok(&["flows", "--service", "web"]).expect("flows");
    assert!(text.starts_with("PROTO"), "{text}");
    assert!(text.contains(&client_tcp.to_string()), "{text}");
    let text = xlb
        .cli_ok(&["lookup", "tcp", &client_tcp.to_string(), &web.to_string()])
        .expect("lookup");
    assert!(text.contains("connection-table entry"), "{text}");
    // An unknown service is refused.
    let out = xlb.cli(&["flows", "--service", "nope"]).expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service named"));
    drop(conn);
    assert!(xlb.is_running(), "xlb still running:\n{}", xlb.log_text());
}
