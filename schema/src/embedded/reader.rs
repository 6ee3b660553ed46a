//! Read-only connections for queries. WAL lets readers run beside the writer, each seeing the last
//! committed state; a query runs on a pooled connection inside `spawn_blocking`, so a slow read
//! never blocks the async runtime and never waits for a write group.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use engine::EngineError;
use engine::ports::StoreResult;
use rusqlite::{Connection, OpenFlags};

use super::error::DbResult;

/// Idle connections kept for reuse; more are opened while many reads run at once.
const MAX_IDLE: usize = 8;

#[derive(Debug)]
pub(crate) struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `op` on a read connection on the blocking pool.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, op: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> DbResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let pool = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || -> StoreResult<T> {
            let conn = pool.checkout()?;
            let result = op(&conn).map_err(EngineError::from);
            // A connection is returned even after a failed query: it holds no transaction
            // (each statement is its own read transaction) and SQLite errors leave it usable.
            pool.checkin(conn);
            result
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(error) if error.is_panic() => {
                Err(EngineError::Internal("a store read panicked".into()))
            }
            Err(_) => Err(EngineError::Unavailable(
                "the store read was cancelled at shutdown".into(),
            )),
        }
    }

    fn checkout(&self) -> StoreResult<Connection> {
        if let Some(conn) = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Ok(conn);
        }
        open_reader(&self.path).map_err(EngineError::from)
    }

    fn checkin(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

fn open_reader(path: &std::path::Path) -> DbResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}
