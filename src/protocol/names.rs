//! User and room names: short, printable and safe to use as file names.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} characters")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} {name:?} contains {bad:?}; allowed are letters, digits and {allowed}")]
    BadCharacter {
        what: &'static str,
        name: String,
        bad: char,
        allowed: &'static str,
    },
}

/// The longest user name.
pub const MAX_USER_LEN: usize = 32;
/// The longest room name.
pub const MAX_ROOM_LEN: usize = 64;

/// Checks a user name: 1 to 32 characters from `[A-Za-z0-9_.-]`.
pub fn validate_user(name: &str) -> Result<(), NameError> {
    validate(name, "user name", MAX_USER_LEN, "_ . -")
}

/// Checks a room name: 1 to 64 characters from `[A-Za-z0-9_.#-]`.
pub fn validate_room(name: &str) -> Result<(), NameError> {
    validate(name, "room name", MAX_ROOM_LEN, "_ . # -")
}

fn validate(
    name: &str,
    what: &'static str,
    max: usize,
    allowed: &'static str,
) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > max {
        return Err(NameError::TooLong { what, max });
    }
    let punctuation: Vec<char> = allowed.split(' ').flat_map(str::chars).collect();
    match name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !punctuation.contains(c))
    {
        Some(bad) => Err(NameError::BadCharacter {
            what,
            name: name.to_owned(),
            bad,
            allowed,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        assert_eq!(validate_user("alice_01.b-c"), Ok(()));
        assert_eq!(validate_room("#team-rust.v2"), Ok(()));
    }

    #[test]
    fn refuses_names_that_could_escape_a_path_or_a_line() {
        assert!(matches!(
            validate_user("../etc"),
            Err(NameError::BadCharacter { bad: '/', .. })
        ));
        assert!(matches!(
            validate_room("a\nb"),
            Err(NameError::BadCharacter { bad: '\n', .. })
        ));
        assert!(matches!(
            validate_user("al#ce"),
            Err(NameError::BadCharacter { bad: '#', .. })
        ));
        assert_eq!(
            validate_user(""),
            Err(NameError::Empty { what: "user name" })
        );
        assert_eq!(
            validate_user(&"a".repeat(33)),
            Err(NameError::TooLong {
                what: "user name",
                max: 32
            })
        );
        assert_eq!(validate_room(&"r".repeat(64)), Ok(()));
    }
}
