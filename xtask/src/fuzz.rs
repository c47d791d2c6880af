//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/` (libFuzzer), then the data path's model
//! check (`tests/tests/model.rs`) with a million frames; and the short run `cargo xtask test`
//! makes of the same targets.
//!
//! Each target runs in its own libFuzzer process: the committed seeds (`fuzz/corpus/T`) and the
//! corpus earlier runs grew (`fuzz/work/T`, not committed) are replayed first, then inputs are
//! mutated for the time or number of executions asked. A panic, a hang (one input running more
//! than [`HANG_SECS`]) or runaway memory (over [`RSS_LIMIT_MB`], or one allocation that large)
//! stops the target; libFuzzer saves the input under `fuzz/artifacts/T/` and this prints its
//! path and the command that replays it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{cargo, root, run, setup};

/// The fuzz targets (`fuzz/fuzz_targets/T.rs`).
pub const TARGETS: &[&str] = &["config_parse", "health_response", "api_body"];

/// The name `--target` takes for the model check.
const MODEL: &str = "model";

/// Executions per target when neither `--time` nor `--runs` is given.
const DEFAULT_RUNS: u64 = 10_000_000;

/// Frames the model check sends through BPF_PROG_TEST_RUN in `cargo xtask fuzz`.
const MODEL_FRAMES: u64 = 1_000_000;

/// One input running longer than this is a hang.
const HANG_SECS: u64 = 10;

/// A target using more memory than this (or asking for it in one allocation) fails.
const RSS_LIMIT_MB: u64 = 2048;

/// Seconds per target in `cargo xtask test`.
const SHORT_SECS: u64 = 10;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per fuzz target. Without --time and --runs, each target runs until it has made
    /// 10,000,000 executions.
    #[arg(long, value_name = "N")]
    time: Option<u64>,
    /// Executions per fuzz target (with --time, whichever comes first).
    #[arg(long, value_name = "N")]
    runs: Option<u64>,
    /// Run only this target (repeatable): config_parse, health_response, api_body, or model
    /// (the data path's model check). Default: all of them.
    #[arg(long = "target", value_name = "T")]
    targets: Vec<String>,
    /// Build the targets with AddressSanitizer: about ten times slower; it also checks the
    /// unsafe code of dependencies (httparse, serde_json, toml). Default: no sanitizer.
    #[arg(long)]
    asan: bool,
}

/// How long a target runs.
#[derive(Clone, Copy)]
struct Budget {
    secs: Option<u64>,
    runs: Option<u64>,
}

/// What one target's run did.
struct Outcome {
    target: String,
    executions: Option<u64>,
    elapsed: Duration,
    failure: Option<String>,
}

