//! `[target_group.scaling]`, its policies and schedules (`parse.rs`).

use super::*;

// ---- [target_group.scaling] ----

/// `MINIMAL` + `GROUP` (one backend) + `[target_group.scaling]` (line 6) + `body` (from
/// line 7).
fn with_scaling(body: &str) -> String {
    format!("{MINIMAL}{GROUP}[target_group.scaling]\n{body}")
}

/// `with_scaling("max = 1\n")` + `[[target_group.scaling.policy]]` (line 8) + `body` (from
/// line 9).
fn with_policy(body: &str) -> String {
    with_scaling(&format!("max = 1\n[[target_group.scaling.policy]]\n{body}"))
}

/// `with_scaling("max = 1\n")` + `[[target_group.scaling.schedule]]` (line 8) + `body`
/// (from line 9).
fn with_schedule(body: &str) -> String {
    with_scaling(&format!(
        "max = 1\n[[target_group.scaling.schedule]]\n{body}"
    ))
}

/// The scaling part of issue 5, as written there.
const ISSUE_SCALING: &str = r#"[target_group.scaling]
min = 2
max = 10
desired = 2
scale_out_command = "/usr/local/bin/launch-backend"   # prints the new backend(s), one ADDR[:PORT] a line
scale_in_command = "/usr/local/bin/terminate-backend"  # gets the backend in XLB_BACKEND after it is drained
cooldown = "300s"        # after a scaling action, before the next one of the same direction
warmup = "60s"           # a new backend's load is left out of the group's averages for this long
grace_period = "120s"    # how long a launched backend may take to pass its health checks

[[target_group.scaling.policy]]
type = "target_tracking"
metric = "new_flows_per_second_per_backend"
target = 100

[[target_group.scaling.policy]]
type = "step"
metric = "backend_cpu"
scale_out = { above = 0.70, for = "5m", add = 1 }
scale_in = { below = 0.30, for = "10m", remove = 1 }

[[target_group.scaling.schedule]]
cron = "0 8 * * MON-FRI"
desired = 6
"#;

fn issue_scaling() -> ScalingConfig {
    ScalingConfig {
        min: 2,
        max: 10,
        desired: 2,
        scale_out_command: Some("/usr/local/bin/launch-backend".into()),
        scale_in_command: Some("/usr/local/bin/terminate-backend".into()),
        hook_timeout: Duration::from_secs(60),
        cooldown: Duration::from_secs(300),
        warmup: Duration::from_secs(60),
        grace_period: Duration::from_secs(120),
        metric_command: None,
        metric_interval: Duration::from_secs(15),
        policies: vec![
            PolicyConfig::TargetTracking {
                metric: Metric::NewFlowsPerSecondPerBackend,
                target: 100.0,
                disable_scale_in: false,
            },
            PolicyConfig::Step {
                metric: Metric::BackendCpu,
                scale_out: Some(StepRule {
                    threshold: 0.70,
                    hold: Duration::from_secs(300),
                    change: 1,
                }),
                scale_in: Some(StepRule {
                    threshold: 0.30,
                    hold: Duration::from_secs(600),
                    change: 1,
                }),
            },
        ],
        schedules: vec![ScheduleConfig {
            cron: "0 8 * * MON-FRI".into(),
            desired: Some(6),
            min: None,
            max: None,
        }],
    }
}

#[test]
fn scaling_issue_example_parses() {
    // With an http health check (for backend_cpu) and without any.
    for check in ["[target_group.health_check]\npath = \"/health\"\n", ""] {
        let text = format!(
            "{MINIMAL}[[service]]\nname = \"web\"\nvip = \"198.18.100.1\"\nport = 80\n\
             protocol = \"tcp\"\ntarget_group = \"web-servers\"\n\n[[target_group]]\n\
             name = \"web-servers\"\nbackends = [\"198.18.2.11\", \"198.18.2.12\"]\n\
             {check}\n{ISSUE_SCALING}"
        );
        let c = parse(&text, "xlb.toml").unwrap();
        let g = &c.target_groups[0];
        assert_eq!(g.scaling, Some(issue_scaling()));
        assert_eq!(g.health_check.is_some(), !check.is_empty());
    }
    // Alone in a group with no service and no backend.
    let c = parse(&format!("{MINIMAL}{GROUP}{ISSUE_SCALING}"), "x").unwrap();
    assert_eq!(c.target_groups[0].scaling, Some(issue_scaling()));

    let json = serde_json::to_value(&c).unwrap();
    let s = &json["target_groups"][0]["scaling"];
    assert_eq!(s["min"], 2);
    assert_eq!(s["cooldown"], "5m");
    assert_eq!(s["grace_period"], "2m");
    assert_eq!(s["metric_command"], serde_json::Value::Null);
    assert_eq!(s["policies"][0]["type"], "target_tracking");
    assert_eq!(
        s["policies"][0]["metric"],
        "new_flows_per_second_per_backend"
    );
    assert_eq!(s["policies"][0]["target"], 100.0);
    assert_eq!(s["policies"][1]["type"], "step");
    assert_eq!(s["policies"][1]["metric"], "backend_cpu");
    assert_eq!(s["policies"][1]["scale_out"]["threshold"], 0.7);
    assert_eq!(s["policies"][1]["scale_out"]["for"], "5m");
    assert_eq!(s["policies"][1]["scale_in"]["for"], "10m");
    assert_eq!(s["schedules"][0]["cron"], "0 8 * * MON-FRI");
    assert_eq!(s["schedules"][0]["desired"], 6);
    assert_eq!(s["schedules"][0]["max"], serde_json::Value::Null);
}

