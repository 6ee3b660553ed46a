//! The writer thread and group commit.
//!
//! One `std::thread` owns the only write connection. Callers send it jobs over a bounded channel
//! (async backpressure, never a blocked runtime thread) and await the answer on a oneshot. The
//! thread takes every job that is queued (up to [`MAX_GROUP`]), runs them in ONE transaction, each
//! inside its own savepoint, commits once, and only then answers them all. Under load, requests
//! queue while a group commits and the next group is bigger: the cost of a commit (and of its
//! fsync) is shared by every write in it.
//!
//! A job that fails rolls back to its savepoint and reports its own error; the others in the group
//! still commit. If the commit itself fails, every job of the group reports that failure and none
//! of its changes is stored. A job whose caller went away (its future was dropped) still runs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle;

use engine::EngineError;
use engine::ports::StoreResult;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::error::{DbError, DbResult};

/// At most this many jobs share a transaction, which bounds how long one group holds the writer.
const MAX_GROUP: usize = 512;

/// Jobs waiting for the writer; callers beyond this wait (asynchronously) for room.
const QUEUE_CAPACITY: usize = 8192;

/// The handle to the writer thread. Dropping it closes the queue; the thread finishes the jobs
/// already queued, closes the connection (checkpointing the WAL) and exits, and the drop waits for
/// that, so a store opened again on the same directory sees every acknowledged write.
#[derive(Debug)]
pub(crate) struct Writer {
    job_tx: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread; `open` runs on it and builds the connection (pragmas, migrations).
    /// Returns once the connection is ready, or with the error that prevented it.
    pub(crate) async fn start<F>(open: F) -> StoreResult<Writer>
    where
        F: FnOnce() -> DbResult<Connection> + Send + 'static,
    {
        let (job_tx, job_rx) = mpsc::channel::<Box<dyn Job>>(QUEUE_CAPACITY);
        let (ready_tx, ready_rx) = oneshot::channel::<StoreResult<()>>();
        let thread = std::thread::Builder::new()
            .name("conversa-store-writer".into())
            .spawn(move || match open() {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(()));
                    run(&conn, job_rx);
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error.into()));
                }
            })
            .map_err(|e| {
                EngineError::Unavailable(format!("cannot start the store writer thread: {e}"))
            })?;
        let writer = Writer {
            job_tx: Some(job_tx),
            thread: Some(thread),
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(writer),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(EngineError::Internal(
                "the store writer thread stopped while opening".into(),
            )),
        }
    }

    /// Runs `op` on the write connection inside the next group's transaction and returns its result
    /// once that transaction is committed.
    pub(crate) async fn run<T, F>(&self, op: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> DbResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job = Box::new(PendingJob {
            op: Some(op),
            outcome: None,
            reply_tx,
        });
        let job_tx = self.job_tx.as_ref().ok_or_else(writer_gone)?;
        job_tx.send(job).await.map_err(|_| writer_gone())?;
        reply_rx.await.map_err(|_| writer_gone())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop once the queued jobs are done.
        self.job_tx.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
    }
}

fn writer_gone() -> EngineError {
    EngineError::Unavailable("the store writer thread is not running".into())
}

/// One write waiting for its group: runs inside a savepoint, answers after the commit.
trait Job: Send {
    /// Runs the operation; returns whether it succeeded (a failure rolls back its savepoint).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Records a failure of the job's savepoint handling; the job then reports it.
    fn fail(&mut self, error: EngineError);
    /// Sends the answer: the job's own result, or `group_error` if the group did not commit.
    fn answer(self: Box<Self>, group_error: Option<&EngineError>);
}

struct PendingJob<T, F> {
    op: Option<F>,
    outcome: Option<StoreResult<T>>,
    reply_tx: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for PendingJob<T, F>
where
    F: FnOnce(&Connection) -> DbResult<T> + Send,
    T: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(op) = self.op.take() else {
            return false;
        };
        // A panic is a bug in one operation; it must not take the writer (and every later write)
        // down with it. The savepoint rollback undoes whatever the operation did.
        let outcome = match catch_unwind(AssertUnwindSafe(|| op(conn))) {
            Ok(result) => result.map_err(EngineError::from),
            Err(_) => Err(EngineError::Internal("a store write panicked".into())),
        };
        let succeeded = outcome.is_ok();
        self.outcome = Some(outcome);
        succeeded
    }

    fn fail(&mut self, error: EngineError) {
        self.op = None;
        self.outcome = Some(Err(error));
    }

    fn answer(self: Box<Self>, group_error: Option<&EngineError>) {
        let result = match (self.outcome, group_error) {
            (Some(Err(own_error)), _) => Err(own_error),
            (_, Some(group_error)) => Err(group_error.clone()),
            (Some(Ok(value)), None) => Ok(value),
            (None, None) => Err(EngineError::Internal("a store write was never run".into())),
        };
        // The caller may have stopped waiting; the write stands either way.
        let _ = self.reply_tx.send(result);
    }
}

