//! The `xlb` command.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xlb", version, about = "An XDP layer-4 load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it, and balance traffic until SIGINT/SIGTERM
    /// (SIGHUP reloads the config).
    Run {
        #[arg(long, short, default_value = "/etc/xlb/xlb.toml")]
        config: PathBuf,
    },
    /// Validate a config file and exit (non-zero with the position of the error).
    Check {
        #[arg(long, short, default_value = "/etc/xlb/xlb.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XLB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Check { config } => match xlb::config::load(&config) {
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
        Command::Run { config } => {
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