pub fn fuzz(args: Args) -> Result<()> {
    for t in &args.targets {
        if t != MODEL && !TARGETS.contains(&t.as_str()) {
            bail!(
                "unknown target {t:?}: expected one of {}, {MODEL}",
                TARGETS.join(", ")
            );
        }
    }
    let wanted = |t: &str| args.targets.is_empty() || args.targets.iter().any(|a| a == t);
    let budget = match (args.time, args.runs) {
        (None, None) => Budget {
            secs: None,
            runs: Some(DEFAULT_RUNS),
        },
        (secs, runs) => Budget { secs, runs },
    };
    setup::setup()?;
    let targets: Vec<&str> = TARGETS.iter().copied().filter(|t| wanted(t)).collect();
    let mut outcomes = Vec::new();
    if !targets.is_empty() {
        build(args.asan)?;
        for t in &targets {
            outcomes.push(run_target(t, budget, args.asan)?);
        }
    }
    let model = if wanted(MODEL) {
        Some(model_check(MODEL_FRAMES))
    } else {
        None
    };

    eprintln!("=== fuzz summary");
    for o in &outcomes {
        let secs = o.elapsed.as_secs_f64();
        let execs = o
            .executions
            .map_or("?".to_string(), |n| format!("{n} executions"));
        let rate = o
            .executions
            .map_or(String::new(), |n| format!(", {:.0}/s", n as f64 / secs));
        let verdict = o.failure.as_deref().unwrap_or("ok");
        eprintln!("{:<16} {execs} in {secs:.0} s{rate}: {verdict}", o.target);
    }
    let mut failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.failure.is_some())
        .map(|o| o.target.clone())
        .collect();
    match model {
        None => {}
        Some(Ok(ModelRun::Skipped(why))) => eprintln!("{MODEL:<16} skipped: {why}"),
        Some(Ok(ModelRun::Passed(secs))) => {
            eprintln!("{MODEL:<16} {MODEL_FRAMES} frames in {secs:.0} s: ok")
        }
        Some(Err(e)) => {
            eprintln!("{MODEL:<16} failed: {e:#}");
            failed.push(MODEL.to_string());
        }
    }
    if let Some(runs) = budget.runs.filter(|_| budget.secs.is_none()) {
        for o in outcomes.iter().filter(|o| o.failure.is_none()) {
            if o.executions.is_some_and(|n| n < runs) {
                eprintln!("warning: {} made fewer than {runs} executions", o.target);
            }
        }
    }
    if !failed.is_empty() {
        bail!("fuzzing failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The short run of `cargo xtask test`: every target for a few seconds (after replaying the
/// seeds and the grown corpus). The model check's short run is the integration test itself.
pub fn short() -> Result<()> {
    build(false)?;
    let budget = Budget {
        secs: Some(SHORT_SECS),
        runs: None,
    };
    let mut failed = Vec::new();
    for t in TARGETS {
        let o = run_target(t, budget, false)?;
        match &o.failure {
            None => eprintln!(
                "fuzz {t}: {} executions in {:.0} s: ok",
                o.executions.map_or("?".into(), |n| n.to_string()),
                o.elapsed.as_secs_f64()
            ),
            Some(f) => {
                eprintln!("fuzz {t}: {f}");
                failed.push(*t);
            }
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// `cargo +nightly fuzz SUBCOMMAND` with the flags every build and run shares: release with
/// debug assertions (so that integer overflow panics), and the sanitizer.
fn cargo_fuzz(subcommand: &str, asan: bool) -> Command {
    // rustup's `cargo` (for `+nightly`), not the toolchain's cargo that runs xtask ($CARGO).
    let mut c = Command::new("cargo");
    c.args(["+nightly", "fuzz", subcommand, "--fuzz-dir", "fuzz"])
        .args(["--debug-assertions", "--sanitizer"])
        .arg(if asan { "address" } else { "none" })
        .env_remove("RUSTUP_TOOLCHAIN")
        .current_dir(root());
    c
}

fn build(asan: bool) -> Result<()> {
    eprintln!("=== building the fuzz targets (nightly, cargo-fuzz)");
    run(&mut cargo_fuzz("build", asan))
}

/// Runs one target with libFuzzer for `budget`; an Err only when it cannot be run at all.
fn run_target(target: &str, budget: Budget, asan: bool) -> Result<Outcome> {
    let dir = fuzz_dir();
    let work = dir.join("work").join(target);
    let seeds = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&work, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    if !seeds.is_dir() {
        bail!("the seed corpus {} is missing", seeds.display());
    }
    let mut c = cargo_fuzz("run", asan);
    c.arg(target).arg(&work).arg(&seeds).arg("--");
    c.arg(format!("-timeout={HANG_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1");
    if let Some(secs) = budget.secs {
        c.arg(format!("-max_total_time={secs}"));
    }
    if let Some(runs) = budget.runs {
        c.arg(format!("-runs={runs}"));
    }
    let what = match (budget.secs, budget.runs) {
        (Some(s), Some(r)) => format!("for {s} s or {r} executions"),
        (Some(s), None) => format!("for {s} s"),
        (None, Some(r)) => format!("for {r} executions"),
        (None, None) => String::new(),
    };
    eprintln!("=== fuzz {target} {what}");
    c.stdin(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c
        .spawn()
        .with_context(|| format!("cannot run cargo fuzz for {target}"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut executions = None;
    let mut saved = Vec::new();
    let mut in_dictionary = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading libFuzzer's output")?;
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            executions = n.trim().parse::<u64>().ok();
        }
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            saved.push(path.trim().to_string());
        }
        // Progress without the flood: no NEW/REDUCE/NEW_FUNC lines, no recommended dictionary.
        if line.starts_with("###### Recommended dictionary") {
            in_dictionary = true;
        }
        let noisy = line.contains("\tNEW ")
            || line.contains("\tREDUCE ")
            || line.trim_start().starts_with("NEW_FUNC")
            || in_dictionary;
        if line.starts_with("###### End of recommended dictionary") {
            in_dictionary = false;
        }
        if !noisy {
            eprintln!("{line}");
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let elapsed = start.elapsed();
    let failure = if status.success() {
        None
    } else if saved.is_empty() {
        Some(format!(
            "cargo fuzz failed ({status}) without saving an input"
        ))
    } else {
        let kind = |p: &str| {
            let name = Path::new(p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match name.split('-').next() {
                Some("crash") => "panic or crash",
                Some("timeout") => "hang",
                Some("oom") => "out of memory",
                Some("leak") => "leak",
                _ => "failure",
            }
        };
        let list: Vec<String> = saved
            .iter()
            .map(|p| format!("{} (input saved at {p})", kind(p)))
            .collect();
        eprintln!(
            "replay with: cargo +nightly fuzz run --fuzz-dir fuzz -a -s {} {target} {}",
            if asan { "address" } else { "none" },
            saved[0]
        );
        Some(list.join("; "))
    };
    Ok(Outcome {
        target: target.to_string(),
        executions,
        elapsed,
        failure,
    })
}

enum ModelRun {
    Skipped(String),
    Passed(f64),
}

/// `cargo test -p xlb-tests --test model` with `XLB_MODEL_FRAMES=frames`.
fn model_check(frames: u64) -> Result<ModelRun> {
    let file = root().join("tests/tests/model.rs");
    if !file.is_file() {
        let why = format!("{} does not exist in this tree", file.display());
        eprintln!("=== model check: skipped: {why}");
        return Ok(ModelRun::Skipped(why));
    }
    if !xlb_lab::is_root() {
        bail!(
            "the model check needs root (BPF_PROG_TEST_RUN): run `sudo -E cargo xtask fuzz`, \
             or leave it out with --target"
        );
    }
    eprintln!("=== model check: {frames} frames through BPF_PROG_TEST_RUN");
    let start = Instant::now();
    let mut c = cargo(["test", "-p", "xlb-tests", "--test", "model"]);
    c.env("XLB_MODEL_FRAMES", frames.to_string());
    run(&mut c)?;
    Ok(ModelRun::Passed(start.elapsed().as_secs_f64()))
}
