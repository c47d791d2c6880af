//! Auto scaling end to end: hook scripts that create and remove real backend namespaces, a
//! bounded load ramp that grows the group, its shrinking back once the load stops, hooks that
//! fail or hang, and a scheduled action.
//!
//! Needs root (skipped with a message otherwise).
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use xlb_lab::{
    client,
    lab::{Lab, VIP_V4},
    netns::{ChildGuard, Netns},
    xlbd::{cleanup_stale_pins, Xlbd},
};

const T: Duration = Duration::from_secs(3);

fn skip() -> bool {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return true;
    }
    false
}

/// The scale-out hook: one fresh backend namespace per backend asked for, on the lab's
/// switch, running a real server; prints each new address.
fn launch_script(prefix: &str, dir: &Path, lab_bin: &Path) -> String {
    format!(
        r#"#!/bin/bash
set -euo pipefail
P={prefix}
exec 9>{dir}/lock
flock 9
for _ in $(seq 1 "${{XLB_COUNT:-1}}"); do
  n=$(cat {dir}/next 2>/dev/null || echo 1)
  echo $((n + 1)) > {dir}/next
  ns=$P-s$n
  addr=198.18.2.$((100 + n))
  ip netns add $ns
  ip -n $ns link set lo up
  ip link add eth0 netns $ns type veth peer name s$n netns $P-sw
  ip -n $P-sw link set s$n master br0 up
  ip -n $ns addr add $addr/24 dev eth0
  ip -n $ns link set eth0 up
  ip -n $ns route add default via 198.18.2.1
  ip netns exec $ns ethtool -K eth0 tx off >/dev/null
  setsid ip netns exec $ns {lab} serve --name s$n --http 8080 </dev/null >/dev/null 2>&1 9>&- &
  for _ in $(seq 1 100); do
    if ip netns exec $ns bash -c "exec 3<>/dev/tcp/$addr/8080" 2>/dev/null; then break; fi
    sleep 0.05
  done
  ip netns exec $ns ping -c1 -W1 198.18.2.1 >/dev/null 2>&1 || true
  echo "$XLB_TARGET_GROUP $XLB_REASON" >> {dir}/launched
  echo $addr
done
"#,
        dir = dir.display(),
        lab = lab_bin.display()
    )
}

