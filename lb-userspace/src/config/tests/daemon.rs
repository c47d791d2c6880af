//! `[daemon]` and `[daemon.announce]` (`parse.rs`), and the limits `validate.rs` checks on them.

use super::*;

#[test]
fn defaults_and_all_daemon_keys() {
    let c = parse(MINIMAL, "x").unwrap();
    assert_eq!(c.daemon.xdp_mode, XdpMode::Auto);
    assert_eq!(c.daemon.conntrack_size, DEFAULT_CONNTRACK_SIZE);
    assert_eq!(c.daemon.maglev_table_size, DEFAULT_RING_SIZE);
    assert_eq!(c.daemon.max_services, DEFAULT_MAX_SERVICES);
    assert_eq!(c.daemon.hash_seed, None);
    assert!(c.services.is_empty() && c.target_groups.is_empty());

    let c = parse(
        "[daemon]\ninterfaces = [\"eth0\"]\nxdp_mode = \"generic\"\nconntrack_size = 2048\n\
         maglev_table_size = 1021\nmax_services = 4096\nhash_seed = 4294967295\n",
        "x",
    )
    .unwrap();
    assert_eq!(c.daemon.xdp_mode, XdpMode::Generic);
    assert_eq!(c.daemon.conntrack_size, 2048);
    assert_eq!(
        c.daemon.reverse_size, 2048,
        "reverse_size follows conntrack_size"
    );
    assert_eq!(c.daemon.maglev_table_size, 1021);
    assert_eq!(c.daemon.max_services, 4096);
    assert_eq!(c.daemon.hash_seed, Some(u32::MAX));

    // Dotted keys and inline tables have no span of their own; still fine.
    let c = parse(
        "daemon.interfaces = [\"eth0\"]\ndaemon.xdp_mode = \"native\"\n",
        "x",
    )
    .unwrap();
    assert_eq!(c.daemon.xdp_mode, XdpMode::Native);
    let c = parse("daemon = { interfaces = [\"eth0\"] }\n", "x").unwrap();
    assert_eq!(c.daemon.interfaces, ["eth0"]);
}

