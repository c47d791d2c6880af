//! `forwarding = "dsr"` and its `dsr_*` keys of a `[[service]]` (`parse.rs`, `validate.rs`).

use super::*;

/// A DSR service on line 6; the keys after `target_group` are `extra`'s (from line 11).
fn dsr(extra: &str) -> String {
    format!(
        r#"[daemon]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "web"
{extra}
[[target_group]]
name = "web"
backends = ["198.18.2.11", "198.18.2.12"]
"#
    )
}

fn fail(text: &str) -> (usize, usize, String, String) {
    match parse(text, "xlb.toml") {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(ConfigError::Invalid {
            line,
            column,
            field,
            message,
            ..
        }) => (line, column, field, message),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn forwarding_defaults_and_values() {
    let c = parse(&dsr(""), "x").unwrap();
    assert_eq!(c.services[0].forwarding, Forwarding::Nat);
    let c = parse(&dsr("forwarding = \"nat\"\n"), "x").unwrap();
    assert_eq!(c.services[0].forwarding, Forwarding::Nat);
    let c = parse(&dsr("forwarding = \"dsr\"\ndsr_encap = \"l2\"\n"), "x").unwrap();
    assert_eq!(
        c.services[0].forwarding,
        Forwarding::Dsr(DsrConfig {
            encap: DsrEncap::L2,
            source_prefix: None,
            gue_port: 6080
        })
    );
    let c = parse(
        &dsr("forwarding = \"dsr\"\ndsr_encap = \"gue\"\ndsr_source_prefix = \"198.18.99.0/24\"\n"),
        "x",
    )
    .unwrap();
    let d = *c.services[0].forwarding.dsr().unwrap();
    assert_eq!(d.encap, DsrEncap::Gue);
    assert_eq!(d.gue_port, 6080);
    assert_eq!(d.source_prefix.unwrap().to_string(), "198.18.99.0/24");
    assert_eq!(d.source_prefix.unwrap().hash_bits(), 8);
    let c = parse(
        &dsr("forwarding = \"dsr\"\ndsr_encap = \"gue\"\ndsr_source_prefix = \"198.18.0.0/15\"\ndsr_gue_port = 7777\n"),
        "x",
    )
    .unwrap();
    let d = *c.services[0].forwarding.dsr().unwrap();
    assert_eq!(
        (d.gue_port, d.source_prefix.unwrap().hash_bits()),
        (7777, 16)
    );
    // JSON: NAT services say nothing new; DSR ones say how.
    let json = serde_json::to_value(&c.services[0]).unwrap();
    assert_eq!(json["forwarding"]["mode"], "dsr");
    assert_eq!(json["forwarding"]["encap"], "gue");
    assert_eq!(json["forwarding"]["source_prefix"], "198.18.0.0/15");
    let nat = serde_json::to_value(&parse(&dsr(""), "x").unwrap().services[0]).unwrap();
    assert!(nat.get("forwarding").is_none());
}

#[test]
fn dsr_map_value() {
    let c = parse(
        &dsr(
            "forwarding = \"dsr\"\ndsr_encap = \"ipip\"\ndsr_source_prefix = \"198.18.99.77/24\"\n",
        ),
        "x",
    )
    .unwrap();
    let v = crate::dsr::map_value(&c.services[0].forwarding).unwrap();
    assert_eq!(v.encap, lb_common::DSR_ENCAP_IPIP);
    assert_eq!(&v.src_prefix[..4], &[198, 18, 99, 0], "host bits cleared");
    assert_eq!(v.src_mask, [0, 0, 0, 0xff]);
    let v6 = Forwarding::Dsr(DsrConfig {
        encap: DsrEncap::Gue,
        source_prefix: Some("2001:db8:99::/64".parse().unwrap()),
        gue_port: 6080,
    });
    let v = crate::dsr::map_value(&v6).unwrap();
    assert_eq!(v.src_mask, [0, 0, 0xff, 0xff], "at most 16 bits vary");
    assert_eq!(v.gue_port, 6080u16.to_be_bytes());
    assert_eq!(crate::dsr::map_value(&Forwarding::Nat), None);
}

#[test]
fn forwarding_errors() {
    let (line, col, field, msg) = fail(&dsr("forwarding = \"tunnel\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (10, 14, "service[0].forwarding")
    );
    assert!(msg.contains("\"nat\" or \"dsr\""), "{msg}");

    let (line, _, field, msg) = fail(&dsr("forwarding = \"dsr\"\n"));
    assert_eq!((line, field.as_str()), (10, "service[0].forwarding"));
    assert!(msg.contains("needs dsr_encap"), "{msg}");

    let (line, col, field, msg) = fail(&dsr("forwarding = \"dsr\"\ndsr_encap = \"vxlan\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (11, 13, "service[0].dsr_encap")
    );
    assert!(msg.contains("\"l2\", \"ipip\" or \"gue\""), "{msg}");

    let (line, _, field, msg) = fail(&dsr("dsr_encap = \"l2\"\n"));
    assert_eq!((line, field.as_str()), (10, "service[0].dsr_encap"));
    assert!(msg.contains("only with forwarding = \"dsr\""), "{msg}");

    let (line, _, field, msg) = fail(&dsr("forwarding = \"dsr\"\ndsr_encap = \"ipip\"\n"));
    assert_eq!((line, field.as_str()), (11, "service[0].dsr_encap"));
    assert!(msg.contains("needs dsr_source_prefix"), "{msg}");

    let (line, _, field, msg) = fail(&dsr(
        "forwarding = \"dsr\"\ndsr_encap = \"l2\"\ndsr_source_prefix = \"198.18.99.0/24\"\n",
    ));
    assert_eq!((line, field.as_str()), (12, "service[0].dsr_source_prefix"));
    assert!(msg.contains("only to dsr_encap"), "{msg}");

    let (line, _, field, msg) = fail(&dsr(
        "forwarding = \"dsr\"\ndsr_encap = \"ipip\"\ndsr_source_prefix = \"2001:db8:99::/112\"\n",
    ));
    assert_eq!((line, field.as_str()), (12, "service[0].dsr_source_prefix"));
    assert!(
        msg.contains("is IPv6 but the vip 198.18.100.1 is IPv4"),
        "{msg}"
    );

    for bad in [
        "198.18.99.0",
        "198.18.99.0/33",
        "nonsense/24",
        "198.18.99.0/x",
    ] {
        let (line, _, field, _) = fail(&dsr(&format!(
            "forwarding = \"dsr\"\ndsr_encap = \"gue\"\ndsr_source_prefix = \"{bad}\"\n"
        )));
        assert_eq!(
            (line, field.as_str()),
            (12, "service[0].dsr_source_prefix"),
            "{bad}"
        );
    }

    let (line, _, field, msg) = fail(&dsr(
        "forwarding = \"dsr\"\ndsr_encap = \"ipip\"\ndsr_source_prefix = \"198.18.99.0/24\"\ndsr_gue_port = 6081\n",
    ));
    assert_eq!((line, field.as_str()), (13, "service[0].dsr_gue_port"));
    assert!(msg.contains("only to dsr_encap = \"gue\""), "{msg}");

    let (line, _, field, _) = fail(&dsr(
        "forwarding = \"dsr\"\ndsr_encap = \"gue\"\ndsr_source_prefix = \"198.18.99.0/24\"\ndsr_gue_port = 0\n",
    ));
    assert_eq!((line, field.as_str()), (13, "service[0].dsr_gue_port"));
}

#[test]
fn dsr_backends_use_the_service_port() {
    let text = dsr("forwarding = \"dsr\"\ndsr_encap = \"l2\"\n").replace(
        "backends = [\"198.18.2.11\", \"198.18.2.12\"]",
        "backends = [\"198.18.2.11\", \"198.18.2.12:8080\"]",
    );
    let (line, _, field, msg) = fail(&text);
    assert_eq!((line, field.as_str()), (15, "target_group[0].backends[1]"));
    assert!(msg.contains("must listen on the service port 80"), "{msg}");
    // The group's port counts too; the same group without DSR is fine.
    let text = dsr("forwarding = \"dsr\"\ndsr_encap = \"l2\"\n").replace(
        "name = \"web\"\nbackends",
        "name = \"web\"\nport = 8080\nbackends",
    );
    let (_, _, field, _) = fail(&text);
    assert_eq!(field, "target_group[0].backends[0]");
    assert!(parse(
        &dsr("").replace(
            "name = \"web\"\nbackends",
            "name = \"web\"\nport = 8080\nbackends"
        ),
        "x"
    )
    .is_ok());
}
