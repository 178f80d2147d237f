//! Whole screens drawn on ratatui's `TestBackend` and compared cell by cell (as text, a
//! string per row; the styles that matter are checked on their own), and the editor's
//! keys.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::{Buffer, CellWidth};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::Position;
use ratatui::style::{Color, Modifier};

use super::editor::InputLine;
use super::model::Status;
use super::*;

/// Draws `screen` on a `width` x `height` terminal.
fn render(screen: &Screen, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| draw(frame, screen)).unwrap();
    terminal
}

/// The buffer's text, a string per row; the cells hidden under a wide character are left
/// out, so a row reads as the terminal shows it.
fn rows(buffer: &Buffer) -> Vec<String> {
    let area = buffer.area;
    (area.top()..area.bottom())
        .map(|y| {
            let mut row = String::new();
            let mut hidden = 0;
            for x in area.left()..area.right() {
                if hidden > 0 {
                    hidden -= 1;
                    continue;
                }
                let symbol = buffer[(x, y)].symbol();
                row.push_str(symbol);
                hidden = symbol.cell_width().saturating_sub(1);
            }
            row
        })
        .collect()
}

/// Asserts that the terminal shows `expected`, and prints the screen it shows if not.
#[track_caller]
fn assert_screen<const N: usize>(terminal: &Terminal<TestBackend>, expected: [&str; N]) {
    let actual = rows(terminal.backend().buffer());
    if actual != expected {
        let quoted = |rows: &[String]| {
            rows.iter()
                .map(|row| format!("    {row:?},\n"))
                .collect::<String>()
        };
        let expected = expected.map(str::to_owned);
        panic!(
            "the screen differs\nexpected:\n{}actual:\n{}",
            quoted(&expected),
            quoted(&actual)
        );
    }
}

/// The cursor position the terminal was left with.
fn cursor(terminal: &mut Terminal<TestBackend>) -> Position {
    terminal.get_cursor_position().unwrap()
}

fn message(time: &str, sender: &str, text: &str) -> Line {
    Line::Message {
        time: time.into(),
        sender: sender.into(),
        text: text.into(),
        own: None,
    }
}

fn own(time: &str, text: &str, state: OwnState) -> Line {
    Line::Message {
        time: time.into(),
        sender: "alice".into(),
        text: text.into(),
        own: Some(state),
    }
}

fn info(time: &str, text: &str) -> Line {
    Line::Info {
        time: time.into(),
        text: text.into(),
    }
}

fn warning(time: &str, text: &str) -> Line {
    Line::Warning {
        time: time.into(),
        text: text.into(),
    }
}

fn member(name: &str, trusted: bool, verified: bool) -> MemberView {
    MemberView {
        name: name.into(),
        trusted,
        verified,
    }
}

/// alice, connected and caught up, in the lobby with bob and carol.
fn lobby() -> Screen {
    let mut screen = Screen::new("alice");
    screen.status.connection = Connection::Connected;
    screen.status.caught_up = true;
    let lobby = screen.add_room("lobby");
    screen.rooms[lobby].members = vec![
        member("alice", true, false),
        member("bob", true, true),
        member("carol", true, false),
    ];
    screen
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn ctrl(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
}

fn alt(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::ALT)
}

fn type_text(screen: &mut Screen, text: &str) {
    for c in text.chars() {
        assert_eq!(handle_key(screen, key(KeyCode::Char(c))), Action::Redraw);
    }
}

#[test]
fn an_empty_room() {
    let screen = lobby();
    let mut terminal = render(&screen, 80, 12);
    assert_screen(
        &terminal,
        [
            "lobby            │                                            │bob ✓            ",
            "                 │                                            │carol            ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            " alice · lobby · connected                                                      ",
            "[lobby] >                                                                       ",
        ],
    );
    assert_eq!(cursor(&mut terminal), Position::new(10, 11));
}

#[test]
fn no_room_at_all_shows_a_hint() {
    let mut screen = Screen::new("alice");
    screen.status.connection = Connection::Reconnecting { attempt: 3 };
    let mut terminal = render(&screen, 40, 10);
    assert_screen(
        &terminal,
        [
            "                 │You are in no room.   ",
            "                 │/help lists the       ",
            "                 │commands.             ",
            "                 │                      ",
            "                 │                      ",
            "                 │                      ",
            "                 │                      ",
            "                 │                      ",
            " alice · reconnecting (attempt 3) · cat…",
            ">                                       ",
        ],
    );
    assert_eq!(cursor(&mut terminal), Position::new(2, 9));
}

