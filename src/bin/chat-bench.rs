//! `chat-bench`: measures the relay with real clients and real crypto against a minimal
//! plaintext broadcast relay, in one run, and checks every delivery.

use std::process::ExitCode;

use clap::Parser;
use e2ee_chat::bench::{self, BenchError, Load, Measurement};
use e2ee_chat::client::RotationPolicy;
use e2ee_chat::server::Limits;

/// Load the relay with real end-to-end encrypted clients, then the same load of plaintext
/// clients through a minimal tonic broadcast relay (no crypto, no checks, no limits), and
/// compare. Every member must receive every message of its room exactly once and in order,
/// or the run fails with a non-zero exit.
///
/// The last line on stdout is the summary:
/// delivered=D msgs_per_sec=R p50_ms=A p99_ms=B baseline_msgs_per_sec=S ratio=R/S
///
/// With --plaintext, only the relay's own cost is measured (see that option).
#[derive(Debug, Parser)]
#[command(name = "chat-bench", version)]
struct Args {
    /// Connected clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Rooms; client i joins room i mod ROOMS.
    #[arg(long, default_value_t = 5)]
    rooms: usize,
    /// Messages each client sends [default: 200; with --plaintext, 4000].
    #[arg(long)]
    messages: Option<u64>,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Messages per second across all clients [default: as fast as they go; with
    /// --plaintext, 1000 for its fixed-rate part].
    #[arg(long)]
    rate: Option<f64>,
    /// The end-to-end encrypted clients replace their sender keys after this many
    /// messages (as chat-client's option of the same name; Megolm uses 100).
    #[arg(long, default_value_t = RotationPolicy::default().messages)]
    rotate_after_messages: u32,
    /// Load a running relay instead of one started in this process; several relays
    /// of a cluster separated by commas: client i uses the (i mod N)th.
    #[arg(long, value_name = "URL[,URL...]")]
    server: Option<String>,
    /// Instead of a load: start chat-server (the binary next to this one) as a child,
    /// connect this many idle clients, and report the server's memory (Linux).
    #[arg(long)]
    idle: Option<usize>,
    /// Instead of the usual comparison: the same load of plaintext clients through the
    /// relay with group commit (its default), then with one commit (one fsync) per
    /// message. The summary line is then:
    /// group_msgs_per_sec=G single_msgs_per_sec=S ratio=G/S
    #[arg(long, conflicts_with_all = ["server", "idle"])]
    group_commit: bool,
    /// Instead of the usual comparison: the relay's own cost, long enough to measure.
    /// The same plaintext clients (no sealing, no opening) through our relay and through
    /// the baseline relay, first as fast as they go (--messages each, 4000 by default:
    /// several seconds), then at a fixed --rate (1000 msgs/s by default) for
    /// --rate-seconds, for latency. The summary line is then:
    /// relay_msgs_per_sec=R baseline_msgs_per_sec=S ratio=R/S relay_p50_ms=A
    /// relay_p99_ms=B baseline_p50_ms=C baseline_p99_ms=D p99_ratio=B/D
    #[arg(long, conflicts_with_all = ["server", "idle", "group_commit"])]
    plaintext: bool,
    /// With --plaintext: how long the fixed-rate part lasts.
    #[arg(long, default_value_t = 10.0, requires = "plaintext")]
    rate_seconds: f64,
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
    let result = match args.idle {
        Some(clients) => runtime.block_on(run_idle(clients)),
        None if args.group_commit => runtime.block_on(run_group_commit(&load(&args))),
        None if args.plaintext => runtime.block_on(run_plaintext(&args)),
        None => runtime.block_on(run(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat-bench: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &Args) -> Load {
    Load {
        clients: args.clients,
        rooms: args.rooms,
        messages: args.messages.unwrap_or(200),
        size: args.size,
        rate: args.rate,
        rotation: RotationPolicy {
            messages: args.rotate_after_messages,
            ..RotationPolicy::default()
        },
    }
}

async fn run(args: &Args) -> Result<(), BenchError> {
    let load = load(args);
    eprintln!("load: {load:?}");

    let local;
    let url = match &args.server {
        Some(url) => url.clone(),
        None => {
            local = bench::start_relay(Limits::default()).await?;
            local.url.clone()
        }
    };
    let ours = bench::measure_e2ee(&url, &load).await?;
    report("relay, end-to-end encrypted clients", &ours);
    if args.server.is_none() {
        // The same relay with clients that neither seal nor open: what the relay costs
        // by itself. (A fresh relay, since user names are bound to keys.)
        let relay = bench::start_relay(Limits::default()).await?;
        let relay_only = bench::measure_plain(&relay.url, &load, bench::Login::Required).await?;
        report("relay, plaintext clients", &relay_only);
    }

    let plain_relay = bench::start_plain_relay().await?;
    let baseline = bench::measure_plain(&plain_relay.url, &load, bench::Login::None).await?;
    report("baseline relay, plaintext clients", &baseline);

    println!(
        "delivered={} msgs_per_sec={:.0} p50_ms={:.2} p99_ms={:.2} baseline_msgs_per_sec={:.0} ratio={:.4}",
        ours.delivered,
        ours.msgs_per_sec(),
        ours.p50_ms,
        ours.p99_ms,
        baseline.msgs_per_sec(),
        ours.msgs_per_sec() / baseline.msgs_per_sec()
    );
    Ok(())
}

async fn run_group_commit(load: &Load) -> Result<(), BenchError> {
    eprintln!("load: {load:?}");
    let grouped = bench::start_relay(Limits::default()).await?;
    let group = bench::measure_plain(&grouped.url, load, bench::Login::Required).await?;
    report("relay, plaintext clients, group commit", &group);
    let one_by_one = Limits {
        max_commit_batch: 1,
        ..Limits::default()
    };
    let single_relay = bench::start_relay(one_by_one).await?;
    let single = bench::measure_plain(&single_relay.url, load, bench::Login::Required).await?;
    report("relay, plaintext clients, one commit per change", &single);
    println!(
        "group_msgs_per_sec={:.0} single_msgs_per_sec={:.0} ratio={:.2}",
        group.msgs_per_sec(),
        single.msgs_per_sec(),
        group.msgs_per_sec() / single.msgs_per_sec()
    );
    Ok(())
}

async fn run_plaintext(args: &Args) -> Result<(), BenchError> {
    let positive = |value: f64| value.is_finite() && value > 0.0;
    if !positive(args.rate_seconds) || args.rate.is_some_and(|rate| !positive(rate)) {
        return Err(BenchError::Unexpected(
            "--rate and --rate-seconds must be positive".into(),
        ));
    }
    let fast = Load {
        messages: args.messages.unwrap_or(4000),
        rate: None,
        ..load(args)
    };
    let rate = args.rate.unwrap_or(1000.0);
    // At least one message each: every client sends, so every pair is checked.
    let paced = Load {
        messages: ((rate * args.rate_seconds / args.clients as f64).round() as u64).max(1),
        rate: Some(rate),
        ..load(args)
    };
    eprintln!("as fast as they go: {fast:?}");
    eprintln!("at a fixed rate: {paced:?}");
    // A fresh relay for each part: user names are bound to keys, and a part must not
    // start with the previous one's messages in the store.
    let mut measured = Vec::new();
    for load in [&fast, &paced] {
        let relay = bench::start_relay(Limits::default()).await?;
        let ours = bench::measure_plain(&relay.url, load, bench::Login::Required).await?;
        drop(relay);
        report("relay, plaintext clients", &ours);
        let plain_relay = bench::start_plain_relay().await?;
        let baseline = bench::measure_plain(&plain_relay.url, load, bench::Login::None).await?;
        drop(plain_relay);
        report("baseline relay, plaintext clients", &baseline);
        measured.push((ours, baseline));
    }
    let (fast_ours, fast_baseline) = &measured[0];
    let (paced_ours, paced_baseline) = &measured[1];
    println!(
        "relay_msgs_per_sec={:.0} baseline_msgs_per_sec={:.0} ratio={:.3} relay_p50_ms={:.2} \
         relay_p99_ms={:.2} baseline_p50_ms={:.2} baseline_p99_ms={:.2} p99_ratio={:.2}",
        fast_ours.msgs_per_sec(),
        fast_baseline.msgs_per_sec(),
        fast_ours.msgs_per_sec() / fast_baseline.msgs_per_sec(),
        paced_ours.p50_ms,
        paced_ours.p99_ms,
        paced_baseline.p50_ms,
        paced_baseline.p99_ms,
        paced_ours.p99_ms / paced_baseline.p99_ms
    );
    Ok(())
}

async fn run_idle(clients: usize) -> Result<(), BenchError> {
    let server_binary = std::env::current_exe()?.with_file_name("chat-server");
    eprintln!(
        "connecting {clients} idle clients to {}",
        server_binary.display()
    );
    let report = bench::measure_idle(&server_binary, clients).await?;
    println!(
        "idle_clients={} server_rss_kib={} server_peak_rss_kib={} rss_before_kib={} per_client_kib={:.1}",
        report.clients,
        report.rss_kib,
        report.peak_rss_kib,
        report.rss_before_kib,
        report.rss_kib.saturating_sub(report.rss_before_kib) as f64 / report.clients as f64
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
