//! Drawing the [`Screen`]: the layout, the word wrapping of the scrollback, and the
//! escaping of every text that came from someone else.
//!
//! Widths are measured on the graphemes that ratatui itself draws (its
//! [`Span::styled_graphemes`] and [`CellWidth`]), so that what is laid out here is
//! exactly what lands in the cells: wide characters neither overflow a column nor push
//! the cursor off.

use std::collections::VecDeque;
use std::ops::Range;

use ratatui::Frame;
use ratatui::buffer::{Buffer, CellWidth};
use ratatui::layout::{Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line as TextLine, Span};

use super::escape::one_line;
use super::model::{Connection, Line, OwnState, RoomView, Screen};

/// The width of the room list, with the line that ends it.
pub const ROOMS_WIDTH: u16 = 18;
/// The width of the member list, with the line that starts it.
pub const MEMBERS_WIDTH: u16 = 18;
/// Narrower screens have no room list (the status bar names the room).
pub const ROOMS_FROM_WIDTH: u16 = 40;
/// Narrower screens have no member list.
pub const MEMBERS_FROM_WIDTH: u16 = 60;
/// At most this many alerts are shown, then how many more there are.
pub const MAX_ALERTS: usize = 3;
/// Continuation lines of a message are indented under its text only if that leaves
/// them at least this many columns.
const MIN_WRAPPED_TEXT: usize = 8;
/// The input line drops the room name from its prompt if that would leave fewer
/// columns than this for the text.
const MIN_INPUT: usize = 10;
/// Shown where the scrollback would be when the user is in no room.
const NO_ROOM_HINT: &str = "You are in no room. /help lists the commands.";

/// Draws the whole screen into the frame, and puts the cursor in the input line.
///
/// Top to bottom: the alerts (if any), the room list, scrollback and member list side
/// by side, the notice (if any), the status bar, the input line. When the frame is too
/// low for all of it, the rows go first to the input line, then to the status bar, the
/// alerts and the notice; the scrollback gets what is left. Any size works, down to
/// nothing.
pub fn draw(frame: &mut Frame, screen: &Screen) {
    let areas = Areas::of(screen, frame.area());
    let buf = frame.buffer_mut();
    draw_alerts(buf, areas.alerts, &screen.alerts);
    if let Some(area) = areas.rooms {
        draw_rooms(buf, area, screen);
    }
    match screen.current_room() {
        Some(room) => draw_scrollback(buf, areas.scrollback, room),
        None => {
            let hint = [Piece::new(NO_ROOM_HINT, Style::new(), true)];
            let rows = wrap(&hint, 0, usize::from(areas.scrollback.width));
            for (y, row) in (0..areas.scrollback.height).zip(rows) {
                put(buf, areas.scrollback, y, &row);
            }
        }
    }
    if let (Some(area), Some(room)) = (areas.members, screen.current_room()) {
        draw_members(buf, area, room, &screen.user);
    }
    if let Some(notice) = &screen.notice {
        let text = fit(&one_line(notice), usize::from(areas.notice.width));
        put(buf, areas.notice, 0, &TextLine::raw(text));
    }
    draw_status(buf, areas.status, screen);
    if let Some(cursor) = draw_input(buf, areas.input, screen) {
        frame.set_cursor_position(cursor);
    }
}

/// Where each part of the screen goes; empty rectangles for the parts left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    pub alerts: Rect,
    pub rooms: Option<Rect>,
    pub scrollback: Rect,
    pub members: Option<Rect>,
    pub notice: Rect,
    pub status: Rect,
    pub input: Rect,
}

impl Areas {
    /// The layout of `screen` in `area`.
    pub fn of(screen: &Screen, area: Rect) -> Self {
        let mut left = area.height;
        let mut take = |wanted: u16| {
            let got = wanted.min(left);
            left -= got;
            got
        };
        let input = take(1);
        let status = take(1);
        let alerts = take(alert_rows(screen.alerts.len()));
        let notice = take(u16::from(screen.notice.is_some()));
        let main = left;

        let row = |y: u16, height: u16| Rect::new(area.x, y, area.width, height);
        let main_area = row(area.y + alerts, main);
        let notice_area = row(main_area.bottom(), notice);
        let status_area = row(notice_area.bottom(), status);
        let mut areas = Self {
            alerts: row(area.y, alerts),
            rooms: None,
            scrollback: main_area,
            members: None,
            notice: notice_area,
            status: status_area,
            input: row(status_area.bottom(), input),
        };
        if area.width >= ROOMS_FROM_WIDTH {
            areas.rooms = Some(Rect {
                width: ROOMS_WIDTH,
                ..main_area
            });
            areas.scrollback.x += ROOMS_WIDTH;
            areas.scrollback.width -= ROOMS_WIDTH;
        }
        if area.width >= MEMBERS_FROM_WIDTH {
            areas.scrollback.width -= MEMBERS_WIDTH;
            areas.members = Some(Rect {
                x: areas.scrollback.right(),
                width: MEMBERS_WIDTH,
                ..main_area
            });
        }
        areas
    }
}