/// alice in a private room "dev" owned by bob, and the lobby where 3 messages wait.
fn two_rooms() -> Screen {
    let mut screen = lobby();
    let dev = screen.add_room("dev");
    screen.switch(dev);
    screen.rooms[dev].owner = Some("bob".into());
    screen.rooms[dev].members = vec![
        member("bob", true, true),
        member("alice", true, false),
        member("mallory", false, false),
        member("carol", true, false),
    ];
    screen.push_line(dev, info("14:01", "bob joined")).unwrap();
    screen
        .push_line(dev, message("14:02", "bob", "hello dev"))
        .unwrap();
    for text in ["one", "two", "three"] {
        screen
            .push_line(0, message("14:03", "carol", text))
            .unwrap();
    }
    screen
}

#[test]
fn the_room_list_counts_unread_messages_and_highlights_the_current_room() {
    let screen = two_rooms();
    let terminal = render(&screen, 80, 12);
    assert_screen(
        &terminal,
        [
            "lobby (3)        │14:01 * bob joined                          │owner: bob       ",
            "dev              │14:02 bob: hello dev                        │bob ✓            ",
            "                 │                                            │mallory !        ",
            "                 │                                            │carol            ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            " alice · dev · connected                                                        ",
            "[dev] >                                                                         ",
        ],
    );
    let buffer = terminal.backend().buffer();
    // the current room is in reverse video across the column, the other one bold
    for x in 0..17 {
        assert!(buffer[(x, 1)].modifier.contains(Modifier::REVERSED), "{x}");
        assert!(buffer[(x, 0)].modifier.contains(Modifier::BOLD), "{x}");
        assert!(!buffer[(x, 0)].modifier.contains(Modifier::REVERSED), "{x}");
    }
    // keys that changed are red, a verified member green
    assert_eq!(buffer[(63, 2)].fg, Color::Red);
    assert_eq!(buffer[(63, 1)].fg, Color::Green);
    // the status bar is in reverse video across the screen
    for x in 0..80 {
        assert!(buffer[(x, 10)].modifier.contains(Modifier::REVERSED), "{x}");
    }
}

#[test]
fn own_messages_show_how_far_they_got() {
    let mut screen = lobby();
    let lines = [
        message("14:05", "bob", "hi alice"),
        own("14:05", "sending", OwnState::Pending),
        own("14:06", "stored", OwnState::Stored),
        own("14:06", "delivered", OwnState::Delivered { to: 1, of: 2 }),
        own("14:07", "was read", OwnState::Read { by: 2, of: 2 }),
        own("14:07", "refused", OwnState::Failed("too large".into())),
        info("14:08", "carol left"),
        warning(
            "14:09",
            "a message from bob was dropped: it was tampered with",
        ),
    ];
    for line in lines {
        screen.push_line(0, line).unwrap();
    }
    screen.status.pending = 1;
    let terminal = render(&screen, 80, 12);
    assert_screen(
        &terminal,
        [
            "lobby            │14:05 bob: hi alice                         │bob ✓            ",
            "                 │14:05 alice: sending …                      │carol            ",
            "                 │14:06 alice: stored ✓                       │                 ",
            "                 │14:06 alice: delivered ✓✓ 1/2               │                 ",
            "                 │14:07 alice: was read read 2/2              │                 ",
            "                 │14:07 alice: refused ✗ too large            │                 ",
            "                 │14:08 * carol left                          │                 ",
            "                 │14:09 ! a message from bob was dropped: it  │                 ",
            "                 │        was tampered with                   │                 ",
            "                 │                                            │                 ",
            " alice · lobby · connected · 1 pending                                          ",
            "[lobby] >                                                                       ",
        ],
    );
    let buffer = terminal.backend().buffer();
    assert!(buffer[(18, 6)].modifier.contains(Modifier::DIM), "info");
    assert_eq!(buffer[(18, 7)].fg, Color::Yellow, "warning");
    assert_eq!(buffer[(43, 5)].fg, Color::Red, "failed");
}

