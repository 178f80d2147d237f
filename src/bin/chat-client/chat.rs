//! The session's life: it joins the rooms, carries out what the person types, applies
//! the relay's frames, reconnects when the connection drops, sends receipts, saves the
//! progress per room, and ends once what was sent is acknowledged. The interface (lines
//! or full screen) is behind [`Ui`]; this loop is the same for both.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use e2ee_chat::client::{ChatSession, ClientError, Contacts, Event, Relays, progress};
use e2ee_chat::crypto::Identity;
use e2ee_chat::proto::{JoinRoom, ServerFrame};
use e2ee_chat::protocol::{now_ms, validate_room};
use tokio::time::Instant;
use tonic::Code;

use crate::commands::{self, Command};
use crate::render::{self, members_line};
use crate::ui::{Input, KeyOutcome, Link, Ui};
use crate::{Args, HELP_AFTER, describe, load_prekeys, log_in, log_in_anywhere};

/// How long the client waits, at the end, for the server to acknowledge something more
/// of what it sent (reconnecting if need be): a busy server that keeps acknowledging is
/// waited for, a silent one is not.
const CLOSING_TIMEOUT: Duration = Duration::from_secs(15);

/// How often a running client checks whether its prekey is due for renewal, and
/// whether retired ones are due for erasure.
const PREKEY_CHECK: Duration = Duration::from_secs(60 * 60);

/// How often the client looks for receipts that are due (each room sends at most one
/// every [`RECEIPT_INTERVAL`](e2ee_chat::client::RECEIPT_INTERVAL)).
const RECEIPT_CHECK: Duration = Duration::from_millis(500);

/// The wait before the first attempt to reconnect; it doubles after every failed
/// attempt, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Frames applied in a row before the progress is saved: a burst (a catch-up) costs one
/// write, not one per message.
const MAX_BATCH: usize = 256;

/// How many of our latest messages `/receipts` reports on.
const RECEIPTS_SHOWN: usize = 10;

/// Logs in, joins the rooms of `--room` and chats until the input ends.
pub async fn chat(
    args: &Args,
    mut relays: Relays,
    user: &str,
    identity: Arc<Identity>,
    contacts: Contacts,
) -> Result<(), String> {
    let mut rooms: Vec<String> = Vec::new();
    for room in &args.room {
        validate_room(room).map_err(|error| error.to_string())?;
        if !rooms.contains(room) {
            rooms.push(room.clone());
        }
    }
    let progress = progress::progress_path(&args.home, user);
    let mut joins = Vec::new();
    let mut saved = BTreeMap::new();
    for room in &rooms {
        let after_seq =
            progress::last_seq(&progress, relays.deployment(), room).map_err(describe)?;
        if let Some(seq) = after_seq {
            saved.insert(room.clone(), seq);
        }
        joins.push(JoinRoom {
            room: room.clone(),
            create_private: args.private,
            after_seq,
        });
    }
    let (channel, credentials) = log_in_anywhere(args, &mut relays, &identity, user)
        .await
        .map_err(describe)?;
    if credentials.registered {
        eprintln!(
            "registered {user} on the server with fingerprint {}",
            identity.fingerprint()
        );
    }
    let prekeys = load_prekeys(args, user, &identity)?;
    let (session, events) = ChatSession::open(
        channel,
        identity.clone(),
        &credentials,
        joins,
        contacts,
        prekeys,
        args.rotation(),
    )
    .await
    .map_err(describe)?;
    let full_screen = args.tui
        || (!args.no_tui && std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
    let ui: Box<dyn Ui> = if full_screen {
        Box::new(
            crate::full_screen::FullScreen::start(user).map_err(|error| {
                format!("cannot start the full-screen interface: {error}; try --no-tui")
            })?,
        )
    } else {
        Box::new(crate::lines::Lines::new(
            std::io::stdout().is_terminal(),
            user,
        ))
    };
    let mut chat = Chat {
        current: Some(rooms[0].clone()),
        rooms,
        session,
        ui,
        args,
        relays,
        identity,
        user,
        progress,
        saved,
        refused: 0,
        not_left: BTreeSet::new(),
        removed_from: None,
        awaiting_join: false,
    };
    chat.show_rooms();
    chat.ui.link(Link::Connected);
    for event in events {
        chat.on_event(event);
    }
    chat.ui.draw(&chat.session);
    let input = chat.ui.input();
    let result = chat.run(input).await;
    let result = chat.finish(result);
    // The full-screen interface gives the terminal back before the last lines print.
    drop(chat);
    result
}

/// A chat in some rooms, and what the client keeps about them across connections.
struct Chat<'a> {
    session: ChatSession,
    ui: Box<dyn Ui>,
    /// The rooms of the session in the order they were joined, and the current one
    /// (none after the owner removed us from it, until the person chooses another: a
    /// line meant for that room must not go to another).
    rooms: Vec<String>,
    current: Option<String>,
    /// A `/join` was sent and not answered: input waits, so that what follows it (a
    /// `/switch` to the room, a line for it) finds the room there.
    awaiting_join: bool,
    args: &'a Args,
    /// The relay in use, and those to fail over to.
    relays: Relays,
    identity: Arc<Identity>,
    user: &'a str,
    /// Where the last sequence number processed per room is saved.
    progress: PathBuf,
    /// What was last saved there, per room.
    saved: BTreeMap<String, u64>,
    /// Messages the server refused, or that could not be sent.
    refused: usize,
    /// Rooms the server did not let us leave (we are still members), for the exit status.
    not_left: BTreeSet<String>,
    /// The room whose owner removed us from it, if that was our last room.
    removed_from: Option<String>,
}

