//! The view model: everything the screen shows, as plain data. The event loop changes
//! it (a message arrived, the connection dropped, a key was pressed) and then draws it;
//! nothing here does I/O, and nothing here knows about the network or the keys.

use std::collections::VecDeque;

use super::editor::InputLine;

/// How many lines a room keeps; past that the oldest are dropped.
pub const MAX_SCROLLBACK: usize = 5_000;

/// The whole screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screen {
    /// Who is logged in. Left out of the member lists; named in the status bar.
    pub user: String,
    /// The rooms, in the order of the room list (Alt-1 is the first).
    pub rooms: Vec<RoomView>,
    /// The index of the room shown, into `rooms`. Meaningless while `rooms` is empty
    /// (the screen then shows a hint); [`Screen::switch`], [`Screen::add_room`] and
    /// [`Screen::remove_room`] keep it in range.
    pub current: usize,
    pub status: Status,
    /// Warnings that must not scroll away (keys that changed): shown at the top, one
    /// line each, until the event loop removes them.
    pub alerts: Vec<String>,
    /// The latest informational or warning line (the result of a command, an error),
    /// shown above the input line.
    pub notice: Option<String>,
    pub input: InputLine,
    /// The terminal's size, (columns, rows), as the event loop last saw it (at start and
    /// on every resize). [`draw`](super::draw) uses the frame's own size; this is for the
    /// keys that move by half a screen (PageUp, PageDown), which draw nothing.
    pub size: (u16, u16),
}

impl Screen {
    /// A screen for `user` with no rooms yet, offline, an empty input line.
    pub fn new(user: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            rooms: Vec::new(),
            current: 0,
            status: Status::default(),
            alerts: Vec::new(),
            notice: None,
            input: InputLine::default(),
            size: (80, 24),
        }
    }

    /// The room shown, if there is one.
    pub fn current_room(&self) -> Option<&RoomView> {
        self.rooms.get(self.current)
    }

    /// The room shown, if there is one.
    pub fn current_room_mut(&mut self) -> Option<&mut RoomView> {
        self.rooms.get_mut(self.current)
    }

    /// The index of the room called `name`.
    pub fn room_index(&self, name: &str) -> Option<usize> {
        self.rooms.iter().position(|room| room.name == name)
    }

    /// The index of the room called `name`, added at the end of the list if it is not
    /// there yet. The room shown does not change.
    pub fn add_room(&mut self, name: impl Into<String>) -> usize {
        let name = name.into();
        if let Some(index) = self.room_index(&name) {
            return index;
        }
        self.rooms.push(RoomView::new(name));
        self.rooms.len() - 1
    }

    /// Removes the room called `name`, if it is there. The room shown stays the same if
    /// it was another; if it was this one, the room that takes its place in the list is
    /// shown (the one before it, if it was the last).
    pub fn remove_room(&mut self, name: &str) {
        let Some(index) = self.room_index(name) else {
            return;
        };
        self.rooms.remove(index);
        if index < self.current || self.current >= self.rooms.len() {
            self.current = self.current.saturating_sub(1);
        }
        if let Some(room) = self.rooms.get_mut(self.current) {
            room.unread = 0;
        }
    }

    /// Shows the room at `index` and marks it read. False (and nothing changes) if there
    /// is no such room.
    pub fn switch(&mut self, index: usize) -> bool {
        let Some(room) = self.rooms.get_mut(index) else {
            return false;
        };
        room.unread = 0;
        self.current = index;
        true
    }

    /// Adds `line` at the bottom of the room at `room_index` (None if there is no such
    /// room) and returns its id. A message from someone else in a room that is not shown
    /// counts as unread.
    pub fn push_line(&mut self, room_index: usize, line: Line) -> Option<LineId> {
        let shown = room_index == self.current;
        let room = self.rooms.get_mut(room_index)?;
        if !shown && matches!(line, Line::Message { own: None, .. }) {
            room.unread += 1;
        }
        Some(room.push(line))
    }
}