#[test]
fn alerts_stay_at_the_top_above_everything() {
    let mut screen = lobby();
    screen.push_line(0, message("14:05", "bob", "hi")).unwrap();
    screen.alerts = vec![
        "NEW KEYS for bob in lobby: compare safety numbers (/verify bob), then /trust bob \
         to accept them"
            .into(),
        "NEW KEYS for carol in lobby".into(),
    ];
    screen.notice = Some("bob's safety number: 12345 67890 12345".into());
    let terminal = render(&screen, 80, 12);
    assert_screen(
        &terminal,
        [
            "NEW KEYS for bob in lobby: compare safety numbers (/verify bob), then /trust bo…",
            "NEW KEYS for carol in lobby                                                     ",
            "lobby            │14:05 bob: hi                               │bob ✓            ",
            "                 │                                            │carol            ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "bob's safety number: 12345 67890 12345                                          ",
            " alice · lobby · connected                                                      ",
            "[lobby] >                                                                       ",
        ],
    );
    let buffer = terminal.backend().buffer();
    assert_eq!(buffer[(0, 0)].fg, Color::Red);
    assert!(buffer[(0, 0)].modifier.contains(Modifier::BOLD));
}

#[test]
fn at_most_three_alerts_are_shown() {
    let mut screen = lobby();
    screen.alerts = (1..=5).map(|n| format!("alert {n}")).collect();
    let terminal = render(&screen, 40, 10);
    assert_screen(
        &terminal,
        [
            "alert 1                                 ",
            "alert 2                                 ",
            "alert 3                                 ",
            "(2 more)                                ",
            "lobby            │                      ",
            "                 │                      ",
            "                 │                      ",
            "                 │                      ",
            " alice · lobby · connected              ",
            "[lobby] >                               ",
        ],
    );
}

#[test]
fn long_messages_wrap_under_their_text() {
    let mut screen = lobby();
    let text = "the quick brown fox jumps over the lazy dog and then some more words \
                follow until the line has to wrap twice at least, \
                averyveryveryveryverylongwordthatcannotbreak";
    screen.push_line(0, message("14:05", "bob", text)).unwrap();
    screen
        .push_line(
            0,
            own(
                "14:06",
                "short and delivered to all",
                OwnState::Read { by: 2, of: 2 },
            ),
        )
        .unwrap();
    let terminal = render(&screen, 80, 12);
    assert_screen(
        &terminal,
        [
            "lobby            │14:05 bob: the quick brown fox jumps over   │bob ✓            ",
            "                 │           the lazy dog and then some more  │carol            ",
            "                 │           words follow until the line has  │                 ",
            "                 │           to wrap twice at least,          │                 ",
            "                 │           averyveryveryveryverylongwordthat│                 ",
            "                 │           cannotbreak                      │                 ",
            "                 │14:06 alice: short and delivered to all     │                 ",
            "                 │             read 2/2                       │                 ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            " alice · lobby · connected                                                      ",
            "[lobby] >                                                                       ",
        ],
    );
    let terminal = render(&screen, 40, 12);
    assert_screen(
        &terminal,
        [
            "lobby            │           wrap twice ",
            "                 │           at least,  ",
            "                 │           averyveryve",
            "                 │           ryveryveryl",
            "                 │           ongwordthat",
            "                 │           cannotbreak",
            "                 │14:06 alice: short and",
            "                 │             delivered",
            "                 │             to all   ",
            "                 │             read 2/2 ",
            " alice · lobby · connected              ",
            "[lobby] >                               ",
        ],
    );
}

#[test]
fn hostile_text_is_escaped() {
    let mut screen = lobby();
    screen.rooms[0]
        .members
        .push(member("eve\u{202e}evil", true, false));
    screen
        .push_line(
            0,
            message("14:05", "eve\u{1b}[1m", "\u{1b}[2Jcleared?\nabc\u{202e}fed"),
        )
        .unwrap();
    screen.notice = Some("error: \u{7}\u{9b}31m".into());
    let terminal = render(&screen, 80, 8);
    assert_screen(
        &terminal,
        [
            "lobby            │14:05 eve\\u{1b}[1m: \\u{1b}[2Jcleared?\\u{a}ab│bob ✓            ",
            "                 │                    c\\u{202e}fed            │carol            ",
            "                 │                                            │eve\\u{202e}evil  ",
            "                 │                                            │                 ",
            "                 │                                            │                 ",
            "error: \\u{7}\\u{9b}31m                                                           ",
            " alice · lobby · connected                                                      ",
            "[lobby] >                                                                       ",
        ],
    );
}

