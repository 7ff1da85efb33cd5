//! The database: SQLite (the embedded default, one process) or PostgreSQL (shared by any number of replicas),
//! chosen by the URL's scheme, behind one sqlx pool type. Every query is written once, in the SQL both accept:
//! `$1`-style parameters, `ON CONFLICT`, no boolean arithmetic. Each backend has its own migrations
//! (`migrations/sqlite`, `migrations/postgres`), the same tables and columns (a test compares them).

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};
use std::str::FromStr;
use std::time::Duration;

/// The process's connection pool, SQLite's or Postgres'.
pub type Db = sqlx::AnyPool;
/// A row of [`Db`].
pub type DbRow = sqlx::any::AnyRow;

/// Which database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://path` or `sqlite::memory:`.
    Sqlite,
    /// `postgres://` or `postgresql://`.
    Postgres,
}

impl Backend {
    /// The backend of `url`, or an error naming the schemes this server takes.
    pub fn of(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            anyhow::bail!("database URL {url} is neither sqlite://<file> nor postgres://<user>@<host>/<database>")
        }
    }

    /// The backend a pool talks to.
    pub fn of_pool(db: &Db) -> Self {
        if db.connect_options().database_url.as_str().starts_with("sqlite:") {
            Self::Sqlite
        } else {
            Self::Postgres
        }
    }
}

/// Opens the database at `url` (a SQLite file is created if missing) and applies its backend's migrations.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    connect_with(url, 8).await
}

async fn connect_with(url: &str, max_connections: u32) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of(url)?;
    let in_memory = url.contains(":memory:");
    let options = match backend {
        // Created if missing, unless the URL says otherwise.
        Backend::Sqlite if !in_memory && !url.contains("mode=") => {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        }
        _ => url.to_string(),
    };
    let options = AnyConnectOptions::from_str(&options).with_context(|| format!("invalid database URL {url}"))?;
    // One connection first, so that a failure says why (the pool would only say it timed out).
    let probe = options.connect().await.with_context(|| format!("cannot open database {}", redacted(url)))?;
    probe.close().await.ok();
    let pool = AnyPoolOptions::new()
        // One connection is the whole of an in-memory SQLite database.
        .max_connections(if in_memory { 1 } else { max_connections })
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // WAL: readers never wait for the writer. Foreign keys are off in SQLite unless asked for.
                    let journal = if in_memory { "MEMORY" } else { "WAL" };
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "PRAGMA journal_mode = {journal}; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                         PRAGMA busy_timeout = 5000;"
                    )))
                    .await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open database {}", redacted(url)))?;
    let migrated = match backend {
        Backend::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&pool).await,
        Backend::Postgres => sqlx::migrate!("../migrations/postgres").run(&pool).await,
    };
    migrated.with_context(|| format!("cannot apply migrations to {}", redacted(url)))?;
    Ok(pool)
}

/// `url` without its password, for messages and logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            match user.split_once(':') {
                Some((name, _)) => format!("{}{name}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The databases the database tests run against, each new and migrated: an in-memory SQLite, and a new Postgres
/// database on the server that `LORALAND_TEST_POSTGRES` names (`scripts/with-postgres.sh` starts a throw-away one;
/// `make unit` runs the tests inside it). In CI (`CI` set) Postgres is required, so that it is never skipped
/// unseen.
#[doc(hidden)]
pub async fn test_databases() -> Vec<(Backend, Db)> {
    let mut dbs = vec![(Backend::Sqlite, connect("sqlite::memory:").await.expect("in-memory SQLite"))];
    if let Some(server) = test_postgres_server() {
        dbs.push((Backend::Postgres, fresh_postgres(&server).await));
    }
    dbs
}

/// The test Postgres server's URL (`LORALAND_TEST_POSTGRES`): required in CI, otherwise said to be missing.
fn test_postgres_server() -> Option<String> {
    match std::env::var("LORALAND_TEST_POSTGRES") {
        Ok(server) => Some(server),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI runs the database tests on PostgreSQL too: run them under scripts/with-postgres.sh")
        }
        Err(_) => {
            eprintln!("LORALAND_TEST_POSTGRES is not set: this database test ran on SQLite only");
            None
        }
    }
}