#[test]
fn error_table_size() {
    let (line, col, field, msg) = fail(&format!("{MINIMAL}maglev_table_size = 65536\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (3, 21, "daemon.maglev_table_size")
    );
    assert!(msg.contains("not prime") && msg.contains("65537"), "{msg}");

    let (_, _, field, msg) = fail(&format!("{MINIMAL}maglev_table_size = 1019\n"));
    assert_eq!(field, "daemon.maglev_table_size");
    assert!(msg.contains("out of range"), "{msg}");

    // Too small for the largest group: 11 backends need more than 1100 slots.
    let backends: Vec<String> = (1..=11).map(|i| format!("\"10.0.0.{i}\"")).collect();
    let text = format!(
        "{MINIMAL}maglev_table_size = 1021\n[[target_group]]\nname = \"g\"\nbackends = [{}]\n",
        backends.join(", ")
    );
    let (line, _, field, msg) = fail(&text);
    assert_eq!((line, field.as_str()), (3, "daemon.maglev_table_size"));
    assert!(msg.contains("100 ×") && msg.contains("1103"), "{msg}");
}

#[test]
fn error_bad_xdp_mode() {
    let (line, col, field, msg) = fail(&sample_with("\"auto\"", "\"driver\""));
    assert_eq!((line, col, field.as_str()), (3, 12, "daemon.xdp_mode"));
    assert!(msg.contains("\"driver\""), "{msg}");
}

#[test]
fn error_daemon_limits() {
    let (_, _, field, _) = fail(&format!("{MINIMAL}conntrack_size = 1023\n"));
    assert_eq!(field, "daemon.conntrack_size");
    let (_, _, field, _) = fail(&format!("{MINIMAL}conntrack_size = 100000001\n"));
    assert_eq!(field, "daemon.conntrack_size");
    let (_, _, field, _) = fail(&format!("{MINIMAL}reverse_size = 1023\n"));
    assert_eq!(field, "daemon.reverse_size");
    let (_, _, field, _) = fail(&format!("{MINIMAL}reverse_size = 100000001\n"));
    assert_eq!(field, "daemon.reverse_size");
    let c = parse(
        &format!("{MINIMAL}conntrack_size = 4096\nreverse_size = 1024\n"),
        "x",
    )
    .unwrap();
    assert_eq!(
        (c.daemon.conntrack_size, c.daemon.reverse_size),
        (4096, 1024)
    );
    let (_, _, field, _) = fail(&format!("{MINIMAL}max_services = 0\n"));
    assert_eq!(field, "daemon.max_services");
    let (_, _, field, _) = fail(&format!("{MINIMAL}max_services = 4097\n"));
    assert_eq!(field, "daemon.max_services");
    let (_, _, field, _) = fail(&format!("{MINIMAL}hash_seed = -1\n"));
    assert_eq!(field, "daemon.hash_seed");

    let (line, col, field, _) = fail("[daemon]\ninterfaces = []\n");
    assert_eq!((line, col, field.as_str()), (2, 14, "daemon.interfaces"));
    let (_, col, field, _) = fail("[daemon]\ninterfaces = [\"eth0\", \"\"]\n");
    assert_eq!((col, field.as_str()), (23, "daemon.interfaces[1]"));
    let (_, _, field, msg) = fail("[daemon]\ninterfaces = [\"eth0\", \"eth0\"]\n");
    assert_eq!(field, "daemon.interfaces[1]");
    assert!(msg.contains("duplicate"), "{msg}");
    let (line, col, field, _) = fail("[daemon]\nxdp_mode = \"auto\"\n");
    assert_eq!((line, col, field.as_str()), (1, 1, "daemon.interfaces"));
    let (line, col, field, _) = fail("");
    assert_eq!((line, col, field.as_str()), (1, 1, "daemon.interfaces"));
}

#[test]
fn error_too_many_services() {
    let text = sample_with("conntrack_size = 1000000", "max_services = 2");
    let (line, col, field, msg) = fail(&text);
    assert_eq!((line, col, field.as_str()), (4, 16, "daemon.max_services"));
    assert!(msg.contains("3 services"), "{msg}");
}

#[test]
fn http_listen_is_an_address_and_port() {
    assert_eq!(parse(MINIMAL, "x").unwrap().daemon.http_listen, None);
    let c = parse(&format!("{MINIMAL}http_listen = \"127.0.0.1:9470\"\n"), "x").unwrap();
    assert_eq!(
        c.daemon.http_listen,
        Some("127.0.0.1:9470".parse().unwrap())
    );
    let c = parse(&format!("{MINIMAL}http_listen = \"[::1]:9470\"\n"), "x").unwrap();
    assert_eq!(c.daemon.http_listen, Some("[::1]:9470".parse().unwrap()));
    for (bad, says) in [
        ("\"localhost:9470\"", "not an address and port"),
        ("\"127.0.0.1\"", "not an address and port"),
        ("\"::1:9470\"", "not an address and port"),
        ("\"127.0.0.1:0\"", "port 0"),
        ("\"127.0.0.1:65536\"", "not an address and port"),
        ("\"224.0.0.1:9470\"", "multicast"),
        ("9470", "expected a string"),
    ] {
        let (line, col, field, msg) = fail(&format!("{MINIMAL}http_listen = {bad}\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (3, 15, "daemon.http_listen"),
            "{bad}"
        );
        assert!(msg.contains(says), "{bad}: {msg}");
    }
}

#[test]
fn error_daemon_paths() {
    let (line, col, field, msg) = fail(&format!("{MINIMAL}api_socket = \"\"\n"));
    assert_eq!((line, col, field.as_str()), (3, 14, "daemon.api_socket"));
    assert_eq!(msg, "must not be empty");
    let long = format!("/run/{}", "x".repeat(103));
    let (line, col, field, msg) = fail(&format!("{MINIMAL}api_socket = \"{long}\"\n"));
    assert_eq!((line, col, field.as_str()), (3, 14, "daemon.api_socket"));
    assert!(
        msg.contains("108 bytes long") && msg.contains("at most 107"),
        "{msg}"
    );
    parse(&format!("{MINIMAL}api_socket = \"{}\"\n", &long[1..]), "x").unwrap();
    let (_, _, field, msg) = fail(&format!("{MINIMAL}api_socket = \"/run/xlb/\"\n"));
    assert_eq!(field, "daemon.api_socket");
    assert!(msg.contains("ends with /"), "{msg}");
    let (_, _, field, msg) = fail(&format!("{MINIMAL}api_socket = 1\n"));
    assert_eq!(field, "daemon.api_socket");
    assert_eq!(msg, "expected a string, found an integer");
    let (_, _, field, msg) = fail(&format!("{MINIMAL}api_socket = \"/run/\\u0000x\"\n"));
    assert_eq!(field, "daemon.api_socket");
    assert!(msg.contains("NUL"), "{msg}");
    // A relative socket path is allowed.
    let c = parse(&format!("{MINIMAL}api_socket = \"xlb.sock\"\n"), "x").unwrap();
    assert_eq!(c.daemon.api_socket, Path::new("xlb.sock"));

    let (line, col, field, msg) = fail(&format!("{MINIMAL}pin_path = \"sys/fs/bpf/xlb\"\n"));
    assert_eq!((line, col, field.as_str()), (3, 12, "daemon.pin_path"));
    assert_eq!(
        msg,
        "\"sys/fs/bpf/xlb\" is not an absolute path (it must start with /)"
    );
    // A trailing / is fine for the pin directory.
    parse(&format!("{MINIMAL}pin_path = \"/sys/fs/bpf/xlb/\"\n"), "x").unwrap();

    let (line, col, field, msg) = fail(&format!("{MINIMAL}state_file = \"state.json\"\n"));
    assert_eq!((line, col, field.as_str()), (3, 14, "daemon.state_file"));
    assert!(msg.contains("not an absolute path"), "{msg}");
    let (_, _, field, msg) = fail(&format!("{MINIMAL}state_file = \"/run/xlb/\"\n"));
    assert_eq!(field, "daemon.state_file");
    assert!(msg.contains("ends with /"), "{msg}");

    // The socket and the state file collide.
    let (line, col, field, msg) = fail(&format!(
        "{MINIMAL}api_socket = \"/run/x\"\nstate_file = \"/run/x\"\n"
    ));
    assert_eq!((line, col, field.as_str()), (4, 14, "daemon.state_file"));
    assert!(msg.contains("daemon.api_socket (line 3)"), "{msg}");
    let (line, _, field, msg) = fail(&format!("{MINIMAL}state_file = \"/run/xlb/xlb.sock\"\n"));
    assert_eq!((line, field.as_str()), (3, "daemon.state_file"));
    assert!(msg.contains("the default daemon.api_socket"), "{msg}");
    let (line, _, field, msg) = fail(&format!("{MINIMAL}api_socket = \"/run/xlb/state.json\"\n"));
    assert_eq!((line, field.as_str()), (3, "daemon.api_socket"));
    assert!(msg.contains("the default daemon.state_file"), "{msg}");
}

#[test]
fn error_idle_timeouts() {
    let (line, col, field, msg) = fail(&format!("{MINIMAL}tcp_idle_timeout = \"30x\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (3, 20, "daemon.tcp_idle_timeout")
    );
    assert!(
        msg.starts_with(
            "\"30x\" is not a duration (e.g. \"30s\", \"5m\", \"250ms\"): unknown time unit"
        ),
        "{msg}"
    );
    let (_, _, field, msg) = fail(&format!("{MINIMAL}udp_idle_timeout = \"120\"\n"));
    assert_eq!(field, "daemon.udp_idle_timeout");
    assert!(msg.contains("time unit needed"), "{msg}");
    let (_, _, field, msg) = fail(&format!("{MINIMAL}udp_idle_timeout = 120\n"));
    assert_eq!(field, "daemon.udp_idle_timeout");
    assert_eq!(
        msg,
        "expected a duration string such as \"120s\", found an integer"
    );
    let (_, _, _, msg) = fail(&format!("{MINIMAL}udp_idle_timeout = 1.5\n"));
    assert_eq!(
        msg,
        "expected a duration string (e.g. \"30s\", \"5m\", \"250ms\"), found a float"
    );
    for bad in ["999ms", "0s", "7d 1s", "8d"] {
        let (_, _, field, msg) = fail(&format!("{MINIMAL}tcp_idle_timeout = \"{bad}\"\n"));
        assert_eq!(field, "daemon.tcp_idle_timeout");
        assert_eq!(msg, format!("\"{bad}\" is out of range (1s-7days)"));
    }
    for good in ["1s", "7d", "1h 30m", "2min", "1.5h"] {
        parse(&format!("{MINIMAL}udp_idle_timeout = \"{good}\"\n"), "x").unwrap();
    }
}

#[test]
fn error_maglev_entries() {
    // maglev_table_size set: the error is there, even when max_services is set too.
    let text = format!("{MINIMAL}max_services = 64\nmaglev_table_size = 4000037\n");
    let (line, col, field, msg) = fail(&text);
    assert_eq!(
        (line, col, field.as_str()),
        (4, 21, "daemon.maglev_table_size")
    );
    assert_eq!(
        msg,
        "max_services × 2 × maglev_table_size = 64 × 2 × 4000037 = 512004736 MAGLEV map \
         entries (two Maglev tables per service), more than the limit of 268435456 \
         (2^28 u32 entries, 1 GiB); use a maglev_table_size of at most 2097152 (a prime \
         such as 2097143) or a max_services of at most 33"
    );
    // Only max_services set.
    let (line, col, field, msg) = fail(&format!("{MINIMAL}max_services = 2048\n"));
    assert_eq!((line, col, field.as_str()), (3, 16, "daemon.max_services"));
    assert!(
        msg.contains("2048 × 2 × 65537 = 268439552") && msg.contains("at most 2047"),
        "{msg}"
    );
    parse(&format!("{MINIMAL}max_services = 2047\n"), "x").unwrap();
    // With the most services, the hint is still a prime the table may have.
    let text = format!("{MINIMAL}max_services = 4096\nmaglev_table_size = 1000003\n");
    let (_, _, field, msg) = fail(&text);
    assert_eq!(field, "daemon.maglev_table_size");
    assert!(
        msg.ends_with("at most 32768 (a prime such as 32749) or a max_services of at most 134"),
        "{msg}"
    );
    parse(
        &format!("{MINIMAL}max_services = 4096\nmaglev_table_size = 32749\n"),
        "x",
    )
    .unwrap();
}

#[test]
fn announce_section() {
    // Absent: nothing announced.
    assert_eq!(parse(MINIMAL, "xlb.toml").unwrap().daemon.announce, None);
    // Defaults.
    let c = parse(
        &format!("{MINIMAL}[daemon.announce]\nvia = \"bird\"\n"),
        "xlb.toml",
    )
    .unwrap();
    assert_eq!(
        c.daemon.announce,
        Some(AnnounceConfig {
            via: AnnounceVia::Bird,
            table: DEFAULT_ANNOUNCE_TABLE,
            bird_socket: PathBuf::from(DEFAULT_BIRD_SOCKET),
            require_healthy: true,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            drain_quiet: DEFAULT_DRAIN_QUIET,
        })
    );
    // Every key, inline too; and it serializes back.
    let c = parse(
        "[daemon]\ninterfaces = [\"eth0\"]\nannounce = { via = \"bird\", table = 4000, \
         bird_socket = \"/run/bird/node1.ctl\", require_healthy = false, \
         drain_timeout = \"0s\", drain_quiet = \"2s\" }\n",
        "xlb.toml",
    )
    .unwrap();
    let a = c.daemon.announce.clone().unwrap();
    assert_eq!(a.table, 4000);
    assert_eq!(a.bird_socket, PathBuf::from("/run/bird/node1.ctl"));
    assert!(!a.require_healthy);
    assert_eq!(a.drain_timeout, Duration::ZERO);
    assert_eq!(a.drain_quiet, Duration::from_secs(2));
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["daemon"]["announce"]["via"], "bird");
    assert_eq!(json["daemon"]["announce"]["drain_quiet"], "2s");
    // hash_seed: the fleet's other half, settable to the same value on every node.
    let c = parse(&format!("{MINIMAL}hash_seed = 7\n"), "xlb.toml").unwrap();
    assert_eq!(c.daemon.hash_seed, Some(7));
}

#[test]
fn error_announce() {
    let head = format!("{MINIMAL}[daemon.announce]\n");
    for (body, field, needle) in [
        (
            "table = 1\n",
            "daemon.announce.via",
            "missing required key `via`",
        ),
        (
            "via = \"exabgp\"\n",
            "daemon.announce.via",
            "expected \"bird\"",
        ),
        (
            "via = \"bird\"\ntable = 254\n",
            "daemon.announce.table",
            "kernel's own",
        ),
        (
            "via = \"bird\"\ntable = 0\n",
            "daemon.announce.table",
            "out of range",
        ),
        (
            "via = \"bird\"\nbird_socket = \"bird.ctl\"\n",
            "daemon.announce.bird_socket",
            "absolute",
        ),
        (
            "via = \"bird\"\nrequire_healthy = 1\n",
            "daemon.announce.require_healthy",
            "boolean",
        ),
        (
            "via = \"bird\"\ndrain_timeout = \"2d\"\n",
            "daemon.announce.drain_timeout",
            "out of range",
        ),
        (
            "via = \"bird\"\ndrain_quiet = \"0s\"\n",
            "daemon.announce.drain_quiet",
            "out of range",
        ),
        (
            "via = \"bird\"\nprefix = 32\n",
            "daemon.announce.prefix",
            "unknown key",
        ),
    ] {
        let (line, _, f, msg) = fail(&format!("{head}{body}"));
        assert_eq!(f, field, "{body}: {msg}");
        assert!(msg.contains(needle), "{body}: {msg}");
        assert!(line >= 3, "{body}: line {line}");
    }
    let (_, _, f, msg) = fail(&format!("{MINIMAL}announce = 3\n"));
    assert_eq!(f, "daemon.announce");
    assert!(msg.contains("a table"), "{msg}");
}
