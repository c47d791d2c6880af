//! `[[target_group]]` and its backends (`parse.rs`, `validate.rs`), and their types (`types.rs`).

use super::*;

#[test]
fn error_port_given_twice() {
    let (_, _, field, msg) = fail(&sample_with(
        "{ address = \"198.18.2.13\", weight = 2 }",
        "{ address = \"198.18.2.13:80\", port = 81 }",
    ));
    assert_eq!(field, "target_group[0].backends[2].port");
    assert!(msg.contains("twice"), "{msg}");
}

#[test]
fn error_duplicate_backend() {
    let (line, col, field, _) = fail(&sample_with("\"198.18.2.12:5353\"", "\"198.18.2.11:5353\""));
    assert_eq!(
        (line, col, field.as_str()),
        (34, 33, "target_group[1].backends[1]")
    );
    // Same address, once with the group port implied and once explicitly.
    let (_, _, field, _) = fail(&sample_with("\"198.18.2.12:8080\"", "\"198.18.2.11:8080\""));
    assert_eq!(field, "target_group[0].backends[1]");
    // Equal only once the service port fills in.
    let text = sample_with("\"198.18.2.12:5353\"", "\"198.18.2.11\"")
        .replace("port = 53\n", "port = 5353\n");
    let (_, _, field, msg) = fail(&text);
    assert_eq!(field, "target_group[1].backends[1]");
    assert!(msg.contains("service port"), "{msg}");
}

#[test]
fn error_weight() {
    for w in ["0", "10001"] {
        let (line, _, field, _) = fail(&sample_with("weight = 2", &format!("weight = {w}")));
        assert_eq!(
            (line, field.as_str()),
            (30, "target_group[0].backends[2].weight")
        );
    }
}

#[test]
fn error_too_many_backends() {
    // Backend ids as the daemon counts them: one per member and port of the groups
    // behind a service. Group "a" (no port) is behind two services: two ids per member.
    let group = |name: &str, n: usize, net: u8| {
        let backends: Vec<String> = (0..n)
            .map(|i| format!("\"10.{net}.{}.{}\"", i / 250, i % 250 + 1))
            .collect();
        format!(
            "[[target_group]]\nname = \"{name}\"\nbackends = [{}]\n",
            backends.join(",")
        )
    };
    let svc = |name: &str, port: u16, group: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nvip = \"198.18.100.1\"\nport = {port}\n\
             protocol = \"tcp\"\ntarget_group = \"{group}\"\n"
        )
    };
    let text = |n_b: usize| {
        format!(
            "[daemon]\ninterfaces = [\"eth0\"]\nmaglev_table_size = 150001\n{}{}{}{}{}{}",
            svc("s1", 80, "a"),
            svc("s2", 81, "a"),
            svc("s3", 82, "b"),
            group("a", 1500, 1),
            group("b", n_b, 2),
            // Behind no service: takes no ids.
            group("c", 1000, 3),
        )
    };
    // 2 × 1500 + 1096 = 4096 ids: fits, and the daemon's count agrees.
    let ok = parse(&text(1096), "x").expect("4096 ids fit");
    let desired = crate::state::State::new(ok).desired().unwrap();
    assert_eq!(desired.backends.len(), MAX_BACKENDS as usize);
    let (_, _, field, msg) = fail(&text(1097));
    assert_eq!(field, "target_group[1].backends[1096]");
    assert!(msg.contains("4096") && msg.contains("backend ids"), "{msg}");
}

#[test]
fn empty_target_group_is_allowed() {
    let text = sample_with(
        "backends = [\"198.18.2.11:5353\", \"198.18.2.12:5353\"]",
        "backends = []",
    );
    let c = parse(&text, "x").unwrap();
    assert!(c.target_group("dns-servers").unwrap().backends.is_empty());
}

#[test]
fn success_codes_forms() {
    let codes = |s: &str| s.parse::<SuccessCodes>().unwrap();
    let c = codes("200");
    assert!(c.matches(200) && !c.matches(201) && !c.matches(199));
    let c = codes("200-299");
    assert!(c.matches(200) && c.matches(250) && c.matches(299) && !c.matches(300));
    let c = codes("200,204,300-399");
    assert!(c.matches(204) && c.matches(399) && !c.matches(203) && !c.matches(400));
    assert_eq!(c.to_string(), "200,204,300-399");
    assert_eq!(
        codes(" 200 , 300 - 302 ,204-204").to_string(),
        "200,300-302,204"
    );
    assert_eq!(codes("100-599").to_string(), "100-599");
    assert_eq!(SuccessCodes::default(), codes("200-399"));
    assert_eq!(SuccessCodes::default().to_string(), DEFAULT_SUCCESS_CODES);
    assert_eq!(serde_json::to_value(codes("204")).unwrap(), "204");

    let err = |s: &str| s.parse::<SuccessCodes>().unwrap_err();
    assert!(err("").contains("must not be empty"), "{}", err(""));
    assert!(
        err("2xx").contains("\"2xx\" is not an HTTP status code"),
        "{}",
        err("2xx")
    );
    assert!(err("200,").contains("\"\" is not"), "{}", err("200,"));
    assert!(err("-200").contains("\"\" is not"), "{}", err("-200"));
    assert!(
        err("200-300-400").contains("\"300-400\""),
        "{}",
        err("200-300-400")
    );
    assert_eq!(err("600"), "600 is out of range (100-599)");
    assert_eq!(err("99-200"), "99 is out of range (100-599)");
    assert_eq!(
        err("399-200"),
        "range 399-200 is not ascending (write 200-399)"
    );
    assert_eq!(err("200-299,204"), "204 overlaps 200-299");
    assert_eq!(err("204,200-299"), "200-299 overlaps 204");
    assert_eq!(err("200,200"), "200 overlaps 200");
}

