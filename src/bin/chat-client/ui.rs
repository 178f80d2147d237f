//! What the session needs from an interface, so that one event loop
//! ([`chat`](crate::chat)) drives both the line interface and the full-screen one.

use e2ee_chat::client::{ChatSession, Event};
use tokio::sync::mpsc;

/// The state of the connection to the relay, as the person should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Connected,
    /// Lost; the next attempt is the `attempt`th.
    Reconnecting {
        attempt: u32,
    },
}

/// What a key press in the full-screen interface asks of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    Nothing,
    /// A line typed and entered: a message or a command.
    Line(String),
    /// The person switched to another room.
    Switch(String),
    Quit,
}

/// Input from the person.
#[derive(Debug)]
pub enum Input {
    /// A line (the line interface).
    Line(String),
    /// The end of the input (the line interface).
    End,
    /// A key pressed (the full-screen interface).
    Key(ratatui::crossterm::event::KeyEvent),
    /// Text pasted (the full-screen interface, in bracketed-paste mode).
    Paste(String),
    /// The terminal changed size.
    Resize(u16, u16),
}

/// An interface.
pub trait Ui {
    /// Shows what an event from the session says.
    fn event(&mut self, event: &Event, session: &ChatSession);
    /// An answer to a command, or a notice.
    fn info(&mut self, text: &str);
    /// Something that went wrong or was dropped (shown as a warning).
    fn warn(&mut self, text: &str);
    /// We sent `text` to `room`: it is pending until the relay acknowledges it.
    fn sent(&mut self, room: &str, text: &str);
    /// The rooms of the session, and which one is current.
    fn rooms(&mut self, rooms: &[String], current: &str, session: &ChatSession);
    /// The connection changed.
    fn link(&mut self, link: Link);
    /// The session is ending, waiting for what `waiting` says (None: no longer).
    fn closing(&mut self, waiting: Option<String>);
    /// A key press.
    fn key(&mut self, key: ratatui::crossterm::event::KeyEvent) -> KeyOutcome;
    /// Text pasted into the input line.
    fn paste(&mut self, text: &str);
    /// The terminal's new size.
    fn resize(&mut self, columns: u16, rows: u16);
    /// Texts from others the person has seen since the last call: `(room, seq)` of the
    /// latest in each room, for read receipts.
    fn take_read(&mut self) -> Vec<(String, u64)>;
    /// Brings the screen up to date with the session, if this interface has one.
    fn draw(&mut self, session: &ChatSession);
    /// Where the person's input comes from.
    fn input(&mut self) -> mpsc::Receiver<Input>;
}
