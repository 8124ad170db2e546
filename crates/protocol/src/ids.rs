//! Id newtypes. Room ids are chosen by people and validated; participant and track ids
//! are handed out by the server.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 64;

/// Why a room name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty or longer than [`MAX_ROOM_LEN`].
    #[error("a room name has 1 to {MAX_ROOM_LEN} characters")]
    Length,
    /// A character outside letters, digits, `-`, `_` and `.`.
    #[error("a room name may hold only letters, digits, '-', '_' and '.'")]
    Charset,
}

/// A room's name, as it appears in invite links (`/?room=NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = r"^[\p{L}\p{N}._-]{1,64}$", example = "standup")]
pub struct RoomId(String);

impl RoomId {
    /// Validates a room name.
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_ROOM_LEN {
            return Err(IdError::Length);
        }
        if !name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(IdError::Charset);
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RoomId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::new(value)
    }
}

impl From<RoomId> for String {
    fn from(value: RoomId) -> Self {
        value.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = u64)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

numeric_id!(
    /// A participant: one signaling session in one room. Unique for the server's lifetime.
    ParticipantId,
    "p"
);
numeric_id!(
    /// A published track. Unique for the server's lifetime.
    TrackId,
    "t"
);