#[test]
fn health_check_port_for() {
    let mut hc = HealthCheckConfig::default();
    assert_eq!(hc.port_for(None, 80), 80);
    assert_eq!(hc.port_for(Some(8080), 80), 8080);
    hc.port = Some(9000);
    assert_eq!(hc.port_for(Some(8080), 80), 9000);
    assert_eq!(hc.port_for(None, 80), 9000);
}

#[test]
fn new_enum_names() {
    assert_eq!(AllUnhealthy::Drop.as_str(), "drop");
    assert_eq!(AllUnhealthy::FailOpen.to_string(), "fail_open");
    assert_eq!(AllUnhealthy::default(), AllUnhealthy::Drop);
    assert_eq!(HealthProtocol::Tcp.to_string(), "tcp");
    assert_eq!(HealthProtocol::Http.as_str(), "http");
    assert_eq!(
        serde_json::to_value(AllUnhealthy::FailOpen).unwrap(),
        "fail_open"
    );
}

#[test]
fn error_deregistration_delay() {
    let (line, col, field, msg) = fail(&format!(
        "{MINIMAL}{GROUP}deregistration_delay = \"1h 1s\"\n"
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (6, 24, "target_group[0].deregistration_delay")
    );
    assert_eq!(msg, "\"1h 1s\" is out of range (0s-1h)");
    let (_, _, field, msg) = fail(&format!("{MINIMAL}{GROUP}deregistration_delay = \"-1s\"\n"));
    assert_eq!(field, "target_group[0].deregistration_delay");
    assert!(msg.contains("is not a duration"), "{msg}");
    let (_, _, _, msg) = fail(&format!("{MINIMAL}{GROUP}deregistration_delay = 300\n"));
    assert!(msg.contains("such as \"300s\""), "{msg}");
}

#[test]
fn error_all_unhealthy() {
    let (line, col, field, msg) = fail(&format!("{MINIMAL}{GROUP}all_unhealthy = \"fail-open\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (6, 17, "target_group[0].all_unhealthy")
    );
    assert_eq!(
        msg,
        "unknown value \"fail-open\" (expected \"drop\" or \"fail_open\")"
    );
    let (_, _, field, msg) = fail(&format!("{MINIMAL}{GROUP}all_unhealthy = true\n"));
    assert_eq!(field, "target_group[0].all_unhealthy");
    assert_eq!(msg, "expected a string, found a boolean");
}

#[test]
fn error_backend_is_a_vip() {
    let text = format!(
        "{MINIMAL}[[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 80\n\
         protocol = \"tcp\"\ntarget_group = \"g\"\n{GROUP}"
    );
    let (line, _, field, msg) = fail(&text);
    assert_eq!((line, field.as_str()), (11, "target_group[0].backends[0]"));
    assert_eq!(
        msg,
        "10.0.0.1 is the vip of service \"web\": a backend cannot be a VIP"
    );
}

#[test]
fn addr_port_forms() {
    assert_eq!(
        parse_addr_port("198.18.2.11"),
        Ok((ip("198.18.2.11"), None))
    );
    assert_eq!(
        parse_addr_port("198.18.2.12:8080"),
        Ok((ip("198.18.2.12"), Some(8080)))
    );
    assert_eq!(
        parse_addr_port("2001:db8:2::11"),
        Ok((ip("2001:db8:2::11"), None))
    );
    assert_eq!(
        parse_addr_port("[2001:db8:2::12]:8080"),
        Ok((ip("2001:db8:2::12"), Some(8080)))
    );
    assert_eq!(
        parse_addr_port("[2001:db8:2::12]"),
        Ok((ip("2001:db8:2::12"), None))
    );
    assert!(parse_addr_port("[198.18.2.1]:80").is_err());
    assert!(parse_addr_port("198.18.2.1:").is_err());
    assert!(parse_addr_port("198.18.2.1:+80").is_err());
    assert!(parse_addr_port("host:80").is_err());
    assert!(parse_addr_port(" 198.18.2.1").is_err());
}