/// One room: its scrollback and its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomView {
    pub name: String,
    /// Messages from others that arrived while another room was shown.
    pub unread: usize,
    /// The scrollback, oldest first, at most [`MAX_SCROLLBACK`] lines. Add lines with
    /// [`RoomView::push`] (or [`Screen::push_line`]) so that their ids stay right.
    pub lines: VecDeque<Line>,
    /// Everyone in the room, in the order to list them; the user is left out when shown.
    pub members: Vec<MemberView>,
    /// Some(owner) for a private room.
    pub owner: Option<String>,
    /// How many of the newest lines are hidden below the screen because the user
    /// scrolled up; 0 follows new lines as they come.
    pub scroll: usize,
    /// The id of `lines[0]`: ids count every line ever pushed, so they stay valid when
    /// the oldest lines are dropped.
    first_id: u64,
}

/// A line's id within its room, as [`RoomView::push`] returned it: the way to find the
/// line again (to update the state of an own message) after older ones were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineId(pub u64);

impl RoomView {
    /// An empty room.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            unread: 0,
            lines: VecDeque::new(),
            members: Vec::new(),
            owner: None,
            scroll: 0,
            first_id: 0,
        }
    }

    /// Adds `line` at the bottom and returns its id. Past [`MAX_SCROLLBACK`] lines the
    /// oldest is dropped. While the user is scrolled up the view stays where it is (the
    /// new line is one more below).
    pub fn push(&mut self, line: Line) -> LineId {
        let id = LineId(self.first_id + self.lines.len() as u64);
        self.lines.push_back(line);
        if self.lines.len() > MAX_SCROLLBACK {
            self.lines.pop_front();
            self.first_id += 1;
        }
        if self.scroll > 0 {
            self.scroll += 1;
        }
        self.scroll = self.scroll.min(self.lines.len());
        id
    }

    /// The line with this id, unless it was dropped.
    pub fn line(&self, id: LineId) -> Option<&Line> {
        let index = id.0.checked_sub(self.first_id)?;
        self.lines.get(usize::try_from(index).ok()?)
    }

    /// The line with this id, unless it was dropped.
    pub fn line_mut(&mut self, id: LineId) -> Option<&mut Line> {
        let index = id.0.checked_sub(self.first_id)?;
        self.lines.get_mut(usize::try_from(index).ok()?)
    }
}

/// A member of a room, as the member list shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub name: String,
    /// False when their keys changed and the change is not accepted yet: marked "!".
    pub trusted: bool,
    /// Whether their safety number was compared: marked "✓" (while trusted).
    pub verified: bool,
}

/// One line of a room's scrollback. Times come formatted ("14:05"); every text is shown
/// with its control characters escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A chat message; `own` is Some for the user's own messages, with how far it got.
    Message {
        time: String,
        sender: String,
        text: String,
        own: Option<OwnState>,
    },
    /// Joins, leaves, "caught up", history: shown dimmed after "* ".
    Info { time: String, text: String },
    /// Something went wrong (a message dropped or tampered with): shown in yellow after
    /// "! ".
    Warning { time: String, text: String },
}

/// How far an own message got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnState {
    /// Sent, not acknowledged by the server yet: "…".
    Pending,
    /// The server stored it: "✓".
    Stored,
    /// Delivered to `to` of the `of` other members: "✓✓ to/of".
    Delivered { to: usize, of: usize },
    /// Read by `by` of the `of` other members: "read by/of".
    Read { by: usize, of: usize },
    /// Refused or given up on, and why: "✗ why".
    Failed(String),
}

/// What the status bar says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub connection: Connection,
    /// Own messages sent and not yet acknowledged by the server.
    pub pending: usize,
    /// False from a (re)connection until the server sent everything that was waiting:
    /// "catching up…".
    pub caught_up: bool,
    /// While quitting, what the client still waits for ("waiting for 2
    /// acknowledgements").
    pub closing: Option<String>,
}

