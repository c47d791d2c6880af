//! `[target_group.health_check]` and `[target_group.passive_health]` (`parse.rs`).

use super::*;

#[test]
fn error_health_check_shape() {
    // Unknown key.
    let (line, col, field, msg) = fail(&with_check("protocl = \"tcp\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (7, 1, "target_group[0].health_check.protocl")
    );
    assert!(msg.contains("protocol, path, port, interval"), "{msg}");
    // In the second group: the index follows the [[target_group]] above.
    let text = format!(
        "{MINIMAL}{GROUP}[[target_group]]\nname = \"h\"\nbackends = []\n\
         [target_group.health_check]\ntimout = \"1s\"\n"
    );
    let (line, _, field, _) = fail(&text);
    assert_eq!(
        (line, field.as_str()),
        (10, "target_group[1].health_check.timout")
    );
    // Inline, with an unknown key.
    let (line, _, field, _) = fail(&format!(
        "{MINIMAL}{GROUP}health_check = {{ intervall = \"1s\" }}\n"
    ));
    assert_eq!(
        (line, field.as_str()),
        (6, "target_group[0].health_check.intervall")
    );
    // Not a table.
    let (line, col, field, msg) = fail(&format!("{MINIMAL}{GROUP}health_check = true\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (6, 16, "target_group[0].health_check")
    );
    assert!(
        msg.contains("expected a table") && msg.contains("found a boolean"),
        "{msg}"
    );
    let (_, _, field, msg) = fail(&format!(
        "{MINIMAL}{GROUP}[[target_group.health_check]]\nprotocol = \"tcp\"\n"
    ));
    assert_eq!(field, "target_group[0].health_check");
    assert!(msg.contains("found an array"), "{msg}");
    // Before any [[target_group]].
    let (line, _, field, msg) = fail(&format!(
        "{MINIMAL}[target_group.health_check]\nprotocol = \"tcp\"\n"
    ));
    assert_eq!((line, field.as_str()), (3, "target_group"));
    assert!(msg.contains("there is none"), "{msg}");
    // A syntax error inside the section names the group's field.
    let (line, _, field, msg) = fail(&with_check("interval = \"1m\"\ninterval = \"2m\"\n"));
    assert_eq!(
        (line, field.as_str()),
        (8, "target_group[0].health_check.interval")
    );
    assert!(msg.contains("duplicate"), "{msg}");
}

#[test]
fn error_health_check_protocol() {
    let (line, col, field, msg) = fail(&with_check("protocol = \"https\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (7, 12, "target_group[0].health_check.protocol")
    );
    assert_eq!(
        msg,
        "unknown protocol \"https\" (expected \"tcp\" or \"http\")"
    );
}

#[test]
fn error_health_check_path() {
    let (line, col, field, msg) = fail(&with_check("path = \"health\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (7, 8, "target_group[0].health_check.path")
    );
    assert_eq!(msg, "\"health\" must start with /");
    let (_, _, field, msg) = fail(&with_check("path = \"/a b\"\n"));
    assert_eq!(field, "target_group[0].health_check.path");
    assert!(msg.contains("whitespace"), "{msg}");
    let (_, _, _, msg) = fail(&with_check("path = \"/a\\tb\"\n"));
    assert!(msg.contains("whitespace"), "{msg}");
    let (_, _, _, msg) = fail(&with_check("path = \"/a\\u0001\"\n"));
    assert!(msg.contains("control character"), "{msg}");
    let (_, _, _, msg) = fail(&with_check("path = 1\n"));
    assert_eq!(msg, "expected a string, found an integer");
}

#[test]
fn error_http_only_keys_with_tcp() {
    // `path` before `protocol`: the order of the keys does not matter.
    let (line, col, field, msg) = fail(&with_check("path = \"/health\"\nprotocol = \"tcp\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (7, 8, "target_group[0].health_check.path")
    );
    assert_eq!(
        msg,
        "path is only for http checks; this check's protocol is \"tcp\""
    );
    let (line, col, field, msg) =
        fail(&with_check("protocol = \"tcp\"\nsuccess_codes = \"200\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (8, 17, "target_group[0].health_check.success_codes")
    );
    assert!(
        msg.starts_with("success_codes is only for http checks"),
        "{msg}"
    );
}

#[test]
fn error_health_check_success_codes() {
    let (line, col, field, msg) = fail(&with_check("success_codes = \"2xx\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (7, 17, "target_group[0].health_check.success_codes")
    );
    assert!(msg.contains("\"2xx\" is not an HTTP status code"), "{msg}");
    let (_, _, _, msg) = fail(&with_check("success_codes = \"299-200\"\n"));
    assert_eq!(msg, "range 299-200 is not ascending (write 200-299)");
    let (_, _, _, msg) = fail(&with_check("success_codes = 200\n"));
    assert_eq!(msg, "expected a string, found an integer");
}

#[test]
fn error_health_check_durations() {
    let e = parse(&with_check("interval = \"30x\"\n"), "xlb.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "xlb.toml:7:12: target_group[0].health_check.interval: \"30x\" is not a \
             duration (e.g. \"30s\", \"5m\", \"250ms\"): unknown time unit \"x\""
        ),
        "{e}"
    );
    for (body, field, msg) in [
        (
            "interval = \"99ms\"",
            "interval",
            "\"99ms\" is out of range (100ms-5m)",
        ),
        (
            "interval = \"301s\"",
            "interval",
            "\"301s\" is out of range (100ms-5m)",
        ),
        (
            "timeout = \"9ms\"",
            "timeout",
            "\"9ms\" is out of range (10ms-2m)",
        ),
        (
            "timeout = \"121s\"",
            "timeout",
            "\"121s\" is out of range (10ms-2m)",
        ),
    ] {
        let (line, col, f, m) = fail(&with_check(&format!("{body}\n")));
        assert_eq!(
            (line, f.as_str(), m.as_str()),
            (
                7,
                format!("target_group[0].health_check.{field}").as_str(),
                msg
            )
        );
        assert_eq!(col, field.len() + 4);
    }
    // The bounds themselves are fine.
    parse(
        &with_check("interval = \"100ms\"\ntimeout = \"10ms\"\n"),
        "x",
    )
    .unwrap();
    parse(&with_check("interval = \"5m\"\ntimeout = \"2m\"\n"), "x").unwrap();
}

#[test]
fn error_health_check_timeout_over_interval() {
    // Both set: the timeout is wrong.
    let (line, col, field, msg) = fail(&with_check("interval = \"2s\"\ntimeout = \"3s\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (8, 11, "target_group[0].health_check.timeout")
    );
    assert_eq!(
        msg,
        "the timeout (3s) must not be longer than the interval (2s): a check must end \
         before the next one starts"
    );
    // Only the timeout set.
    let (_, _, field, msg) = fail(&with_check("timeout = \"31s\"\n"));
    assert_eq!(field, "target_group[0].health_check.timeout");
    assert!(msg.contains("the default interval (30s)"), "{msg}");
    // Only the interval set, below the default timeout.
    let (line, col, field, msg) = fail(&with_check("interval = \"1s\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (7, 12, "target_group[0].health_check.interval")
    );
    assert!(
        msg.contains("default timeout (5s)") && msg.contains("set timeout to at most 1s"),
        "{msg}"
    );
    // Inline tables point at the value too.
    let (line, col, field, _) = fail(&format!(
        "{MINIMAL}{GROUP}health_check = {{ interval = \"1s\" }}\n"
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (6, 29, "target_group[0].health_check.interval")
    );
}

#[test]
fn error_health_check_thresholds_and_port() {
    for key in ["healthy_threshold", "unhealthy_threshold"] {
        for v in ["0", "11"] {
            let (line, col, field, msg) = fail(&with_check(&format!("{key} = {v}\n")));
            assert_eq!(
                (line, col, field),
                (
                    7,
                    key.len() + 4,
                    format!("target_group[0].health_check.{key}")
                )
            );
            assert_eq!(msg, format!("{v} is out of range (1-10)"));
        }
    }
    for v in ["0", "65536"] {
        let (line, col, field, msg) = fail(&with_check(&format!("port = {v}\n")));
        assert_eq!(
            (line, col, field.as_str()),
            (7, 8, "target_group[0].health_check.port")
        );
        assert_eq!(msg, format!("{v} is out of range (1-65535)"));
    }
}

// ---- passive health ----

/// `MINIMAL` + `GROUP` + a tcp check (line 6-7) + `[target_group.passive_health]`
/// (line 8) + `body` (from line 9).
fn with_passive(body: &str) -> String {
    format!(
        "{MINIMAL}{GROUP}[target_group.health_check]\nprotocol = \"tcp\"\n\
         [target_group.passive_health]\n{body}"
    )
}

#[test]
fn passive_health_defaults_and_values() {
    let c = parse(&with_check("protocol = \"tcp\"\n"), "x").unwrap();
    assert_eq!(c.target_groups[0].passive_health, None, "off when absent");
    let c = parse(&with_passive(""), "x").unwrap();
    let ph = c.target_groups[0].passive_health.clone().unwrap();
    assert_eq!(ph, PassiveHealthConfig::default());
    assert_eq!(
        (ph.refused_threshold, ph.unanswered_threshold),
        (3, 3),
        "the issue's defaults"
    );
    assert_eq!(ph.unanswered_timeout, Duration::from_secs(1));
    assert_eq!(ph.window, Duration::from_secs(10));
    assert!(!ph.redispatch);
    assert_eq!(ph.base_ejection, Duration::from_secs(30));
    assert_eq!(ph.max_ejection_percent, 50);
    let c = parse(
        &with_passive(
            "refused_threshold = 5\nunanswered_threshold = 2\nunanswered_timeout = \"250ms\"\n\
             window = \"2s\"\nredispatch = true\nudp_unanswered_share = 1\n\
             min_udp_flows = 7\nbase_ejection = \"5s\"\nmax_ejection = \"1m\"\n\
             max_ejection_percent = 34\n",
        ),
        "x",
    )
    .unwrap();
    let ph = c.target_groups[0].passive_health.clone().unwrap();
    assert_eq!(
        ph,
        PassiveHealthConfig {
            refused_threshold: 5,
            unanswered_threshold: 2,
            unanswered_timeout: Duration::from_millis(250),
            window: Duration::from_secs(2),
            redispatch: true,
            udp_unanswered_share: 1.0,
            min_udp_flows: 7,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
            max_ejection_percent: 34,
        }
    );
    // Inline too.
    let c = parse(
        &format!(
            "{MINIMAL}{GROUP}health_check = {{ protocol = \"tcp\" }}\n\
             passive_health = {{ redispatch = true }}\n"
        ),
        "x",
    )
    .unwrap();
    assert!(
        c.target_groups[0]
            .passive_health
            .as_ref()
            .unwrap()
            .redispatch
    );
}

#[test]
fn passive_health_errors() {
    let (line, col, field, msg) = fail(&with_passive("refused_treshold = 3\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (9, 1, "target_group[0].passive_health.refused_treshold")
    );
    assert!(
        msg.contains("refused_threshold, unanswered_threshold"),
        "{msg}"
    );
    let (line, _, field, msg) = fail(&with_passive("refused_threshold = 0\n"));
    assert_eq!(
        (line, field.as_str()),
        (9, "target_group[0].passive_health.refused_threshold")
    );
    assert!(msg.contains("out of range (1-1000)"), "{msg}");
    let (_, _, field, msg) = fail(&with_passive("unanswered_timeout = 1\n"));
    assert_eq!(field, "target_group[0].passive_health.unanswered_timeout");
    assert!(msg.contains("\"1s\""), "{msg}");
    let (_, _, field, msg) = fail(&with_passive("udp_unanswered_share = 0\n"));
    assert_eq!(field, "target_group[0].passive_health.udp_unanswered_share");
    assert!(msg.contains("out of range"), "{msg}");
    let (_, _, _, msg) = fail(&with_passive("udp_unanswered_share = 1.5\n"));
    assert!(msg.contains("at most 1"), "{msg}");
    let (_, _, field, msg) = fail(&with_passive("redispatch = \"yes\"\n"));
    assert_eq!(field, "target_group[0].passive_health.redispatch");
    assert!(msg.contains("boolean"), "{msg}");
    let (line, _, field, msg) = fail(&with_passive("base_ejection = \"10m\"\n"));
    assert_eq!(
        (line, field.as_str()),
        (9, "target_group[0].passive_health.base_ejection")
    );
    assert!(
        msg.contains("must not be shorter than base_ejection"),
        "{msg}"
    );
    let (_, _, _, msg) = fail(&with_passive("max_ejection_percent = 101\n"));
    assert!(msg.contains("out of range (0-100)"), "{msg}");
    // Without active checks nothing would bring a backend back.
    let (line, _, field, msg) = fail(&format!(
        "{MINIMAL}{GROUP}[target_group.passive_health]\nredispatch = true\n"
    ));
    assert_eq!(
        (line, field.as_str()),
        (6, "target_group[0].passive_health")
    );
    assert!(msg.contains("add a [target_group.health_check]"), "{msg}");
    // Before any [[target_group]].
    let (_, _, _, msg) = fail(&format!(
        "{MINIMAL}[target_group.passive_health]\nredispatch = true\n"
    ));
    assert!(msg.contains("there is none"), "{msg}");
}
