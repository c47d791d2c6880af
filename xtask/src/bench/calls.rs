//! Calls in the verifier's translated program: `bpftool prog dump xlated id N`, read per
//! subprogram (BPF-to-BPF calls and helper or kernel-function calls). On the AMD EPYC VMs
//! every call and every return costs 10–22 ns (retpolines, SRSO "safe RET"), so the number of
//! calls on a path is the first lever on these machines. Map lookups the verifier inlines
//! (arrays, per-CPU arrays) leave no call; hash-map lookups leave a direct call to the map's
//! lookup function, counted here as a helper.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;

/// The calls of one subprogram of the translated program.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FnCalls {
    /// The subprogram's name (from its BTF), or `subprog@INSN`.
    pub name: String,
    /// Its instructions in the translated program.
    pub insns: u32,
    /// Helper and kernel-function calls, by callee, with the number of call sites.
    pub helpers: BTreeMap<String, u32>,
    /// BPF-to-BPF call sites (the callees are the other subprograms).
    pub bpf_calls: u32,
}

/// Reads the translated program `prog_id` with bpftool.
pub fn count(prog_id: u32) -> Result<Vec<FnCalls>> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "dump", "xlated", "id", &prog_id.to_string()])
        .output()
        .context("running bpftool")?;
    anyhow::ensure!(
        out.status.success(),
        "bpftool prog dump xlated id {prog_id}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses bpftool's text dump: a subprogram starts at a line `TYPE NAME(ARGS):`, an
/// instruction line is `  N: (OP) ...`, a call `  N: (85) call CALLEE#ID` (helper or kernel
/// function) or `  N: (85) call pc+K` (BPF-to-BPF).
pub fn parse(dump: &str) -> Vec<FnCalls> {
    let mut fns: Vec<FnCalls> = Vec::new();
    for line in dump.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with(';') {
            continue;
        }
        let insn = t
            .split_once(": ")
            .filter(|(idx, rest)| idx.chars().all(|c| c.is_ascii_digit()) && rest.starts_with('('));
        if let Some((idx, rest)) = insn {
            if fns.is_empty() {
                fns.push(FnCalls {
                    name: format!("subprog@{idx}"),
                    ..Default::default()
                });
            }
            let f = fns.last_mut().expect("one pushed above");
            f.insns += 1;
            if let Some(callee) = rest.strip_prefix("(85) call ") {
                if callee.starts_with("pc+") || callee.starts_with("pc-") {
                    f.bpf_calls += 1;
                } else {
                    let name = callee.split('#').next().unwrap_or(callee).to_owned();
                    *f.helpers.entry(name).or_default() += 1;
                }
            }
        } else if t.ends_with("):") {
            // "int forward(struct xdp_md * ctx, ...):"
            let head = t.split('(').next().unwrap_or(t);
            let name = head.rsplit([' ', '*']).next().unwrap_or(head);
            fns.push(FnCalls {
                name: name.to_owned(),
                ..Default::default()
            });
        }
    }
    fns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subprograms_and_calls() {
        let dump = "\
int xlb(struct xdp_md * ctx):
; pub fn xlb(ctx: XdpContext) -> u32 {
   0: (bf) r6 = r1
   1: (85) call bpf_ktime_get_coarse_ns#266960
   2: (85) call pc+3
   3: (85) call __htab_map_lookup_elem#331984
   4: (95) exit
static u32 forward(struct Pkt * p):
   5: (85) call bpf_ktime_get_coarse_ns#266960
   6: (95) exit
";
        let f = parse(dump);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, "xlb");
        assert_eq!(f[0].insns, 5);
        assert_eq!(f[0].bpf_calls, 1);
        assert_eq!(f[0].helpers["bpf_ktime_get_coarse_ns"], 1);
        assert_eq!(f[0].helpers["__htab_map_lookup_elem"], 1);
        assert_eq!(f[1].name, "forward");
        assert_eq!(f[1].insns, 2);
        assert_eq!(f[1].bpf_calls, 0);
    }
}