#[test]
fn scaling_defaults_and_all_keys() {
    let c = parse(&with_scaling("max = 1\n"), "x").unwrap();
    assert_eq!(
        c.target_groups[0].scaling,
        Some(ScalingConfig {
            min: 1,
            max: 1,
            desired: 1,
            scale_out_command: None,
            scale_in_command: None,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            cooldown: DEFAULT_COOLDOWN,
            warmup: DEFAULT_WARMUP,
            grace_period: DEFAULT_GRACE_PERIOD,
            metric_command: None,
            metric_interval: DEFAULT_METRIC_INTERVAL,
            policies: vec![],
            schedules: vec![],
        })
    );
    assert_eq!(DEFAULT_HOOK_TIMEOUT, Duration::from_secs(60));
    assert_eq!(DEFAULT_COOLDOWN, Duration::from_secs(300));
    assert_eq!(DEFAULT_WARMUP, Duration::from_secs(60));
    assert_eq!(DEFAULT_GRACE_PERIOD, Duration::from_secs(120));
    assert_eq!(DEFAULT_METRIC_INTERVAL, Duration::from_secs(15));
    // desired defaults to min; a group may scale to nothing.
    let c = parse(
        &with_scaling("min = 3\nmax = 5\nscale_out_command = \"launch\"\n"),
        "x",
    )
    .unwrap();
    let s = c.target_groups[0].scaling.as_ref().unwrap();
    assert_eq!((s.min, s.desired, s.max), (3, 3, 5));
    let c = parse(&with_scaling("min = 0\nmax = 0\n"), "x").unwrap();
    let s = c.target_groups[0].scaling.as_ref().unwrap();
    assert_eq!((s.min, s.desired, s.max), (0, 0, 0));

    // Every key, at its bounds.
    let text = with_scaling(
        "min = 0\nmax = 1000\ndesired = 1000\nscale_out_command = \"a 'b' c\"\n\
         scale_in_command = \"d\"\nhook_timeout = \"1h\"\ncooldown = \"0s\"\n\
         warmup = \"0s\"\ngrace_period = \"1s\"\nmetric_command = \"m\"\n\
         metric_interval = \"1h\"\n\
         [[target_group.scaling.policy]]\ntype = \"target_tracking\"\n\
         metric = \"queue_depth\"\ntarget = 0.5\ndisable_scale_in = true\n\
         [[target_group.scaling.policy]]\ntype = \"step\"\nmetric = \"active_flows_per_backend\"\n\
         scale_in = { below = -1, for = \"1d\" }\n\
         [[target_group.scaling.policy]]\ntype = \"step\"\nmetric = \"bytes_per_second_per_backend\"\n\
         scale_out = { above = 1e9, for = \"0s\", add = 1000 }\n\
         [[target_group.scaling.schedule]]\ncron = \"30 0 18 * * FRI\"\nmin = 0\nmax = 0\n\
         [[target_group.scaling.schedule]]\ncron = \"@daily\"\nmin = 2\ndesired = 2\nmax = 1000\n",
    );
    let c = parse(&text, "x").unwrap();
    let s = c.target_groups[0].scaling.as_ref().unwrap();
    assert_eq!((s.min, s.desired, s.max), (0, 1000, 1000));
    assert_eq!(s.scale_out_command.as_deref(), Some("a 'b' c"));
    assert_eq!(s.scale_in_command.as_deref(), Some("d"));
    assert_eq!(s.metric_command.as_deref(), Some("m"));
    assert_eq!(
        (
            s.hook_timeout,
            s.cooldown,
            s.warmup,
            s.grace_period,
            s.metric_interval
        ),
        (
            Duration::from_secs(3600),
            Duration::ZERO,
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(3600)
        )
    );
    assert_eq!(
        s.policies,
        vec![
            PolicyConfig::TargetTracking {
                metric: Metric::Custom("queue_depth".into()),
                target: 0.5,
                disable_scale_in: true,
            },
            PolicyConfig::Step {
                metric: Metric::ActiveFlowsPerBackend,
                scale_out: None,
                scale_in: Some(StepRule {
                    threshold: -1.0,
                    hold: Duration::from_secs(86400),
                    change: 1,
                }),
            },
            PolicyConfig::Step {
                metric: Metric::BytesPerSecondPerBackend,
                scale_out: Some(StepRule {
                    threshold: 1e9,
                    hold: Duration::ZERO,
                    change: 1000,
                }),
                scale_in: None,
            },
        ]
    );
    assert_eq!(
        s.schedules,
        vec![
            ScheduleConfig {
                cron: "30 0 18 * * FRI".into(),
                desired: None,
                min: Some(0),
                max: Some(0),
            },
            ScheduleConfig {
                cron: "@daily".into(),
                desired: Some(2),
                min: Some(2),
                max: Some(1000),
            },
        ]
    );
}

