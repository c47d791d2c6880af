//! The `xlb` command.
use std::{path::PathBuf, process::ExitCode};

use clap::{Args, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use xlb::{cli::Action, endpoint::Endpoint, service::LogFormat};

#[derive(Parser)]
#[command(
    name = "xlb",
    version,
    about = "An XDP layer-4 load balancer",
    after_help = "Environment: XLB_LOG sets the log filter (default `info`, e.g. `XLB_LOG=debug`)."
)]
struct Cli {
    /// How log lines are written (to stderr)
    #[arg(
        long,
        global = true,
        value_enum,
        ignore_case = true,
        env = "XLB_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Options of every command that talks to a running xlb.
#[derive(Args)]
struct ClientArgs {
    /// Print the API's JSON instead of a table
    #[arg(long)]
    json: bool,
    /// The daemon's API socket [default: daemon.api_socket of --config, else /run/xlb/xlb.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Find the API socket in this config file (daemon.api_socket) unless --socket is given
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The config file of `run`, `check` and `stop`.
#[derive(Args)]
struct ConfigArg {
    /// The config file
    #[arg(long, short, value_name = "FILE", default_value = "/etc/xlb/xlb.toml")]
    config: PathBuf,
}

/// A backend weight as the daemon takes it.
fn weight() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(xlb::config::MAX_WEIGHT))
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program (adopting what a previous instance pinned), attach it, and balance
    /// traffic until SIGINT/SIGTERM (SIGHUP reloads the config). XDP stays attached after exit.
    /// Needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (and CAP_SYS_ADMIN if bpffs is not
    /// mounted); tells systemd READY=1 when NOTIFY_SOCKET is set.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Stop the daemon holding the state file's lock. XDP stays attached and keeps forwarding
    /// with the last state unless `--cleanup` is given.
    Stop {
        #[command(flatten)]
        config: ConfigArg,
        /// Also detach XDP and remove what xlb pinned (as its pin manifest records) and the
        /// state file (established flows are then lost)
        #[arg(long)]
        cleanup: bool,
    },
    /// Validate a config file and exit (non-zero with the position of the error).
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the running xlb: interfaces, services, target groups and counters.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List backends with their state, weight, flows and counters.
    Backends {
        /// Only this target group (all groups when omitted)
        group: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add, remove, drain or re-weight a backend of a target group.
    Backend {
        #[command(subcommand)]
        command: BackendCommand,
    },
    /// Reload the config file, as SIGHUP does, and report whether it was accepted.
    Reload {
        /// Change nothing: print what the reload would change (as `xlb diff` does for the
        /// daemon's own config file)
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print what loading a config would change, without changing anything: services and
    /// backends added, removed, re-weighted or drained; per service the share of its Maglev
    /// table that would send new flows elsewhere and the open flows on backends that would
    /// leave. The config is the file of --config (read here, validated by the daemon as a
    /// reload would), else the daemon's own config file.
    Diff {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set a scaling group's desired capacity (within its min and max).
    Scale {
        /// The target group
        group: String,
        /// The new desired capacity (backends in service)
        #[arg(long, value_name = "N")]
        desired: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show recent events: scaling decisions with the metrics behind them, hook results,
    /// health changes, and every change asked through the API.
    Events {
        /// Only this target group
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// This node's place in a fleet ([daemon.announce]): drain it for maintenance, or bring
    /// it back.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// A live view of services and backends with their rates (new flows, packets and bytes
    /// per second in and out, like `ipvsadm --rate`) and open flows, refreshed every second;
    /// q, Esc or Ctrl-C quits.
    Top {
        /// Print one frame (two readings 1 s apart) and exit, without the terminal mode
        #[arg(long)]
        once: bool,
        /// The daemon's API socket [default: daemon.api_socket of --config, else /run/xlb/xlb.sock]
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Find the API socket in this config file (daemon.api_socket) unless --socket is given
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script (e.g. `xlb completions bash >
    /// /etc/bash_completion.d/xlb`).
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff; e.g. `xlb man > /usr/share/man/man1/xlb.1`).
    Man,
    /// The backend side of DSR: attach an XDP program to DEV that strips IPIP and GUE
    /// addressed to this host and hands the inner packet to the stack; runs in the
    /// foreground until SIGINT/SIGTERM, then detaches and prints its counters.
    Decap {
        /// The interface the tunnel packets arrive on
        #[arg(long, short, value_name = "DEV")]
        interface: String,
        /// Strip only packets whose inner destination is ADDR (repeatable; every inner
        /// destination when omitted)
        #[arg(long = "vip", value_name = "ADDR")]
        vips: Vec<std::net::IpAddr>,
        /// GUE's UDP port
        #[arg(long, value_name = "PORT", default_value_t = lb_common::DEFAULT_GUE_PORT,
              value_parser = clap::value_parser!(u16).range(1..))]
        gue_port: u16,
        /// XDP attach mode: auto, native or generic
        #[arg(long, value_name = "MODE", default_value = "auto", value_parser = ["auto", "native", "generic"])]
        xdp_mode: String,
        /// Print the counters of the `xlb decap` running on DEV and exit
        #[arg(long)]
        stats: bool,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Withdraw every VIP this node announces, keep forwarding what still arrives, and report
    /// drained (`xlb status`) once nothing arrives or drain_timeout runs out. Stays drained
    /// across restarts until `xlb node undrain`.
    Drain {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Announce again the VIPs this node can serve (after `xlb node drain`).
    #[command(visible_alias = "resume")]
    Undrain {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Add a backend to a target group (the group's port when PORT is omitted).
    Add {
        /// The target group
        group: String,
        /// The backend: ADDR, ADDR:PORT or [V6ADDR]:PORT
        #[arg(value_name = "ADDR[:PORT]")]
        address: Endpoint,
        /// Its weight, 1-10000 [default: 1]
        #[arg(long, value_name = "N", value_parser = weight())]
        weight: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a backend from a target group at once: its open flows move to other backends
    /// on their next packet (a TCP connection that moves is reset by the backend it lands
    /// on; `drain` lets open flows finish).
    Remove {
        /// The target group
        group: String,
        /// The backend: ADDR, ADDR:PORT or [V6ADDR]:PORT
        #[arg(value_name = "ADDR[:PORT]")]
        address: Endpoint,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drain a backend: no new flows, open ones continue until they end or the group's
    /// deregistration delay runs out; then it leaves the group.
    Drain {
        /// The target group
        group: String,
        /// The backend: ADDR, ADDR:PORT or [V6ADDR]:PORT
        #[arg(value_name = "ADDR[:PORT]")]
        address: Endpoint,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set a backend's weight (1-10000; new flows only). To send it no new flows, drain it.
    Weight {
        /// The target group
        group: String,
        /// The backend: ADDR, ADDR:PORT or [V6ADDR]:PORT
        #[arg(value_name = "ADDR[:PORT]")]
        address: Endpoint,
        /// The new weight, 1-10000
        #[arg(value_name = "N", value_parser = weight())]
        weight: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Run a client command on a current-thread runtime.
fn client(client: ClientArgs, action: Action) -> ExitCode {
    let socket = xlb::cli::socket_path(client.socket.as_deref(), client.config.as_deref());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xlb: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(xlb::cli::run(&socket, &action, client.json))
}

/// The completion script for `shell`.
fn completions(shell: Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "xlb", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The man page: `xlb(1)` with every subcommand's usage, options and help (clap_mangen
/// renders the top command; the subcommands follow as sections).
fn man_page() -> std::io::Result<String> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    render_subcommands(&mut out, &cmd, "xlb")?;
    man.render_version_section(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// One section per subcommand (recursively): its synopsis, help and options.
fn render_subcommands(out: &mut Vec<u8>, cmd: &clap::Command, prefix: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{prefix} {}", sub.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        let sub = sub.clone().bin_name(name.clone());
        let man = clap_mangen::Man::new(sub.clone());
        let mut section = Vec::new();
        man.render_synopsis_section(&mut section)?;
        man.render_description_section(&mut section)?;
        man.render_options_section(&mut section)?;
        // Demote the sub-page's own section headings to subsections.
        let text = String::from_utf8_lossy(&section).replace(".SH ", ".SS ");
        out.write_all(text.as_bytes())?;
        if sub.has_subcommands() {
            render_subcommands(out, &sub, &name)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    xlb::service::init_logging(cli.log_format);
    match cli.command {
        Command::Status { client: args } => client(args, Action::Status),
        Command::Backends {
            group,
            client: args,
        } => client(args, Action::Backends { group }),
        Command::Reload {
            dry_run,
            client: args,
        } => client(
            args,
            if dry_run {
                Action::Diff { config: None }
            } else {
                Action::Reload
            },
        ),
        Command::Diff { client: args } => {
            let config = match &args.config {
                None => None,
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(text) => Some((text, path.display().to_string())),
                    Err(e) => {
                        eprintln!("xlb: reading {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                },
            };
            client(args, Action::Diff { config })
        }
        Command::Scale {
            group,
            desired,
            client: args,
        } => client(args, Action::Scale { group, desired }),
        Command::Events {
            group,
            client: args,
        } => client(args, Action::Events { group }),
        Command::Backend { command } => match command {
            BackendCommand::Add {
                group,
                address,
                weight,
                client: args,
            } => client(
                args,
                Action::AddBackend {
                    group,
                    address: address.to_string(),
                    weight,
                },
            ),
            BackendCommand::Remove {
                group,
                address,
                client: args,
            } => client(
                args,
                Action::RemoveBackend {
                    group,
                    address: address.to_string(),
                },
            ),
            BackendCommand::Drain {
                group,
                address,
                client: args,
            } => client(
                args,
                Action::DrainBackend {
                    group,
                    address: address.to_string(),
                },
            ),
            BackendCommand::Weight {
                group,
                address,
                weight,
                client: args,
            } => client(
                args,
                Action::SetWeight {
                    group,
                    address: address.to_string(),
                    weight,
                },
            ),
        },
        Command::Node { command } => match command {
            NodeCommand::Drain { client: args } => client(args, Action::NodeDrain),
            NodeCommand::Undrain { client: args } => client(args, Action::NodeUndrain),
        },
        Command::Top {
            once,
            socket,
            config,
        } => {
            let socket = xlb::cli::socket_path(socket.as_deref(), config.as_deref());
            if once {
                xlb::top::once(&socket)
            } else {
                xlb::top::interactive(&socket)
            }
        }
        Command::Completions { shell } => {
            print!("{}", completions(shell));
            ExitCode::SUCCESS
        }
        Command::Man => match man_page() {
            Ok(page) => {
                print!("{page}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xlb: rendering the man page: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check {
            config: ConfigArg { config },
        } => match xlb::config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} services, {} target groups)",
                    config.display(),
                    cfg.services.len(),
                    cfg.target_groups.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Decap {
            interface,
            vips,
            gue_port,
            xdp_mode,
            stats,
        } => {
            let result = if stats {
                xlb::dsr::pinned_counters(&interface)
                    .map(|c| print!("{}", xlb::dsr::format_counters(&c)))
                    .map_err(|e| anyhow::anyhow!("no `xlb decap` running on {interface}? ({e})"))
            } else {
                let mode = match xdp_mode.as_str() {
                    "native" => xlb::config::XdpMode::Native,
                    "generic" => xlb::config::XdpMode::Generic,
                    _ => xlb::config::XdpMode::Auto,
                };
                xlb::dsr::run(&interface, &vips, gue_port, mode)
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xlb: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Stop {
            config: ConfigArg { config },
            cleanup,
        } => match xlb::daemon::stop(&config, cleanup) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xlb: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config: ConfigArg { config },
        } => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("xlb: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(xlb::daemon::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xlb: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBCOMMANDS: [&str; 12] = [
        "run",
        "stop",
        "check",
        "status",
        "backends",
        "backend",
        "reload",
        "scale",
        "events",
        "completions",
        "man",
        "remove",
    ];

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command has a description and every option and argument a help text.
    #[test]
    fn everything_is_documented() {
        fn walk(cmd: &clap::Command, path: &str, undocumented: &mut Vec<String>) {
            if cmd.get_about().is_none() && path != "xlb" {
                undocumented.push(path.to_string());
            }
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && !["help", "version"].contains(&arg.get_id().as_str())
                {
                    undocumented.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), undocumented);
            }
        }
        let mut undocumented = Vec::new();
        walk(&Cli::command(), "xlb", &mut undocumented);
        assert!(undocumented.is_empty(), "{undocumented:?}");
    }

    #[test]
    fn completions_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = completions(shell);
            for sub in SUBCOMMANDS {
                assert!(script.contains(sub), "{shell}: no {sub}");
            }
            for opt in ["--socket", "--log-format", "--cleanup", "--weight"] {
                assert!(
                    script.contains(opt) || script.contains(&opt[2..]),
                    "{shell}: no {opt}"
                );
            }
        }
        assert!(completions(Shell::Bash).contains("complete -F _xlb"));
        assert!(completions(Shell::Zsh).starts_with("#compdef xlb"));
        assert!(completions(Shell::Fish).contains("complete -c xlb"));
    }

    #[test]
    fn man_page_covers_every_command() {
        let page = man_page().unwrap();
        assert!(
            page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH xlb"),
            "{page}"
        );
        assert!(page.contains(".TH xlb 1"), "{page}");
        for section in [
            "XLB RUN",
            "XLB STOP",
            "XLB CHECK",
            "XLB STATUS",
            "XLB BACKENDS",
            "XLB BACKEND ADD",
            "XLB BACKEND REMOVE",
            "XLB BACKEND DRAIN",
            "XLB BACKEND WEIGHT",
            "XLB RELOAD",
            "XLB SCALE",
            "XLB EVENTS",
            "XLB COMPLETIONS",
            "XLB MAN",
        ] {
            assert!(page.contains(&format!(".SH \"{section}\"")), "no {section}");
        }
        for text in [
            "\\-\\-socket",
            "\\-\\-cleanup",
            "\\-\\-log\\-format",
            "XLB_LOG_FORMAT",
        ] {
            assert!(page.contains(text), "no {text}");
        }
        assert!(!page.contains(".SH \"XLB HELP\""));
    }

    #[test]
    fn socket_only_on_client_commands() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        for cmd in [
            &["xlb", "run", "--socket", "/x"][..],
            &["xlb", "check", "--socket", "/x"],
            &["xlb", "stop", "--socket", "/x"],
            &["xlb", "--socket", "/x", "status"],
        ] {
            let e = parse(cmd).err().expect("refused");
            assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument, "{cmd:?}");
        }
        for cmd in [
            &["xlb", "status", "--socket", "/x"][..],
            &["xlb", "backends", "g", "--socket", "/x", "--json"],
            &["xlb", "backend", "drain", "g", "10.0.0.1", "--socket", "/x"],
            &["xlb", "reload", "--socket", "/x"],
            &["xlb", "scale", "g", "--desired", "3", "--socket", "/x"],
            &["xlb", "events", "--socket", "/x"],
        ] {
            let cli = parse(cmd).unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
            assert!(matches!(
                cli.command,
                Command::Status { .. }
                    | Command::Backends { .. }
                    | Command::Backend { .. }
                    | Command::Reload { .. }
                    | Command::Scale { .. }
                    | Command::Events { .. }
            ));
        }
    }

    #[test]
    fn weights_are_the_daemons_range() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        for w in ["0", "10001"] {
            let e = parse(&["xlb", "backend", "weight", "g", "10.0.0.1", w])
                .err()
                .expect("out of range");
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{w}");
            assert!(e.to_string().contains("1..=10000"), "{e}");
            assert!(parse(&["xlb", "backend", "add", "g", "10.0.0.1", "--weight", w]).is_err());
        }
        let cli = parse(&["xlb", "backend", "weight", "g", "10.0.0.1", "10000"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Backend {
                command: BackendCommand::Weight { weight: 10000, .. }
            }
        ));
    }

    #[test]
    fn help_says_what_the_daemon_does() {
        let mut cmd = Cli::command();
        let backend = cmd.find_subcommand_mut("backend").unwrap();
        let help = |name: &str| {
            backend
                .find_subcommand(name)
                .unwrap()
                .get_about()
                .unwrap()
                .to_string()
        };
        // The daemon answers "... removed (N open flows moved to other backends)".
        assert!(help("remove").contains("open flows move to other backends"));
        assert!(!help("remove").contains("dropped"));
        // The daemon refuses weight 0.
        assert!(help("weight").contains("1-10000"));
        assert!(!help("weight").contains("0 sends"));
    }

    #[test]
    fn log_format_option_and_environment() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied()).unwrap();
        assert_eq!(parse(&["xlb", "status"]).log_format, LogFormat::Text);
        assert_eq!(
            parse(&["xlb", "run", "--log-format", "json"]).log_format,
            LogFormat::Json
        );
        assert_eq!(
            parse(&["xlb", "--log-format", "json", "status"]).log_format,
            LogFormat::Json
        );
        assert_eq!(
            parse(&["xlb", "status", "--log-format", "JSON"]).log_format,
            LogFormat::Json
        );
        assert!(Cli::try_parse_from(["xlb", "--log-format", "xml", "status"]).is_err());
        // The only test in this binary that sets XLB_LOG_FORMAT.
        std::env::set_var("XLB_LOG_FORMAT", "json");
        let from_env = parse(&["xlb", "check"]).log_format;
        let flag_wins = parse(&["xlb", "check", "--log-format", "text"]).log_format;
        std::env::remove_var("XLB_LOG_FORMAT");
        assert_eq!(from_env, LogFormat::Json);
        assert_eq!(flag_wins, LogFormat::Text);
    }
}
