//! Transport security: the relay over TLS with a self-signed certificate made here, the
//! clients that trust it and those that must not, and the server's refusal to serve
//! plaintext beyond loopback. Real servers on 127.0.0.1:0, real clients, real gRPC.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use common::process::{
    ClientProcess, ServerProcess, assert_one_line_error, lines_of, rust_client, spawn_piped,
    wait_for_exit, wait_for_line,
};
use common::{Member, RecordingProxy, TestServer, contains};
use e2ee_chat::client::{self, ClientError};
use e2ee_chat::server;

/// A self-signed certificate and its key, as PEM files in their own directory.
struct TestCert {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl TestCert {
    /// A certificate for `names` (host names or IP addresses).
    fn new(names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        Self {
            _dir: dir,
            cert,
            key,
        }
    }

    /// For `localhost` and 127.0.0.1, where the tests' servers listen.
    fn local() -> Self {
        Self::new(&["localhost", "127.0.0.1"])
    }

    fn server_args(&self) -> [&OsStr; 4] {
        [
            OsStr::new("--tls-cert"),
            self.cert.as_os_str(),
            OsStr::new("--tls-key"),
            self.key.as_os_str(),
        ]
    }
}

/// `chat-server` serving TLS with `cert` on 127.0.0.1:0, and its https:// URL.
fn tls_server(data_dir: &Path, cert: &TestCert) -> (ServerProcess, String) {
    let server = ServerProcess::start_with_args(data_dir, &cert.server_args());
    let url = format!("https://localhost:{}", server.addr.port());
    (server, url)
}

/// The Rust client trusting the CA in `ca_cert`.
fn trusting_client(url: &str, user: &str, home: &Path, ca_cert: &Path) -> Command {
    let mut command = rust_client(url, user, "lobby", home);
    command.arg("--ca-cert").arg(ca_cert);
    command
}

/// Runs `command` with stdin closed until it exits (a hang fails the test), and returns
/// how it exited and its stderr.
fn run_to_exit(mut command: Command) -> (ExitStatus, String) {
    let mut child = spawn_piped(&mut command);
    drop(child.stdin.take());
    let stderr = lines_of(child.stderr.take().unwrap());
    let status = wait_for_exit(&mut child);
    (status, stderr.iter().collect::<Vec<_>>().join("\n"))
}

#[test]
fn two_clients_chat_over_tls_through_the_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::local();
    let (server, url) = tls_server(&dir.path().join("data"), &cert);
    let home = dir.path().join("home");

    let mut alice =
        ClientProcess::joined(trusting_client(&url, "alice", &home, &cert.cert), "lobby");
    let mut bob = ClientProcess::joined(trusting_client(&url, "bob", &home, &cert.cert), "lobby");
    wait_for_line(&alice.stderr, "bob joined lobby");
    alice.say("hello over TLS");
    bob.expect_stdout("[lobby] alice: hello over TLS");
    bob.say("and back");
    alice.expect_stdout("[lobby] bob: and back");

    let (status, _, stderr) = bob.finish();
    assert!(status.success(), "{stderr:?}");
    let (status, _, stderr) = alice.finish();
    assert!(status.success(), "{stderr:?}");
    drop(server);
}