/// What became of the stream after some frames.
enum Stream {
    Open,
    Lost(ClientError),
}

impl Chat<'_> {
    /// Chats until the input ends (or /quit, or no room is left) and everything sent is
    /// answered.
    async fn run(&mut self, mut input: tokio::sync::mpsc::Receiver<Input>) -> Result<(), String> {
        let mut ending = false;
        // The closing deadline is set once; only an acknowledgement moves it (more input
        // while closing does not).
        let mut closing = false;
        let mut pending_while_closing = usize::MAX;
        let mut input_open = true;
        let mut connected = true;
        let mut backoff = Backoff::default();
        let mut attempt = 0;
        let retry = tokio::time::sleep(Duration::MAX);
        tokio::pin!(retry);
        let closing_deadline = tokio::time::sleep(Duration::MAX);
        tokio::pin!(closing_deadline);
        let mut prekey_check = tokio::time::interval(PREKEY_CHECK);
        // The first tick is immediate: the prekeys were just checked at start-up.
        prekey_check.tick().await;
        let mut receipt_check = tokio::time::interval(RECEIPT_CHECK);
        receipt_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            if !ending && self.rooms.is_empty() && !self.awaiting_join {
                // Nothing left to chat in: end as at the end of input.
                ending = true;
                closing = true;
                closing_deadline
                    .as_mut()
                    .reset(Instant::now() + CLOSING_TIMEOUT);
            }
            if ending {
                let pending = self.session.pending().len();
                if closing && pending < pending_while_closing {
                    pending_while_closing = pending;
                    closing_deadline
                        .as_mut()
                        .reset(Instant::now() + CLOSING_TIMEOUT);
                }
                if self.is_settled(connected) {
                    return match self.removed_from.take() {
                        Some(room) => Err(format!("the owner of {room} removed you from it")),
                        None => Ok(()),
                    };
                }
                self.ui.closing(Some(self.waiting_for(connected)));
            }
            // Keys already waiting (a paste) are taken in before the screen is drawn again.
            if input.is_empty() {
                self.ui.draw(&self.session);
            }
            tokio::select! {
                frame = self.session.next_frame(), if connected => {
                    let stream = match frame {
                        Ok(Some(frame)) => self.on_frames(frame).await?,
                        Ok(None) => Stream::Lost(ClientError::Disconnected),
                        Err(error) => Stream::Lost(error),
                    };
                    if let Stream::Lost(error) = stream {
                        connected = false;
                        self.save_progress();
                        if let ClientError::Ended(status) = &error
                            && matches!(status.code(), Code::Aborted | Code::PermissionDenied)
                        {
                            // Another session of ours took over, or we were removed:
                            // coming back by ourselves would only undo it.
                            return Err(format!(
                                "the server closed this session: {}",
                                describe(error)
                            ));
                        }
                        let lost = self.relays.current().to_owned();
                        let delay = self.next_relay(&error, &mut backoff);
                        attempt += 1;
                        self.ui.link(Link::Reconnecting { attempt });
                        self.ui.info(&format!(
                            "lost the connection to {lost}: {}; {} message(s) pending; \
                             reconnecting to {} in {delay:?}",
                            describe(error),
                            self.session.pending().len(),
                            self.relays.current()
                        ));
                        retry.as_mut().reset(Instant::now() + delay);
                    }
                }
                received = input.recv(), if input_open && !self.awaiting_join => {
                    let line = match received {
                        // Typed while closing: too late to send.
                        Some(Input::Line(_)) if ending => None,
                        Some(Input::Line(line)) => Some(line),
                        Some(Input::Key(key)) if ending => {
                            if self.ui.key(key) == KeyOutcome::Quit {
                                // Asked twice: stop waiting for the acknowledgements.
                                return Err(format!(
                                    "quit before the server acknowledged {} frame(s)",
                                    self.session.unanswered()
                                ));
                            }
                            None
                        }
                        Some(Input::Paste(text)) => {
                            self.ui.paste(&text);
                            None
                        }
                        Some(Input::Key(key)) => match self.ui.key(key) {
                            KeyOutcome::Line(line) => Some(line),
                            KeyOutcome::Switch(room) => {
                                self.current = Some(room);
                                None
                            }
                            KeyOutcome::Quit => {
                                ending = true;
                                None
                            }
                            KeyOutcome::Nothing => None,
                        },
                        Some(Input::Resize(columns, rows)) => {
                            self.ui.resize(columns, rows);
                            None
                        }
                        Some(Input::End) | None => {
                            input_open = false;
                            ending = true;
                            None
                        }
                    };
                    if let Some(line) = line && self.on_line(&line).await? {
                        ending = true;
                    }
                    if ending && !closing {
                        closing = true;
                        closing_deadline.as_mut().reset(Instant::now() + CLOSING_TIMEOUT);
                    }
                }
                () = &mut retry, if !connected => {
                    // Past the closing deadline, a slow attempt is not waited for.
                    let result = tokio::select! {
                        result = self.reconnect() => result,
                        () = &mut closing_deadline => return Err(self.closing_timeout(false)),
                    };
                    match result {
                        Ok(()) => {
                            connected = true;
                            attempt = 0;
                            backoff = Backoff::default();
                            self.ui.link(Link::Connected);
                        }
                        Err(error) if is_permanent(&error) => {
                            let error = describe(error.into_inner());
                            return Err(format!("cannot reconnect: {error}"));
                        }
                        Err(error) => {
                            let error = error.into_inner();
                            let failed = self.relays.current().to_owned();
                            let delay = self.next_relay(&error, &mut backoff);
                            attempt += 1;
                            self.ui.link(Link::Reconnecting { attempt });
                            self.ui.info(&format!(
                                "could not reconnect to {failed}: {}; trying {} in {delay:?}",
                                describe(error),
                                self.relays.current()
                            ));
                            retry.as_mut().reset(Instant::now() + delay);
                        }
                    }
                }
                _ = prekey_check.tick(), if connected && !ending => {
                    match self.session.renew_prekeys(now_ms()).await {
                        Ok(0) => {}
                        Ok(erased) => self.ui.info(&format!(
                            "erased {erased} prekey(s) older than the forward-secrecy window"
                        )),
                        // A lost stream shows above; the next check tries again.
                        Err(error) => self.ui.warn(&format!(
                            "could not renew prekeys: {}",
                            describe(error)
                        )),
                    }
                }
                _ = receipt_check.tick(), if connected && !ending => self.send_receipts().await?,
                () = &mut closing_deadline => return Err(self.closing_timeout(connected)),
            }
        }
    }

    /// Marks what the person saw as read and sends the receipts that are due (unless
    /// --no-receipts).
    async fn send_receipts(&mut self) -> Result<(), String> {
        if self.args.no_receipts {
            return Ok(());
        }
        for (room, seq) in self.ui.take_read() {
            self.session.mark_read(&room, seq);
        }
        match self.session.send_due_receipts().await {
            // A lost stream shows with the next frame read.
            Ok(_) | Err(ClientError::Disconnected) => Ok(()),
            Err(error) => Err(describe(error)),
        }
    }

    /// What the end waits for, for the person.
    fn waiting_for(&self, connected: bool) -> String {
        if connected {
            format!(
                "waiting for the server to acknowledge {} frame(s)",
                self.session.unanswered()
            )
        } else {
            format!(
                "reconnecting to deliver {} message(s)",
                self.session.pending().len()
            )
        }
    }

    /// The error when the closing deadline passed.
    fn closing_timeout(&self, connected: bool) -> String {
        if connected {
            format!(
                "timed out after {CLOSING_TIMEOUT:?} waiting for the server to acknowledge {} \
                 frame(s)",
                self.session.unanswered()
            )
        } else {
            format!(
                "gave up: could not reconnect to the server within {CLOSING_TIMEOUT:?} after \
                 the end of input"
            )
        }
    }

    /// Whether the session can end: everything answered; or, offline, no message left
    /// unacknowledged (what else was unanswered died with the stream and is not needed
    /// any more).
    fn is_settled(&self, connected: bool) -> bool {
        if connected {
            self.session.unanswered() == 0
        } else {
            self.session.pending().is_empty()
        }
    }

    /// Applies `first` and the frames that have already arrived after it, then saves
    /// the progress once for all of them.
    async fn on_frames(&mut self, first: ServerFrame) -> Result<Stream, String> {
        let mut frame = first;
        let mut stream = Stream::Open;
        for applied in 1..=MAX_BATCH {
            self.on_frame(frame).await?;
            // A frame read now would have to be applied before the progress is saved
            // past it: stop reading once the batch is full.
            if applied == MAX_BATCH {
                break;
            }
            // Only what is ready now: a zero timeout polls the (cancel-safe) read once.
            match tokio::time::timeout(Duration::ZERO, self.session.next_frame()).await {
                Ok(Ok(Some(next))) => frame = next,
                Ok(Ok(None)) => {
                    stream = Stream::Lost(ClientError::Disconnected);
                    break;
                }
                Ok(Err(error)) => {
                    stream = Stream::Lost(error);
                    break;
                }
                Err(_) => break,
            }
        }
        self.save_progress();
        Ok(stream)
    }

    async fn on_frame(&mut self, frame: ServerFrame) -> Result<(), String> {
        for event in self.session.handle(frame).await.map_err(describe)? {
            self.on_event(event);
        }
        Ok(())
    }

    /// Shows an event and keeps the rooms and counters in step with it.
    fn on_event(&mut self, event: Event) {
        self.ui.event(&event, &self.session);
        match event {
            Event::Refused { .. } => self.refused += 1,
            Event::Joined { room } => {
                self.awaiting_join = false;
                if !self.rooms.contains(&room) {
                    self.rooms.push(room);
                }
                self.show_rooms();
            }
            Event::JoinRefused { .. } => self.awaiting_join = false,
            Event::Left { room } => {
                self.not_left.remove(&room);
                self.room_ended(&room, true);
            }
            Event::LeaveRefused { room, .. } => {
                // Dropped from view when asked to leave; still ours.
                if !self.rooms.contains(&room) {
                    self.rooms.push(room.clone());
                    self.show_rooms();
                }
                self.not_left.insert(room);
            }
            Event::Removed { room } => {
                self.room_ended(&room, false);
                if self.rooms.is_empty() {
                    self.removed_from = Some(room);
                }
            }
            _ => {}
        }
    }

    /// We are out of `room`: nothing to catch up on there next time.
    fn room_ended(&mut self, room: &str, by_us: bool) {
        self.saved.remove(room);
        if let Err(error) = progress::forget_room(&self.progress, self.relays.deployment(), room) {
            self.ui.warn(&describe(error));
        }
        self.drop_room(room, by_us);
    }

    /// `room` is no longer one of the session's. If it was the current one, and we left
    /// it, the first room still joined takes its place; if we were removed from it,
    /// there is no current room until the person chooses one.
    fn drop_room(&mut self, room: &str, by_us: bool) {
        if !self.rooms.iter().any(|joined| joined == room) {
            return;
        }
        self.rooms.retain(|joined| joined != room);
        if self.current.as_deref() == Some(room) && !self.rooms.is_empty() {
            if by_us {
                self.current = self.rooms.first().cloned();
                self.ui
                    .info(&format!("current room: {}", self.current_name()));
            } else {
                self.current = None;
                self.ui.warn(&format!(
                    "{room} was your current room: choose another with /switch ROOM before \
                     sending (your rooms: {})",
                    self.rooms.join(", ")
                ));
            }
        }
        self.show_rooms();
    }

    /// Tells the interface the rooms and the current one.
    fn show_rooms(&mut self) {
        let current = self.current.clone().unwrap_or_default();
        self.ui.rooms(&self.rooms, &current, &self.session);
    }

    /// The current room's name, or "" if there is none.
    fn current_name(&self) -> &str {
        self.current.as_deref().unwrap_or_default()
    }

    /// Carries out one line of input; returns whether it ends the session.
    async fn on_line(&mut self, line: &str) -> Result<bool, String> {
        let command = commands::parse(line);
        let label = line.trim().to_owned();
        match self.on_command(command).await {
            Ok(ends) => Ok(ends),
            Err(CommandError::Fatal(error)) => Err(error),
            Err(CommandError::Failed(error)) => {
                self.ui.info(&format!("{label}: {error}"));
                Ok(false)
            }
        }
    }

    /// The room a command names, or the current one; it must be one of ours.
    fn room(&self, named: Option<String>) -> Result<String, CommandError> {
        let Some(room) = named.or_else(|| self.current.clone()) else {
            return Err(CommandError::Failed(format!(
                "you have no current room: choose one with /switch ROOM (your rooms: {})",
                self.rooms.join(", ")
            )));
        };
        if self.rooms.contains(&room) {
            Ok(room)
        } else if self.rooms.is_empty() {
            Err(CommandError::Failed("you are in no room".to_owned()))
        } else {
            Err(CommandError::Failed(format!(
                "you are not in {room} in this session (your rooms: {}); /join {room} first",
                self.rooms.join(", ")
            )))
        }
    }

    async fn on_command(&mut self, command: Command) -> Result<bool, CommandError> {
        match command {
            Command::Nothing => {}
            Command::Quit => return Ok(true),
            Command::Say { room, text } => {
                // A message not sent makes the exit status say so, like one refused.
                let room = self.room(room).inspect_err(|_| self.refused += 1)?;
                match self.session.send_text(&room, &text).await {
                    Ok(_) => self.ui.sent(&room, &text),
                    Err(error @ ClientError::MessageTooLong { .. }) => {
                        self.refused += 1;
                        self.ui.info(&format!("not sent: {error}"));
                    }
                    Err(error) => return Err(CommandError::Fatal(describe(error))),
                }
            }
            Command::Switch(room) => {
                self.current = Some(self.room(Some(room))?);
                self.show_rooms();
                self.ui
                    .info(&format!("current room: {}", self.current_name()));
            }
            Command::Join(room) => {
                validate_room(&room).map_err(|error| CommandError::Failed(error.to_string()))?;
                let after_seq = progress::last_seq(&self.progress, self.relays.deployment(), &room)
                    .map_err(|error| CommandError::Failed(describe(error)))?;
                let join = JoinRoom {
                    room,
                    create_private: false,
                    after_seq,
                };
                self.session.join_room(join).await.map_err(failed)?;
                self.awaiting_join = true;
            }
            Command::Leave(room) => {
                let room = self.room(room)?;
                self.session.leave(&room).await.map_err(failed)?;
                // Gone from the person's point of view at once: what is typed next
                // never goes to the room being left.
                self.drop_room(&room, true);
            }
            Command::Rooms => {
                let rooms: Vec<String> = self
                    .rooms
                    .iter()
                    .map(|room| {
                        if Some(room) == self.current.as_ref() {
                            format!("{room} (current)")
                        } else {
                            room.clone()
                        }
                    })
                    .collect();
                self.ui.info(&format!("your rooms: {}", rooms.join(", ")));
            }
            Command::Who(room) => {
                let room = self.room(room)?;
                self.ui.info(&members_line(&self.session, &room));
            }
            Command::History { room, limit } => {
                let room = self.room(room)?;
                self.session.history(&room, limit).await.map_err(failed)?;
            }
            Command::Receipts(room) => {
                let room = self.room(room)?;
                let own = self.session.own_receipts(&room, RECEIPTS_SHOWN);
                for line in render::receipt_lines(&room, &own) {
                    self.ui.info(&line);
                }
            }
            Command::Pending => {
                for line in render::pending_lines(&self.session.pending()) {
                    self.ui.info(&line);
                }
            }
            Command::Fingerprint => self
                .ui
                .info(&format!("your fingerprint: {}", self.session.fingerprint())),
            Command::Verify(name) => {
                let number = self.session.safety_number(&name).map_err(failed)?;
                self.ui.info(&format!(
                    "safety number with {name}: {number}\ncompare it with {name} out of band; \
                     if it matches, type /verify {name} confirm"
                ));
            }
            Command::Confirm(name) => {
                self.session.mark_verified(&name).map_err(failed)?;
                self.ui.info(&format!("marked {name} as verified"));
            }
            Command::Trust(name) => {
                for event in self.session.trust(&name).await.map_err(failed)? {
                    self.on_event(event);
                }
            }
            Command::Invite(name) if name == self.user => {
                return Err(CommandError::Failed(
                    "you are the owner: you need no invitation".to_owned(),
                ));
            }
            Command::Invite(name) => {
                let room = self.room(None)?;
                self.session.invite(&room, &name).await.map_err(failed)?;
            }
            Command::Kick(name) => {
                let room = self.room(None)?;
                self.session.kick(&room, &name).await.map_err(failed)?;
            }
            Command::Help => self.ui.info(HELP_AFTER),
            Command::Wrong(text) => self.ui.info(&text),
        }
        Ok(false)
    }

    /// Logs in again and takes the session to a new stream.
    async fn reconnect(&mut self) -> Result<(), Attempt> {
        let (channel, credentials) =
            log_in(self.args, self.relays.current(), &self.identity, self.user)
                .await
                .map_err(Attempt::Login)?;
        let events = self
            .session
            .reconnect(channel, &credentials)
            .await
            .map_err(Attempt::Join)?;
        for event in events {
            self.on_event(event);
        }
        // Rooms the relay no longer lets us into were dropped from the session.
        let joined = self.session.rooms();
        for room in self.rooms.clone() {
            if !joined.contains(&room) {
                self.room_ended(&room, false);
            }
        }
        self.ui.info(&format!(
            "reconnected to {}; resent {} pending message(s)",
            self.relays.current(),
            self.session.pending().len()
        ));
        Ok(())
    }

    /// Saves the last sequence number processed in each room, where it moved.
    /// After the relay in use failed with `error`: moves on to the next relay if this
    /// one is down, and says how long to wait first.
    fn next_relay(&mut self, error: &ClientError, backoff: &mut Backoff) -> Duration {
        if !error.relay_down() {
            return backoff.next_delay();
        }
        self.relays.move_on();
        if self.relays.at_first() {
            backoff.next_delay()
        } else {
            backoff.within_round()
        }
    }

    fn save_progress(&mut self) {
        for room in self.session.rooms() {
            let seq = self.session.last_seq(&room);
            if self.saved.get(&room) == Some(&seq) {
                continue;
            }
            match progress::save_last_seq(&self.progress, self.relays.deployment(), &room, seq) {
                Ok(()) => {
                    self.saved.insert(room, seq);
                }
                Err(error) => self.ui.warn(&describe(error)),
            }
        }
    }

    /// Saves the progress and reports what was left undone; then the result of the chat.
    fn finish(&mut self, result: Result<(), String>) -> Result<(), String> {
        self.save_progress();
        self.ui.closing(None);
        if self.session.undecryptable() > 0 {
            self.ui.warn(&format!(
                "{} message(s) could not be decrypted: their sender key never arrived",
                self.session.undecryptable()
            ));
        }
        for text in self.session.pending() {
            self.ui.info(&format!(
                "not acknowledged by the server (it may still have stored it): \"{}\"",
                render::one_line(text)
            ));
        }
        result?;
        if !self.not_left.is_empty() {
            let rooms: Vec<&str> = self.not_left.iter().map(String::as_str).collect();
            return Err(format!(
                "the server did not let you leave {} (said above): you are still a member",
                rooms.join(", ")
            ));
        }
        if self.refused > 0 {
            return Err(format!(
                "{} message(s) were not delivered: refused by the server, or not sent (said above)",
                self.refused
            ));
        }
        Ok(())
    }
}