#[test]
fn narrow_screens_drop_the_member_list_then_the_room_list() {
    let screen = two_rooms();
    let terminal = render(&screen, 59, 8);
    assert_screen(
        &terminal,
        [
            "lobby (3)        │14:01 * bob joined                       ",
            "dev              │14:02 bob: hello dev                     ",
            "                 │                                         ",
            "                 │                                         ",
            "                 │                                         ",
            "                 │                                         ",
            " alice · dev · connected                                   ",
            "[dev] >                                                    ",
        ],
    );
    let terminal = render(&screen, 40, 10);
    assert_screen(
        &terminal,
        [
            "lobby (3)        │14:01 * bob joined    ",
            "dev              │14:02 bob: hello dev  ",
            "                 │                      ",
            "                 │                      ",
            "                 │                      ",
            "                 │                      ",
            "                 │                      ",
            "                 │                      ",
            " alice · dev · connected                ",
            "[dev] >                                 ",
        ],
    );
    let terminal = render(&screen, 39, 8);
    assert_screen(
        &terminal,
        [
            "14:01 * bob joined                     ",
            "14:02 bob: hello dev                   ",
            "                                       ",
            "                                       ",
            "                                       ",
            "                                       ",
            " alice · dev · connected               ",
            "[dev] >                                ",
        ],
    );
    let terminal = render(&screen, 20, 5);
    assert_screen(
        &terminal,
        [
            "14:01 * bob joined  ",
            "14:02 bob: hello dev",
            "                    ",
            " alice · dev · conn…",
            "[dev] >             ",
        ],
    );
}

#[test]
fn tiny_screens_do_not_panic() {
    let mut screen = two_rooms();
    screen.alerts = vec!["keys changed".into(); 5];
    screen.notice = Some("notice".into());
    screen.status.closing = Some("waiting for 2 acknowledgements".into());
    type_text(&mut screen, "日本語のテキスト");
    for (width, height) in [
        (1, 1),
        (0, 0),
        (10, 0),
        (0, 10),
        (1, 10),
        (2, 3),
        (3, 2),
        (20, 5),
    ] {
        render(&screen, width, height);
    }
    screen.rooms.clear();
    for (width, height) in [(1, 1), (5, 1), (1, 5)] {
        render(&screen, width, height);
    }
    let terminal = render(&screen, 1, 1);
    assert_screen(&terminal, [" "]);
}

#[test]
fn the_status_bar_says_what_the_client_waits_for() {
    let mut screen = lobby();
    screen.status = Status {
        connection: Connection::Reconnecting { attempt: 3 },
        pending: 2,
        caught_up: false,
        closing: Some("waiting for 2 acknowledgements".into()),
    };
    let terminal = render(&screen, 80, 4);
    assert_screen(
        &terminal,
        [
            "lobby            │                                            │bob ✓            ",
            "                 │                                            │carol            ",
            " alice · lobby · reconnecting (attempt 3) · 2 pending · catching up… · waiting …",
            "[lobby] >                                                                       ",
        ],
    );
    screen.status = Status::default();
    let terminal = render(&screen, 80, 4);
    assert_screen(
        &terminal,
        [
            "lobby            │                                            │bob ✓            ",
            "                 │                                            │carol            ",
            " alice · lobby · offline · catching up…                                         ",
            "[lobby] >                                                                       ",
        ],
    );
}

/// The lobby with 30 numbered lines from bob.
fn long_lobby() -> Screen {
    let mut screen = lobby();
    for n in 1..=30 {
        screen
            .push_line(0, message("14:05", "bob", &format!("line {n}")))
            .unwrap();
    }
    screen.size = (80, 12);
    screen
}

#[test]
fn scrolled_up_shows_how_many_lines_are_below() {
    let mut screen = long_lobby();
    // the scrollback is 10 rows: half a screen is 5 lines
    assert_eq!(
        handle_key(&mut screen, key(KeyCode::PageUp)),
        Action::Redraw
    );
    assert_eq!(screen.rooms[0].scroll, 5);
    let terminal = render(&screen, 80, 12);
    assert_screen(
        &terminal,
        [
            "lobby            │14:05 bob: line 17                          │bob ✓            ",
            "                 │14:05 bob: line 18                          │carol            ",
            "                 │14:05 bob: line 19                          │                 ",
            "                 │14:05 bob: line 20                          │                 ",
            "                 │14:05 bob: line 21                          │                 ",
            "                 │14:05 bob: line 22                          │                 ",
            "                 │14:05 bob: line 23                          │                 ",
            "                 │14:05 bob: line 24                          │                 ",
            "                 │14:05 bob: line 25                          │                 ",
            "                 │             -- 5 more below --             │                 ",
            " alice · lobby · connected                                                      ",
            "[lobby] >                                                                       ",
        ],
    );
}