/// A new, migrated database on the Postgres server at `server`.
#[doc(hidden)]
pub async fn fresh_postgres(server: &str) -> Db {
    connect_with(&new_postgres_database(server).await, 4).await.expect("the new test database")
}

/// The URL of a new, empty database on the Postgres server at `server`.
async fn new_postgres_database(server: &str) -> String {
    sqlx::any::install_default_drivers();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = AnyPoolOptions::new().max_connections(1).connect(server).await.expect("the test Postgres server");
    admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("CREATE DATABASE");
    admin.close().await;
    let (base, _) = server.rsplit_once('/').expect("a postgres://host/database URL");
    format!("{base}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    #[tokio::test]
    async fn a_file_database_uses_wal_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let pool = connect(&url).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&pool).await.unwrap();
        assert_eq!(mode, "wal");
        let keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&pool).await.unwrap();
        assert_eq!(keys, 1);
        assert!(dir.path().join("t.db").exists());
    }

    /// The tables and columns each backend's migrations make, sorted.
    async fn schema(backend: Backend, db: &Db) -> Vec<(String, String)> {
        let sql = match backend {
            Backend::Sqlite => {
                "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND m.name NOT LIKE '\\_%' ESCAPE '\\' AND m.name NOT LIKE 'sqlite%'"
            }
            Backend::Postgres => {
                "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name NOT LIKE '\\_%' AND column_name <> 'rowid'"
            }
        };
        let mut cols: Vec<(String, String)> =
            sqlx::query(sql).fetch_all(db).await.unwrap().iter().map(|r| (r.get("t"), r.get("c"))).collect();
        cols.sort();
        cols
    }

    #[tokio::test]
    async fn both_backends_have_the_same_tables_and_columns() {
        let dbs = test_databases().await;
        let (_, sqlite) = &dbs[0];
        let expected = schema(Backend::Sqlite, sqlite).await;
        let tables: std::collections::BTreeSet<&str> = expected.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            tables.into_iter().collect::<Vec<_>>(),
            ["outputs", "run_views", "runs", "sessions", "train_jobs", "votes"]
        );
        for (backend, db) in &dbs[1..] {
            assert_eq!(Backend::of_pool(db), *backend);
            assert_eq!(schema(*backend, db).await, expected, "{backend:?}'s schema differs from SQLite's");
        }
    }

    /// A managed PostgreSQL takes TLS only: `sslmode=require` encrypts, `verify-full` also checks the certificate
    /// (here a self-signed one that no root vouches for, so it is refused).
    #[tokio::test]
    async fn postgres_connections_take_tls() {
        let Some(server) = test_postgres_server() else { return };
        let url = new_postgres_database(&server).await;
        let tls = connect(&format!("{url}?sslmode=require")).await.expect("a TLS connection");
        let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&tls)
            .await
            .unwrap();
        assert!(ssl, "the connection is encrypted");
        let err = format!("{:#}", connect(&format!("{url}?sslmode=verify-full")).await.unwrap_err());
        assert!(err.starts_with("cannot open database postgres://"), "{err}");
        assert!(err.to_lowercase().contains("certificate"), "the cause is the certificate: {err}");
    }

    #[tokio::test]
    async fn bad_urls_are_clear_errors() {
        let err = connect("sqlite:///nonexistent-dir/sub/x.db").await.unwrap_err();
        assert!(format!("{err:#}").starts_with("cannot open database sqlite:///nonexistent-dir/sub/x.db"), "{err:#}");
        let err = connect("mysql://localhost/x").await.unwrap_err();
        assert!(format!("{err:#}").contains("neither sqlite://<file> nor postgres://"), "{err:#}");
        // Nothing listens on port 1: the message names the server, not its password.
        let err = connect("postgres://me:secret@127.0.0.1:1/x").await.unwrap_err();
        let err = format!("{err:#}");
        assert!(err.starts_with("cannot open database postgres://me:***@127.0.0.1:1/x"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(err.contains("refused"), "the cause is named: {err}");
    }
}
