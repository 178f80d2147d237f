//! `chat-server`: the end-to-end encrypted chat relay.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use e2ee_chat::protocol::utc_time;
use e2ee_chat::server::{self, Limits, WebOptions};
use e2ee_chat::store::{self, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::ServerTlsConfig;
use tracing_subscriber::EnvFilter;

/// How long a shutdown waits for connections to close before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The relay of an end-to-end encrypted chat: it routes ciphertext between the members
/// of each room and never sees a key or a plaintext.
///
/// Serves chat.v2.AuthService (login), chat.v2.ChatService (which needs a session token),
/// gRPC reflection (v1 and v1alpha) and grpc.health.v1.Health, over gRPC and, for
/// browsers, gRPC-Web (HTTP/1.1 or HTTP/2) on the same port; and the web client at /.
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change how much.
/// Stops gracefully on Ctrl-C or SIGTERM.
///
/// With a command, manages the server's data instead of serving.
#[derive(Debug, Parser)]
#[command(name = "chat-server", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on. Without TLS it must be a loopback address (see
    /// --insecure-plaintext).
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:5555")]
    listen: SocketAddr,
    /// Serve TLS with the certificate chain in this PEM file, the server's own
    /// certificate first. Needs --tls-key.
    #[arg(long, env = "CHAT_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, a PEM file (PKCS#8, PKCS#1 or SEC1; not
    /// encrypted). Needs --tls-cert.
    #[arg(long, env = "CHAT_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plaintext on an address that is not loopback. Without TLS, user and room
    /// names, any session credentials and every message's metadata cross the network in
    /// clear, and anyone on the path can pose as the relay; so the server refuses unless
    /// this is given. Use it only when a TLS-terminating proxy sits in front.
    #[arg(
        long,
        env = "CHAT_INSECURE_PLAINTEXT",
        conflicts_with = "tls_cert",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    insecure_plaintext: bool,
    /// Directory for the server's data, created with mode 0700 if missing: the SQLite
    /// database chat.sqlite3 of registered identities (public keys), rooms, members and
    /// each room's stored messages and wrapped keys (ciphertext only). Everything is on
    /// disk before it is acknowledged. Back it up with: sqlite3 chat.sqlite3 ".backup FILE"
    /// (Not used with --database.)
    #[arg(long, global = true, env = "CHAT_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Keep the data in this PostgreSQL database instead of SQLite in --data-dir:
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE (or postgresql://...). Add
    /// ?sslmode=require for TLS, its certificate checked against the CAs of
    /// &sslrootcert=PEM-FILE (or the web's roots); without it, in clear: keep the
    /// database on the same host or a private network. The schema is created and
    /// upgraded at start-up. Left out: the SQLite database in --data-dir, nothing to
    /// install.
    #[arg(long, global = true, env = "CHAT_DATABASE", value_name = "URL")]
    database: Option<String>,
    /// When another chat-server serves the same --database (or --data-dir), wait and
    /// take over when it goes, instead of stopping: a stand-by relay. It listens only
    /// once it serves; give clients both relays (--server A,B) and they fail over.
    #[arg(
        long,
        env = "CHAT_STANDBY",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    standby: bool,
    /// Serve the --database together with other relays (a cluster): they tell each
    /// other what they commit through the NATS server at this URL
    /// (nats://HOST:PORT, tls://... for TLS; credentials as nats://USER:PASSWORD@...),
    /// and each delivers to the members connected to it. Needs a PostgreSQL
    /// --database; every relay of the cluster names the same database and NATS. See
    /// docs/DEPLOY.md, "Several relays".
    #[arg(long, env = "CHAT_NATS", value_name = "URL")]
    nats: Option<String>,
    #[command(flatten)]
    web: WebOptions,
    #[command(flatten)]
    limits: Limits,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage registration tokens, for --registration token: a new user name can only
    /// be registered with one (the client's --registration-token). Works while the
    /// server runs, on the same --data-dir or --database.
    #[command(subcommand)]
    RegistrationToken(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token and print it (it is shown once: only its hash is kept).
    Create {
        /// How many registrations it allows (default: any number).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        uses: Option<u64>,
        /// Days until it expires (default: never).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        expires_in_days: Option<u64>,
    },
    /// List the tokens: id, uses left, registrations made, expiry.
    List,
    /// Delete the tokens whose id (from `list`) starts with ID.
    Revoke {
        /// An id from `list`, or its beginning.
        id: String,
    },
}

fn default_data_dir() -> PathBuf {
    dirs::data_local_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("e2ee-chat")
        .join("server")
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some(Command::RegistrationToken(command)) = &args.command {
        return match registration_token(args.database.as_deref(), &args.data_dir, command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => fail(message),
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(format!("cannot start the async runtime: {error}")),
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(message),
    }
}

async fn run(args: Args) -> Result<(), String> {
    let plaintext = args.tls_cert.is_none();
    if plaintext && !args.listen.ip().is_loopback() {
        if !args.insecure_plaintext {
            return Err(format!(
                "refusing to serve plaintext on {}, which is not a loopback address: user and \
                 room names, any session credentials and every message's metadata would cross \
                 the network in clear; pass --tls-cert and --tls-key, or --insecure-plaintext \
                 if a TLS-terminating proxy sits in front",
                args.listen
            ));
        }
        tracing::warn!(
            "serving plaintext on {} (--insecure-plaintext): only safe behind a TLS-terminating proxy",
            args.listen
        );
    }
    if args.nats.is_some() && args.database.is_none() {
        return Err(
            "--nats needs a PostgreSQL --database that every relay of the cluster shares; \
             the SQLite database in --data-dir serves one relay"
                .to_owned(),
        );
    }
    if let Some(nats) = &args.nats {
        server::nats_servers(nats)?;
    }
    if args.database.is_none() {
        server::prepare_data_dir(&args.data_dir).map_err(|error| error.to_string())?;
    }
    // Before anything is opened: a second relay on the same database stops here, or
    // stands by until the first goes (and a stand-by asked to stop meanwhile just stops).
    let claimed = store::claim::claim(
        args.database.as_deref(),
        &args.data_dir,
        args.standby,
        args.nats.is_some(),
    );
    let mut claim = tokio::select! {
        claim = claimed => claim.map_err(|error| error.to_string())?,
        () = wait_for_signal() => {
            tracing::info!("stopped while standing by");
            return Ok(());
        }
    };
    // Opening blocks (migrations, PostgreSQL's first connection): not on a worker.
    let (database, data_dir, fence) = (args.database.clone(), args.data_dir.clone(), claim.fence());
    let store: Arc<dyn Store> =
        tokio::task::spawn_blocking(move || store::open(database.as_deref(), &data_dir, fence))
            .await
            .map_err(|error| format!("cannot open the store: {error}"))?
            .map_err(|error| error.to_string())?;
    let tls = load_tls(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    match &args.database {
        None => {
            tracing::info!(%address, tls = !plaintext, data_dir = %args.data_dir.display(), "listening on {address}")
        }
        Some(_) => {
            tracing::info!(%address, tls = !plaintext, database = "postgres", "listening on {address}")
        }
    }

    // A signal, or a claim lost to another relay, stops the relay the same way: every
    // session ends with UNAVAILABLE (its client moves on) and what is in flight is
    // committed, while the claim is still held.
    let (stopping_tx, mut stopping) = watch::channel(false);
    let stopping_tx = Arc::new(stopping_tx);
    let signal = {
        let (stopping_tx, mut asked) = (stopping_tx.clone(), stopping_tx.subscribe());
        async move {
            tokio::select! {
                () = wait_for_signal() => {}
                _ = asked.wait_for(|stopping| *stopping) => {}
            }
            let _ = stopping_tx.send(true);
        }
    };
    let config = server::Config {
        limits: args.limits,
        tls,
        store,
        web: args.web,
        nats: args.nats,
    };
    let serve = server::serve(listener, config, signal);
    tokio::pin!(serve);
    let deadline = async {
        let _ = stopping.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::pin!(deadline);
    let mut lost = None;
    loop {
        tokio::select! {
            result = &mut serve => {
                result.map_err(|error| error.to_string())?;
                break;
            }
            () = &mut deadline => {
                tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
                break;
            }
            why = claim.lost(), if lost.is_none() => {
                lost = Some(why);
                let _ = stopping_tx.send(true);
            }
        }
    }
    match lost {
        Some(why) => Err(why),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// Carries out a `registration-token` command on the server's database: `database`, or
/// the SQLite database in `data_dir`.
fn registration_token(
    database: Option<&str>,
    data_dir: &Path,
    command: &TokenCommand,
) -> Result<(), String> {
    // Not a new database: a mistyped --data-dir would hold tokens the server never sees.
    if database.is_none() && !data_dir.join(store::DATABASE_FILE).exists() {
        return Err(format!(
            "there is no server database in {}: give the --data-dir the server runs with (start \
             the server once to make it)",
            data_dir.display()
        ));
    }
    let store = store::open(database, data_dir, None).map_err(|error| error.to_string())?;
    match command {
        TokenCommand::Create {
            uses,
            expires_in_days,
        } => {
            let expires_ms = expires_in_days.map(|days| {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                (now + Duration::from_secs(days.saturating_mul(86_400))).as_millis() as u64
            });
            let token = store
                .create_registration_token(*uses, expires_ms)
                .map_err(|error| error.to_string())?;
            println!("{token}");
        }
        TokenCommand::List => {
            let tokens = store
                .registration_tokens()
                .map_err(|error| error.to_string())?;
            if tokens.is_empty() {
                eprintln!("no registration tokens");
            }
            for token in tokens {
                let uses = token
                    .uses_left
                    .map_or("unlimited".to_owned(), |left| left.to_string());
                let expires = token.expires_ms.map_or("never".to_owned(), utc_time);
                println!(
                    "{}  uses left: {uses}  used: {}  expires: {expires}",
                    token.id, token.used
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let revoked = store
                .revoke_registration_tokens(id)
                .map_err(|error| error.to_string())?;
            if revoked == 0 {
                return Err(format!(
                    "no registration token has an id starting with {id:?}"
                ));
            }
            eprintln!("revoked {revoked} registration token(s)");
        }
    }
    Ok(())
}

/// The TLS configuration, if the flags ask for one (clap has made sure that both or
/// neither are given).
fn load_tls(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ServerTlsConfig>, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => server::tls::load(cert, key)
            .map(Some)
            .map_err(|error| error.to_string()),
        _ => Ok(None),
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = ctrl_c => {}
                _ = terminate.recv() => {}
            },
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn fail(message: String) -> ExitCode {
    eprintln!("chat-server: error: {message}");
    ExitCode::FAILURE
}
