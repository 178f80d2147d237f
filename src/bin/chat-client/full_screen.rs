//! The full-screen interface: it keeps a [`tui::Screen`] in step with the session (the
//! rooms, their messages and members, our messages' states from the relay's
//! acknowledgements and the members' receipts, the connection) and draws it on the
//! terminal. Keys come from a thread reading the terminal; [`tui::handle_key`] edits the
//! screen and says what the person asked for.

use std::collections::{BTreeMap, VecDeque};

use e2ee_chat::client::{ChatSession, Event, ReceiptSummary};
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self as terminal_event, KeyEvent};
use tokio::sync::mpsc;

use crate::render::{self, Shown};
use crate::tui::{self, Action, Connection, Line, LineId, MemberView, OwnState, Screen};
use crate::ui::{Input, KeyOutcome, Link, Ui};

/// How many of our stored messages per room keep their receipts up to date on screen.
const OWN_LINES_FOLLOWED: usize = 500;

pub struct FullScreen {
    screen: Screen,
    terminal: DefaultTerminal,
    /// Per room, our messages not acknowledged yet, in the order sent (the relay answers
    /// a room's frames in order).
    pending: BTreeMap<String, VecDeque<LineId>>,
    /// Per room, our acknowledged messages by sequence number.
    stored: BTreeMap<String, BTreeMap<u64, LineId>>,
    /// Per room, the latest text from someone else, and the latest reported read.
    latest_text: BTreeMap<String, u64>,
    reported_read: BTreeMap<String, u64>,
    link: Link,
    /// Lines that come once the screen is closing, printed after it is gone.
    after: Vec<String>,
    closed: bool,
}

impl FullScreen {
    /// Takes over the terminal (raw mode, alternate screen; given back on drop and on a
    /// panic).
    pub fn start(user: &str) -> std::io::Result<Self> {
        let terminal = ratatui::try_init()?;
        // A paste comes as one piece of text, not as keys: its line breaks do not send
        // it line by line, and a long one is taken in at once.
        ratatui::crossterm::execute!(std::io::stdout(), terminal_event::EnableBracketedPaste)?;
        let mut screen = Screen::new(user);
        if let Ok(size) = terminal.size() {
            screen.size = (size.width, size.height);
        }
        Ok(Self {
            screen,
            terminal,
            pending: BTreeMap::new(),
            stored: BTreeMap::new(),
            latest_text: BTreeMap::new(),
            reported_read: BTreeMap::new(),
            link: Link::Connected,
            after: Vec::new(),
            closed: false,
        })
    }

    fn room_index(&mut self, room: Option<&str>) -> Option<usize> {
        match room {
            Some(room) => self.screen.room_index(room),
            None => (!self.screen.rooms.is_empty()).then_some(self.screen.current),
        }
    }

    fn push(&mut self, room: Option<&str>, line: Line) -> Option<LineId> {
        let index = self.room_index(room)?;
        self.screen.push_line(index, line)
    }

    /// Where a line about `event` goes: its room; for a contact's pinned keys, which
    /// name no room, every room that contact is in (else the current room).
    fn rooms_of(
        &self,
        event: &Event,
        room: Option<String>,
        session: &ChatSession,
    ) -> Vec<Option<String>> {
        if let (None, Event::Pinned { user, .. }) = (&room, event) {
            let rooms: Vec<Option<String>> = self
                .screen
                .rooms
                .iter()
                .filter(|view| session.members(&view.name).contains(user))
                .map(|view| Some(view.name.clone()))
                .collect();
            if !rooms.is_empty() {
                return rooms;
            }
        }
        vec![room]
    }

    fn set_own_state(&mut self, room: &str, id: LineId, state: OwnState) {
        let Some(index) = self.screen.room_index(room) else {
            return;
        };
        if let Some(Line::Message { own: Some(own), .. }) = self.screen.rooms[index].line_mut(id) {
            *own = state;
        }
    }

    /// Our message in `room` under `seq`, as its receipts say now.
    fn refresh_receipts(&mut self, room: &str, session: &ChatSession) {
        let Some(stored) = self.stored.get(room) else {
            return;
        };
        let updates: Vec<(LineId, OwnState)> = stored
            .iter()
            .filter_map(|(seq, id)| {
                let summary = session.receipt_summary(room, *seq)?;
                Some((*id, own_state(&summary)))
            })
            .collect();
        for (id, state) in updates {
            self.set_own_state(room, id, state);
        }
    }

