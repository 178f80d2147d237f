//! The texts both interfaces show: what each event from the session says, and command
//! answers, every text from someone else escaped with [`one_line`] (the one escaping
//! rule, kept with the screen's view). The line interface prints them; the full-screen
//! one places them.

use e2ee_chat::client::{self, ChatSession, Event, HistoryMessage, ReceiptSummary};
use e2ee_chat::proto::LeaveReason;
use e2ee_chat::protocol::utc_time;

pub use crate::tui::one_line;

/// What an event shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// A message from another member (stdout in the line interface).
    Message {
        room: String,
        sender: String,
        text: String,
        sent_at_ms: u64,
        seq: u64,
    },
    /// Something that happened, for a room or for the session.
    Info { room: Option<String>, text: String },
    /// Something dropped or looking wrong (`warning: ` in the line interface).
    Warning { room: Option<String>, text: String },
}

fn info(room: Option<&str>, text: String) -> Shown {
    Shown::Info {
        room: room.map(str::to_owned),
        text,
    }
}

/// A warning that the relay refused `what`, with its code, its reason, and `then`.
fn refusal(what: String, code: tonic::Code, message: &str, then: &str) -> Vec<Shown> {
    vec![Shown::Warning {
        room: None,
        text: format!("{what}: {}: {message}{then}", client::code_name(code)),
    }]
}

/// What `event` shows, if anything; `session` says what the room looks like now.
pub fn shown(event: &Event, session: &ChatSession, user: &str) -> Vec<Shown> {
    let line = |room: &str, text: String| vec![info(Some(room), text)];
    match event {
        Event::Message {
            room,
            sender,
            text,
            sent_at_ms,
            seq,
        } => vec![Shown::Message {
            room: room.clone(),
            sender: sender.clone(),
            text: text.clone(),
            sent_at_ms: *sent_at_ms,
            seq: *seq,
        }],
        Event::Joined { room } => {
            let privacy = match session.owner(room) {
                Some(owner) => format!("; private, owned by {owner}"),
                None => String::new(),
            };
            line(
                room,
                format!(
                    "joined {room} as {user} ({}{privacy})",
                    members_line(session, room)
                ),
            )
        }
        Event::JoinRefused {
            room,
            code,
            message,
        } => refusal(format!("cannot join {room}"), *code, message, ""),
        Event::LeaveRefused {
            room,
            code,
            message,
        } => refusal(
            format!("not left {room}"),
            *code,
            message,
            &format!("; you are still a member (/part {room} again)"),
        ),
        Event::MemberJoined { room, user } => line(room, format!("* {user} joined {room}")),
        Event::MemberLeft { room, user, reason } => {
            let how = match reason {
                LeaveReason::Left | LeaveReason::Unspecified => "left",
                LeaveReason::Kicked => "was removed by the owner from",
                LeaveReason::Reclaimed => "went unused too long and was removed by the server from",
            };
            line(
                room,
                format!("* {user} {how} {room}; your sender key was rotated"),
            )
        }
        Event::Refused {
            message,
            code,
            text,
            ..
        } => vec![info(
            None,
            format!(
                "failed to send \"{}\": {}: {message}",
                one_line(text),
                client::code_name(*code)
            ),
        )],
        Event::CaughtUp { room, .. } => line(room, format!("caught up on {room}")),
        Event::History { room, messages } => {
            if messages.is_empty() {
                return line(room, format!("history [{room}]: no messages"));
            }
            messages
                .iter()
                .map(|message| info(Some(room), history_line(room, message)))
                .collect()
        }
        Event::Left { room } => line(room, format!("left {room}")),
        Event::Removed { room } => line(room, format!("* the owner removed you from {room}")),
        Event::Pinned { user, fingerprint } => vec![info(
            None,
            format!(
                "* pinned the keys of {user} (fingerprint {fingerprint}); compare your safety \
                 number with /verify {user}"
            ),
        )],
        Event::KeysChanged {
            room,
            user,
            pinned,
            presented,
            was_verified,
        } => line(
            room,
            format!(
                "WARNING: the server presented NEW KEYS for {user} in {room}{}: pinned \
                 {pinned}, presented {presented}. Nothing is sent to or accepted from {user} \
                 until you check the safety number with {user} (/verify {user}) and run \
                 /trust {user}. If {user} did not change keys, someone may be impersonating \
                 them.",
                if *was_verified {
                    ", whom you had VERIFIED"
                } else {
                    ""
                }
            ),
        ),
        Event::Notice(text) => vec![info(None, format!("* {text}"))],
        Event::Warning(text) => vec![Shown::Warning {
            room: None,
            text: text.clone(),
        }],
        Event::Delivered { .. } | Event::Receipt { .. } => Vec::new(),
    }
}

