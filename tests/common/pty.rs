//! A client run in a pseudo-terminal, its output fed to a terminal emulator (`vt100`), so
//! that a test can type keys and read the screen the client drew, as a person would.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{Child, CommandBuilder, ExitStatus, MasterPty, PtySize, native_pty_system};

/// A program running in a pseudo-terminal of a fixed size.
pub struct TerminalClient {
    child: Box<dyn Child + Send + Sync>,
    master: Box<dyn MasterPty + Send>,
    keys: Box<dyn Write + Send>,
    /// The terminal as the program drew it so far.
    parser: Arc<Mutex<vt100::Parser>>,
    /// Says when the program's output ended: every process holding the terminal exited.
    output_ended: Receiver<()>,
    /// The terminal's modes before the program started (see [`modes`]).
    modes_before: Option<String>,
}

impl TerminalClient {
    /// Starts `command` (its program, arguments, environment and directory) in a
    /// terminal `columns` wide and `rows` high, which says it is an xterm.
    pub fn start(command: &Command, columns: u16, rows: u16) -> Self {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows,
                cols: columns,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let modes_before = modes(pair.master.as_ref());
        let mut builder = CommandBuilder::new(command.get_program());
        builder.args(command.get_args());
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => builder.env(name, value),
                None => builder.env_remove(name),
            }
        }
        builder.env("TERM", "xterm-256color");
        let cwd = command
            .get_current_dir()
            .map_or_else(|| std::env::current_dir().unwrap(), ToOwned::to_owned);
        builder.cwd(cwd);
        let child = pair.slave.spawn_command(builder).unwrap();
        // Only the program holds the terminal's other end: once it exits, reading ends.
        drop(pair.slave);

        let size = |n| std::num::NonZeroU16::new(n).unwrap();
        let parser = Arc::new(Mutex::new(vt100::Parser::new(size(rows), size(columns), 0)));
        let mut output = pair.master.try_clone_reader().unwrap();
        let (ended, output_ended) = channel();
        let screen = Arc::clone(&parser);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            // Linux reports EIO once the other end is closed.
            while let Ok(read @ 1..) = output.read(&mut buffer) {
                screen.lock().unwrap().process(&buffer[..read]);
            }
            let _ = ended.send(());
        });
        let keys = pair.master.take_writer().unwrap();
        Self {
            child,
            master: pair.master,
            keys,
            parser,
            output_ended,
            modes_before,
        }
    }

    /// The screen as it is now.
    pub fn screen(&self) -> vt100::Screen {
        self.parser.lock().unwrap().screen().clone()
    }

    /// Types `keys` (bytes as a terminal sends them: "\r" for Enter, "\x03" for Ctrl-C).
    pub fn type_keys(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
        self.keys.flush().unwrap();
    }

    /// Waits until the screen satisfies `wanted` and returns it. After `timeout`, fails
    /// the test with `what` was awaited and the whole screen.
    pub fn wait_for_screen(
        &mut self,
        what: &str,
        timeout: Duration,
        mut wanted: impl FnMut(&vt100::Screen) -> bool,
    ) -> vt100::Screen {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if wanted(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                let exited = match self.child.try_wait() {
                    Ok(Some(status)) => format!("the program exited: {status}"),
                    _ => "the program is running".to_owned(),
                };
                panic!(
                    "waited {timeout:?} in vain for {what}; {exited}; the screen:\n{}",
                    show(&screen)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `text` is somewhere on the screen.
    pub fn wait_for_text(&mut self, text: &str, timeout: Duration) -> vt100::Screen {
        self.wait_for_screen(&format!("{text:?}"), timeout, |screen| {
            screen.contents().contains(text)
        })
    }

    /// Waits for the program to exit, then for the rest of its output; fails the test
    /// with the screen if it is still running after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                panic!(
                    "the program did not exit within {timeout:?}; the screen:\n{}",
                    show(&self.screen())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Everything it wrote before it exited is still to be read (a terminal opened
        // by another process meanwhile could keep the end from showing: not waited for).
        let _ = self
            .output_ended
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        status
    }

    /// The terminal's modes (echo, line editing, signals, ...) before the program
    /// started and now: the same once a program gave the terminal back.
    pub fn terminal_modes(&self) -> (Option<String>, Option<String>) {
        (self.modes_before.clone(), modes(self.master.as_ref()))
    }
}

impl Drop for TerminalClient {
    /// A test that failed half-way leaves no program behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The terminal's modes, every field of its termios, as text.
fn modes(master: &dyn MasterPty) -> Option<String> {
    master.get_termios().map(|termios| format!("{termios:?}"))
}

/// The screen's rows, numbered, the cursor's place and the terminal's mode: for failure
/// messages.
pub fn show(screen: &vt100::Screen) -> String {
    let (_, columns) = screen.size();
    let mut shown: String = screen
        .rows(0, columns.get())
        .enumerate()
        .map(|(number, row)| format!("{number:>3}|{row}\n"))
        .collect();
    let (row, column) = screen.cursor_position();
    shown += &format!(
        "cursor at row {row}, column {column}; alternate screen: {}",
        screen.alternate_screen()
    );
    shown
}
