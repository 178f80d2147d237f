//! The input line editor, and what every key does.
//!
//! The editor is a single line with the usual readline keys and a history of the lines
//! sent. The keys that are not editing switch rooms and scroll; anything that is not
//! understood is ignored.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::model::Screen;
use super::view;

/// How many sent lines the history keeps.
pub const MAX_HISTORY: usize = 1_000;

/// The line being typed, and the lines sent before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputLine {
    /// What is typed. Never holds a character that [`view::one_line`] would escape: the
    /// editor refuses them.
    pub text: String,
    /// Where the cursor is, in characters (not bytes, not cells) from the start of
    /// `text`: 0 to its number of characters.
    pub cursor: usize,
    /// The lines sent, oldest first (a line the same as the one before it is kept once),
    /// at most [`MAX_HISTORY`].
    pub history: Vec<String>,
    /// While walking the history with Up and Down, the index into `history` of the line
    /// shown; None while editing a new line.
    pub history_pos: Option<usize>,
    /// The unsent line that was being typed when the walk through the history began,
    /// given back when Down goes past the newest entry.
    pub draft: String,
}

impl InputLine {
    /// The number of characters in the line.
    fn len(&self) -> usize {
        self.text.chars().count()
    }

    /// The byte offset of the character at `index` (the end of the text past it).
    fn byte(&self, index: usize) -> usize {
        self.text
            .char_indices()
            .nth(index)
            .map_or(self.text.len(), |(at, _)| at)
    }

    /// The cursor, brought into range (the field is public).
    fn cursor(&self) -> usize {
        self.cursor.min(self.len())
    }

    /// The text before the cursor and the text from the cursor on.
    pub fn split_at_cursor(&self) -> (&str, &str) {
        self.text.split_at(self.byte(self.cursor()))
    }

    /// Inserts `c` at the cursor; false for a character the screen would escape (a
    /// control character, a line separator, a bidirectional control), which is left out.
    pub fn insert(&mut self, c: char) -> bool {
        if view::needs_escape(c) {
            return false;
        }
        let at = self.byte(self.cursor());
        self.text.insert(at, c);
        self.cursor = self.cursor() + 1;
        true
    }

    /// Removes the characters from `start` to `end` (character indices, `start <= end`)
    /// and puts the cursor where they were. False if that was nothing.
    fn remove(&mut self, start: usize, end: usize) -> bool {
        if start >= end {
            return false;
        }
        let (from, to) = (self.byte(start), self.byte(end));
        self.text.replace_range(from..to, "");
        self.cursor = start;
        true
    }

    /// Backspace: removes the character before the cursor.
    pub fn backspace(&mut self) -> bool {
        let cursor = self.cursor();
        cursor > 0 && self.remove(cursor - 1, cursor)
    }

    /// Delete: removes the character under the cursor.
    pub fn delete(&mut self) -> bool {
        let cursor = self.cursor();
        self.remove(cursor, (cursor + 1).min(self.len()))
    }

    /// Moves the cursor to `to` (clamped to the line); false if it was already there.
    pub fn move_to(&mut self, to: usize) -> bool {
        let to = to.min(self.len());
        let moved = to != self.cursor;
        self.cursor = to;
        moved
    }

    /// Ctrl-U: removes everything before the cursor.
    pub fn kill_to_start(&mut self) -> bool {
        self.remove(0, self.cursor())
    }

    /// Ctrl-K: removes everything from the cursor on.
    pub fn kill_to_end(&mut self) -> bool {
        self.remove(self.cursor(), self.len())
    }

    /// Ctrl-W: removes the word before the cursor, and the whitespace between it and the
    /// cursor.
    pub fn delete_word(&mut self) -> bool {
        let cursor = self.cursor();
        let before: Vec<char> = self.text.chars().take(cursor).collect();
        let mut start = cursor;
        while start > 0 && before[start - 1].is_whitespace() {
            start -= 1;
        }
        while start > 0 && !before[start - 1].is_whitespace() {
            start -= 1;
        }
        self.remove(start, cursor)
    }

    /// Up: shows the previous line of the history, keeping what was being typed as the
    /// draft. False at the oldest line, or with no history.
    pub fn history_up(&mut self) -> bool {
        let pos = match self.history_pos {
            _ if self.history.is_empty() => return false,
            None => {
                self.draft = std::mem::take(&mut self.text);
                self.history.len() - 1
            }
            Some(pos) => match pos.min(self.history.len()) {
                0 => return false,
                pos => pos - 1,
            },
        };
        self.show(Some(pos));
        true
    }

    /// Down: shows the next line of the history, and past the newest the draft again.
    /// False when not walking the history.
    pub fn history_down(&mut self) -> bool {
        let Some(pos) = self.history_pos else {
            return false;
        };
        if pos + 1 < self.history.len() {
            self.show(Some(pos + 1));
        } else {
            self.show(None);
        }
        true
    }

    /// Shows history entry `pos`, or the draft for None, with the cursor at its end.
    fn show(&mut self, pos: Option<usize>) {
        self.text = match pos.and_then(|pos| self.history.get(pos)) {
            Some(line) => line.clone(),
            None => std::mem::take(&mut self.draft),
        };
        self.history_pos = pos;
        self.cursor = self.len();
    }

    /// Enter: the line, which is then added to the history and cleared. None (and
    /// nothing changes) for an empty or blank line.
    pub fn submit(&mut self) -> Option<String> {
        if self.text.trim().is_empty() {
            return None;
        }
        let line = std::mem::take(&mut self.text);
        if self.history.last() != Some(&line) {
            self.history.push(line.clone());
            if self.history.len() > MAX_HISTORY {
                self.history.remove(0);
            }
        }
        self.cursor = 0;
        self.history_pos = None;
        self.draft.clear();
        Some(line)
    }
}

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