/// The members of `room`, for `/who` and the `joined` line.
pub fn members_line(session: &ChatSession, room: &str) -> String {
    let members = session.members(room);
    if members.is_empty() {
        format!("you are alone in {room}")
    } else {
        format!("members of {room}: you, {}", members.join(", "))
    }
}

/// What `/pending` prints.
pub fn pending_lines(pending: &[&str]) -> Vec<String> {
    if pending.is_empty() {
        return vec!["no message is waiting for the server's acknowledgement".to_owned()];
    }
    let mut lines = vec![format!(
        "{} message(s) sent but not acknowledged yet:",
        pending.len()
    )];
    lines.extend(
        pending
            .iter()
            .map(|text| format!("  \"{}\"", one_line(text))),
    );
    lines
}

/// What `/receipts` prints for our latest messages in `room`.
pub fn receipt_lines(room: &str, own: &[(u64, String, ReceiptSummary)]) -> Vec<String> {
    if own.is_empty() {
        return vec![format!(
            "receipts [{room}]: none of your messages here was stored yet in this session"
        )];
    }
    own.iter()
        .map(|(_, text, summary)| {
            format!(
                "receipts [{room}] \"{}\": {}",
                one_line(text),
                receipt_text(summary)
            )
        })
        .collect()
}

/// `delivered to 2 of 3 (bob, carol), read by 1 (bob)`.
pub fn receipt_text(summary: &ReceiptSummary) -> String {
    let names = |list: &[String]| {
        if list.is_empty() {
            String::new()
        } else {
            format!(" ({})", list.join(", "))
        }
    };
    format!(
        "delivered to {} of {}{}, read by {}{}",
        summary.delivered.len(),
        summary.recipients.len(),
        names(&summary.delivered),
        summary.read.len(),
        names(&summary.read)
    )
}

/// One message of the history.
pub fn history_line(room: &str, message: &HistoryMessage) -> String {
    format!(
        "history [{room}] {} ({}): {}",
        message.sender,
        utc_time(message.sent_at_ms),
        one_line(&message.text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_lines_show_the_time_in_utc_and_escape_the_text() {
        let message = HistoryMessage {
            seq: 7,
            sender: "alice".into(),
            text: "two\nlines".into(),
            sent_at_ms: 1_700_000_000_000,
        };
        assert_eq!(
            history_line("lobby", &message),
            "history [lobby] alice (2023-11-14 22:13:20 UTC): two\\u{a}lines"
        );
    }

    #[test]
    fn pending_lists_each_text_on_one_line() {
        assert_eq!(pending_lines(&[]).len(), 1);
        assert_eq!(
            pending_lines(&["hi", "a\nb"]),
            [
                "2 message(s) sent but not acknowledged yet:",
                "  \"hi\"",
                "  \"a\\u{a}b\"",
            ]
        );
    }

    #[test]
    fn receipts_name_who_received_and_who_read() {
        let summary = ReceiptSummary {
            recipients: vec!["bob".into(), "carol".into(), "dave".into()],
            delivered: vec!["bob".into(), "carol".into()],
            read: vec!["bob".into()],
        };
        assert_eq!(
            receipt_lines("lobby", &[(4, "hi\n".into(), summary)]),
            ["receipts [lobby] \"hi\\u{a}\": delivered to 2 of 3 (bob, carol), read by 1 (bob)"]
        );
        assert_eq!(receipt_lines("lobby", &[]).len(), 1);
    }
}
