//! The input line editor: a single line with the usual readline keys and a history of
//! the lines sent.

use super::escape::needs_escape;

/// How many sent lines the history keeps.
pub const MAX_HISTORY: usize = 1_000;

/// The longest line the editor holds, in bytes: no message longer than an envelope's
/// limit (32 KiB) could be sent anyway, and a bound keeps every key cheap.
pub const MAX_INPUT_BYTES: usize = 32 * 1024;

/// The line being typed, and the lines sent before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputLine {
    /// What is typed. Never holds a character that [`one_line`] would escape: the
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
    pub fn cursor(&self) -> usize {
        self.cursor.min(self.len())
    }

    /// The text before the cursor and the text from the cursor on.
    pub fn split_at_cursor(&self) -> (&str, &str) {
        self.text.split_at(self.byte(self.cursor()))
    }

    /// Inserts `c` at the cursor; false for a character the screen would escape (a
    /// control character, a line separator, a bidirectional control), which is left out.
    pub fn insert(&mut self, c: char) -> bool {
        if needs_escape(c) || self.text.len() + c.len_utf8() > MAX_INPUT_BYTES {
            return false;
        }
        let at = self.byte(self.cursor());
        self.text.insert(at, c);
        self.cursor = self.cursor() + 1;
        true
    }

    /// Inserts the characters of `text` it takes (as [`insert`](Self::insert) would, in
    /// one go, so that a long paste costs one pass), up to [`MAX_INPUT_BYTES`]. False if
    /// it took none.
    pub fn insert_str(&mut self, text: &str) -> bool {
        let mut room = MAX_INPUT_BYTES.saturating_sub(self.text.len());
        let mut taken = String::new();
        for c in text.chars().filter(|c| !needs_escape(*c)) {
            if c.len_utf8() > room {
                break;
            }
            room -= c.len_utf8();
            taken.push(c);
        }
        if taken.is_empty() {
            return false;
        }
        let at = self.byte(self.cursor());
        self.text.insert_str(at, &taken);
        self.cursor = self.cursor() + taken.chars().count();
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
