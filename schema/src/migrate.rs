//! `conversa migrate`: applies the numbered CQL files of `schema/cql/` to a ScyllaDB cluster.
//!
//! The files are compiled into the binary ([`MIGRATIONS`]), applied in order, each statement
//! followed by a wait for schema agreement, and recorded in the ledger table
//! `<keyspace>.schema_migrations` with the SHA-256 of the file's text. A file already in the
//! ledger is skipped when its checksum matches and refused when it does not: a shipped migration
//! is never edited, a new one is appended. A lock row taken with a lightweight transaction keeps
//! two runs from applying files at the same time. Every statement is `IF NOT EXISTS`, so a run that
//! stopped halfway is simply run again.

use std::fmt::Write as _;

use scylla::client::session::Session;
use scylla::statement::Statement;
use sha2::{Digest, Sha256};

/// One numbered CQL file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The file name, `NNNN_name.cql`: its number orders it.
    pub file: &'static str,
    /// The file's text, with `{{keyspace}}` and `{{replication}}` placeholders.
    pub text: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        file: "0001_keyspace.cql",
        text: include_str!("../cql/0001_keyspace.cql"),
    },
    Migration {
        file: "0002_tenants.cql",
        text: include_str!("../cql/0002_tenants.cql"),
    },
    Migration {
        file: "0003_conversations.cql",
        text: include_str!("../cql/0003_conversations.cql"),
    },
    Migration {
        file: "0004_messages.cql",
        text: include_str!("../cql/0004_messages.cql"),
    },
    Migration {
        file: "0005_ingest.cql",
        text: include_str!("../cql/0005_ingest.cql"),
    },
];

/// Why a migration run stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("invalid migration setting: {0}")]
    Config(String),
    #[error(
        "{file} was changed after it was applied (ledger checksum {recorded}, file checksum {current}); never edit a shipped migration, add a new one"
    )]
    ChecksumChanged {
        file: String,
        recorded: String,
        current: String,
    },
    #[error("another migration run holds the lock (owner {0}); retry when it is done")]
    Locked(String),
    #[error("{what} failed: {message}")]
    Cluster { what: String, message: String },
    #[error("the cluster did not agree on the schema after {file}: {message}")]
    Agreement { file: String, message: String },
}

/// What a run did, file by file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Files applied by this run.
    pub applied: Vec<String>,
    /// Files already in the ledger with the same checksum.
    pub skipped: Vec<String>,
}

/// The SHA-256 of a file's text, in hex: what the ledger records.
pub fn checksum(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Checks a keyspace name: CQL identifiers without quotes, lowercase, at most 48 characters.
pub fn check_keyspace(keyspace: &str) -> Result<(), MigrateError> {
    let mut chars = keyspace.chars();
    let valid_first = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let valid_rest = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid_first && valid_rest && keyspace.len() <= 48 {
        Ok(())
    } else {
        Err(MigrateError::Config(format!(
            "keyspace {keyspace:?} must be a lowercase identifier ([a-z][a-z0-9_]*, at most 48 characters)"
        )))
    }
}

/// Turns the replication setting (a JSON object, `{"class":"NetworkTopologyStrategy",
/// "replication_factor":3}` or with one key per datacenter) into a CQL map literal. Keys and
/// values are restricted to identifier characters, so nothing can be injected into the DDL.
pub fn replication_cql(json: &str) -> Result<String, MigrateError> {
    let bad = |why: &str| MigrateError::Config(format!("CONVERSA_SCYLLA_REPLICATION {why}"));
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(&format!("is not JSON: {e}")))?;
    let map = value
        .as_object()
        .ok_or_else(|| bad("must be a JSON object"))?;
    if !map.contains_key("class") {
        return Err(bad("needs a \"class\""));
    }
    let safe = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let mut out = String::from("{");
    for (i, (key, value)) in map.iter().enumerate() {
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) if n.as_u64().is_some() => n.to_string(),
            _ => return Err(bad(&format!("has a bad value for {key:?}"))),
        };
        if !safe(key) || !safe(&value) {
            return Err(bad(&format!("has a bad entry {key:?}: {value:?}")));
        }
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "'{key}': '{value}'");
    }
    out.push('}');
    Ok(out)
}

