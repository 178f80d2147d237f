//! Python against the Rust relay and client: grpcurl-style probing of reflection and
//! health, and a Python client written from docs/PROTOCOL.md and the proto alone.
//!
//! `clients/python/setup.sh` makes the virtualenv and the stubs on first use.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::process::ServerProcess;

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join("python")
}

/// The virtualenv's interpreter, once `setup.sh` has made everything the tests need.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let status = Command::new("bash")
            .arg(python_dir().join("setup.sh"))
            .status()
            .expect("cannot run bash");
        assert!(status.success(), "clients/python/setup.sh failed");
        python_dir().join(".venv").join("bin").join("python")
    })
}

#[test]
fn grpcurl_style_probe_lists_describes_and_checks_health() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let output = Command::new(python())
        .arg(python_dir().join("probe.py"))
        .arg(server.url.trim_start_matches("http://"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    for (version, itself) in [
        ("v1", "grpc.reflection.v1.ServerReflection"),
        ("v1alpha", "grpc.reflection.v1alpha.ServerReflection"),
    ] {
        let listed = &report["list"][version];
        assert_eq!(
            *listed,
            serde_json::json!(["chat.v1.ChatService", "grpc.health.v1.Health", itself]),
            "{version}"
        );
        let methods = &report["describe"][version]["methods"];
        assert_eq!(report["describe"][version]["file"], "chat/v1/chat.proto");
        assert_eq!(
            methods["KeyExchange"]["input"],
            "chat.v1.KeyExchangeRequest"
        );
        assert_eq!(methods["KeyExchange"]["server_streaming"], false);
        assert_eq!(methods["Chat"]["input"], "chat.v1.ClientFrame");
        assert_eq!(methods["Chat"]["output"], "chat.v1.ServerFrame");
        assert_eq!(methods["Chat"]["client_streaming"], true);
        assert_eq!(methods["Chat"]["server_streaming"], true);
    }
    assert_eq!(report["health"][""], "SERVING");
    assert_eq!(report["health"]["chat.v1.ChatService"], "SERVING");
}
