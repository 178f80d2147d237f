//! The line interface, for scripts, pipes and terminals alike: one line of stdin is
//! one message (or command); stdout carries the messages received, one line each as
//! `[ROOM] SENDER: TEXT`, and stderr everything else. Its lines are a contract that
//! scripts and the tests rely on (docs/PROTOCOL.md, "The command-line clients'
//! output").

use std::io::{BufRead, Write};

use e2ee_chat::client::{ChatSession, Event};
use tokio::sync::mpsc;

use crate::render::{self, Shown, one_line};
use crate::ui::{Input, KeyOutcome, Link, Ui};

pub struct Lines {
    /// stdout is a terminal: a message printed there is read by a person.
    reads: bool,
    /// The latest text printed per room, not yet reported read.
    read: Vec<(String, u64)>,
    user: String,
}

impl Lines {
    pub fn new(reads: bool, user: &str) -> Self {
        Self {
            reads,
            read: Vec::new(),
            user: user.to_owned(),
        }
    }
}

impl Ui for Lines {
    fn event(&mut self, event: &Event, session: &ChatSession) {
        for shown in render::shown(event, session, &self.user) {
            match shown {
                Shown::Message {
                    room,
                    sender,
                    text,
                    seq,
                    ..
                } => {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "[{room}] {sender}: {}", one_line(&text));
                    let _ = stdout.flush();
                    if self.reads {
                        self.read.retain(|(read, _)| *read != room);
                        self.read.push((room, seq));
                    }
                }
                Shown::Info { text, .. } => eprintln!("{text}"),
                Shown::Warning { text, .. } => eprintln!("warning: {text}"),
            }
        }
    }

    fn info(&mut self, text: &str) {
        eprintln!("{text}");
    }

    fn warn(&mut self, text: &str) {
        eprintln!("warning: {text}");
    }

    fn sent(&mut self, _room: &str, _text: &str) {}

    fn rooms(&mut self, _rooms: &[String], _current: &str, _session: &ChatSession) {}

    fn link(&mut self, _link: Link) {}

    fn closing(&mut self, _waiting: Option<String>) {}

    fn key(&mut self, _key: ratatui::crossterm::event::KeyEvent) -> KeyOutcome {
        KeyOutcome::Nothing
    }

    fn paste(&mut self, _text: &str) {}

    fn resize(&mut self, _columns: u16, _rows: u16) {}

    fn take_read(&mut self) -> Vec<(String, u64)> {
        std::mem::take(&mut self.read)
    }

    fn draw(&mut self, _session: &ChatSession) {}

    fn input(&mut self) -> mpsc::Receiver<Input> {
        spawn_stdin_reader()
    }
}

/// Reads stdin on a plain thread (tokio's stdin would hold up the exit), one line at a
/// time, invalid UTF-8 replaced.
fn spawn_stdin_reader() -> mpsc::Receiver<Input> {
    let (lines_tx, lines) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match stdin.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => {
                    let _ = lines_tx.blocking_send(Input::End);
                    return;
                }
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer);
                    let line = line.trim_end_matches(['\n', '\r']).to_owned();
                    if lines_tx.blocking_send(Input::Line(line)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    lines
}