    fn note(&mut self, text: String) {
        if self.closed {
            self.after.push(text);
        } else {
            self.screen.notice = Some(text.lines().last().unwrap_or_default().to_owned());
            for line in text.lines() {
                self.push(
                    None,
                    Line::Info {
                        time: clock(e2ee_chat::protocol::now_ms()),
                        text: line.to_owned(),
                    },
                );
            }
        }
    }
}

/// What receipts say of one of our stored messages, for the screen.
fn own_state(summary: &ReceiptSummary) -> OwnState {
    let of = summary.recipients.len();
    if !summary.read.is_empty() {
        OwnState::Read {
            by: summary.read.len(),
            of,
        }
    } else if !summary.delivered.is_empty() {
        OwnState::Delivered {
            to: summary.delivered.len(),
            of,
        }
    } else {
        OwnState::Stored
    }
}

/// `HH:MM` in local time.
fn clock(ms: u64) -> String {
    use chrono::TimeZone;
    i64::try_from(ms)
        .ok()
        .and_then(|ms| chrono::Local.timestamp_millis_opt(ms).single())
        .map_or_else(
            || "--:--".to_owned(),
            |time| time.format("%H:%M").to_string(),
        )
}

impl Ui for FullScreen {
    fn event(&mut self, event: &Event, session: &ChatSession) {
        match event {
            Event::Delivered { room, seq, .. } => {
                if let Some(id) = self.pending.get_mut(room).and_then(VecDeque::pop_front) {
                    self.set_own_state(room, id, OwnState::Stored);
                    let stored = self.stored.entry(room.clone()).or_default();
                    stored.insert(*seq, id);
                    while stored.len() > OWN_LINES_FOLLOWED {
                        stored.pop_first();
                    }
                }
                return;
            }
            Event::Receipt { room, .. } => {
                self.refresh_receipts(room, session);
                return;
            }
            Event::Refused {
                text,
                code,
                message,
                ..
            } => {
                let reason = format!("{}: {message}", e2ee_chat::client::code_name(*code));
                let found = self.pending.iter().find_map(|(room, queue)| {
                    let index = self.screen.room_index(room)?;
                    let view = &self.screen.rooms[index];
                    let position = queue.iter().position(|id| {
                        matches!(view.line(*id), Some(Line::Message { text: sent, .. }) if sent.as_str() == text.as_str())
                    })?;
                    Some((room.clone(), position))
                });
                let found = found.and_then(|(room, position)| {
                    let id = self.pending.get_mut(&room)?.remove(position)?;
                    Some((room, id))
                });
                if let Some((room, id)) = found {
                    self.set_own_state(&room, id, OwnState::Failed(reason));
                    return;
                }
            }
            _ => {}
        }
        let user = self.screen.user.clone();
        for shown in render::shown(event, session, &user) {
            match shown {
                Shown::Message {
                    room,
                    sender,
                    text,
                    sent_at_ms,
                    seq,
                } => {
                    self.latest_text.insert(room.clone(), seq);
                    self.push(
                        Some(&room),
                        Line::Message {
                            time: clock(sent_at_ms),
                            sender,
                            text,
                            own: None,
                        },
                    );
                }
                Shown::Info { room, text } => {
                    // The view marks info lines itself.
                    let text = text.strip_prefix("* ").map_or(text.clone(), str::to_owned);
                    let time = clock(e2ee_chat::protocol::now_ms());
                    for room in self.rooms_of(event, room, session) {
                        let line = Line::Info {
                            time: time.clone(),
                            text: text.clone(),
                        };
                        self.push(room.as_deref(), line);
                    }
                }
                Shown::Warning { room, text } => {
                    let time = clock(e2ee_chat::protocol::now_ms());
                    self.push(room.as_deref(), Line::Warning { time, text });
                }
            }
        }
    }

    fn info(&mut self, text: &str) {
        self.note(text.to_owned());
    }

    fn warn(&mut self, text: &str) {
        self.note(format!("warning: {text}"));
    }

    fn sent(&mut self, room: &str, text: &str) {
        let line = Line::Message {
            time: clock(e2ee_chat::protocol::now_ms()),
            sender: self.screen.user.clone(),
            text: text.to_owned(),
            own: Some(OwnState::Pending),
        };
        if let Some(id) = self.push(Some(room), line) {
            self.pending
                .entry(room.to_owned())
                .or_default()
                .push_back(id);
        }
    }

