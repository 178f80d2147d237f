//! `chat-bench`: measures the relay with real clients and real crypto against a minimal
//! plaintext broadcast relay, in one run, and checks every delivery.

use std::process::ExitCode;

use clap::Parser;
use e2ee_chat::bench::{self, BenchError, Load, Measurement};
use e2ee_chat::server::Limits;

/// Load the relay with real end-to-end encrypted clients, then the same load of plaintext
/// clients through a minimal tonic broadcast relay (no crypto, no checks, no limits), and
/// compare. Every member must receive every message of its room exactly once and in order,
/// or the run fails with a non-zero exit.
///
/// The last line on stdout is the summary:
/// delivered=D msgs_per_sec=R p50_ms=A p99_ms=B baseline_msgs_per_sec=S ratio=R/S
#[derive(Debug, Parser)]
#[command(name = "chat-bench", version)]
struct Args {
    /// Connected clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Rooms; client i joins room i mod ROOMS.
    #[arg(long, default_value_t = 5)]
    rooms: usize,
    /// Messages each client sends.
    #[arg(long, default_value_t = 200)]
    messages: u64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Messages per second across all clients (default: as fast as they go).
    #[arg(long)]
    rate: Option<f64>,
    /// Load a running relay instead of one started in this process.
    #[arg(long)]
    server: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.clients < 2 || args.rooms == 0 || args.rooms > args.clients / 2 {
        eprintln!(
            "chat-bench: error: every room needs at least 2 clients (--clients >= 2 * --rooms)"
        );
        return ExitCode::FAILURE;
    }
    if args.size < 32 {
        eprintln!("chat-bench: error: --size must be at least 32 bytes");
        return ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat-bench: error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), BenchError> {
    let load = Load {
        clients: args.clients,
        rooms: args.rooms,
        messages: args.messages,
        size: args.size,
        rate: args.rate,
    };
    eprintln!("load: {load:?}");

    let local;
    let url = match &args.server {
        Some(url) => url.clone(),
        None => {
            let limits = Limits {
                max_sessions: Limits::DEFAULT.max_sessions.max(args.clients),
                ..Limits::default()
            };
            local = bench::start_relay(limits).await?;
            local.url.clone()
        }
    };
    let ours = bench::measure_e2ee(&url, &load).await?;
    report("relay (end-to-end encrypted clients)", &ours);

    let plain_relay = bench::start_plain_relay().await?;
    let baseline = bench::measure_plain(&plain_relay.url, &load).await?;
    report("baseline (plaintext clients, minimal relay)", &baseline);

    println!(
        "delivered={} msgs_per_sec={:.0} p50_ms={:.2} p99_ms={:.2} baseline_msgs_per_sec={:.0} ratio={:.2}",
        ours.delivered,
        ours.msgs_per_sec(),
        ours.p50_ms,
        ours.p99_ms,
        baseline.msgs_per_sec(),
        ours.msgs_per_sec() / baseline.msgs_per_sec()
    );
    Ok(())
}

fn report(what: &str, measurement: &Measurement) {
    eprintln!(
        "{what}: delivered {} in {:.2}s = {:.0} msgs/s, p50 {:.2} ms, p99 {:.2} ms",
        measurement.delivered,
        measurement.seconds,
        measurement.msgs_per_sec(),
        measurement.p50_ms,
        measurement.p99_ms
    );
}