#[test]
fn page_up_and_down_stop_at_the_oldest_line_and_at_the_bottom() {
    let mut screen = long_lobby();
    // 30 lines, 9 rows for them when scrolled: at most 21 lines below
    for expected in [5, 10, 15, 20, 21] {
        assert_eq!(
            handle_key(&mut screen, key(KeyCode::PageUp)),
            Action::Redraw
        );
        assert_eq!(screen.rooms[0].scroll, expected);
    }
    assert_eq!(handle_key(&mut screen, key(KeyCode::PageUp)), Action::None);
    let terminal = render(&screen, 80, 12);
    assert_screen(
        &terminal,
        [
            "lobby            │14:05 bob: line 1                           │bob ✓            ",
            "                 │14:05 bob: line 2                           │carol            ",
            "                 │14:05 bob: line 3                           │                 ",
            "                 │14:05 bob: line 4                           │                 ",
            "                 │14:05 bob: line 5                           │                 ",
            "                 │14:05 bob: line 6                           │                 ",
            "                 │14:05 bob: line 7                           │                 ",
            "                 │14:05 bob: line 8                           │                 ",
            "                 │14:05 bob: line 9                           │                 ",
            "                 │            -- 21 more below --             │                 ",
            " alice · lobby · connected                                                      ",
            "[lobby] >                                                                       ",
        ],
    );

    for expected in [16, 11, 6, 1, 0] {
        assert_eq!(
            handle_key(&mut screen, key(KeyCode::PageDown)),
            Action::Redraw
        );
        assert_eq!(screen.rooms[0].scroll, expected);
    }
    assert_eq!(
        handle_key(&mut screen, key(KeyCode::PageDown)),
        Action::None
    );

    // a room that fits on the screen does not scroll
    screen.rooms[0].lines.truncate(10);
    assert_eq!(handle_key(&mut screen, key(KeyCode::PageUp)), Action::None);
}

#[test]
fn half_a_screen_counts_the_rows_of_wrapped_lines() {
    let mut screen = lobby();
    screen.size = (80, 12);
    for n in 1..=12 {
        let text = format!("message {n} is long enough to need two rows of the scrollback");
        screen.push_line(0, message("14:05", "bob", &text)).unwrap();
    }
    // 10 rows, half is 5: three lines of two rows
    assert_eq!(
        handle_key(&mut screen, key(KeyCode::PageUp)),
        Action::Redraw
    );
    assert_eq!(screen.rooms[0].scroll, 3);
    let terminal = render(&screen, 80, 12);
    assert_screen(
        &terminal,
        [
            "lobby            │           two rows of the scrollback       │bob ✓            ",
            "                 │14:05 bob: message 6 is long enough to need │carol            ",
            "                 │           two rows of the scrollback       │                 ",
            "                 │14:05 bob: message 7 is long enough to need │                 ",
            "                 │           two rows of the scrollback       │                 ",
            "                 │14:05 bob: message 8 is long enough to need │                 ",
            "                 │           two rows of the scrollback       │                 ",
            "                 │14:05 bob: message 9 is long enough to need │                 ",
            "                 │           two rows of the scrollback       │                 ",
            "                 │             -- 3 more below --             │                 ",
            " alice · lobby · connected                                                      ",
            "[lobby] >                                                                       ",
        ],
    );
    // with 9 rows shown, lines 1 to 4 are wholly on screen when 8 are below: as far as
    // it goes
    for expected in [6, 8] {
        assert_eq!(
            handle_key(&mut screen, key(KeyCode::PageUp)),
            Action::Redraw
        );
        assert_eq!(screen.rooms[0].scroll, expected);
    }
    assert_eq!(handle_key(&mut screen, key(KeyCode::PageUp)), Action::None);
    let terminal = render(&screen, 80, 12);
    assert_screen(
        &terminal,
        [
            "lobby            │14:05 bob: message 1 is long enough to need │bob ✓            ",
            "                 │           two rows of the scrollback       │carol            ",
            "                 │14:05 bob: message 2 is long enough to need │                 ",
            "                 │           two rows of the scrollback       │                 ",
            "                 │14:05 bob: message 3 is long enough to need │                 ",
            "                 │           two rows of the scrollback       │                 ",
            "                 │14:05 bob: message 4 is long enough to need │                 ",
            "                 │           two rows of the scrollback       │                 ",
            "                 │                                            │                 ",
            "                 │             -- 8 more below --             │                 ",
            " alice · lobby · connected                                                      ",
            "[lobby] >                                                                       ",
        ],
    );
}