    fn rooms(&mut self, rooms: &[String], current: &str, _session: &ChatSession) {
        let gone: Vec<String> = self
            .screen
            .rooms
            .iter()
            .map(|room| room.name.clone())
            .filter(|name| !rooms.contains(name))
            .collect();
        for room in gone {
            self.screen.remove_room(&room);
        }
        for room in rooms {
            self.screen.add_room(room.clone());
        }
        if let Some(index) = self.screen.room_index(current) {
            self.screen.switch(index);
        }
    }

    fn link(&mut self, link: Link) {
        self.link = link;
    }

    fn closing(&mut self, waiting: Option<String>) {
        self.closed |= waiting.is_none();
        self.screen.status.closing = waiting;
    }

    fn key(&mut self, key: KeyEvent) -> KeyOutcome {
        let before = self.screen.current;
        match tui::handle_key(&mut self.screen, key) {
            Action::Submit(line) => KeyOutcome::Line(line),
            Action::Quit => KeyOutcome::Quit,
            Action::Redraw | Action::None if self.screen.current != before => self
                .screen
                .current_room()
                .map_or(KeyOutcome::Nothing, |room| {
                    KeyOutcome::Switch(room.name.clone())
                }),
            Action::Redraw | Action::None => KeyOutcome::Nothing,
        }
    }

    fn paste(&mut self, text: &str) {
        // One line: line breaks and tabs become spaces; what the editor refuses (other
        // control characters) is dropped by it.
        let text: String = text
            .replace("\r\n", "\n")
            .chars()
            .map(|c| {
                if matches!(c, '\n' | '\r' | '\t') {
                    ' '
                } else {
                    c
                }
            })
            .collect();
        self.screen.input.insert_str(&text);
    }

    fn resize(&mut self, columns: u16, rows: u16) {
        self.screen.size = (columns, rows);
    }

    fn take_read(&mut self) -> Vec<(String, u64)> {
        let Some(room) = self.screen.current_room() else {
            return Vec::new();
        };
        // Only what is on the screen: the room shown, following its newest lines.
        if room.scroll > 0 {
            return Vec::new();
        }
        let name = room.name.clone();
        let Some(latest) = self.latest_text.get(&name).copied() else {
            return Vec::new();
        };
        if self.reported_read.get(&name) >= Some(&latest) {
            return Vec::new();
        }
        self.reported_read.insert(name.clone(), latest);
        vec![(name, latest)]
    }

    fn draw(&mut self, session: &ChatSession) {
        self.screen.status.connection = match self.link {
            Link::Connected => Connection::Connected,
            Link::Reconnecting { attempt } => Connection::Reconnecting { attempt },
        };
        self.screen.status.pending = session.pending().len();
        let mut alerts = Vec::new();
        for room in &mut self.screen.rooms {
            room.owner = session.owner(&room.name).map(str::to_owned);
            room.members = session
                .members(&room.name)
                .into_iter()
                .map(|name| MemberView {
                    trusted: session.is_trusted(&room.name, &name),
                    verified: session.is_verified(&name),
                    name,
                })
                .collect();
            for user in session.untrusted_members(&room.name) {
                alerts.push(format!(
                    "NEW KEYS for {user} in {}: nothing goes to or comes from {user} until \
                     you /verify {user} and then /trust {user}",
                    room.name
                ));
            }
        }
        self.screen.alerts = alerts;
        self.screen.status.caught_up = self
            .screen
            .current_room()
            .is_none_or(|room| session.is_caught_up(&room.name));
        let screen = &self.screen;
        // A terminal that cannot be drawn on is gone; the session ends with the input.
        let _ = self.terminal.draw(|frame| tui::draw(frame, screen));
    }

    fn input(&mut self) -> mpsc::Receiver<Input> {
        let (keys_tx, keys) = mpsc::channel(64);
        std::thread::spawn(move || {
            loop {
                let input = match terminal_event::read() {
                    Ok(terminal_event::Event::Key(key)) => Input::Key(key),
                    Ok(terminal_event::Event::Resize(columns, rows)) => {
                        Input::Resize(columns, rows)
                    }
                    Ok(terminal_event::Event::Paste(text)) => Input::Paste(text),
                    Ok(_) => continue,
                    Err(_) => Input::End,
                };
                if keys_tx.blocking_send(input).is_err() {
                    return;
                }
            }
        });
        keys
    }
}

impl Drop for FullScreen {
    fn drop(&mut self) {
        let _ =
            ratatui::crossterm::execute!(std::io::stdout(), terminal_event::DisableBracketedPaste);
        ratatui::restore();
        for line in &self.after {
            eprintln!("{line}");
        }
    }
}
