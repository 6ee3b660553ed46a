//! How SQLite failures become engine errors. A busy, locked, full or failing disk is
//! `Unavailable` (retrying later may help); anything else, including stored data that no longer
//! parses, is `Internal` (a bug or a damaged file). Nothing here panics on bad data.

use engine::EngineError;
use rusqlite::ErrorCode;

/// The result of every blocking operation on a connection.
pub(crate) type DbResult<T> = Result<T, DbError>;

/// An error inside the store, before it is classified for the engine.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("sqlite: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored json: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl DbError {
    /// A stored value that does not parse back into its domain type.
    pub(crate) fn corrupt(what: &str, value: &str) -> Self {
        Self::Engine(EngineError::Internal(format!(
            "stored {what} {value:?} is not valid"
        )))
    }
}

impl From<DbError> for EngineError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Engine(engine_error) => engine_error,
            DbError::Sql(ref sql_error) if is_transient(sql_error) => {
                EngineError::Unavailable(error.to_string())
            }
            other => EngineError::Internal(other.to_string()),
        }
    }
}

/// Whether the failure comes from the environment (locks, disk, memory) rather than from the
/// statement or the data.
fn is_transient(error: &rusqlite::Error) -> bool {
    let rusqlite::Error::SqliteFailure(failure, _) = error else {
        return false;
    };
    matches!(
        failure.code,
        ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::NoLargeFileSupport
    )
}
