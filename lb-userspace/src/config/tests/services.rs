//! `[[service]]` (`parse.rs`) and the checks across services and groups (`validate.rs`).

use super::*;

#[test]
fn error_bad_address() {
    let (line, col, field, msg) = fail(&sample_with(
        "\"198.18.2.12:8080\"",
        "\"198.18.2.300:8080\"",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (30, 28, "target_group[0].backends[1]")
    );
    assert!(msg.contains("198.18.2.300:8080"), "{msg}");

    let (line, col, field, _) = fail(&sample_with(
        "\"198.18.100.1\"\nport = 80",
        "\"198.18.100\"\nport = 80",
    ));
    assert_eq!((line, col, field.as_str()), (8, 7, "service[0].vip"));

    let (line, col, field, _) = fail(&sample_with(
        "{ address = \"198.18.2.13\", weight = 2 }",
        "{ address = \"198.18.2.13:80:80\" }",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (30, 60, "target_group[0].backends[2].address")
    );

    // Unspecified and multicast VIPs.
    let (line, _, field, msg) = fail(&sample_with("\"2001:db8:100::1\"", "\"::\""));
    assert_eq!((line, field.as_str()), (22, "service[2].vip"));
    assert!(msg.contains("unspecified"), "{msg}");
    let (_, _, field, msg) = fail(&sample_with("\"2001:db8:100::1\"", "\"ff02::1\""));
    assert_eq!(field, "service[2].vip");
    assert!(msg.contains("multicast"), "{msg}");
    // A vip with a port.
    let (_, _, _, msg) = fail(&sample_with(
        "\"2001:db8:100::1\"",
        "\"[2001:db8:100::1]:80\"",
    ));
    assert!(msg.contains("port = N"), "{msg}");
}

#[test]
fn error_port_out_of_range() {
    let (line, col, field, msg) = fail(&sample_with("port = 53", "port = 70000"));
    assert_eq!((line, col, field.as_str()), (16, 8, "service[1].port"));
    assert_eq!(msg, "70000 is out of range (1-65535)");

    let (line, col, field, msg) = fail(&sample_with(
        "\"198.18.2.12:5353\"",
        "\"198.18.2.12:65536\"",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (34, 33, "target_group[1].backends[1]")
    );
    assert!(msg.contains("65536 is out of range"), "{msg}");

    let (_, _, field, _) = fail(&sample_with(
        "{ address = \"198.18.2.13\", weight = 2 }",
        "{ address = \"198.18.2.13\", port = 0 }",
    ));
    assert_eq!(field, "target_group[0].backends[2].port");

    let (_, _, field, msg) = fail(&sample_with("port = 53", "port = \"53\""));
    assert_eq!(field, "service[1].port");
    assert_eq!(msg, "expected an integer, found a string");
}

#[test]
fn error_missing_target_group() {
    let (line, col, field, msg) = fail(&sample_with(
        "target_group = \"dns-servers\"",
        "target_group = \"dns\"",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (18, 16, "service[1].target_group")
    );
    assert!(
        msg.contains("\"web-servers\", \"dns-servers\", \"web-servers-v6\""),
        "{msg}"
    );
}

#[test]
fn error_duplicate_vip_port_proto() {
    let (line, col, field, msg) = fail(&sample_with(
        "port = 53\nprotocol = \"udp\"",
        "port = 80\nprotocol = \"tcp\"",
    ));
    assert_eq!((line, col, field.as_str()), (15, 7, "service[1].vip"));
    assert!(msg.contains("service[0] \"web\""), "{msg}");
    // Same address and port over another protocol is fine.
    parse(&sample_with("port = 53", "port = 80"), "x").unwrap();
}

#[test]
fn error_duplicate_names() {
    let (line, col, field, _) = fail(&sample_with("name = \"dns\"", "name = \"web\""));
    assert_eq!((line, col, field.as_str()), (14, 8, "service[1].name"));
    let (line, col, field, _) = fail(&sample_with(
        "name = \"dns-servers\"",
        "name = \"web-servers\"",
    ));
    assert_eq!((line, col, field.as_str()), (33, 8, "target_group[1].name"));
}

#[test]
fn error_family_mismatch() {
    // One IPv6 backend in a group used by an IPv4 service.
    let (line, col, field, msg) = fail(&sample_with(
        "\"198.18.2.12:5353\"",
        "\"[2001:db8::5]:5353\"",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (34, 33, "target_group[1].backends[1]")
    );
    assert!(msg.contains("NAT cannot translate"), "{msg}");
    // An IPv4 service pointing at an IPv6-only group.
    let (line, col, field, msg) = fail(&sample_with(
        "target_group = \"dns-servers\"",
        "target_group = \"web-servers-v6\"",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (18, 16, "service[1].target_group")
    );
    assert!(msg.contains("only IPv6 backends"), "{msg}");
}

#[test]
fn error_bad_protocol() {
    let (line, col, field, _) = fail(&sample_with("protocol = \"udp\"", "protocol = \"sctp\""));
    assert_eq!((line, col, field.as_str()), (17, 12, "service[1].protocol"));
}
