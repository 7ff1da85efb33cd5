//! The `loraland` binary: `serve` (the product, from the server crate; the default without a subcommand) and the lab
//! tools. Errors end the process with one line on stderr and a non-zero exit code.

mod cli;

use clap::Parser;
use cli::{BenchCommand, Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    fix_thread_count();
    let cli = Cli::parse();
    let log = match &cli.command {
        Some(Command::Serve(c)) => c.log.clone(),
        _ => cli.serve.log.clone(),
    };
    let log_writer = init_tracing(&log);
    let outcome = run(cli);
    // The log's last lines are written before the error line below.
    drop(log_writer);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {}", one_line(&e));
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(config)) => serve(*config),
        Some(Command::Generate(args)) => lab::generate::run(args),
        Some(Command::Train(args)) => lab::train::run(args),
        Some(Command::Eval(args)) => lab::eval::run(args),
        Some(Command::Bench(BenchCommand::Decode(args))) => lab::bench::decode::run(args),
        Some(Command::Bench(BenchCommand::Load(args))) => lab::bench::load::run(args),
        Some(Command::Bench(BenchCommand::Http(args))) => lab::bench::http::run_http(args),
        Some(Command::Bench(BenchCommand::Abuse(args))) => lab::bench::http::run_abuse(args),
        Some(Command::FetchModel { data_dir }) => {
            let path = server::default_model::ensure(&data_dir)?;
            tracing::info!("default model at {}", path.display());
            Ok(())
        }
    }
}

fn serve(config: server::config::ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(server::serve::run_with(config, std::sync::Arc::new(lab::tasks::AppLab)))
}

/// Logs to stderr through a thread of its own: a line the reader of stderr is not taking (a stalled pipe, a log
/// collector that fell behind) is buffered, then dropped and counted (`loraland_log_lines_dropped_total` on
/// /metrics), never waited for: written directly, a full pipe stops every thread that logs, the engine's included.
/// The guard flushes what is left when it is dropped (for at most about a second).
fn init_tracing(filter: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(server::config::DEFAULT_LOG_FILTER));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("loraland-log")
        .finish(std::io::stderr());
    server::metrics::count_dropped_log_lines(writer.error_counter());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).init();
    guard
}

/// The error and its causes on one line, skipping a cause whose text its parent already includes (sqlx and io
/// errors often repeat their source in their own message).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

/// candle looks its thread count up on every f32 matmul, and without `RAYON_NUM_THREADS` that lookup reads
/// /proc/cpuinfo each time: about a tenth of a batched decode step on a 2-core machine. Fix the count once, at the
/// value candle would find, before any thread starts.
fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", candle_core::utils::get_num_threads().to_string());
    }
}
