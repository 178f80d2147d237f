//! Why the hub refuses an operation or ends a session, as the domain sees it, and the
//! one place where that becomes a gRPC status ([`HubError::code`]) and a per-frame
//! [`Rejection`] ([`rejection`]).
//!
//! The hub decides; the edges (the frame reader, the services) only translate. Keeping
//! the codes here means a client sees the same code for the same refusal whichever RPC
//! carried it, and a test can match on the variant rather than on a message.

use tonic::{Code, Status};

use crate::proto::Rejection;
use crate::store::Quota;

/// Why the hub did not do what a session asked, or ended it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HubError {
    // The relay itself.
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the server is shutting down; reconnect later")]
    ShutDown,
    #[error("the server is full ({max} sessions); try again later")]
    Full { max: usize },
    #[error(
        "the server cannot store anything now (its database failed); nothing was stored; try \
         again in a few seconds"
    )]
    StoreFailed,
    #[error(
        "the server lost its database for a while and has it back; reconnect to catch up on \
         what is stored"
    )]
    StoreRecovered,
    #[error("the server is not storing anything any more; try again later")]
    WriterStopped,
    #[error(
        "the server could not store this (its database failed); nothing was stored; try again \
         later"
    )]
    NotStored,
    #[error(
        "this relay lost its claim on the database for a while (another relay may serve it \
         now): reconnect, to another relay of the deployment if there is one, and catch up"
    )]
    ClaimLost,

    // Sessions.
    #[error("the server is deleting this identity, unused for too long; log in again")]
    Reclaiming,
    #[error(
        "you opened another session elsewhere; this one is closed (only one session per user \
         at a time)"
    )]
    Replaced,
    #[error("the session was closed")]
    SessionClosed,
    #[error(
        "disconnected: your client read nothing for {secs} s while frames waited for it; \
         reconnect to catch up"
    )]
    Stalled { secs: u64 },
    #[error(
        "disconnected: your client did not read its messages fast enough and its queue on the \
         server filled up; reconnect to catch up"
    )]
    Overflowed,

    // Rooms and membership.
    #[error("there is no room {room:?}")]
    NoRoom { room: String },
    #[error("you are already in room {room:?} on this stream")]
    AlreadyOnStream { room: String },
    #[error("you are a member of {count} rooms, the most a user may; leave one first")]
    TooManyMemberships { count: usize },
    #[error("the server holds its maximum of {max} rooms; try again later")]
    TooManyRooms { max: usize },
    #[error(
        "you own {count} private rooms, the most a user may; a room is freed when its last \
         member leaves"
    )]
    TooManyOwned { count: usize },
    #[error("room {room:?} is private; ask its owner to invite you")]
    Private { room: String },
    #[error(
        "room {room:?} already exists and is open to anyone; choose another name for a private \
         room"
    )]
    OpenRoomExists { room: String },
    #[error("room {room:?} is full ({max} members)")]
    RoomFull { room: String, max: usize },
    #[error("you are not a member of room {room:?}")]
    NotMember { room: String },
    #[error(
        "room {room:?} changed through another relay at the same moment (created as another \
         kind of room, deleted, or joined by you there); join again"
    )]
    RoomChanged { room: String },
    #[error("you are not a member of room {room:?} on this stream; join it first")]
    NotJoinedHere { room: String },
    #[error("you are still joining room {room:?}; ask for its history once joined")]
    StillJoining { room: String },
    #[error("you left or were removed from room {room:?} before your joining was complete")]
    LeftWhileJoining { room: String },

    // Private rooms.
    #[error("room {room:?} is open to anyone: there is nobody to invite or kick")]
    NotPrivate { room: String },
    #[error("only the owner of room {room:?} ({owner}) can invite or kick")]
    NotOwner { room: String, owner: String },
    #[error("room {room:?} has its maximum of {max} invitations; kick someone first")]
    TooManyInvitations { room: String, max: usize },
    #[error("you own this room and cannot kick yourself; leave it instead")]
    KickSelf,
    #[error("{user:?} is neither a member of nor invited to room {room:?}")]
    NeitherMemberNorInvited { user: String, room: String },
    #[error("the owner removed you from room {room:?}")]
    Removed { room: String },

    // Storage quotas.
    #[error(
        "not stored: the server keeps at most {} of one user's messages and keys, and yours \
         would take more; space comes back as your older messages expire or their rooms fill \
         up; try again later",
        human_size(*.limit)
    )]
    OverQuota { limit: u64 },
}

impl HubError {
    /// The gRPC status code a client gets for this refusal.
    pub(crate) fn code(&self) -> Code {
        use HubError::*;
        match self {
            ShuttingDown | ShutDown | StoreFailed | StoreRecovered | WriterStopped | NotStored
            | ClaimLost | Reclaiming | SessionClosed => Code::Unavailable,
            Replaced | RoomChanged { .. } => Code::Aborted,
            Full { .. }
            | Stalled { .. }
            | Overflowed
            | TooManyMemberships { .. }
            | TooManyRooms { .. }
            | TooManyOwned { .. }
            | RoomFull { .. }
            | TooManyInvitations { .. }
            | OverQuota { .. } => Code::ResourceExhausted,
            NoRoom { .. } | NeitherMemberNorInvited { .. } => Code::NotFound,
            AlreadyOnStream { .. } | OpenRoomExists { .. } => Code::AlreadyExists,
            Private { .. }
            | NotMember { .. }
            | NotJoinedHere { .. }
            | NotOwner { .. }
            | Removed { .. } => Code::PermissionDenied,
            StillJoining { .. } | LeftWhileJoining { .. } | NotPrivate { .. } => {
                Code::FailedPrecondition
            }
            KickSelf => Code::InvalidArgument,
        }
    }

    pub(crate) fn over_quota(quota: Quota) -> Self {
        match quota {
            Quota::User { limit } => Self::OverQuota { limit },
        }
    }
}

impl From<HubError> for Status {
    fn from(error: HubError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

/// The per-frame answer that refuses a frame for `status`.
pub(crate) fn rejection(status: &Status) -> Rejection {
    Rejection {
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

/// A size for people: "64 MiB".
fn human_size(size: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = size as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