/// Why a command did not do what it asked.
enum CommandError {
    /// Only this command failed: tell the person, go on.
    Failed(String),
    /// The session cannot go on.
    Fatal(String),
}

fn failed(error: ClientError) -> CommandError {
    CommandError::Failed(describe(error))
}

/// A failed reconnection attempt, by the step that failed.
#[derive(Debug)]
enum Attempt {
    Login(ClientError),
    Join(ClientError),
}

impl Attempt {
    fn into_inner(self) -> ClientError {
        match self {
            Self::Login(error) | Self::Join(error) => error,
        }
    }
}

/// Whether retrying cannot help: the server refused the login or the rooms, or
/// something is wrong on this machine. Lost connections, timeouts and a busy or
/// restarting server are worth another try.
fn is_permanent(attempt: &Attempt) -> bool {
    let (error, permanent_codes): (&ClientError, &[Code]) = match attempt {
        Attempt::Login(error) => (
            error,
            &[
                Code::Unauthenticated,
                Code::InvalidArgument,
                Code::PermissionDenied,
            ],
        ),
        Attempt::Join(error) => (
            error,
            &[
                Code::PermissionDenied,
                Code::NotFound,
                Code::InvalidArgument,
                Code::FailedPrecondition,
            ],
        ),
    };
    match error {
        ClientError::Unreachable { .. }
        | ClientError::ClosedAtOnce { .. }
        | ClientError::Disconnected
        | ClientError::NoAnswer { .. } => false,
        ClientError::Refused(status) | ClientError::Ended(status) => {
            permanent_codes.contains(&status.code())
        }
        _ => true,
    }
}

