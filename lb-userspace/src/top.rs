//! `xlb top`: services and backends with their rates, like `ipvsadm --rate`, refreshed every
//! second from the API (`GET /v1/status`, two readings' counters apart). The terminal is put
//! in raw mode on the alternate screen with `crossterm` and always restored (on q, Esc,
//! Ctrl-C, an error or a panic); `--once` prints one frame without touching the terminal.
use std::{
    fmt::Write as _,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use hyper::Method;

use crate::{
    cli::{self, CliError, Table},
    model::{Status, TrafficCounters},
};

/// How often the view refreshes.
pub const REFRESH: Duration = Duration::from_secs(1);

/// One reading of the daemon's status.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub status: Status,
}

/// Read the status once.
pub async fn sample(socket: &Path) -> Result<Sample, CliError> {
    let (code, value) = cli::request(socket, Method::GET, "/v1/status", None).await?;
    if !(200..300).contains(&code) {
        let message = value
            .get("error")
            .and_then(|v| v.as_str())
            .map_or_else(|| format!("xlb answered HTTP {code}"), str::to_string);
        return Err(CliError::Api {
            status: code,
            message,
        });
    }
    let status: Status =
        serde_json::from_value(value).map_err(|e| CliError::BadAnswer(e.to_string()))?;
    Ok(Sample {
        at: Instant::now(),
        status,
    })
}

/// Rates of one set of counters between two readings `dt` seconds apart.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub new_flows: f64,
    pub in_packets: f64,
    pub out_packets: f64,
    pub in_bytes: f64,
    pub out_bytes: f64,
    pub dropped: f64,
}

impl Rates {
    /// Counters that went backwards (a backend re-added, a daemon restart) count as 0.
    pub fn between(prev: &TrafficCounters, cur: &TrafficCounters, dt: f64) -> Rates {
        if dt <= 0.0 {
            return Rates::default();
        }
        let r = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
        Rates {
            new_flows: r(prev.new_flows, cur.new_flows),
            in_packets: r(prev.packets, cur.packets),
            out_packets: r(prev.reply_packets, cur.reply_packets),
            in_bytes: r(prev.bytes, cur.bytes),
            out_bytes: r(prev.reply_bytes, cur.reply_bytes),
            dropped: r(prev.dropped, cur.dropped),
        }
    }
}

/// A rate as a short number: "0", "12.5", "3.4K", "1.2M".
pub fn short(x: f64) -> String {
    if !x.is_finite() || x <= 0.0 {
        return "0".into();
    }
    match x {
        x if x < 100.0 => format!("{x:.1}").trim_end_matches(".0").to_string(),
        x if x < 10_000.0 => format!("{x:.0}"),
        x if x < 10_000_000.0 => format!("{:.1}K", x / 1e3),
        x if x < 10_000_000_000.0 => format!("{:.1}M", x / 1e6),
        x => format!("{:.1}G", x / 1e9),
    }
}

/// One frame: services, then each group's backends, with their rates between `prev` and
/// `cur`.
pub fn render(prev: &Sample, cur: &Sample) -> String {
    let dt = cur.at.saturating_duration_since(prev.at).as_secs_f64();
    let s = &cur.status;
    let mut out = String::new();
    let backends: usize = s.groups.iter().map(|g| g.backends.len()).sum();
    let _ = writeln!(
        out,
        "xlb {} (pid {}): {} services, {} backends; rates per second over {:.1} s",
        s.version,
        s.pid,
        s.services.len(),
        backends,
        dt
    );
    out.push('\n');
    let mut t = Table::new(&[
        "SERVICE",
        "VIP",
        "PROTO",
        "BACKENDS",
        "CONN/S",
        "INPKTS/S",
        "OUTPKTS/S",
        "INBYTES/S",
        "OUTBYTES/S",
        "DROPS/S",
    ]);
    for svc in &s.services {
        let before = prev
            .status
            .services
            .iter()
            .find(|p| p.name == svc.name)
            .map_or(svc.counters, |p| p.counters);
        let r = Rates::between(&before, &svc.counters, dt);
        t.row(vec![
            svc.name.clone(),
            std::net::SocketAddr::new(svc.vip, svc.port).to_string(),
            svc.protocol.clone(),
            svc.backends_in_table.to_string(),
            short(r.new_flows),
            short(r.in_packets),
            short(r.out_packets),
            short(r.in_bytes),
            short(r.out_bytes),
            short(r.dropped),
        ]);
    }
    t.render(&mut out);
    out.push('\n');
    let mut t = Table::new(&[
        "GROUP",
        "BACKEND",
        "STATE",
        "WEIGHT",
        "OPEN FLOWS",
        "CONN/S",
        "INPKTS/S",
        "OUTPKTS/S",
        "INBYTES/S",
        "OUTBYTES/S",
    ]);
    for g in &s.groups {
        for b in &g.backends {
            let before = prev
                .status
                .groups
                .iter()
                .find(|p| p.name == g.name)
                .and_then(|p| {
                    p.backends
                        .iter()
                        .find(|x| x.address == b.address && x.port == b.port)
                })
                .map_or(b.counters, |x| x.counters);
            let r = Rates::between(&before, &b.counters, dt);
            let mut state = b.state.to_string();
            if !b.receiving_new_flows && b.state != crate::model::BackendState::Draining {
                state.push('*');
            }
            t.row(vec![
                g.name.clone(),
                std::net::SocketAddr::new(b.address, b.port).to_string(),
                state,
                b.weight.to_string(),
                b.active_flows.to_string(),
                short(r.new_flows),
                short(r.in_packets),
                short(r.out_packets),
                short(r.in_bytes),
                short(r.out_bytes),
            ]);
        }
    }
    t.render(&mut out);
    out
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `xlb top --once`: two readings one refresh apart, one frame on stdout.
pub fn once(socket: &Path) -> ExitCode {
    let result = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            let a = sample(socket).await.map_err(|e| e.to_string())?;
            tokio::time::sleep(REFRESH).await;
            let b = sample(socket).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(render(&a, &b))
        })
    });
    match result {
        Ok(frame) => {
            print!("{frame}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xlb: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Puts the terminal back however `interactive` ends.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> std::io::Result<TerminalGuard> {
        crossterm::terminal::enable_raw_mode()?;
        let guard = TerminalGuard;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = crossterm::execute!(
            std::io::stdout(),
            crossterm::cursor::Show,
            crossterm::terminal::LeaveAlternateScreen
        );
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Set by SIGTERM, SIGHUP or SIGINT while the view runs: it ends as a q would, restoring the
/// terminal.
static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn catch_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            tracing::debug!(signal = %sig, error = %e, "cannot catch the signal");
        }
    }
}

