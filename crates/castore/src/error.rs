//! The crate's error type and its mapping to gRPC status codes.
use crate::directory::{DecodeError, DirectoryError};

/// Everything a castore operation can fail with.
///
/// Variants follow the protocol's vocabulary so that a server can answer with
/// the right status and a client can tell "absent" from "broken".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request or uploaded data is malformed or inconsistent.
    #[error("{0}")]
    InvalidRequest(String),
    /// Something the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but something it depends on is missing
    /// (e.g. a PathInfo whose contents or references are not stored yet).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request exceeds a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The backend failed (I/O, database, a remote peer's transport).
    #[error("storage error: {0}")]
    Storage(String),
    /// A remote peer answered with this status.
    #[error("remote: {}: {}", .0.code(), .0.message())]
    Remote(tonic::Status),
    /// A local I/O error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn storage(e: impl std::fmt::Display) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<DirectoryError> for Error {
    fn from(e: DirectoryError) -> Self {
        Error::InvalidRequest(e.to_string())
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::InvalidRequest(e.to_string())
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Remote(s)
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::{Code, Status};
        match e {
            Error::InvalidRequest(m) => Status::invalid_argument(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::TooLarge(m) => Status::resource_exhausted(m),
            Error::Remote(s) => Status::new(s.code(), s.message().to_owned()),
            e @ (Error::Storage(_) | Error::Io(_)) => Status::new(Code::Internal, e.to_string()),
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            Error::NotFound(m) => std::io::Error::new(std::io::ErrorKind::NotFound, m),
            Error::InvalidRequest(m) => std::io::Error::new(std::io::ErrorKind::InvalidData, m),
            e => std::io::Error::other(e),
        }
    }
}