/// The waits between reconnection attempts: 0.5 s, doubling up to 10 s, per round
/// through the deployment's relays: the next relay of a round is tried after the
/// first wait, so that one already back is not missed behind a long one.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST_RETRY }
    }
}

impl Backoff {
    /// The wait before the next relay of the same round.
    fn within_round(&self) -> Duration {
        FIRST_RETRY
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(MAX_RETRY);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnecting_waits_half_a_second_doubling_up_to_ten() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..7)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    }

    #[test]
    fn only_refusals_that_retrying_cannot_change_are_permanent() {
        let refused = |code| ClientError::Refused(tonic::Status::new(code, "no"));
        assert!(is_permanent(&Attempt::Login(refused(
            Code::Unauthenticated
        ))));
        assert!(is_permanent(&Attempt::Login(ClientError::NameTaken {
            user: "alice".into(),
            reason: "taken".into()
        })));
        assert!(is_permanent(&Attempt::Join(refused(
            Code::PermissionDenied
        ))));
        assert!(!is_permanent(&Attempt::Login(refused(Code::Unavailable))));
        assert!(!is_permanent(&Attempt::Join(refused(Code::AlreadyExists))));
        assert!(!is_permanent(&Attempt::Join(refused(
            Code::Unauthenticated
        ))));
        assert!(!is_permanent(&Attempt::Join(ClientError::Ended(
            tonic::Status::unavailable("shutting down")
        ))));
        assert!(!is_permanent(&Attempt::Login(ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "refused".into()
        })));
        assert!(!is_permanent(&Attempt::Join(ClientError::Disconnected)));
    }
}