/// The thread's loop: wait for a job, take every other queued job, commit them as one group.
fn run(conn: &Connection, mut job_rx: mpsc::Receiver<Box<dyn Job>>) {
    let mut group: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = job_rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match job_rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let group_error = commit_group(conn, &mut group).err();
        if let Some(error) = &group_error {
            tracing::error!(error = %error, jobs = group.len(), "store write group failed");
        }
        for job in group.drain(..) {
            job.answer(group_error.as_ref());
        }
    }
    tracing::debug!("store writer stopped: every handle was dropped");
}

/// Runs the group in one transaction. An error means nothing of the group was stored.
fn commit_group(conn: &Connection, group: &mut [Box<dyn Job>]) -> StoreResult<()> {
    exec(conn, "BEGIN IMMEDIATE")?;
    for (index, job) in group.iter_mut().enumerate() {
        run_in_savepoint(conn, job.as_mut());
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back by itself (an I/O error, a full disk):
            // what the earlier jobs wrote is gone, and the later ones must not run outside it.
            let error =
                EngineError::Unavailable("the store transaction was rolled back by sqlite".into());
            for later in &mut group[index + 1..] {
                later.fail(error.clone());
            }
            return Err(error);
        }
    }
    if let Err(error) = exec(conn, "COMMIT") {
        if !conn.is_autocommit() {
            let _ = exec(conn, "ROLLBACK");
        }
        return Err(error);
    }
    Ok(())
}

fn run_in_savepoint(conn: &Connection, job: &mut dyn Job) {
    if let Err(error) = exec(conn, "SAVEPOINT job") {
        job.fail(error);
        return;
    }
    let succeeded = job.run(conn);
    let closed = if succeeded {
        exec(conn, "RELEASE job")
    } else {
        exec(conn, "ROLLBACK TO job").and_then(|()| exec(conn, "RELEASE job"))
    };
    if let Err(error) = closed {
        job.fail(error);
    }
}

fn exec(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql)
        .and_then(|mut statement| statement.execute([]))
        .map(drop)
        .map_err(|e| DbError::from(e).into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::path::Path;

    use super::*;

    async fn writer(dir: &Path) -> Writer {
        let path = dir.join("writer.db");
        Writer::start(move || {
            let conn = Connection::open(path)?;
            conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (v INTEGER UNIQUE)")?;
            Ok(conn)
        })
        .await
        .unwrap()
    }

    fn insert(value: i64) -> impl FnOnce(&Connection) -> DbResult<()> + Send + 'static {
        move |conn| {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [value])?;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failing_job_rolls_back_alone_and_the_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path()).await;
        // The first job holds the thread so the next three are queued and run as one group.
        let blocker = writer.run(|_conn| {
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        });
        let failing = writer.run(|conn| -> DbResult<()> {
            conn.execute("INSERT INTO t (v) VALUES (2)", [])?;
            Err(DbError::Engine(EngineError::Conflict("no".into())))
        });
        let panicking = writer.run(|conn| -> DbResult<()> {
            conn.execute("INSERT INTO t (v) VALUES (3)", [])?;
            panic!("a bug in one write");
        });
        let (blocked, first, second, third, fourth) = tokio::join!(
            blocker,
            writer.run(insert(1)),
            failing,
            panicking,
            writer.run(insert(4))
        );
        blocked.unwrap();
        first.unwrap();
        assert_eq!(second, Err(EngineError::Conflict("no".into())));
        assert!(matches!(third, Err(EngineError::Internal(_))));
        fourth.unwrap();
        let values = writer
            .run(|conn| {
                let mut statement = conn.prepare("SELECT v FROM t ORDER BY v")?;
                let values = statement
                    .query_map([], |row| row.get::<_, i64>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(values)
            })
            .await
            .unwrap();
        assert_eq!(values, [1, 4]);
        // A constraint error is the job's own: the others still commit.
        let (duplicate, fifth) = tokio::join!(writer.run(insert(1)), writer.run(insert(5)));
        assert!(matches!(duplicate, Err(EngineError::Internal(_))));
        fifth.unwrap();
    }

    #[tokio::test]
    async fn dropping_the_writer_finishes_queued_jobs_and_stops_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path()).await;
        writer.run(insert(7)).await.unwrap();
        drop(writer);
        let conn = Connection::open(dir.path().join("writer.db")).unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 1);
    }
}