#[test]
fn keys_switch_rooms() {
    let mut screen = two_rooms();
    screen.add_room("ops");
    assert_eq!(screen.current, 1);
    assert_eq!(
        handle_key(&mut screen, alt(KeyCode::Char('1'))),
        Action::Redraw
    );
    assert_eq!((screen.current, screen.rooms[0].unread), (0, 0));
    assert_eq!(
        handle_key(&mut screen, alt(KeyCode::Char('4'))),
        Action::None
    );
    assert_eq!(
        handle_key(&mut screen, alt(KeyCode::Char('3'))),
        Action::Redraw
    );
    assert_eq!(screen.current, 2);
    assert_eq!(handle_key(&mut screen, ctrl('n')), Action::Redraw);
    assert_eq!(screen.current, 0, "wraps around");
    assert_eq!(handle_key(&mut screen, ctrl('p')), Action::Redraw);
    assert_eq!(screen.current, 2, "wraps around");
    assert_eq!(handle_key(&mut screen, alt(KeyCode::Left)), Action::Redraw);
    assert_eq!(screen.current, 1);
    assert_eq!(handle_key(&mut screen, alt(KeyCode::Right)), Action::Redraw);
    assert_eq!(screen.current, 2);
    assert_eq!(screen.input, InputLine::default(), "nothing typed");
}

/// The input line, and where the cursor is, on a 40 x 3 screen.
fn input_row(screen: &Screen) -> (String, Position) {
    let mut terminal = render(screen, 40, 3);
    let row = rows(terminal.backend().buffer()).remove(2);
    (row, cursor(&mut terminal))
}

#[test]
fn typing_inserts_at_the_cursor() {
    let mut screen = lobby();
    type_text(&mut screen, "helo");
    assert_eq!(handle_key(&mut screen, key(KeyCode::Left)), Action::Redraw);
    type_text(&mut screen, "l");
    assert_eq!(
        (screen.input.text.as_str(), screen.input.cursor),
        ("hello", 4)
    );
    assert_eq!(
        input_row(&screen),
        (
            "[lobby] > hello                         ".into(),
            Position::new(14, 2)
        )
    );
    assert_eq!(handle_key(&mut screen, ctrl('a')), Action::Redraw);
    assert_eq!(handle_key(&mut screen, key(KeyCode::Left)), Action::None);
    type_text(&mut screen, ">");
    assert_eq!(handle_key(&mut screen, key(KeyCode::End)), Action::Redraw);
    assert_eq!(handle_key(&mut screen, key(KeyCode::Right)), Action::None);
    type_text(&mut screen, "!");
    assert_eq!(handle_key(&mut screen, key(KeyCode::Home)), Action::Redraw);
    assert_eq!(
        handle_key(&mut screen, key(KeyCode::Delete)),
        Action::Redraw
    );
    assert_eq!(handle_key(&mut screen, ctrl('e')), Action::Redraw);
    assert_eq!(
        handle_key(&mut screen, key(KeyCode::Backspace)),
        Action::Redraw
    );
    assert_eq!(
        (screen.input.text.as_str(), screen.input.cursor),
        ("hello", 5)
    );
    assert_eq!(handle_key(&mut screen, ctrl('a')), Action::Redraw);
    assert_eq!(
        handle_key(&mut screen, key(KeyCode::Backspace)),
        Action::None
    );
    // shifted letters are typed; what the screen would escape is not
    let shifted = KeyEvent::new(KeyCode::Char('H'), KeyModifiers::SHIFT);
    assert_eq!(handle_key(&mut screen, shifted), Action::Redraw);
    for refused in ['\u{1b}', '\u{202e}', '\u{2028}', '\u{9b}'] {
        assert_eq!(
            handle_key(&mut screen, key(KeyCode::Char(refused))),
            Action::None
        );
    }
    assert_eq!(handle_key(&mut screen, key(KeyCode::Tab)), Action::None);
    assert_eq!(screen.input.text, "Hhello");
}

