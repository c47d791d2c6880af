//! Reading the file: TOML syntax errors, positions, unknown keys, wrong types, missing keys
//! (`tree.rs`), and the error format.

use super::*;

#[test]
fn display_format() {
    let e = parse(&sample_with("port = 53", "port = 70000"), "xlb.toml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "xlb.toml:16:8: service[1].port: 70000 is out of range (1-65535)"
    );
}

#[test]
fn spans_are_tracked() {
    // If toml's span protocol changed, every position would collapse to 1:1.
    let (line, col, field, _) = fail(&sample_with("port = 53", "port = 0"));
    assert_eq!((line, col, field.as_str()), (16, 8, "service[1].port"));
}

#[test]
fn error_unknown_key() {
    let (line, col, field, msg) = fail(&sample_with(
        "protocol = \"udp\"",
        "protocol = \"udp\"\nprotocl = \"udp\"",
    ));
    assert_eq!((line, col, field.as_str()), (18, 1, "service[1].protocl"));
    assert!(msg.contains("unknown key `protocl`"), "{msg}");
    assert!(
        msg.contains("name, vip, port, protocol, target_group"),
        "{msg}"
    );

    let (line, col, field, msg) = fail(&format!("{MINIMAL}[deamon]\nx = 1\n"));
    assert_eq!((line, col, field.as_str()), (3, 2, "deamon"));
    assert!(msg.contains("daemon, service, target_group"), "{msg}");

    let (line, col, field, msg) = fail(&sample_with(
        "{ address = \"198.18.2.13\", weight = 2 }",
        "{ address = \"198.18.2.13\", wieght = 2 }",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (30, 75, "target_group[0].backends[2].wieght")
    );
    assert!(msg.contains("address, port, weight"), "{msg}");

    let (line, col, field, _) = fail(&format!("{MINIMAL}hash_sed = 1\n"));
    assert_eq!((line, col, field.as_str()), (3, 1, "daemon.hash_sed"));
}

#[test]
fn error_wrong_types() {
    let (line, col, field, msg) = fail(&format!("{MINIMAL}[service]\nname = \"x\"\n"));
    assert_eq!((line, col, field.as_str()), (3, 1, "service"));
    assert!(msg.contains("[[service]]"), "{msg}");
    let (_, _, field, msg) = fail(&sample_with(
        "\"198.18.2.11\", \"198.18.2.12:8080\"",
        "\"198.18.2.11\", 5",
    ));
    assert_eq!(field, "target_group[0].backends[1]");
    assert!(msg.contains("found an integer"), "{msg}");
    let (_, _, field, msg) = fail(&sample_with(
        "conntrack_size = 1000000",
        "conntrack_size = 1979-05-27",
    ));
    assert_eq!(field, "daemon.conntrack_size");
    assert!(msg.contains("date-time"), "{msg}");
}

#[test]
fn error_missing_key() {
    let (line, col, field, msg) = fail(&sample_with("port = 53\n", ""));
    assert_eq!((line, col, field.as_str()), (13, 1, "service[1].port"));
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn error_syntax() {
    // Not TOML: the field is derived from the text.
    let (line, col, field, _) = fail(&sample_with("port = 53", "port = 53 53"));
    assert_eq!((line, field.as_str()), (16, "service[1].port"));
    assert!(col >= 10, "{col}");
    // Duplicate key.
    let (line, _, field, msg) = fail(&sample_with("port = 53", "port = 53\nport = 54"));
    assert_eq!((line, field.as_str()), (17, "service[1].port"));
    assert!(msg.contains("duplicate"), "{msg}");
}

#[test]
fn error_syntax_after_a_value_and_huge_integers() {
    // toml reads `53 53` as one unquoted string; the error points at the word too many.
    let (line, col, field, msg) = fail(&format!("{MINIMAL}conntrack_size = 2048 4096\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (3, 23, "daemon.conntrack_size")
    );
    assert!(
        msg.contains("unexpected `4096` after the value `2048`"),
        "{msg}"
    );
    let (line, col, field, msg) = fail(&format!("{MINIMAL}hash_seed = 1979-05-27 07:32:00 x\n"));
    assert_eq!((line, col, field.as_str()), (3, 33, "daemon.hash_seed"));
    assert!(msg.contains("unexpected `x`"), "{msg}");
    // A bare word is still a string that must be quoted.
    let (line, col, field, msg) = fail(&format!("{MINIMAL}xdp_mode = native mode\n"));
    assert_eq!((line, col, field.as_str()), (3, 12, "daemon.xdp_mode"));
    assert!(msg.contains("must be quoted"), "{msg}");
    // Integers beyond 64 bits are an error at their place, not a parse failure elsewhere.
    let (line, col, field, msg) = fail(&sample_with(
        "{ address = \"198.18.2.13\", weight = 2 }",
        "{ address = \"198.18.2.13\", weight = 99999999999999999999 }",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (30, 84, "target_group[0].backends[2].weight")
    );
    assert!(msg.contains("does not fit in a 64-bit integer"), "{msg}");
    // Hexadecimal integers are read with their radix.
    let c = parse(&format!("{MINIMAL}conntrack_size = 0x1000\n"), "x").unwrap();
    assert_eq!(c.daemon.conntrack_size, 4096);
    let (_, _, field, msg) = fail(&format!("{MINIMAL}conntrack_size = 0x10\n"));
    assert_eq!(field, "daemon.conntrack_size");
    assert!(msg.starts_with("16 is out of range"), "{msg}");
}

#[test]
fn toml_1_1_inline_tables_may_span_lines() {
    // toml 1.x reads TOML 1.1: an inline table may span lines and end with a comma.
    let c = parse(
        &format!(
            "{MINIMAL}{GROUP}health_check = {{\n    protocol = \"tcp\",\n    interval = \"5s\",\n}}\n"
        ),
        "x",
    )
    .unwrap();
    let check = c.target_groups[0].health_check.as_ref().unwrap();
    assert_eq!(check.protocol, HealthProtocol::Tcp);
    assert_eq!(check.interval, Duration::from_secs(5));
    // Positions inside such a table are still exact.
    let (line, col, field, msg) = fail(&format!(
        "{MINIMAL}{GROUP}health_check = {{\n    protocol = \"tcp\",\n    intervall = \"5s\",\n}}\n"
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (8, 5, "target_group[0].health_check.intervall")
    );
    assert!(msg.contains("unknown key `intervall`"), "{msg}");
}