/// The rows the alerts want: each up to [`MAX_ALERTS`], then one saying how many more.
fn alert_rows(alerts: usize) -> u16 {
    let rows = alerts.min(MAX_ALERTS) + usize::from(alerts > MAX_ALERTS);
    rows as u16
}

fn draw_alerts(buf: &mut Buffer, area: Rect, alerts: &[String]) {
    let rows = usize::from(area.height);
    if rows == 0 {
        return;
    }
    let style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
    let width = usize::from(area.width);
    let shown = if alerts.len() <= rows {
        alerts.len()
    } else {
        (rows - 1).max(1)
    };
    for (y, alert) in (0..).zip(&alerts[..shown]) {
        put(
            buf,
            area,
            y,
            &TextLine::styled(fit(&one_line(alert), width), style),
        );
    }
    if shown < alerts.len() {
        let more = format!("({} more)", alerts.len() - shown);
        put(
            buf,
            area,
            shown as u16,
            &TextLine::styled(fit(&more, width), style),
        );
    }
}

fn draw_rooms(buf: &mut Buffer, area: Rect, screen: &Screen) {
    let Some(width) = area.width.checked_sub(1) else {
        return;
    };
    let list = Rect { width, ..area };
    let rows = usize::from(area.height);
    let first = (screen.current + 1).saturating_sub(rows);
    for (y, (index, room)) in (0..area.height).zip(screen.rooms.iter().enumerate().skip(first)) {
        let name = one_line(&room.name);
        let label = if room.unread > 0 {
            fit_with_suffix(&name, &format!(" ({})", room.unread), usize::from(width))
        } else {
            fit(&name, usize::from(width))
        };
        let style = if index == screen.current {
            Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else if room.unread > 0 {
            Style::new().add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        buf.set_style(Rect::new(list.x, list.y + y, list.width, 1), style);
        put(buf, list, y, &TextLine::raw(label));
    }
    separator(buf, area.right() - 1, area);
}

fn draw_members(buf: &mut Buffer, area: Rect, room: &RoomView, user: &str) {
    if area.width == 0 {
        return;
    }
    separator(buf, area.x, area);
    let list = Rect {
        x: area.x + 1,
        width: area.width - 1,
        ..area
    };
    let width = usize::from(list.width);
    let mut rows: Vec<TextLine> = Vec::new();
    if let Some(owner) = &room.owner {
        let owner = fit(&format!("owner: {}", one_line(owner)), width);
        rows.push(TextLine::styled(
            owner,
            Style::new().add_modifier(Modifier::DIM),
        ));
    }
    for member in room.members.iter().filter(|member| member.name != user) {
        let name = one_line(&member.name);
        rows.push(if !member.trusted {
            TextLine::styled(fit_with_suffix(&name, " !", width), Color::Red)
        } else if member.verified {
            TextLine::styled(fit_with_suffix(&name, " ✓", width), Color::Green)
        } else {
            TextLine::raw(fit(&name, width))
        });
    }
    let height = usize::from(list.height);
    if rows.len() > height && height > 0 {
        let more = format!("({} more)", rows.len() - (height - 1));
        rows.truncate(height - 1);
        rows.push(TextLine::styled(fit(&more, width), Modifier::DIM));
    }
    for (y, row) in (0..list.height).zip(&rows) {
        put(buf, list, y, row);
    }
}

/// A vertical line in column `x` of `area`.
fn separator(buf: &mut Buffer, x: u16, area: Rect) {
    for y in area.top()..area.bottom() {
        buf.set_string(x, y, "│", Modifier::DIM);
    }
}

fn draw_scrollback(buf: &mut Buffer, area: Rect, room: &RoomView) {
    let (width, height) = (usize::from(area.width), usize::from(area.height));
    if width == 0 || height == 0 {
        return;
    }
    let below = room.scroll.min(room.lines.len());
    let shown = height - usize::from(below > 0);
    // the newest rows above what is scrolled away, enough to fill the screen
    let mut rows = VecDeque::new();
    for line in room.lines.range(..room.lines.len() - below).rev() {
        for row in line_rows(line, width).into_iter().rev() {
            rows.push_front(row);
        }
        if rows.len() >= shown {
            break;
        }
    }
    let skip = rows.len().saturating_sub(shown);
    for (y, row) in (0..).zip(rows.iter().skip(skip)) {
        put(buf, area, y, row);
    }
    if below > 0 {
        let more = fit(&format!("-- {below} more below --"), width);
        let x = (width - str_width(&more)) / 2;
        let style = Style::new().add_modifier(Modifier::REVERSED);
        buf.set_string(area.x + x as u16, area.bottom() - 1, more, style);
    }
}

fn draw_status(buf: &mut Buffer, area: Rect, screen: &Screen) {
    if area.is_empty() {
        return;
    }
    let status = &screen.status;
    let mut parts = vec![one_line(&screen.user)];
    if let Some(room) = screen.current_room() {
        parts.push(one_line(&room.name));
    }
    parts.push(match status.connection {
        Connection::Connected => "connected".to_owned(),
        Connection::Reconnecting { attempt } => format!("reconnecting (attempt {attempt})"),
        Connection::Offline => "offline".to_owned(),
    });
    if status.pending > 0 {
        parts.push(format!("{} pending", status.pending));
    }
    if !status.caught_up {
        parts.push("catching up…".to_owned());
    }
    if let Some(closing) = &status.closing {
        parts.push(one_line(closing));
    }
    let text = fit(&format!(" {}", parts.join(" · ")), usize::from(area.width));
    let style = Style::new().add_modifier(Modifier::REVERSED);
    buf.set_style(area, style);
    put(buf, area, 0, &TextLine::styled(text, style));
}

/// Draws the input line: "[room] > " and as much of the text as fits, scrolled
/// sideways so that the cursor is always on screen; returns where the cursor goes.
fn draw_input(buf: &mut Buffer, area: Rect, screen: &Screen) -> Option<Position> {
    if area.is_empty() {
        return None;
    }
    let width = usize::from(area.width);
    let prompt = match screen.current_room() {
        Some(room) => format!("[{}] > ", one_line(&room.name)),
        None => "> ".to_owned(),
    };
    let prompt = if str_width(&prompt) + MIN_INPUT <= width {
        prompt
    } else if width > 2 {
        "> ".to_owned()
    } else {
        String::new()
    };
    let prompt_width = str_width(&prompt);
    buf.set_stringn(area.x, area.y, &prompt, width, Modifier::BOLD);

    // the text is escaped like any other, on each side of the cursor
    let (before, after) = screen.input.split_at_cursor();
    let before = one_line(before);
    let text = before.clone() + &one_line(after);
    let graphemes = graphemes(&text);
    let cursor: usize = graphemes
        .iter()
        .filter(|(range, _)| range.start < before.len())
        .map(|(_, width)| width)
        .sum();
    // the columns for the text, the cursor's included
    let columns = width - prompt_width;
    let first = (cursor + 1).saturating_sub(columns);
    let mut column = 0;
    for (range, grapheme_width) in graphemes {
        if column >= first && column + grapheme_width <= first + columns {
            let x = area.x + (prompt_width + column - first) as u16;
            buf.set_stringn(x, area.y, &text[range], grapheme_width, Style::new());
        }
        column += grapheme_width;
    }
    Some(Position::new(
        area.x + (prompt_width + cursor - first) as u16,
        area.y,
    ))
}

/// Writes `line` on row `y` of `area`, cut at its right edge; nothing if `y` is outside.
fn put(buf: &mut Buffer, area: Rect, y: u16, line: &TextLine) {
    if y < area.height && area.width > 0 {
        buf.set_line(area.x, area.y + y, line, area.width);
    }
}

/// Scrolls the current room up (or down) by half the height of its scrollback, as
/// laid out on a screen of [`Screen::size`]: never further up than where the oldest
/// line is at the top, never below the newest (0, which follows new lines). False if
/// it did not move.
pub fn scroll_page(screen: &mut Screen, up: bool) -> bool {
    let (columns, rows) = screen.size;
    let area = Areas::of(screen, Rect::new(0, 0, columns, rows)).scrollback;
    let (width, height) = (usize::from(area.width), usize::from(area.height));
    let Some(room) = screen.current_room_mut() else {
        return false;
    };
    let half = (height / 2).max(1);
    let len = room.lines.len();
    let mut scroll = room.scroll.min(len);
    let mut moved = 0;
    if up {
        let max = max_scroll(room, width, height);
        while scroll < max && moved < half {
            moved += line_rows(&room.lines[len - 1 - scroll], width).len();
            scroll += 1;
        }
        scroll = scroll.min(max);
    } else {
        while scroll > 0 && moved < half {
            scroll -= 1;
            moved += line_rows(&room.lines[len - 1 - scroll], width).len();
        }
    }
    let changed = scroll != room.scroll;
    room.scroll = scroll;
    changed
}

/// The furthest `room` can be scrolled up in a scrollback of `width` x `height`: until
/// its oldest line is wholly on screen, at the top (when scrolled, the bottom row says
/// how many lines are below). 0 when everything fits.
pub fn max_scroll(room: &RoomView, width: usize, height: usize) -> usize {
    if height < 2 {
        return 0;
    }
    let mut rows = 0;
    // how many of the oldest lines fit above the bottom row
    let mut fit = 0;
    for line in &room.lines {
        rows += line_rows(line, width).len();
        if rows < height {
            fit += 1;
        } else if rows > height {
            // everything does not fit
            return room.lines.len() - fit.max(1);
        }
    }
    0
}

/// A run of text in one style, as wrapping sees it.
struct Piece {
    text: String,
    style: Style,
    /// Whether a line may break at the spaces in this piece.
    breaks: bool,
}

impl Piece {
    fn new(text: impl Into<String>, style: impl Into<Style>, breaks: bool) -> Self {
        Self {
            text: text.into(),
            style: style.into(),
            breaks,
        }
    }
}

/// The rows that `line` takes in a scrollback `width` columns wide.
fn line_rows(line: &Line, width: usize) -> Vec<TextLine<'static>> {
    let dim = Style::new().add_modifier(Modifier::DIM);
    let time = |time: &str, style: Style| {
        (!time.is_empty()).then(|| Piece::new(format!("{} ", one_line(time)), style, false))
    };
    let mut pieces: Vec<Piece> = Vec::new();
    match line {
        Line::Message {
            time: at,
            sender,
            text,
            own,
        } => {
            pieces.extend(time(at, dim));
            let sender_style = match own {
                Some(_) => Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                None => Style::new().add_modifier(Modifier::BOLD),
            };
            pieces.push(Piece::new(
                format!("{}: ", one_line(sender)),
                sender_style,
                false,
            ));
            let head = pieces.len();
            pieces.push(Piece::new(one_line(text), Style::new(), true));
            if let Some(state) = own {
                pieces.push(Piece::new(" ", Style::new(), true));
                pieces.extend(own_state(state));
            }
            wrap(&pieces, head, width)
        }
        Line::Info { time: at, text } => {
            pieces.extend(time(at, dim));
            pieces.push(Piece::new("* ", dim, false));
            let head = pieces.len();
            pieces.push(Piece::new(one_line(text), dim, true));
            wrap(&pieces, head, width)
        }
        Line::Warning { time: at, text } => {
            let yellow = Style::new().fg(Color::Yellow);
            pieces.extend(time(at, yellow));
            pieces.push(Piece::new("! ", yellow, false));
            let head = pieces.len();
            pieces.push(Piece::new(one_line(text), yellow, true));
            wrap(&pieces, head, width)
        }
    }
}

/// How far an own message got, as it follows the message.
fn own_state(state: &OwnState) -> Vec<Piece> {
    let dim = Style::new().add_modifier(Modifier::DIM);
    let green = Style::new().fg(Color::Green);
    match state {
        OwnState::Pending => vec![Piece::new("…", dim, false)],
        OwnState::Stored => vec![Piece::new("✓", dim, false)],
        OwnState::Delivered { to, of } => vec![Piece::new(format!("✓✓ {to}/{of}"), green, false)],
        OwnState::Read { by, of } => vec![Piece::new(format!("read {by}/{of}"), green, false)],
        OwnState::Failed(why) => vec![
            Piece::new("✗ ", Color::Red, false),
            Piece::new(one_line(why), Color::Red, true),
        ],
    }
}

/// One grapheme of a piece, placed by [`wrap`].
#[derive(Debug, Clone, Copy)]
struct Cell {
    piece: usize,
    bytes: (usize, usize),
    width: usize,
    /// A space the line may break at.
    space: bool,
}

/// Lays the pieces out in rows `width` columns wide, breaking at the spaces of the
/// pieces that allow it (else wherever the row is full). The rows after the first are
/// indented under `pieces[head]` (the text, after the time and sender), unless that
/// would leave them fewer than [`MIN_WRAPPED_TEXT`] columns. A space where a row breaks
/// is dropped. Always at least one row, if `width` is not 0.
fn wrap(pieces: &[Piece], head: usize, width: usize) -> Vec<TextLine<'static>> {
    if width == 0 {
        return Vec::new();
    }
    let mut cells = VecDeque::new();
    for (index, piece) in pieces.iter().enumerate() {
        for (range, grapheme_width) in graphemes(&piece.text) {
            cells.push_back(Cell {
                piece: index,
                space: piece.breaks && &piece.text[range.clone()] == " ",
                bytes: (range.start, range.end),
                width: grapheme_width,
            });
        }
    }
    let head_width: usize = cells
        .iter()
        .filter(|cell| cell.piece < head)
        .map(|cell| cell.width)
        .sum();
    let indent = if head_width + MIN_WRAPPED_TEXT <= width {
        head_width
    } else {
        0
    };

    let mut rows: Vec<Vec<Cell>> = Vec::new();
    let mut row: Vec<Cell> = Vec::new();
    let mut used = 0;
    while let Some(cell) = cells.pop_front() {
        let columns = if rows.is_empty() {
            width
        } else {
            width - indent
        };
        if row.is_empty() || used + cell.width <= columns {
            if row.is_empty() && !rows.is_empty() && cell.space {
                continue; // a continuation row does not start with a space
            }
            used += cell.width;
            row.push(cell);
            continue;
        }
        // the row is full: break it after its last space, or here
        if !cell.space {
            cells.push_front(cell);
            if let Some(space) = row.iter().rposition(|cell| cell.space)
                && space > 0
            {
                for moved in row.drain(space + 1..).rev() {
                    cells.push_front(moved);
                }
            }
        }
        rows.push(std::mem::take(&mut row));
        used = 0;
    }
    if !row.is_empty() || rows.is_empty() {
        rows.push(row);
    }

    rows.into_iter()
        .enumerate()
        .map(|(index, row)| {
            let mut spans = Vec::new();
            if index > 0 && indent > 0 {
                spans.push(Span::raw(" ".repeat(indent)));
            }
            for run in row.chunk_by(|a, b| a.piece == b.piece) {
                let piece = &pieces[run[0].piece];
                let bytes = run[0].bytes.0..run[run.len() - 1].bytes.1;
                spans.push(Span::styled(piece.text[bytes].to_owned(), piece.style));
            }
            TextLine::from(spans)
        })
        .collect()
}

