//! What every key does: the editing keys go to the input line (`editor`); the others switch
//! rooms and scroll; anything that is not understood is ignored.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::model::Screen;
use super::view;

/// What the event loop does after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing changed.
    None,
    /// The user sent this line (a message or a command).
    Submit(String),
    /// The user wants to quit (Ctrl-C, or Ctrl-D on an empty line).
    Quit,
    /// The screen changed: draw it.
    Redraw,
}

impl From<bool> for Action {
    /// Redraw if something changed.
    fn from(changed: bool) -> Self {
        if changed { Self::Redraw } else { Self::None }
    }
}

/// Applies a key to the screen: edits the input line, switches rooms, scrolls.
///
/// - typing inserts at the cursor; Backspace, Delete, Left, Right, Home or Ctrl-A, End
///   or Ctrl-E, Ctrl-U (delete to the start), Ctrl-K (delete to the end), Ctrl-W
///   (delete the word before the cursor), Ctrl-B, Ctrl-F and Ctrl-H as in readline;
/// - Up and Down walk the history of lines sent, keeping the line being typed;
/// - Enter sends a line that is not blank;
/// - Ctrl-C, and Ctrl-D on an empty line, quit (Ctrl-D elsewhere deletes);
/// - Alt-1 to Alt-9 show that room; Ctrl-N or Alt-Right the next, Ctrl-P or Alt-Left the
///   previous (wrapping around);
/// - PageUp and PageDown scroll the room by half a screen (as tall as
///   [`Screen::size`] says).
///
/// Key releases are ignored (terminals that report them would otherwise type twice);
/// repeats count as presses.
pub fn handle_key(screen: &mut Screen, key: KeyEvent) -> Action {
    if key.kind == KeyEventKind::Release {
        return Action::None;
    }
    let control = key.modifiers.contains(KeyModifiers::CONTROL);
    let alt = key.modifiers.contains(KeyModifiers::ALT);
    let input = &mut screen.input;
    match key.code {
        // Ctrl and Alt together is AltGr on some systems: a character to type
        KeyCode::Char(c) if control && !alt => match c.to_ascii_lowercase() {
            'c' => Action::Quit,
            'd' if input.text.is_empty() => Action::Quit,
            'd' => input.delete().into(),
            'a' => input.move_to(0).into(),
            'e' => input.move_to(usize::MAX).into(),
            'b' => input.move_to(input.cursor().saturating_sub(1)).into(),
            'f' => input.move_to(input.cursor() + 1).into(),
            'h' => input.backspace().into(),
            'u' => input.kill_to_start().into(),
            'k' => input.kill_to_end().into(),
            'w' => input.delete_word().into(),
            'n' => step_room(screen, 1).into(),
            'p' => step_room(screen, -1).into(),
            _ => Action::None,
        },
        KeyCode::Char(c) if alt && !control => match c.to_digit(10) {
            Some(n @ 1..=9) => screen.switch(n as usize - 1).into(),
            _ => Action::None,
        },
        KeyCode::Char(c) => input.insert(c).into(),
        KeyCode::Left if alt => step_room(screen, -1).into(),
        KeyCode::Right if alt => step_room(screen, 1).into(),
        KeyCode::Left => input.move_to(input.cursor().saturating_sub(1)).into(),
        KeyCode::Right => input.move_to(input.cursor() + 1).into(),
        KeyCode::Home => input.move_to(0).into(),
        KeyCode::End => input.move_to(usize::MAX).into(),
        KeyCode::Backspace => input.backspace().into(),
        KeyCode::Delete => input.delete().into(),
        KeyCode::Up => input.history_up().into(),
        KeyCode::Down => input.history_down().into(),
        KeyCode::Enter => input.submit().map_or(Action::None, Action::Submit),
        KeyCode::PageUp => view::scroll_page(screen, true).into(),
        KeyCode::PageDown => view::scroll_page(screen, false).into(),
        _ => Action::None,
    }
}

/// Shows the room `by` places after (or before, if negative) the current one, wrapping
/// around; false if that is the current one.
fn step_room(screen: &mut Screen, by: isize) -> bool {
    let count = screen.rooms.len();
    if count < 2 {
        return false;
    }
    let next = (screen.current.min(count - 1) as isize + by).rem_euclid(count as isize);
    screen.switch(next as usize)
}
