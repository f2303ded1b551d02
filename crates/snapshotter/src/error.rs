//! What can go wrong, named so that each maps to the gRPC code containerd
//! acts on (it tells NotFound and AlreadyExists apart from failures).
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// Store paths could not be fetched; `unavailable` when the store could
    /// not be reached (worth retrying), otherwise what it sent was refused.
    #[error("fetching store paths for {key:?}: {message}")]
    Fetch { key: String, message: String, unavailable: bool },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("metadata database: {0}")]
    Database(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn db(e: impl std::fmt::Display) -> Error {
        Error::Database(e.to_string())
    }

    /// The gRPC code containerd sees.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Fetch { unavailable: true, .. } => Code::Unavailable,
            Error::Fetch { unavailable: false, .. } | Error::Io { .. } | Error::Database(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