#[test]
fn wide_characters_keep_the_cursor_in_place() {
    let mut screen = lobby();
    type_text(&mut screen, "日本語");
    handle_key(&mut screen, key(KeyCode::Left));
    handle_key(&mut screen, key(KeyCode::Left));
    type_text(&mut screen, "x");
    assert_eq!(
        (screen.input.text.as_str(), screen.input.cursor),
        ("日x本語", 2)
    );
    // "[lobby] > " is 10 cells, "日" 2 and "x" 1
    assert_eq!(
        input_row(&screen),
        (
            "[lobby] > 日x本語                       ".into(),
            Position::new(13, 2)
        )
    );
    assert_eq!(
        handle_key(&mut screen, key(KeyCode::Backspace)),
        Action::Redraw
    );
    assert_eq!(
        handle_key(&mut screen, key(KeyCode::Backspace)),
        Action::Redraw
    );
    assert_eq!(
        handle_key(&mut screen, key(KeyCode::Delete)),
        Action::Redraw
    );
    assert_eq!((screen.input.text.as_str(), screen.input.cursor), ("語", 0));
    assert_eq!(
        input_row(&screen),
        (
            "[lobby] > 語                            ".into(),
            Position::new(10, 2)
        )
    );
}

#[test]
fn a_long_line_scrolls_sideways_with_the_cursor() {
    let mut screen = lobby();
    let text = "0123456789abcdefghijklmnopqrstuvwxyzABCD";
    type_text(&mut screen, text);
    // 30 columns after the prompt: the last 29 characters and the cursor
    assert_eq!(
        input_row(&screen),
        (
            "[lobby] > bcdefghijklmnopqrstuvwxyzABCD ".into(),
            Position::new(39, 2)
        )
    );
    handle_key(&mut screen, key(KeyCode::Home));
    assert_eq!(
        input_row(&screen),
        (
            "[lobby] > 0123456789abcdefghijklmnopqrst".into(),
            Position::new(10, 2)
        )
    );

    // a wide character cut by the left edge is left out
    let mut screen = lobby();
    type_text(&mut screen, &"日本".repeat(10));
    assert_eq!(
        input_row(&screen),
        (
            "[lobby] >  日本日本日本日本日本日本日本 ".into(),
            Position::new(39, 2)
        )
    );
}

#[test]
fn ctrl_w_u_and_k_delete_words_and_ends() {
    let mut screen = lobby();
    type_text(&mut screen, "one two  three");
    assert_eq!(handle_key(&mut screen, ctrl('w')), Action::Redraw);
    assert_eq!(screen.input.text, "one two  ");
    assert_eq!(handle_key(&mut screen, ctrl('w')), Action::Redraw);
    assert_eq!(screen.input.text, "one ");
    type_text(&mut screen, "two three");
    for _ in 0.."three".len() {
        handle_key(&mut screen, key(KeyCode::Left));
    }
    assert_eq!(handle_key(&mut screen, ctrl('w')), Action::Redraw);
    assert_eq!(
        (screen.input.text.as_str(), screen.input.cursor),
        ("one three", 4)
    );
    assert_eq!(handle_key(&mut screen, ctrl('k')), Action::Redraw);
    assert_eq!(
        (screen.input.text.as_str(), screen.input.cursor),
        ("one ", 4)
    );
    assert_eq!(handle_key(&mut screen, ctrl('k')), Action::None);
    handle_key(&mut screen, key(KeyCode::Left));
    assert_eq!(handle_key(&mut screen, ctrl('u')), Action::Redraw);
    assert_eq!((screen.input.text.as_str(), screen.input.cursor), (" ", 0));
    assert_eq!(handle_key(&mut screen, ctrl('u')), Action::None);
    assert_eq!(handle_key(&mut screen, ctrl('w')), Action::None);
}