#[test]
fn scaling_inline_and_dotted_forms() {
    // Inline, policies and schedules included.
    let text = format!(
        "{MINIMAL}{GROUP}scaling = {{ max = 1, policy = [{{ type = \"step\", \
         metric = \"backend_cpu\", scale_out = {{ above = 0.7, for = \"5m\" }} }}], \
         schedule = [{{ cron = \"0 8 * * *\", desired = 1 }}] }}\n"
    );
    let c = parse(&text, "x").unwrap();
    let s = c.target_groups[0].scaling.as_ref().unwrap();
    assert_eq!(s.policies.len(), 1);
    assert_eq!(s.schedules[0].desired, Some(1));
    // Dotted keys.
    let c = parse(
        &format!("{MINIMAL}{GROUP}scaling.max = 1\nscaling.cooldown = \"1m\"\n"),
        "x",
    )
    .unwrap();
    let s = c.target_groups[0].scaling.as_ref().unwrap();
    assert_eq!((s.max, s.cooldown), (1, Duration::from_secs(60)));
    // A step rule as a sub-table.
    let c = parse(
        &with_policy(
            "type = \"step\"\nmetric = \"backend_cpu\"\n\
             [target_group.scaling.policy.scale_in]\nbelow = 0.2\nfor = \"1m\"\n",
        ),
        "x",
    )
    .unwrap();
    let PolicyConfig::Step { scale_in, .. } =
        &c.target_groups[0].scaling.as_ref().unwrap().policies[0]
    else {
        panic!()
    };
    assert_eq!(scale_in.as_ref().unwrap().threshold, 0.2);
    // Each [[target_group]] has its own scaling, policies and schedules.
    let text = format!(
        "{MINIMAL}{GROUP}[target_group.scaling]\nmax = 1\n\
         [[target_group]]\nname = \"h\"\nbackends = []\n\
         [target_group.scaling]\nmax = 0\nmin = 0\n\
         [[target_group.scaling.policy]]\ntype = \"target_tracking\"\n\
         metric = \"backend_cpu\"\ntarget = 0.5\n"
    );
    let c = parse(&text, "x").unwrap();
    assert!(c.target_groups[0]
        .scaling
        .as_ref()
        .unwrap()
        .policies
        .is_empty());
    assert_eq!(
        c.target_groups[1].scaling.as_ref().unwrap().policies.len(),
        1
    );
    // Errors in the second group's policy name it.
    let (line, col, field, _) = fail(&format!("{text}[[target_group.scaling.policy]]\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (18, 1, "target_group[1].scaling.policy[1].type")
    );
    // Syntax errors are located the same way.
    let (line, _, field, msg) = fail(&format!("{text}target = 1\n"));
    assert_eq!(
        (line, field.as_str()),
        (18, "target_group[1].scaling.policy[0].target")
    );
    assert!(msg.contains("duplicate"), "{msg}");
    // No group to belong to.
    let (line, _, field, msg) = fail(&format!("{MINIMAL}[target_group.scaling]\nmax = 1\n"));
    assert_eq!((line, field.as_str()), (3, "target_group"));
    assert_eq!(
        msg,
        "[target_group.scaling] belongs to the [[target_group]] above it; there is none"
    );
    let (_, _, field, msg) = fail(&format!(
        "{MINIMAL}[[target_group.scaling.policy]]\ntype = \"step\"\n"
    ));
    assert_eq!(field, "target_group");
    assert!(msg.contains("there is none"), "{msg}");
}

#[test]
fn error_scaling_shape() {
    let (line, col, field, msg) = fail(&format!("{MINIMAL}{GROUP}scaling = 3\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (6, 11, "target_group[0].scaling")
    );
    assert!(
        msg.starts_with("expected a table ([target_group.scaling]")
            && msg.ends_with("found an integer"),
        "{msg}"
    );
    let (_, _, field, msg) = fail(&format!(
        "{MINIMAL}{GROUP}[[target_group.scaling]]\nmax = 1\n"
    ));
    assert_eq!(field, "target_group[0].scaling");
    assert!(msg.contains("found an array"), "{msg}");
    let (line, _, field, msg) = fail(&with_scaling(
        "max = 1\n[target_group.scaling.policy]\ntype = \"step\"\n",
    ));
    assert_eq!(
        (line, field.as_str()),
        (8, "target_group[0].scaling.policy")
    );
    assert_eq!(
        msg,
        "expected an array of tables ([[target_group.scaling.policy]]), found a table"
    );
    let (_, _, field, msg) = fail(&with_scaling("max = 1\nschedule = [1]\n"));
    assert_eq!(field, "target_group[0].scaling.schedule[0]");
    assert!(msg.contains("found an integer"), "{msg}");
}

#[test]
fn error_scaling_capacity() {
    let (line, col, field, msg) = fail(&with_scaling("min = 5\nmax = 3\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (7, 7, "target_group[0].scaling.min")
    );
    assert_eq!(
        msg,
        "min (5) is more than max (3); a scaling group needs min <= desired <= max"
    );
    let (line, col, field, msg) = fail(&with_scaling("max = 0\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (7, 7, "target_group[0].scaling.max")
    );
    assert!(
        msg.starts_with("max (0) is less than the default min (1)") && msg.contains("min = 0"),
        "{msg}"
    );
    let (line, col, field, msg) = fail(&with_scaling("min = 2\nmax = 1\ndesired = 1\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (7, 7, "target_group[0].scaling.min")
    );
    assert!(msg.starts_with("min (2) is more than max (1)"), "{msg}");
    let (line, col, field, msg) = fail(&with_scaling("min = 1\nmax = 1\ndesired = 0\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (9, 11, "target_group[0].scaling.desired")
    );
    assert_eq!(
        msg,
        "desired (0) is less than min (1); a scaling group needs min <= desired <= max"
    );
    let (_, _, field, msg) = fail(&with_scaling("max = 1\ndesired = 0\n"));
    assert_eq!(field, "target_group[0].scaling.desired");
    assert!(
        msg.starts_with("desired (0) is less than the default min (1)"),
        "{msg}"
    );
    let (line, col, field, msg) = fail(&with_scaling("max = 1\ndesired = 2\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (8, 11, "target_group[0].scaling.desired")
    );
    assert_eq!(
        msg,
        "desired (2) is more than max (1); a scaling group needs min <= desired <= max"
    );
    for (body, key, v) in [
        ("max = 1001\n", "max", "1001"),
        ("max = 1\nmin = -1\n", "min", "-1"),
        ("max = 1\ndesired = 1001\n", "desired", "1001"),
    ] {
        let (_, _, field, msg) = fail(&with_scaling(body));
        assert_eq!(field, format!("target_group[0].scaling.{key}"));
        assert_eq!(msg, format!("{v} is out of range (0-1000)"));
    }
    let (_, _, _, msg) = fail(&with_scaling("max = 1.0\n"));
    assert_eq!(msg, "expected an integer, found a float");
    // max is required.
    let (line, col, field, msg) = fail(&with_scaling("min = 1\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (6, 1, "target_group[0].scaling.max")
    );
    assert_eq!(msg, "missing required key `max`");
}

#[test]
fn error_scale_out_command() {
    // One backend listed and room for more: the group could never grow.
    let (line, col, field, msg) = fail(&with_scaling("max = 2\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (6, 1, "target_group[0].scaling.scale_out_command")
    );
    assert!(
        msg.starts_with(
            "missing: the group lists 1 backend and may grow to max = 2, which takes a \
             command that launches backends; give scale_out_command"
        ),
        "{msg}"
    );
    let (_, _, _, msg) = fail(&format!(
        "{MINIMAL}[[target_group]]\nname = \"g\"\nbackends = []\nscaling = {{ max = 1, min = 0 }}\n"
    ));
    assert!(
        msg.contains("the group lists no backend and may grow to max = 1"),
        "{msg}"
    );
    // As many listed as max: fine without it, and scale_in_command stays optional.
    let text = format!(
        "{MINIMAL}[[target_group]]\nname = \"g\"\nbackends = [\"10.0.0.1\", \"10.0.0.2\"]\n\
         [target_group.scaling]\nmax = 2\n"
    );
    let c = parse(&text, "x").unwrap();
    assert_eq!(
        c.target_groups[0]
            .scaling
            .as_ref()
            .unwrap()
            .scale_out_command,
        None
    );
    // Commands are non-empty strings.
    for key in ["scale_out_command", "scale_in_command", "metric_command"] {
        let (line, col, field, msg) = fail(&with_scaling(&format!("max = 1\n{key} = \" \"\n")));
        assert_eq!(
            (line, col, field),
            (8, key.len() + 4, format!("target_group[0].scaling.{key}"))
        );
        assert_eq!(msg, "must not be empty");
        let (_, _, _, msg) = fail(&with_scaling(&format!("max = 1\n{key} = [\"a\"]\n")));
        assert_eq!(msg, "expected a string, found an array");
        let (_, _, _, msg) = fail(&with_scaling(&format!("max = 1\n{key} = \"a\\u0000\"\n")));
        assert_eq!(msg, "contains a NUL character");
    }
}

#[test]
fn error_scaling_durations() {
    for (key, bad, range) in [
        ("cooldown", "1d 1s", "0s-1day"),
        ("warmup", "1h 1s", "0s-1h"),
        ("grace_period", "0s", "1s-1h"),
        ("grace_period", "61m", "1s-1h"),
        ("hook_timeout", "999ms", "1s-1h"),
        ("hook_timeout", "2h", "1s-1h"),
        ("metric_interval", "0s", "1s-1h"),
        ("metric_interval", "1h 1ms", "1s-1h"),
    ] {
        let (line, col, field, msg) = fail(&with_scaling(&format!("max = 1\n{key} = \"{bad}\"\n")));
        assert_eq!(
            (line, col, field),
            (8, key.len() + 4, format!("target_group[0].scaling.{key}"))
        );
        assert_eq!(msg, format!("\"{bad}\" is out of range ({range})"));
    }
    let (_, _, field, msg) = fail(&with_scaling("max = 1\ncooldown = 300\n"));
    assert_eq!(field, "target_group[0].scaling.cooldown");
    assert_eq!(
        msg,
        "expected a duration string such as \"300s\", found an integer"
    );
    let (_, _, _, msg) = fail(&with_scaling("max = 1\nwarmup = \"1 mn\"\n"));
    assert!(
        msg.starts_with(
            "\"1 mn\" is not a duration (e.g. \"30s\", \"5m\", \"250ms\"): unknown time unit \"mn\""
        ),
        "{msg}"
    );
    // The step rule's `for`.
    let (line, col, field, msg) = fail(&with_policy(
        "type = \"step\"\nmetric = \"backend_cpu\"\nscale_out = { above = 1, for = \"1d 1s\" }\n",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (11, 32, "target_group[0].scaling.policy[0].scale_out.for")
    );
    assert_eq!(msg, "\"1d 1s\" is out of range (0s-1day)");
}

#[test]
fn error_scaling_unknown_keys() {
    let (line, col, field, msg) = fail(&with_scaling("max = 1\ncooldow = \"1s\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (8, 1, "target_group[0].scaling.cooldow")
    );
    assert_eq!(
        msg,
        "unknown key `cooldow`; allowed in target_group[0].scaling: min, max, desired, \
         scale_out_command, scale_in_command, hook_timeout, cooldown, warmup, grace_period, \
         metric_command, metric_interval, policy, schedule"
    );
    // In a policy: the keys of its type.
    let (line, col, field, msg) = fail(&with_policy(
        "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = 1\ntarge = 2\n",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (12, 1, "target_group[0].scaling.policy[0].targe")
    );
    assert!(
        msg.ends_with(": type, metric, target, disable_scale_in"),
        "{msg}"
    );
    // The other type's keys.
    let (line, col, field, msg) = fail(&with_policy(
        "type = \"step\"\nmetric = \"backend_cpu\"\ntarget = 1\n",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (11, 10, "target_group[0].scaling.policy[0].target")
    );
    assert_eq!(
        msg,
        "`target` is only for target_tracking policies; this policy's type is \"step\""
    );
    let (_, _, field, msg) = fail(&with_policy(
        "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = 1\n\
         scale_in = { below = 1, for = \"1m\" }\n",
    ));
    assert_eq!(field, "target_group[0].scaling.policy[0].scale_in");
    assert_eq!(
        msg,
        "`scale_in` is only for step policies; this policy's type is \"target_tracking\""
    );
    let (_, _, field, msg) = fail(&with_policy(
        "type = \"step\"\nmetric = \"backend_cpu\"\ndisable_scale_in = true\n",
    ));
    assert_eq!(field, "target_group[0].scaling.policy[0].disable_scale_in");
    assert!(
        msg.starts_with("`disable_scale_in` is only for target_tracking"),
        "{msg}"
    );
    // In a step rule.
    let (line, col, field, msg) = fail(&with_policy(
        "type = \"step\"\nmetric = \"backend_cpu\"\n\
         scale_out = { above = 1, for = \"1m\", ad = 1 }\n",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (11, 38, "target_group[0].scaling.policy[0].scale_out.ad")
    );
    assert_eq!(
        msg,
        "unknown key `ad`; allowed in target_group[0].scaling.policy[0].scale_out: above, \
         for, add"
    );
    // The other direction's keys.
    let (line, col, field, msg) = fail(&with_policy(
        "type = \"step\"\nmetric = \"backend_cpu\"\nscale_out = { below = 1, for = \"1m\" }\n",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (11, 23, "target_group[0].scaling.policy[0].scale_out.below")
    );
    assert_eq!(msg, "`below` is for scale_in; scale_out takes `above`");
    let (_, _, field, msg) = fail(&with_policy(
        "type = \"step\"\nmetric = \"backend_cpu\"\n\
         scale_in = { below = 1, for = \"1m\", add = 1 }\n",
    ));
    assert_eq!(field, "target_group[0].scaling.policy[0].scale_in.add");
    assert_eq!(msg, "`add` is for scale_out; scale_in takes `remove`");
    // In a schedule.
    let (line, col, field, msg) = fail(&with_schedule("cron = \"@daily\"\ndesire = 1\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (10, 1, "target_group[0].scaling.schedule[0].desire")
    );
    assert!(msg.ends_with(": cron, desired, min, max"), "{msg}");
}

#[test]
fn error_policy_type() {
    let (line, col, field, msg) = fail(&with_policy(
        "type = \"simple\"\nmetric = \"backend_cpu\"\n",
    ));
    assert_eq!(
        (line, col, field.as_str()),
        (9, 8, "target_group[0].scaling.policy[0].type")
    );
    assert_eq!(
        msg,
        "unknown policy type \"simple\" (expected \"target_tracking\" or \"step\")"
    );
    let (line, col, field, msg) = fail(&with_policy("metric = \"backend_cpu\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (8, 1, "target_group[0].scaling.policy[0].type")
    );
    assert_eq!(msg, "missing required key `type`");
    let (_, _, _, msg) = fail(&with_policy("type = 1\n"));
    assert_eq!(msg, "expected a string, found an integer");
    // metric is required too.
    let (_, _, field, msg) = fail(&with_policy("type = \"target_tracking\"\ntarget = 1\n"));
    assert_eq!(field, "target_group[0].scaling.policy[0].metric");
    assert_eq!(msg, "missing required key `metric`");
}

#[test]
fn error_policy_metric() {
    for bad in ["Backend_CPU", "backend-cpu", "1cpu", "", "_x", "cpu load"] {
        let (line, col, field, msg) = fail(&with_policy(&format!(
            "type = \"target_tracking\"\nmetric = \"{bad}\"\ntarget = 1\n"
        )));
        assert_eq!(
            (line, col, field.as_str()),
            (10, 10, "target_group[0].scaling.policy[0].metric")
        );
        assert_eq!(
            msg,
            format!(
                "unknown metric \"{bad}\": expected one of new_flows_per_second_per_backend, \
                 packets_per_second_per_backend, bytes_per_second_per_backend, \
                 active_flows_per_backend, new_flows_per_second, packets_per_second, \
                 bytes_per_second, active_flows, backend_cpu, or the name of a number the \
                 backends report (lowercase letters, digits and _, starting with a letter, \
                 at most 64 characters)"
            )
        );
    }
    // A group total cannot drive target tracking.
    let (_, _, field, msg) = fail(&with_policy(
        "type = \"target_tracking\"\nmetric = \"new_flows_per_second\"\ntarget = 1\n",
    ));
    assert_eq!(field, "target_group[0].scaling.policy[0].metric");
    assert!(msg.contains("use a step policy for group totals"), "{msg}");
    let long = format!("m{}", "x".repeat(64));
    let (_, _, _, msg) = fail(&with_policy(&format!(
        "type = \"target_tracking\"\nmetric = \"{long}\"\ntarget = 1\n"
    )));
    assert!(msg.starts_with("unknown metric"), "{msg}");
    // Every built-in name, and custom names up to 64 characters.
    for m in Metric::BUILT_IN
        .iter()
        .filter(|m| !m.is_group_total())
        .map(Metric::name)
        .chain([&long[1..], "x", "cpu2_a"])
    {
        let c = parse(
            &with_policy(&format!(
                "type = \"target_tracking\"\nmetric = \"{m}\"\ntarget = 1\n"
            )),
            "x",
        )
        .unwrap();
        let PolicyConfig::TargetTracking { metric, .. } =
            &c.target_groups[0].scaling.as_ref().unwrap().policies[0]
        else {
            panic!()
        };
        assert_eq!(metric.name(), m);
        assert_eq!(metric.to_owned(), m.parse::<Metric>().unwrap());
    }
    assert_eq!("backend_cpu".parse::<Metric>(), Ok(Metric::BackendCpu));
    assert_eq!(
        "queue".parse::<Metric>(),
        Ok(Metric::Custom("queue".into()))
    );
}

#[test]
fn error_policy_target() {
    for bad in ["0", "-1", "0.0", "-0.5"] {
        let (line, col, field, msg) = fail(&with_policy(&format!(
            "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = {bad}\n"
        )));
        assert_eq!(
            (line, col, field.as_str()),
            (11, 10, "target_group[0].scaling.policy[0].target")
        );
        let shown = bad.trim_end_matches(".0");
        assert_eq!(msg, format!("the target must be more than 0, not {shown}"));
    }
    let (_, _, _, msg) = fail(&with_policy(
        "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = \"100\"\n",
    ));
    assert_eq!(msg, "expected a number, found a string");
    let (_, _, _, msg) = fail(&with_policy(
        "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = inf\n",
    ));
    assert_eq!(msg, "inf is not a finite number");
    let (_, _, _, msg) = fail(&with_policy(
        "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = nan\n",
    ));
    assert_eq!(msg, "NaN is not a finite number");
    let (_, _, field, msg) = fail(&with_policy(
        "type = \"target_tracking\"\nmetric = \"backend_cpu\"\n",
    ));
    assert_eq!(field, "target_group[0].scaling.policy[0].target");
    assert_eq!(msg, "missing required key `target`");
    let (_, _, field, msg) = fail(&with_policy(
        "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = 1\n\
         disable_scale_in = \"yes\"\n",
    ));
    assert_eq!(field, "target_group[0].scaling.policy[0].disable_scale_in");
    assert_eq!(msg, "expected a boolean (true or false), found a string");
}

#[test]
fn error_step_rules() {
    // Neither rule.
    let (line, col, field, msg) = fail(&with_policy("type = \"step\"\nmetric = \"backend_cpu\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (8, 1, "target_group[0].scaling.policy[0]")
    );
    assert!(
        msg.starts_with(
            "a step policy needs scale_out = { above = ..., for = \"...\", add = ... }"
        ),
        "{msg}"
    );
    // below >= above.
    for (above, below) in [("0.5", "0.5"), ("0.3", "0.7"), ("1", "1.0")] {
        let (line, col, field, msg) = fail(&with_policy(&format!(
            "type = \"step\"\nmetric = \"backend_cpu\"\n\
             scale_out = {{ above = {above}, for = \"5m\" }}\n\
             scale_in = {{ below = {below}, for = \"5m\" }}\n"
        )));
        assert_eq!(
            (line, col, field.as_str()),
            (12, 22, "target_group[0].scaling.policy[0].scale_in.below")
        );
        assert!(
            msg.starts_with(&format!(
                "below ({}) must be less than scale_out's above ({})",
                below.trim_end_matches(".0"),
                above
            )),
            "{msg}"
        );
    }
    // add / remove: 1..1000.
    for (rule, key) in [("scale_out", "add"), ("scale_in", "remove")] {
        let threshold = if rule == "scale_out" {
            "above"
        } else {
            "below"
        };
        for bad in ["0", "1001"] {
            let (_, _, field, msg) = fail(&with_policy(&format!(
                "type = \"step\"\nmetric = \"backend_cpu\"\n\
                 {rule} = {{ {threshold} = 1, for = \"5m\", {key} = {bad} }}\n"
            )));
            assert_eq!(
                field,
                format!("target_group[0].scaling.policy[0].{rule}.{key}")
            );
            assert_eq!(msg, format!("{bad} is out of range (1-1000)"));
        }
        // The threshold and `for` are required.
        let (line, col, field, msg) = fail(&with_policy(&format!(
            "type = \"step\"\nmetric = \"backend_cpu\"\n{rule} = {{ for = \"5m\" }}\n"
        )));
        assert_eq!(
            (line, field),
            (
                11,
                format!("target_group[0].scaling.policy[0].{rule}.{threshold}")
            )
        );
        assert_eq!(col, rule.len() + 4);
        assert_eq!(msg, format!("missing required key `{threshold}`"));
        let (_, _, field, msg) = fail(&with_policy(&format!(
            "type = \"step\"\nmetric = \"backend_cpu\"\n{rule} = {{ {threshold} = 1 }}\n"
        )));
        assert_eq!(
            field,
            format!("target_group[0].scaling.policy[0].{rule}.for")
        );
        assert_eq!(msg, "missing required key `for`");
    }
    let (_, _, field, msg) = fail(&with_policy(
        "type = \"step\"\nmetric = \"backend_cpu\"\nscale_out = 0.7\n",
    ));
    assert_eq!(field, "target_group[0].scaling.policy[0].scale_out");
    assert_eq!(
        msg,
        "expected a table such as scale_out = { above = 0.5, for = \"5m\", add = 1 }, \
         found a float"
    );
    let (_, _, _, msg) = fail(&with_policy(
        "type = \"step\"\nmetric = \"backend_cpu\"\nscale_out = { above = \"70%\", for = \"5m\" }\n",
    ));
    assert_eq!(msg, "expected a number, found a string");
}

#[test]
fn error_schedule_cron() {
    // A bad field: at the value, naming the field.
    let (line, col, field, msg) = fail(&with_schedule("cron = \"0 8 * * 8\"\ndesired = 1\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (9, 8, "target_group[0].scaling.schedule[0].cron")
    );
    assert_eq!(
        msg,
        "\"0 8 * * 8\" is not a valid cron expression: the day-of-week field \"8\": number \
         out of bounds (day-of-week: 0-7 or SUN-SAT, L or #)"
    );
    let e = parse(
        &with_schedule("desired = 1\ncron = \"61 8 * * MON-FRI\"\n"),
        "xlb.toml",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "xlb.toml:10:8: target_group[0].scaling.schedule[0].cron: \"61 8 * * MON-FRI\" is \
         not a valid cron expression: the minute field \"61\": number out of bounds \
         (minute: 0-59)"
    );
    // With seconds first.
    let (_, _, _, msg) = fail(&with_schedule("cron = \"0 0 25 * * *\"\ndesired = 1\n"));
    assert!(msg.contains("the hour field \"25\""), "{msg}");
    let (_, _, _, msg) = fail(&with_schedule("cron = \"60 0 8 * * *\"\ndesired = 1\n"));
    assert!(msg.contains("the second field \"60\""), "{msg}");
    let (_, _, _, msg) = fail(&with_schedule("cron = \"0 8 * * MONDAY\"\ndesired = 1\n"));
    assert!(
        msg.ends_with("the day-of-week field \"MONDAY\": it contains a character not allowed there (day-of-week: 0-7 or SUN-SAT, L or #)"),
        "{msg}"
    );
    let (_, _, _, msg) = fail(&with_schedule("cron = \"*/0 * * * *\"\ndesired = 1\n"));
    assert!(
        msg.ends_with("the minute field \"*/0\": step cannot be zero (minute: 0-59)"),
        "{msg}"
    );
    // The wrong number of fields.
    for (cron, n) in [("0 8 * *", 4), ("0 0 8 * * * 2030", 7)] {
        let (_, _, _, msg) = fail(&with_schedule(&format!("cron = \"{cron}\"\ndesired = 1\n")));
        assert_eq!(
            msg,
            format!(
                "\"{cron}\" is not a valid cron expression: it has {n} fields; expected 5 \
                 fields (minute hour day-of-month month day-of-week) or 6 with seconds first"
            )
        );
    }
    let (_, _, _, msg) = fail(&with_schedule("cron = \" \"\ndesired = 1\n"));
    assert!(msg.contains("it is empty"), "{msg}");
    let (_, _, _, msg) = fail(&with_schedule("cron = \"@reboot\"\ndesired = 1\n"));
    assert!(msg.contains("unknown nickname \"@reboot\""), "{msg}");
    // Never fires.
    let (line, col, _, msg) = fail(&with_schedule("cron = \"0 0 30 2 *\"\ndesired = 1\n"));
    assert_eq!((line, col), (9, 8));
    assert_eq!(
        msg,
        "\"0 0 30 2 *\" never fires: no date matches its day-of-month, month and day-of-week \
         fields"
    );
    // Missing, or not a string.
    let (line, col, field, msg) = fail(&with_schedule("desired = 1\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (8, 1, "target_group[0].scaling.schedule[0].cron")
    );
    assert_eq!(msg, "missing required key `cron`");
    let (_, _, _, msg) = fail(&with_schedule("cron = 1\ndesired = 1\n"));
    assert_eq!(msg, "expected a string, found an integer");
    // Forms that are fine.
    for cron in [
        "0 8 * * MON-FRI",
        "0 8 * * mon-fri",
        "30 0 8 * * 1-5",
        "*/15 * * * *",
        "0 0 29 2 *",
        "0 0 L * *",
        "0 9 ? * 1#1",
        "@hourly",
        "0 0 1 JAN,JUL *",
    ] {
        let c = parse(
            &with_schedule(&format!("cron = \"{cron}\"\ndesired = 1\n")),
            "x",
        );
        assert!(c.is_ok(), "{cron}: {c:?}");
    }
}

#[test]
fn cron_evaluation() {
    use chrono::{DateTime, Utc};
    let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    // Saturday 2026-11-28 12:00 UTC: the next weekday 08:00 is Monday's.
    let next = parse_cron("0 8 * * MON-FRI")
        .unwrap()
        .find_next_occurrence(&at("2026-11-28T12:00:00Z"), false)
        .unwrap();
    assert_eq!(next, at("2026-11-30T08:00:00Z"));
    // 6 fields: seconds first.
    let next = parse_cron("30 0 8 * * *")
        .unwrap()
        .find_next_occurrence(&at("2026-11-28T12:00:00Z"), false)
        .unwrap();
    assert_eq!(next, at("2026-11-29T08:00:30Z"));
    assert!(parse_cron("0 8 * * * 2030").is_err());
    assert!(cron_parser().parse("0 8 * * *").is_ok());
}

#[test]
fn error_schedule_values() {
    let (line, col, field, msg) = fail(&with_schedule("cron = \"@daily\"\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (8, 1, "target_group[0].scaling.schedule[0]")
    );
    assert_eq!(
        msg,
        "the schedule sets nothing: give desired, min or max (or several)"
    );
    let (line, col, field, msg) = fail(&with_schedule("cron = \"@daily\"\nmin = 3\nmax = 2\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (10, 7, "target_group[0].scaling.schedule[0].min")
    );
    assert_eq!(
        msg,
        "min (3) is more than max (2); a schedule that sets several needs min <= desired <= max"
    );
    let (line, col, field, msg) = fail(&with_schedule("cron = \"@daily\"\nmin = 3\ndesired = 2\n"));
    assert_eq!(
        (line, col, field.as_str()),
        (11, 11, "target_group[0].scaling.schedule[0].desired")
    );
    assert!(msg.starts_with("desired (2) is less than min (3)"), "{msg}");
    let (_, _, field, msg) = fail(&with_schedule("cron = \"@daily\"\nmax = 3\ndesired = 4\n"));
    assert_eq!(field, "target_group[0].scaling.schedule[0].desired");
    assert!(msg.starts_with("desired (4) is more than max (3)"), "{msg}");
    for key in ["desired", "min", "max"] {
        let (_, _, field, msg) = fail(&with_schedule(&format!(
            "cron = \"@daily\"\n{key} = 1001\n"
        )));
        assert_eq!(field, format!("target_group[0].scaling.schedule[0].{key}"));
        assert_eq!(msg, "1001 is out of range (0-1000)");
    }
    // Alone, each may be anything in range, whatever the group's own bounds.
    for key in ["desired", "min", "max"] {
        parse(
            &with_schedule(&format!("cron = \"@daily\"\n{key} = 1000\n")),
            "x",
        )
        .unwrap();
        parse(
            &with_schedule(&format!("cron = \"@daily\"\n{key} = 0\n")),
            "x",
        )
        .unwrap();
    }
}