/// Replaces the placeholders of a migration's text.
pub fn render(text: &str, keyspace: &str, replication: &str) -> String {
    text.replace("{{keyspace}}", keyspace)
        .replace("{{replication}}", replication)
}

/// Splits a CQL file into statements: `;` ends a statement outside quotes, `--` and `//` start a
/// comment that runs to the end of the line. Empty statements are dropped.
pub fn split_statements(text: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            current.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                current.push(c);
            }
            '-' | '/' if chars.peek() == Some(&c) => {
                // A comment: skip to the end of the line, keep the newline.
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            ';' => {
                let statement = current.trim();
                if !statement.is_empty() {
                    statements.push(statement.to_owned());
                }
                current.clear();
            }
            _ => current.push(c),
        }
    }
    let rest = current.trim();
    if !rest.is_empty() {
        statements.push(rest.to_owned());
    }
    statements
}

/// Checks the embedded list: numbered `0001`, `0002`, … without gaps, each with statements.
pub fn check_numbering(migrations: &[Migration]) -> Result<(), String> {
    for (i, m) in migrations.iter().enumerate() {
        let expected = format!("{:04}_", i + 1);
        if !m.file.starts_with(&expected) || !m.file.ends_with(".cql") {
            return Err(format!("{} should be named {expected}….cql", m.file));
        }
        if split_statements(m.text).is_empty() {
            return Err(format!("{} has no statement", m.file));
        }
    }
    Ok(())
}

/// Applies every migration not yet in the ledger, in order; see the module documentation.
/// `session` must not be bound to the keyspace (it may not exist yet).
pub async fn migrate(
    session: &Session,
    keyspace: &str,
    replication_json: &str,
) -> Result<MigrateReport, MigrateError> {
    check_keyspace(keyspace)?;
    let replication = format!(
        "{}{}",
        replication_cql(replication_json)?,
        keyspace_options(session).await
    );
    check_numbering(MIGRATIONS).map_err(MigrateError::Config)?;

    // The keyspace (file 0001) must exist before the ledger can. Its statement is idempotent; it
    // is recorded in the ledger like any other file right after.
    if !keyspace_exists(session, keyspace).await? {
        apply(session, &MIGRATIONS[0], keyspace, &replication).await?;
    }
    for ddl in [
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations (file text PRIMARY KEY, checksum text, applied_at timestamp, statements int)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations_lock (id text PRIMARY KEY, owner text) WITH default_time_to_live = 600"
        ),
    ] {
        run_ddl(session, &ddl, "the ledger").await?;
    }

    let owner = format!("{:016x}", rand::random::<u64>());
    take_lock(session, keyspace, &owner).await?;
    let result = apply_pending(session, keyspace, &replication).await;
    release_lock(session, keyspace, &owner).await;
    result
}

