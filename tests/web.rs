//! The browser client in a real Chromium, against a real relay that serves it: each test
//! starts its own `chat-server --web-dir web/dist` on 127.0.0.1:0 and runs one scenario of
//! `web/test/e2e/` (Node, playwright-core), with the Rust command-line client where a
//! scenario needs a third party. Real relay, real browser, real crypto, loopback only.
//!
//! Once per run: `scripts/build-web.sh` (npm ci, stubs, typecheck, web/dist) and
//! `scripts/install-chromium.sh` (apt-get install chromium when /usr/bin/chromium is
//! missing). Screenshots go to `<target dir>/web-screenshots/<scenario>/`.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use common::process::ServerProcess;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds web/dist and makes sure Chromium is there, once per test binary run.
fn prepared() -> &'static PathBuf {
    static PREPARED: OnceLock<PathBuf> = OnceLock::new();
    PREPARED.get_or_init(|| {
        for script in ["build-web.sh", "install-chromium.sh"] {
            let output = Command::new("bash")
                .arg(root().join("scripts").join(script))
                .output()
                .unwrap_or_else(|e| panic!("cannot run bash scripts/{script}: {e}"));
            assert!(
                output.status.success(),
                "scripts/{script} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let dist = root().join("web").join("dist");
        assert!(
            dist.join("app.js").is_file(),
            "scripts/build-web.sh made no web/dist/app.js"
        );
        dist
    })
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        })
        .unwrap_or_else(|| root().join("target"))
}

/// Runs `web/test/e2e/<name>.mjs` against a relay of its own; one Chromium at a time.
fn run_scenario(name: &str) {
    static ONE_BROWSER: Mutex<()> = Mutex::new(());
    let dist = prepared();
    let _one = ONE_BROWSER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_args(
        &data.path().join("data"),
        &[OsStr::new("--web-dir"), dist.as_os_str()],
    );
    let screenshots = target_dir().join("web-screenshots").join(name);
    std::fs::create_dir_all(&screenshots).unwrap();
    let mut scenario = Command::new("node");
    scenario
        .arg(format!("test/e2e/{name}.mjs"))
        .env("CHAT_SERVER_URL", &server.url)
        .env("CHAT_CLIENT_BIN", env!("CARGO_BIN_EXE_chat-client"))
        .env("SCREENSHOT_DIR", &screenshots);
    run_in_web(&mut scenario, &format!("browser scenario {name}"));
}

/// Runs `command` in web/ and fails with its output unless it succeeds; its stdout.
fn run_in_web(command: &mut Command, what: &str) -> String {
    let started = Instant::now();
    let output = command
        .current_dir(root().join("web"))
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what} (Node 20 or later is needed): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}, after {:.1?}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
        started.elapsed()
    );
    println!("{what}: passed in {:.1?}\n{stdout}", started.elapsed());
    stdout
}

/// Runs `npm run <script>` in web/, with `env`, and fails with its output.
fn npm(script: &str, env: &[(&str, &OsStr)]) {
    prepared();
    let mut npm = Command::new("npm");
    npm.args(["run", "--silent", script])
        .envs(env.iter().copied());
    let stdout = run_in_web(&mut npm, &format!("npm run {script}"));
    // node --test's summary: a run that found no test, or skipped one, is no pass.
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(stdout.contains("# skipped 0"), "{stdout}");
}

#[test]
fn the_typescript_library_matches_the_protocol_vectors_and_its_unit_tests() {
    npm("test:unit", &[]);
}

#[test]
fn the_typescript_library_chats_through_a_real_relay_from_node() {
    npm(
        "test:integration",
        &[(
            "CHAT_SERVER_BIN",
            OsStr::new(env!("CARGO_BIN_EXE_chat-server")),
        )],
    );
}

#[test]
fn browsers_and_the_command_line_client_chat_in_one_room() {
    run_scenario("chat");
}

#[test]
fn a_reload_catches_up_once_in_order() {
    run_scenario("reload");
}

#[test]
fn a_tampered_message_is_refused_with_a_warning() {
    run_scenario("tamper");
}

#[test]
fn changed_keys_raise_a_banner_and_hold_sending_until_accepted() {
    run_scenario("key-change");
}

#[test]
fn a_private_room_admits_the_invited_and_refuses_a_stranger() {
    run_scenario("private-room");
}
