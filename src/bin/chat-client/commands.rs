//! What a line of input asks for: a message, or one of the slash commands. Parsing
//! only; [`chat`](crate::chat) carries it out, the same way in both interfaces.

use e2ee_chat::protocol::MAX_HISTORY_MESSAGES;

/// How many messages `/history` shows without a number.
const DEFAULT_HISTORY: u32 = 20;

/// What a line of input asks for. A `room` of `None` means the current room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty line.
    Nothing,
    Say {
        room: Option<String>,
        text: String,
    },
    Switch(String),
    Join(String),
    Leave(Option<String>),
    Rooms,
    Quit,
    Who(Option<String>),
    History {
        room: Option<String>,
        limit: u32,
    },
    Receipts(Option<String>),
    Pending,
    Fingerprint,
    Verify(String),
    Confirm(String),
    Trust(String),
    Invite(String),
    Kick(String),
    Help,
    /// A line that asks for nothing this client knows: what to tell the person.
    Wrong(String),
}

/// Parses one line of input.
pub fn parse(line: &str) -> Command {
    if line.trim().is_empty() {
        return Command::Nothing;
    }
    if let Some(text) = line.strip_prefix("//") {
        return say(format!("/{text}"));
    }
    let command = line.trim();
    if !command.starts_with('/') {
        return say(line.to_owned());
    }
    if let Some(rest) = command.strip_prefix("/msg ") {
        let rest = rest.trim_start();
        return match rest.split_once(' ') {
            Some((room, text)) if !text.trim().is_empty() => Command::Say {
                room: Some(room.to_owned()),
                text: text.to_owned(),
            },
            _ => wrong(command, "usage: /msg ROOM TEXT"),
        };
    }
    let words: Vec<&str> = command.split_whitespace().collect();
    let room = |word: Option<&&str>| word.map(|room| (*room).to_owned());
    match words[..] {
        ["/switch", room] => Command::Switch(room.to_owned()),
        ["/join", room] => Command::Join(room.to_owned()),
        ["/part" | "/leave", ref rest @ ..] if rest.len() <= 1 => {
            Command::Leave(room(rest.first()))
        }
        ["/rooms"] => Command::Rooms,
        ["/quit"] => Command::Quit,
        ["/who", ref rest @ ..] if rest.len() <= 1 => Command::Who(room(rest.first())),
        ["/receipts", ref rest @ ..] if rest.len() <= 1 => Command::Receipts(room(rest.first())),
        ["/history", ref rest @ ..] if rest.len() <= 2 => history(command, rest),
        ["/pending"] => Command::Pending,
        ["/fingerprint"] => Command::Fingerprint,
        ["/verify", name] => Command::Verify(name.to_owned()),
        ["/verify", name, "confirm"] => Command::Confirm(name.to_owned()),
        ["/trust", name] => Command::Trust(name.to_owned()),
        ["/invite", name] => Command::Invite(name.to_owned()),
        ["/kick", name] => Command::Kick(name.to_owned()),
        ["/help"] => Command::Help,
        _ => Command::Wrong(format!(
            "unknown command or wrong arguments: {command}; type /help for the list"
        )),
    }
}

fn say(text: String) -> Command {
    Command::Say { room: None, text }
}

fn wrong(command: &str, why: &str) -> Command {
    Command::Wrong(format!("{command}: {why}"))
}

/// `/history [ROOM] [N]`: a lone argument is a number if it is all digits (room names
/// may be digits too: `/history 42 20` names room 42).
fn history(command: &str, arguments: &[&str]) -> Command {
    let (room, count) = match arguments {
        [] => (None, None),
        [one]
            if one
                .bytes()
                .all(|byte| byte.is_ascii_digit() || byte == b'-') =>
        {
            (None, Some(*one))
        }
        [room] => (Some(*room), None),
        [room, count] => (Some(*room), Some(*count)),
        _ => unreachable!("at most two arguments are passed"),
    };
    match history_limit(count) {
        Ok(limit) => Command::History {
            room: room.map(str::to_owned),
            limit,
        },
        Err(error) => wrong(command, &error),
    }
}

/// The number of messages `/history` asks for: `DEFAULT_HISTORY` without an argument,
/// else 1 to `MAX_HISTORY_MESSAGES`.
fn history_limit(argument: Option<&str>) -> Result<u32, String> {
    let Some(argument) = argument else {
        return Ok(DEFAULT_HISTORY);
    };
    argument
        .parse::<u32>()
        .ok()
        .filter(|limit| (1..=MAX_HISTORY_MESSAGES).contains(limit))
        .ok_or_else(|| format!("the number of messages must be 1 to {MAX_HISTORY_MESSAGES}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(room: &str) -> Option<String> {
        Some(room.to_owned())
    }

    #[test]
    fn plain_lines_and_double_slashes_are_messages_to_the_current_room() {
        assert_eq!(parse("hello /who"), say("hello /who".into()));
        assert_eq!(parse("//who"), say("/who".into()));
        assert_eq!(parse("  "), Command::Nothing);
        assert_eq!(parse("  indented"), say("  indented".into()));
    }

    #[test]
    fn room_commands_name_their_room_or_default_to_the_current_one() {
        assert_eq!(
            parse("/msg b hello there"),
            Command::Say {
                room: some("b"),
                text: "hello there".into()
            }
        );
        assert!(matches!(parse("/msg b"), Command::Wrong(_)));
        assert_eq!(parse("/switch b"), Command::Switch("b".into()));
        assert_eq!(parse("/join c"), Command::Join("c".into()));
        assert_eq!(parse("/part"), Command::Leave(None));
        assert_eq!(parse("/leave b"), Command::Leave(some("b")));
        assert_eq!(parse("/who"), Command::Who(None));
        assert_eq!(parse("/who b"), Command::Who(some("b")));
        assert_eq!(parse("/receipts"), Command::Receipts(None));
    }

    #[test]
    fn history_takes_an_optional_room_and_1_to_100_messages_20_by_default() {
        let history = |room: Option<String>, limit| Command::History { room, limit };
        assert_eq!(parse("/history"), history(None, 20));
        assert_eq!(parse("/history 5"), history(None, 5));
        assert_eq!(parse("/history b"), history(some("b"), 20));
        assert_eq!(parse("/history b 100"), history(some("b"), 100));
        for wrong in ["0", "101", "-3", "b ten", "b 0"] {
            assert!(
                matches!(parse(&format!("/history {wrong}")), Command::Wrong(_)),
                "{wrong}"
            );
        }
        assert!(matches!(parse("/history a b c"), Command::Wrong(_)));
    }

    #[test]
    fn unknown_commands_say_how_to_get_help() {
        let Command::Wrong(text) = parse("/frobnicate") else {
            panic!("accepted");
        };
        assert!(text.contains("/help"));
        assert!(matches!(parse("/verify"), Command::Wrong(_)));
        assert_eq!(parse("/verify bob confirm"), Command::Confirm("bob".into()));
    }
}
