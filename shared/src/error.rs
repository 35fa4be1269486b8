//! The one error-code vocabulary shared by WebSocket error frames and REST error bodies.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    Unauthorized,
    BadRequest,
    SessionNotFound,
    InvalidPassword,
    SessionFull,
    Forbidden,
    NotInSession,
    SessionExists,
    RateLimited,
    LimitExceeded,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::SessionNotFound => "SESSION_NOT_FOUND",
            ErrorCode::InvalidPassword => "INVALID_PASSWORD",
            ErrorCode::SessionFull => "SESSION_FULL",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotInSession => "NOT_IN_SESSION",
            ErrorCode::SessionExists => "SESSION_EXISTS",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The HTTP status the REST API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::BadRequest => 400,
            ErrorCode::SessionNotFound => 404,
            ErrorCode::InvalidPassword => 403,
            ErrorCode::SessionFull => 409,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotInSession => 403,
            ErrorCode::SessionExists => 409,
            ErrorCode::RateLimited => 429,
            ErrorCode::LimitExceeded => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// A default human-readable message.
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::SessionNotFound => "Session not found",
            ErrorCode::InvalidPassword => "Invalid password",
            ErrorCode::SessionFull => "Session is full",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::NotInSession => "Not in session",
            ErrorCode::SessionExists => "Session already exists",
            ErrorCode::RateLimited => "Too many requests",
            ErrorCode::LimitExceeded => "Limit exceeded",
            ErrorCode::Unavailable => "Service unavailable",
            ErrorCode::Internal => "Internal error",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_screaming_snake() {
        assert_eq!(
            serde_json::to_string(&ErrorCode::SessionNotFound).unwrap(),
            "\"SESSION_NOT_FOUND\""
        );
        assert_eq!(ErrorCode::NotInSession.as_str(), "NOT_IN_SESSION");
        assert_eq!(ErrorCode::SessionNotFound.http_status(), 404);
    }
}