async fn apply_pending(
    session: &Session,
    keyspace: &str,
    replication: &str,
) -> Result<MigrateReport, MigrateError> {
    let select = prepare(
        session,
        format!("SELECT checksum FROM {keyspace}.schema_migrations WHERE file = ?"),
    )
    .await?;
    let insert = prepare(
        session,
        format!(
            "INSERT INTO {keyspace}.schema_migrations (file, checksum, applied_at, statements) VALUES (?, ?, toTimestamp(now()), ?)"
        ),
    )
    .await?;
    let mut report = MigrateReport::default();
    for migration in MIGRATIONS {
        let current = checksum(migration.text);
        let recorded: Option<String> = session
            .execute_unpaged(&select, (migration.file,))
            .await
            .map_err(|e| cluster("reading the ledger", e))?
            .into_rows_result()
            .map_err(|e| cluster("reading the ledger", e))?
            .maybe_first_row::<(Option<String>,)>()
            .map_err(|e| cluster("reading the ledger", e))?
            .and_then(|(checksum,)| checksum);
        match recorded {
            Some(recorded) if recorded == current => {
                report.skipped.push(migration.file.to_owned());
                continue;
            }
            Some(recorded) => {
                return Err(MigrateError::ChecksumChanged {
                    file: migration.file.to_owned(),
                    recorded,
                    current,
                });
            }
            None => {}
        }
        let count = apply(session, migration, keyspace, replication).await?;
        session
            .execute_unpaged(
                &insert,
                (
                    migration.file,
                    &current,
                    i32::try_from(count).unwrap_or(i32::MAX),
                ),
            )
            .await
            .map_err(|e| cluster("recording in the ledger", e))?;
        tracing::info!(
            file = migration.file,
            statements = count,
            "migration applied"
        );
        report.applied.push(migration.file.to_owned());
    }
    Ok(report)
}

/// Runs every statement of one file, waiting for schema agreement after each.
async fn apply(
    session: &Session,
    migration: &Migration,
    keyspace: &str,
    replication: &str,
) -> Result<usize, MigrateError> {
    let statements = split_statements(&render(migration.text, keyspace, replication));
    for statement in &statements {
        run_ddl(session, statement, migration.file).await?;
    }
    Ok(statements.len())
}