/// The scale-in hook: removes the namespace of `XLB_BACKEND`.
fn terminate_script(prefix: &str, dir: &Path) -> String {
    format!(
        r#"#!/bin/bash
set -euo pipefail
addr=${{XLB_BACKEND%:*}}
n=$(( ${{addr##*.}} - 100 ))
ns={prefix}-s$n
for pid in $(ip netns pids $ns 2>/dev/null); do kill -9 $pid 2>/dev/null || true; done
ip netns del $ns
echo "$XLB_BACKEND" >> {dir}/terminated
"#,
        dir = dir.display()
    )
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A cron expression (6 fields, seconds first, UTC) for `at`.
fn cron_at(at: SystemTime) -> String {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let (s, m, h) = (secs % 60, (secs / 60) % 60, (secs / 3600) % 24);
    format!("{s} {m} {h} * * *")
}

fn config(name: &str, dir: &Path, schedule_at: SystemTime) -> String {
    format!(
        r#"[daemon]
interfaces = ["veth-client", "veth-backends"]
conntrack_size = 65536
{paths}
[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "web-servers"

[[service]]
name = "other"
vip = "198.18.100.1"
port = 81
protocol = "tcp"
target_group = "flaky"

[[service]]
name = "later"
vip = "198.18.100.1"
port = 82
protocol = "tcp"
target_group = "scheduled"

[[target_group]]
name = "web-servers"
port = 8080
deregistration_delay = "20s"
backends = ["198.18.2.11"]

[target_group.health_check]
protocol = "http"
interval = "200ms"
timeout = "150ms"
healthy_threshold = 2
unhealthy_threshold = 2

[target_group.scaling]
min = 1
max = 3
desired = 1
scale_out_command = "{dir}/launch.sh"
scale_in_command = "{dir}/terminate.sh"
cooldown = "2s"
warmup = "1s"
grace_period = "20s"
hook_timeout = "20s"

[[target_group.scaling.policy]]
type = "target_tracking"
metric = "new_flows_per_second_per_backend"
target = 10

# A group whose hooks fail or hang: the rest must not notice.
[[target_group]]
name = "flaky"
port = 8080
backends = ["198.18.2.11"]

[target_group.scaling]
min = 1
max = 3
desired = 2
scale_out_command = "sleep 60"
hook_timeout = "1s"

[[target_group]]
name = "scheduled"
port = 8080
backends = ["198.18.2.11"]

[target_group.scaling]
min = 1
max = 2
desired = 1
scale_out_command = "echo 198.18.2.11:8080; echo not-an-address"

[[target_group.scaling.schedule]]
cron = "{cron}"
max = 3
desired = 3
"#,
        paths = Xlbd::daemon_paths(name),
        dir = dir.display(),
        cron = cron_at(schedule_at),
    )
}

/// Open new connections to `addr` at `rate` per second until `stop`; count names and
/// failures.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<String, usize>>>,
    failures: Arc<Mutex<Vec<String>>>,
    rate: Arc<Mutex<u32>>,
}

impl Load {
    fn new() -> Load {
        Load {
            stop: Arc::new(AtomicBool::new(false)),
            seen: Arc::default(),
            failures: Arc::default(),
            rate: Arc::new(Mutex::new(0)),
        }
    }

    fn run(&self, ns: &Netns, limit: Duration) {
        let addr = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
        let started = Instant::now();
        ns.enter(|| {
            let mut next = Instant::now();
            while !self.stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                let rate = *self.rate.lock().unwrap();
                if rate == 0 {
                    std::thread::sleep(Duration::from_millis(50));
                    next = Instant::now();
                    continue;
                }
                match client::http_get(addr, T) {
                    Ok(name) => *self.seen.lock().unwrap().entry(name).or_default() += 1,
                    Err(e) => self.failures.lock().unwrap().push(format!("{e:#}")),
                }
                next += Duration::from_secs_f64(1.0 / rate as f64);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
    }
}

fn group_status(x: &Xlbd, group: &str) -> serde_json::Value {
    let text = x.cli_ok(&["status", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == group)
        .cloned()
        .unwrap()
}

fn in_service(x: &Xlbd, group: &str) -> u64 {
    group_status(x, group)["scaling"]["in_service"]
        .as_u64()
        .unwrap()
}

#[test]
fn scaling_grows_shrinks_and_survives_bad_hooks() {
    if skip() {
        return;
    }
    let name = "xlbt-scale";
    cleanup_stale_pins(name);
    /// Removes the namespaces the hooks created, whatever happens.
    struct HookNamespaces(&'static str);
    impl Drop for HookNamespaces {
        fn drop(&mut self) {
            let _ = Lab::cleanup_stale(&format!("{}-s", self.0));
        }
    }
    let _hook_namespaces = HookNamespaces(name);
    let lab = Lab::new(name, 1).unwrap();
    let _servers: Vec<ChildGuard> = lab
        .start_backend_servers(&xlb_lab::lab_bin().unwrap(), &[8080], &[], &[])
        .unwrap();
    let dir: PathBuf = tempfile::tempdir().unwrap().keep();
    write_exec(
        &dir.join("launch.sh"),
        &launch_script(name, &dir, &xlb_lab::lab_bin().unwrap()),
    );
    write_exec(&dir.join("terminate.sh"), &terminate_script(name, &dir));
    let schedule_at = SystemTime::now() + Duration::from_secs(12);
    let x = Xlbd::start(&lab, name, &config(name, &dir, schedule_at)).unwrap();

    // A bounded ramp: 40 new connections a second asks for 4 backends at a target of 10;
    // max is 3.
    let load = Load::new();
    let mut max_seen = 0;
    std::thread::scope(|scope| {
        scope.spawn(|| load.run(lab.client_ns(), Duration::from_secs(60)));
        *load.rate.lock().unwrap() = 40;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(25) {
            let n = in_service(&x, "web-servers");
            max_seen = max_seen.max(n);
            let names = load.seen.lock().unwrap().clone();
            if n == 3 && names.contains_key("s1") && names.contains_key("s2") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Hold the load a little longer: the group must stay at max.
        std::thread::sleep(Duration::from_secs(3));
        // What the data path measures is visible: the group's total new flows per second
        // (40 offered) and the per-backend average.
        let metrics = group_status(&x, "web-servers")["scaling"]["metrics"].clone();
        let total = metrics["new_flows_per_second"].as_f64().unwrap_or(0.0);
        assert!((20.0..=60.0).contains(&total), "{metrics}");
        assert!(
            metrics["new_flows_per_second_per_backend"]
                .as_f64()
                .is_some(),
            "{metrics}"
        );
        max_seen = max_seen.max(in_service(&x, "web-servers"));
        let grown = load.seen.lock().unwrap().clone();
        assert!(
            grown.contains_key("s1") && grown.contains_key("s2"),
            "traffic reaches every new backend: {grown:?}\n{}",
            x.log_text()
        );

        // The load falls to a trickle: back to min after the cooldown, drained first.
        *load.rate.lock().unwrap() = 2;
        x.wait_for("the group back at min", Duration::from_secs(40), || {
            let g = group_status(&x, "web-servers");
            let n = g["backends"].as_array().unwrap().len();
            Ok((n == 1).then_some(()))
        })
        .unwrap();
        load.stop.store(true, Ordering::Relaxed);
    });
    assert!(max_seen <= 3, "the group never exceeds max: saw {max_seen}");
    let failures = load.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "no connection failed during the run: {failures:?}"
    );

    let all_events = x.cli_ok(&["events"]).unwrap();
    eprintln!("{all_events}");
    // The scale-in hook runs once each drain is over.
    let (terminated, _) = x
        .wait_for("two backends terminated", Duration::from_secs(20), || {
            let t = std::fs::read_to_string(dir.join("terminated")).unwrap_or_default();
            Ok((t.lines().count() == 2).then_some(t))
        })
        .unwrap();
    assert!(terminated.contains("198.18.2.101:8080"), "{terminated}");
    let ev: Vec<serde_json::Value> = serde_json::from_str(
        &x.cli_ok(&["events", "--json", "--group", "web-servers"])
            .unwrap(),
    )
    .unwrap();
    let kinds: Vec<&str> = ev.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"scale_out"), "{kinds:?}");
    assert!(kinds.contains(&"scale_in"), "{kinds:?}");
    let out = ev.iter().find(|e| e["kind"] == "scale_out").unwrap();
    assert!(
        out["metrics"]["new_flows_per_second_per_backend"]
            .as_f64()
            .unwrap()
            > 10.0,
        "the decision carries the metric that led to it: {out}"
    );
    // Scale-in drained before terminating: a drain event precedes each termination.
    let text = x.log_text();
    assert!(text.contains("draining"), "{text}");

    // The failing / hanging hooks were logged and retried, and hurt nothing else.
    let flaky: Vec<serde_json::Value> =
        serde_json::from_str(&x.cli_ok(&["events", "--json", "--group", "flaky"]).unwrap())
            .unwrap();
    assert!(
        flaky.iter().any(|e| e["kind"] == "hook_failed"
            && e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("did not finish within 1s")),
        "{flaky:?}"
    );

    // The scheduled action fired at its time.
    x.wait_for("the schedule to fire", Duration::from_secs(30), || {
        let g = group_status(&x, "scheduled");
        Ok((g["scaling"]["max"] == 3 && g["scaling"]["desired"] == 3).then_some(()))
    })
    .unwrap();
    let sched: Vec<serde_json::Value> = serde_json::from_str(
        &x.cli_ok(&["events", "--json", "--group", "scheduled"])
            .unwrap(),
    )
    .unwrap();
    let fired = sched
        .iter()
        .find(|e| e["kind"] == "schedule")
        .expect("a schedule event");
    let fired_at = fired["time"].as_f64().unwrap();
    let due = schedule_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(
        fired_at >= due - 0.001 && fired_at < due + 3.0,
        "fired at {fired_at}, due {due}"
    );
    // Its hook printed one address already in the group and one invalid line: logged.
    assert!(
        sched
            .iter()
            .any(|e| e["kind"] == "hook_failed" || e["kind"] == "launched"),
        "{sched:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