/// Whether a key quits: q, Q, Esc, Ctrl-C.
fn quits(ev: &crossterm::event::Event) -> bool {
    use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};
    match ev {
        Event::Key(k) if k.kind != KeyEventKind::Release => {
            matches!(
                k.code,
                KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc
            ) || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL))
        }
        _ => false,
    }
}

/// `xlb top`: refresh every second until q, Esc or Ctrl-C.
pub fn interactive(socket: &Path) -> ExitCode {
    use std::io::Write as _;
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xlb: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The first reading before the terminal changes: an unreachable daemon is a plain error.
    let mut prev = match rt.block_on(sample(socket)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xlb: {e}");
            return ExitCode::FAILURE;
        }
    };
    catch_signals();
    let guard = match TerminalGuard::enter() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("xlb: the terminal cannot do `xlb top` ({e}); try `xlb top --once`");
            return ExitCode::FAILURE;
        }
    };
    let mut frame = format!("{}\nreading…\n", "xlb top");
    let mut next = Instant::now() + REFRESH;
    loop {
        let mut stdout = std::io::stdout();
        let text = frame.replace('\n', "\r\n");
        let _ = crossterm::execute!(
            stdout,
            crossterm::terminal::Clear(crossterm::terminal::ClearType::All),
            crossterm::cursor::MoveTo(0, 0)
        );
        let _ = write!(stdout, "{text}\r\nq, Esc or Ctrl-C quits");
        let _ = stdout.flush();
        // Keys (and signals) until the next refresh.
        loop {
            if SIGNALLED.load(std::sync::atomic::Ordering::SeqCst) {
                drop(guard);
                return ExitCode::SUCCESS;
            }
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match crossterm::event::poll(left.min(Duration::from_millis(100))) {
                Ok(true) => match crossterm::event::read() {
                    Ok(ev) if quits(&ev) => {
                        drop(guard);
                        return ExitCode::SUCCESS;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
                Ok(false) => {}
                Err(e) => {
                    drop(guard);
                    eprintln!("xlb: reading the terminal: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        next = Instant::now() + REFRESH;
        match rt.block_on(sample(socket)) {
            Ok(cur) => {
                frame = render(&prev, &cur);
                prev = cur;
            }
            Err(e) => {
                frame = format!("xlb top: {e}\n(retrying every second)\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::canned_status;

    #[test]
    fn rates_between_readings() {
        let a = TrafficCounters {
            packets: 100,
            bytes: 10_000,
            new_flows: 10,
            reply_packets: 50,
            reply_bytes: 5_000,
            dropped: 0,
            ..Default::default()
        };
        let mut b = a;
        b.packets += 200;
        b.bytes += 20_000;
        b.new_flows += 4;
        b.reply_packets += 100;
        b.dropped += 2;
        let r = Rates::between(&a, &b, 2.0);
        assert_eq!(r.in_packets, 100.0);
        assert_eq!(r.in_bytes, 10_000.0);
        assert_eq!(r.new_flows, 2.0);
        assert_eq!(r.out_packets, 50.0);
        assert_eq!(r.out_bytes, 0.0);
        assert_eq!(r.dropped, 1.0);
        // Backwards (a restart): 0, not a huge number.
        assert_eq!(Rates::between(&b, &a, 1.0), Rates::default());
        assert_eq!(short(0.0), "0");
        assert_eq!(short(2.0), "2");
        assert_eq!(short(12.5), "12.5");
        assert_eq!(short(4321.0), "4321");
        assert_eq!(short(123_456.0), "123.5K");
    }

    #[test]
    fn a_frame_shows_services_and_backends_with_rates() {
        let s0 = canned_status();
        let mut s1 = s0.clone();
        s1.services[0].counters.packets += 500;
        s1.services[0].counters.new_flows += 50;
        s1.groups[0].backends[0].counters.new_flows += 30;
        let t0 = Instant::now();
        let a = Sample { at: t0, status: s0 };
        let b = Sample {
            at: t0 + Duration::from_millis(500),
            status: s1.clone(),
        };
        let f = render(&a, &b);
        assert!(f.contains("CONN/S"), "{f}");
        let svc_line = f
            .lines()
            .find(|l| l.starts_with(&s1.services[0].name))
            .unwrap();
        // 500 packets and 50 flows in 0.5 s.
        assert!(
            svc_line.contains(" 1000 ") && svc_line.contains(" 100 "),
            "{svc_line}"
        );
        let be = &s1.groups[0].backends[0];
        let be_line = f
            .lines()
            .find(|l| l.contains(&std::net::SocketAddr::new(be.address, be.port).to_string()))
            .unwrap();
        assert!(be_line.contains(" 60 "), "{be_line}");
    }
}