async fn run_ddl(session: &Session, ddl: &str, file: &str) -> Result<(), MigrateError> {
    let mut statement = Statement::new(ddl);
    // Schema changes take longer than data requests, above all with many nodes.
    statement.set_request_timeout(Some(std::time::Duration::from_secs(60)));
    session
        .query_unpaged(statement, ())
        .await
        .map_err(|e| cluster(&format!("{file}: {}", first_line(ddl)), e))?;
    session
        .await_schema_agreement()
        .await
        .map_err(|e| MigrateError::Agreement {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
    Ok(())
}

/// Options the keyspace is created with beyond its replication. On a ScyllaDB that knows tablets
/// (6.0 and later: it has `system_schema.scylla_keyspaces`), tablets are turned off for
/// Conversa's keyspace: from 6.0 to 2025.3 lightweight transactions, which the dedupe gate, the
/// conversation records and the migration lock rely on, are refused on tablet tables, and a
/// NetworkTopologyStrategy keyspace gets tablets by default. Cassandra (which refuses the option)
/// and older ScyllaDB get none. A cluster in `enforced` tablets mode needs ScyllaDB 2025.4 or later
/// and a keyspace created by hand.
async fn keyspace_options(session: &Session) -> &'static str {
    match session
        .query_unpaged(
            "SELECT keyspace_name FROM system_schema.scylla_keyspaces LIMIT 1",
            (),
        )
        .await
    {
        Ok(_) => " AND tablets = {'enabled': false}",
        Err(_) => "",
    }
}

async fn keyspace_exists(session: &Session, keyspace: &str) -> Result<bool, MigrateError> {
    let select = prepare(
        session,
        "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?".to_owned(),
    )
    .await?;
    let rows = session
        .execute_unpaged(&select, (keyspace,))
        .await
        .map_err(|e| cluster("reading system_schema.keyspaces", e))?
        .into_rows_result()
        .map_err(|e| cluster("reading system_schema.keyspaces", e))?;
    Ok(rows.rows_num() > 0)
}

async fn take_lock(session: &Session, keyspace: &str, owner: &str) -> Result<(), MigrateError> {
    let insert = prepare(
        session,
        format!(
            "INSERT INTO {keyspace}.schema_migrations_lock (id, owner) VALUES ('migrate', ?) IF NOT EXISTS"
        ),
    )
    .await?;
    let result = session
        .execute_unpaged(&insert, (owner,))
        .await
        .map_err(|e| cluster("taking the migration lock", e))?;
    let (applied, holder) = crate::scylla::lwt_outcome(result, "owner")
        .map_err(|e| cluster("taking the migration lock", e))?;
    if applied {
        Ok(())
    } else {
        Err(MigrateError::Locked(
            holder
                .and_then(|v| v.as_text().cloned())
                .unwrap_or_default(),
        ))
    }
}

async fn release_lock(session: &Session, keyspace: &str, owner: &str) {
    let statement =
        format!("DELETE FROM {keyspace}.schema_migrations_lock WHERE id = 'migrate' IF owner = ?");
    let released = match prepare(session, statement).await {
        Ok(delete) => session
            .execute_unpaged(&delete, (owner,))
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = released {
        tracing::warn!(error = %e, "could not release the migration lock; it expires in 10 minutes");
    }
}

async fn prepare(
    session: &Session,
    cql: String,
) -> Result<scylla::statement::prepared::PreparedStatement, MigrateError> {
    session
        .prepare(cql)
        .await
        .map_err(|e| cluster("preparing a ledger statement", e))
}

fn cluster(what: &str, error: impl std::fmt::Display) -> MigrateError {
    MigrateError::Cluster {
        what: what.to_owned(),
        message: error.to_string(),
    }
}

fn first_line(statement: &str) -> &str {
    statement.lines().next().unwrap_or(statement).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_numbered_without_gaps_and_split_into_statements() {
        check_numbering(MIGRATIONS).unwrap();
        let statements: usize = MIGRATIONS
            .iter()
            .map(|m| split_statements(m.text).len())
            .sum();
        assert_eq!(statements, 1 + 3 + 4 + 3 + 5);
        for m in MIGRATIONS {
            for statement in split_statements(&render(m.text, "conversa", "{}")) {
                assert!(
                    statement.starts_with("CREATE ") && statement.contains("IF NOT EXISTS"),
                    "{}: every statement is an idempotent CREATE: {statement}",
                    m.file
                );
                assert!(!statement.contains("{{"), "{}: placeholder left", m.file);
                assert!(
                    !statement.to_uppercase().contains("ALLOW FILTERING"),
                    "{}",
                    m.file
                );
            }
        }
    }

    #[test]
    fn comments_and_quotes_do_not_split() {
        let text = "-- a comment; with a semicolon\nCREATE TABLE a (x text); // another; one\n\
                    INSERT INTO a (x) VALUES ('semi;colon');\n  \n";
        assert_eq!(
            split_statements(text),
            [
                "CREATE TABLE a (x text)",
                "INSERT INTO a (x) VALUES ('semi;colon')"
            ]
        );
    }

    #[test]
    fn replication_becomes_a_cql_map_and_nothing_else() {
        assert_eq!(
            replication_cql(r#"{"class":"NetworkTopologyStrategy","replication_factor":3}"#)
                .unwrap(),
            "{'class': 'NetworkTopologyStrategy', 'replication_factor': '3'}"
        );
        assert_eq!(
            replication_cql(r#"{"class":"NetworkTopologyStrategy","sa-east-1":"3","us-east":2}"#)
                .unwrap(),
            "{'class': 'NetworkTopologyStrategy', 'sa-east-1': '3', 'us-east': '2'}"
        );
        for bad in [
            "[]",
            r#"{"replication_factor":3}"#,
            r#"{"class":"Simple'Strategy"}"#,
            r#"{"class":"SimpleStrategy","replication_factor":-1}"#,
            "not json",
        ] {
            assert!(replication_cql(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keyspace_names_are_plain_identifiers() {
        check_keyspace("conversa").unwrap();
        check_keyspace("conversa_test_01").unwrap();
        for bad in ["", "Conversa", "1conversa", "conversa; DROP", "a-b"] {
            assert!(check_keyspace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_checksum_is_over_the_text_before_substitution() {
        let m = MIGRATIONS[0];
        assert_eq!(checksum(m.text), checksum(m.text));
        assert_eq!(checksum(m.text).len(), 64);
        assert_ne!(
            checksum(m.text),
            checksum(&render(m.text, "conversa", "{}"))
        );
    }
}