#[test]
fn enter_sends_and_the_history_keeps_the_draft() {
    let mut screen = lobby();
    assert_eq!(handle_key(&mut screen, key(KeyCode::Enter)), Action::None);
    type_text(&mut screen, "  ");
    assert_eq!(
        handle_key(&mut screen, key(KeyCode::Enter)),
        Action::None,
        "blank"
    );
    handle_key(&mut screen, ctrl('u'));
    for line in ["first", "second", "second"] {
        type_text(&mut screen, line);
        assert_eq!(
            handle_key(&mut screen, key(KeyCode::Enter)),
            Action::Submit(line.into())
        );
        assert_eq!((screen.input.text.as_str(), screen.input.cursor), ("", 0));
    }
    assert_eq!(screen.input.history, ["first", "second"], "once in a row");

    type_text(&mut screen, "draft");
    handle_key(&mut screen, key(KeyCode::Left));
    assert_eq!(handle_key(&mut screen, key(KeyCode::Up)), Action::Redraw);
    assert_eq!(
        (screen.input.text.as_str(), screen.input.cursor),
        ("second", 6)
    );
    assert_eq!(handle_key(&mut screen, key(KeyCode::Up)), Action::Redraw);
    assert_eq!(screen.input.text, "first");
    assert_eq!(handle_key(&mut screen, key(KeyCode::Up)), Action::None);
    assert_eq!(screen.input.text, "first");
    assert_eq!(handle_key(&mut screen, key(KeyCode::Down)), Action::Redraw);
    assert_eq!(screen.input.text, "second");
    assert_eq!(handle_key(&mut screen, key(KeyCode::Down)), Action::Redraw);
    assert_eq!(
        (screen.input.text.as_str(), screen.input.cursor),
        ("draft", 5)
    );
    assert_eq!(handle_key(&mut screen, key(KeyCode::Down)), Action::None);

    // a line from the history can be edited and sent
    handle_key(&mut screen, key(KeyCode::Up));
    type_text(&mut screen, "!");
    assert_eq!(
        handle_key(&mut screen, key(KeyCode::Enter)),
        Action::Submit("second!".into())
    );
    assert_eq!(screen.input.history, ["first", "second", "second!"]);
    assert_eq!(handle_key(&mut screen, key(KeyCode::Down)), Action::None);
    assert_eq!(handle_key(&mut screen, key(KeyCode::Up)), Action::Redraw);
    assert_eq!(screen.input.text, "second!");
    assert_eq!(screen.input.draft, "", "the draft was sent");
}

#[test]
fn ctrl_c_quits_and_ctrl_d_on_an_empty_line() {
    let mut screen = lobby();
    type_text(&mut screen, "unsent");
    assert_eq!(handle_key(&mut screen, ctrl('c')), Action::Quit);
    handle_key(&mut screen, key(KeyCode::Home));
    assert_eq!(
        handle_key(&mut screen, ctrl('d')),
        Action::Redraw,
        "deletes"
    );
    assert_eq!(screen.input.text, "nsent");
    handle_key(&mut screen, ctrl('k'));
    assert_eq!(handle_key(&mut screen, ctrl('d')), Action::Quit);
}

#[test]
fn only_presses_and_repeats_count() {
    let mut screen = lobby();
    let mut release = key(KeyCode::Char('a'));
    release.kind = KeyEventKind::Release;
    assert_eq!(handle_key(&mut screen, release), Action::None);
    let mut repeat = key(KeyCode::Char('a'));
    repeat.kind = KeyEventKind::Repeat;
    assert_eq!(handle_key(&mut screen, repeat), Action::Redraw);
    assert_eq!(
        handle_key(&mut screen, key(KeyCode::Char('a'))),
        Action::Redraw
    );
    let mut release = ctrl('c');
    release.kind = KeyEventKind::Release;
    assert_eq!(handle_key(&mut screen, release), Action::None);
    assert_eq!(screen.input.text, "aa");
}

#[test]
fn one_line_escapes_what_could_drive_the_terminal() {
    assert_eq!(
        one_line("plain ünïcödé 'text' 日本"),
        "plain ünïcödé 'text' 日本"
    );
    assert_eq!(one_line("a\nb"), "a\\u{a}b");
    assert_eq!(one_line("\u{1b}[31m"), "\\u{1b}[31m");
    assert_eq!(one_line("abc\u{202e}fed"), "abc\\u{202e}fed");
    assert_eq!(one_line("x\u{2028}y\u{2029}"), "x\\u{2028}y\\u{2029}");
    assert_eq!(one_line("\u{7f}\u{85}\u{9b}"), "\\u{7f}\\u{85}\\u{9b}");
    for bidi in [
        '\u{61c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{2066}', '\u{2069}',
    ] {
        assert_eq!(
            one_line(&bidi.to_string()),
            bidi.escape_unicode().to_string()
        );
    }
}