#[test]
fn clients_that_do_not_trust_the_certificate_or_speak_plaintext_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::local();
    let (server, url) = tls_server(&dir.path().join("data"), &cert);
    let home = dir.path().join("home");

    // Without --ca-cert only the public web roots are trusted.
    let (status, stderr) = run_to_exit(rust_client(&url, "alice", "lobby", &home));
    assert_one_line_error("chat-client", status, &stderr, "UnknownIssuer");
    assert!(stderr.contains("--ca-cert"), "{stderr}");

    // Another CA of the same name (rcgen names them all alike) but another key.
    let stranger = TestCert::local();
    let (status, stderr) = run_to_exit(trusting_client(&url, "alice", &home, &stranger.cert));
    assert_one_line_error("chat-client", status, &stderr, "invalid peer certificate");
    assert!(stderr.contains("--ca-cert"), "{stderr}");

    // The relay's TLS port drops a plaintext HTTP/2 client at its first bytes; the client
    // says what it likely means.
    let plain_url = format!("http://127.0.0.1:{}", server.addr.port());
    let (status, stderr) = run_to_exit(rust_client(&plain_url, "alice", "lobby", &home));
    assert_one_line_error("chat-client", status, &stderr, "use an https:// URL");

    // The server is still there for a client that trusts it.
    let client = ClientProcess::joined(trusting_client(&url, "bob", &home, &cert.cert), "lobby");
    let (status, _, stderr) = client.finish();
    assert!(status.success(), "{stderr:?}");
}

#[test]
fn an_https_client_of_a_plaintext_server_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::local();
    let server = ServerProcess::start(&dir.path().join("data"));
    let url = format!("https://localhost:{}", server.addr.port());
    let (status, stderr) = run_to_exit(trusting_client(&url, "alice", dir.path(), &cert.cert));
    assert_one_line_error("chat-client", status, &stderr, "does not speak TLS");
}

#[test]
fn a_ca_file_that_cannot_be_used_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::local();
    // Nothing listens here; each error comes before any connection.
    let url = "https://localhost:1";

    let missing = dir.path().join("missing.pem");
    let (status, stderr) = run_to_exit(trusting_client(url, "alice", dir.path(), &missing));
    let expected = format!("cannot use CA certificate {}: ", missing.display());
    assert_one_line_error("chat-client", status, &stderr, &expected);

    let (status, stderr) = run_to_exit(trusting_client(url, "alice", dir.path(), &cert.key));
    assert_one_line_error("chat-client", status, &stderr, "no PEM certificate");

    let plain = "http://localhost:1";
    let (status, stderr) = run_to_exit(trusting_client(plain, "alice", dir.path(), &cert.cert));
    assert_one_line_error("chat-client", status, &stderr, "use https://");
}

/// Runs `chat-server` with `args` after `--data-dir`, to an exit.
fn run_server(data_dir: &Path, args: &[&OsStr]) -> (ExitStatus, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat-server"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdout(Stdio::null());
    run_to_exit(command)
}