/// The state of the connection to the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Connection {
    Connected,
    /// Trying again after the connection dropped; `attempt` counts from 1.
    Reconnecting {
        attempt: u32,
    },
    #[default]
    Offline,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(text: &str) -> Line {
        Line::Info {
            time: "12:00".into(),
            text: text.into(),
        }
    }

    fn message(sender: &str, text: &str) -> Line {
        Line::Message {
            time: "12:00".into(),
            sender: sender.into(),
            text: text.into(),
            own: None,
        }
    }

    #[test]
    fn line_ids_stay_valid_when_old_lines_are_dropped() {
        let mut room = RoomView::new("lobby");
        let first = room.push(info("first"));
        let second = room.push(info("second"));
        assert_eq!((first, second), (LineId(0), LineId(1)));
        for n in 2..MAX_SCROLLBACK {
            room.push(info(&n.to_string()));
        }
        assert_eq!(room.lines.len(), MAX_SCROLLBACK);
        assert_eq!(room.line_mut(first), Some(&mut info("first")));

        let newest = room.push(info("newest"));
        assert_eq!(room.lines.len(), MAX_SCROLLBACK);
        assert_eq!(newest, LineId(MAX_SCROLLBACK as u64));
        assert_eq!(room.line_mut(first), None, "dropped");
        assert_eq!(room.line_mut(second), Some(&mut info("second")));
        assert_eq!(room.line_mut(newest), Some(&mut info("newest")));
        assert_eq!(room.line_mut(LineId(MAX_SCROLLBACK as u64 + 1)), None);

        *room.line_mut(second).unwrap() = info("changed");
        assert_eq!(room.lines[0], info("changed"));
    }

    #[test]
    fn a_scrolled_up_view_stays_put_when_lines_arrive() {
        let mut room = RoomView::new("lobby");
        room.push(info("a"));
        room.push(info("b"));
        room.push(info("c"));
        room.push(info("d"));
        room.scroll = 2;
        room.push(info("e"));
        assert_eq!(room.scroll, 3);
        room.scroll = 0;
        room.push(info("f"));
        assert_eq!(room.scroll, 0);
    }

    #[test]
    fn rooms_are_added_once_switched_to_and_removed() {
        let mut screen = Screen::new("alice");
        assert_eq!(screen.current_room(), None);
        assert_eq!(screen.add_room("lobby"), 0);
        assert_eq!(screen.add_room("dev"), 1);
        assert_eq!(screen.add_room("lobby"), 0);
        assert_eq!(screen.add_room("ops"), 2);
        assert_eq!(screen.room_index("ops"), Some(2));
        assert_eq!(screen.room_index("nowhere"), None);

        // others' messages in rooms not shown are unread; own lines and info are not
        screen.push_line(1, message("bob", "hi")).unwrap();
        screen.push_line(1, message("bob", "there")).unwrap();
        screen.push_line(1, info("carol joined")).unwrap();
        screen.push_line(0, message("bob", "in lobby")).unwrap();
        assert_eq!(screen.push_line(3, info("no such room")), None);
        assert_eq!(screen.rooms[1].unread, 2);
        assert_eq!(screen.rooms[0].unread, 0, "shown");

        assert!(screen.switch(1));
        assert_eq!((screen.current, screen.rooms[1].unread), (1, 0));
        assert!(!screen.switch(3));
        assert_eq!(screen.current, 1);

        // removing a room before the current one keeps showing the same room
        screen.remove_room("lobby");
        assert_eq!(screen.current_room().unwrap().name, "dev");
        // removing the current room shows the one that takes its place...
        screen.push_line(1, message("bob", "in ops")).unwrap();
        screen.remove_room("dev");
        assert_eq!(screen.current_room().unwrap().name, "ops");
        assert_eq!(screen.rooms[0].unread, 0);
        // ...or the one before it when it was the last
        screen.add_room("z");
        screen.switch(1);
        screen.remove_room("z");
        assert_eq!(screen.current_room().unwrap().name, "ops");
        screen.remove_room("nowhere");
        screen.remove_room("ops");
        assert_eq!((screen.rooms.len(), screen.current), (0, 0));
        assert_eq!(screen.current_room(), None);
    }
}
