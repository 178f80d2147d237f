//! The full-screen terminal interface: a view of a [`Screen`] and the keys that edit it.
//!
//! The TUI owns what the user sees and types, and nothing else. [`Screen`] is plain
//! data (the rooms and their scrollback, the members, the connection state, the input
//! line); [`draw`] renders it into a ratatui frame, and [`handle_key`] applies a key to
//! it and says what the event loop should do next ([`Action`]). No network, no crypto,
//! no clock, no terminal set-up here: the event loop owns those, feeds the session's
//! events into the `Screen`, and sends what [`Action::Submit`] hands it. Kept apart like
//! this, every screen can be tested by drawing it on ratatui's `TestBackend`.
//!
//! Everything that came from someone else (messages, names, reasons) is escaped with
//! [`one_line`] before it reaches a cell, so it can neither drive the terminal nor
//! disguise itself with bidirectional controls.

mod editor;
mod escape;
mod input;
mod model;
mod view;

#[cfg(test)]
mod tests;

pub use escape::one_line;
pub use input::{Action, handle_key};
pub use model::{Connection, Line, LineId, MemberView, OwnState, Screen};
pub use view::draw;