/// The graphemes of `text` that ratatui draws (it leaves out those with control
/// characters), each as its bytes in `text` and its width in cells.
fn graphemes(text: &str) -> Vec<(Range<usize>, usize)> {
    let span = Span::raw(text);
    span.styled_graphemes(Style::new())
        .map(|grapheme| {
            // the graphemes are slices of `text`
            let start = grapheme.symbol.as_ptr().addr() - text.as_ptr().addr();
            let width = usize::from(grapheme.symbol.cell_width());
            (start..start + grapheme.symbol.len(), width)
        })
        .collect()
}

/// The width of `text` in cells, as ratatui draws it.
fn str_width(text: &str) -> usize {
    graphemes(text).iter().map(|(_, width)| width).sum()
}

/// `text`, cut to `width` cells with "…" at the end if it is wider.
fn fit(text: &str, width: usize) -> String {
    if str_width(text) <= width {
        return text.to_owned();
    }
    let Some(room) = width.checked_sub(1) else {
        return String::new();
    };
    let mut used = 0;
    let mut end = 0;
    for (range, grapheme_width) in graphemes(text) {
        if used + grapheme_width > room {
            break;
        }
        used += grapheme_width;
        end = range.end;
    }
    format!("{}…", &text[..end])
}

/// `text` and then `suffix` in `width` cells, the text cut first so that the suffix
/// stays whole.
fn fit_with_suffix(text: &str, suffix: &str, width: usize) -> String {
    let suffix_width = str_width(suffix);
    if suffix_width >= width {
        return fit(&format!("{text}{suffix}"), width);
    }
    format!("{}{suffix}", fit(text, width - suffix_width))
}