#[test]
fn the_server_refuses_plaintext_beyond_loopback_without_binding() {
    let dir = tempfile::tempdir().unwrap();
    // A data directory that cannot be created: a server that got past the check would
    // fail there, before it binds, so no test ever listens beyond loopback.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let data_dir = blocker.join("data");

    for listen in ["0.0.0.0:0", "[::]:0"] {
        let (status, stderr) = run_server(&data_dir, &["--listen".as_ref(), listen.as_ref()]);
        let expected = format!("refusing to serve plaintext on {listen}");
        assert_one_line_error("chat-server", status, &stderr, &expected);
        for reason in ["in clear", "--tls-cert", "--insecure-plaintext"] {
            assert!(stderr.contains(reason), "{stderr:?} lacks {reason:?}");
        }
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
}

#[test]
fn the_server_names_a_tls_file_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cert = TestCert::local();
    let other = TestCert::local();
    let missing = dir.path().join("missing.pem");

    let cases: [(&Path, &Path, String); 3] = [
        (
            &missing,
            &cert.key,
            format!("cannot use the TLS certificate {}: ", missing.display()),
        ),
        (
            &cert.cert,
            &missing,
            format!("cannot use the TLS private key {}: ", missing.display()),
        ),
        (
            &cert.cert,
            &other.key,
            format!(
                "cannot use the TLS private key {}: it does not match",
                other.key.display()
            ),
        ),
    ];
    for (cert_path, key_path, expected) in cases {
        let args: [&OsStr; 6] = [
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--tls-cert".as_ref(),
            cert_path.as_os_str(),
            "--tls-key".as_ref(),
            key_path.as_os_str(),
        ];
        let (status, stderr) = run_server(&data_dir, &args);
        assert_one_line_error("chat-server", status, &stderr, &expected);
        assert!(!stderr.contains("listening on"), "{stderr}");
    }

    // Half a TLS configuration is a usage error.
    let args: [&OsStr; 4] = [
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--tls-cert".as_ref(),
        cert.cert.as_os_str(),
    ];
    let (status, stderr) = run_server(&data_dir, &args);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

/// Opens a channel to `url` trusting `cert`.
async fn tls_channel(url: &str, cert: &TestCert) -> Result<tonic::transport::Channel, ClientError> {
    client::connect(url, Some(&cert.cert)).await
}

#[tokio::test]
async fn names_do_not_cross_the_wire_in_clear_over_tls() {
    let cert = TestCert::local();
    let server = TestServer::with_tls(server::tls::load(&cert.cert, &cert.key).unwrap()).await;
    let proxy = RecordingProxy::start(server.addr).await;
    let proxy_port = proxy.url.rsplit(':').next().unwrap();
    let url = format!("https://localhost:{proxy_port}");

    let room = "tls-secret-room";
    let mut alice =
        Member::join_on(tls_channel(&url, &cert).await.unwrap(), "alice-tls", room).await;
    let mut bob = Member::join_on(tls_channel(&url, &cert).await.unwrap(), "bob-tls", room).await;
    alice.sees_join("bob-tls").await;
    alice.send("hello").await;
    assert_eq!(
        bob.messages(1).await,
        [("alice-tls".to_owned(), "hello".to_owned())]
    );

    let wire = proxy.bytes();
    assert!(!wire.is_empty());
    for name in ["alice-tls", "bob-tls", room, "chat.v2.ChatService"] {
        assert!(
            !contains(&wire, name.as_bytes()),
            "{name} crossed the wire in clear"
        );
    }
    alice.quit().await.unwrap();
    bob.quit().await.unwrap();
    server.shut_down().await.unwrap();
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let cert = TestCert::new(&["localhost"]);
    let server = TestServer::with_tls(server::tls::load(&cert.cert, &cert.key).unwrap()).await;

    // The same server and CA, reached by an address the certificate does not name.
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let error = tls_channel(&url, &cert).await.unwrap_err();
    let text = client::error_chain(&error);
    assert!(matches!(error, ClientError::Unreachable { .. }), "{text}");
    assert!(text.contains("not valid for name"), "{text}");
    assert!(!text.contains('\n'), "{text}");

    tls_channel(&server.url, &cert).await.unwrap();
    server.shut_down().await.unwrap();
}

#[tokio::test]
async fn a_tls_connection_that_sends_no_request_is_closed_after_the_handshake_deadline() {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use std::io::Read;

    let cert = TestCert::local();
    let limits = server::Limits {
        network: server::NetworkLimits {
            handshake_timeout_ms: 500,
            ..server::NetworkLimits::DEFAULT
        },
        ..server::Limits::default()
    };
    let server = TestServer::serving_config(server::Config {
        tls: Some(server::tls::load(&cert.cert, &cert.key).unwrap()),
        ..server::Config::ephemeral(limits)
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&cert.cert).unwrap())
        .unwrap();
    let addr = server.addr;
    // A client that completes the TLS handshake, then never sends an HTTP/2 preface.
    let closed = tokio::task::spawn_blocking(move || {
        let config = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = rustls::ClientConnection::new(config.into(), name).unwrap();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(common::PATIENCE)).unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp).unwrap();
        }
        // Read what the server sends (its HTTP/2 settings) until it closes.
        let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(error) => {
                    return error.kind() != std::io::ErrorKind::WouldBlock
                        && error.kind() != std::io::ErrorKind::TimedOut;
                }
            }
        }
    })
    .await
    .unwrap();
    assert!(closed, "the server kept a silent TLS connection open");
}
