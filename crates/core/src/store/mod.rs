//! The store: one SQL code path over sqlx's `Any` driver for SQLite and
//! PostgreSQL, with explicit dialect branches where the two differ.
//! Private to this crate: only the gate (`service`) may touch it.

mod blobs;

use crate::error::{Error, Result};
use sqlx::any::{AnyArguments, AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Arguments, Executor, Transaction};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use blobs::{BlobStore, blob_hash};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A write transaction from [`Db::begin_write`]. Dereferences to the
/// connection, like sqlx's own transaction.
pub(crate) struct Tx {
    inner: Transaction<'static, Any>,
    /// SQLite: this process's place at the database's single write lock,
    /// held until commit or rollback (see [`Db::write_gate`]).
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Tx {
    pub async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        self.inner.commit().await
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl Dialect {
    /// The dialect of an open connection or transaction.
    pub(crate) fn of(conn: &sqlx::AnyConnection) -> Dialect {
        if conn.backend_name().eq_ignore_ascii_case("postgresql") {
            Dialect::Postgres
        } else {
            Dialect::Sqlite
        }
    }
}

/// The placeholders of a multi-row `VALUES` list: `rows` groups of `cols`,
/// bound in the order they appear, each group passed to `row` to be
/// wrapped (`(…)`, or with constants between). PostgreSQL gets `$1, $2, …`.
/// SQLite gets anonymous `?`: with numbered names its parser looks every
/// name up in a linear list while preparing, and sqlx asks SQLite for every
/// parameter's name while binding, also a linear lookup, so a batch insert
/// of a thousand parameters cost a million string comparisons twice.
pub(crate) fn value_groups(
    dialect: Dialect,
    rows: usize,
    cols: usize,
    row: impl Fn(&[String]) -> String,
) -> String {
    let mut out = String::new();
    let mut marks = Vec::with_capacity(cols);
    for r in 0..rows {
        if r > 0 {
            out.push(',');
        }
        marks.clear();
        marks.extend((1..=cols).map(|c| match dialect {
            Dialect::Postgres => format!("${}", r * cols + c),
            Dialect::Sqlite => "?".to_string(),
        }));
        out.push_str(&row(&marks));
    }
    out
}

/// `n` comma-separated placeholders for an `IN (…)` list whose values are
/// bound from position `first` on; anonymous on SQLite (see
/// [`value_groups`]), so every placeholder of that statement must be too.
pub(crate) fn list_marks(dialect: Dialect, first: usize, n: usize) -> String {
    let marks: Vec<String> = (first..first + n)
        .map(|i| match dialect {
            Dialect::Postgres => format!("${i}"),
            Dialect::Sqlite => "?".to_string(),
        })
        .collect();
    marks.join(", ")
}

/// `(…)` around one group of [`value_groups`].
/// `table` as written in a FROM clause, naming `index` on SQLite. SQLite
/// runs without statistics and takes every agent for one with a few rows: on
/// the mailbox tables, clustered by agent (`WITHOUT ROWID`), it would rather
/// walk all of an agent's rows in key order, or through a covering index,
/// than use the index that finds the few rows wanted, and a busy mailbox
/// then costs a scan per statement. PostgreSQL plans with statistics.
pub(crate) fn indexed(dialect: Dialect, table: &str, index: &str) -> String {
    match dialect {
        Dialect::Sqlite => format!("{table} INDEXED BY {index}"),
        Dialect::Postgres => table.to_string(),
    }
}

pub(crate) fn parenthesised(marks: &[String]) -> String {
    format!("({})", marks.join(","))
}

/// Write statements of one transaction that go to the database together.
/// On SQLite they run as ONE multi-statement query: one hand-off to the
/// connection's thread and back instead of one per statement, which was
/// a dozen per group commit. sqlx binds anonymous `?` across the
/// statements in order, so every placeholder must be anonymous there
/// (numbered ones would index the whole list); [`value_groups`] and
/// [`list_marks`] give the right kind. PostgreSQL's extended protocol
/// takes one statement per query: there they run one by one.
pub(crate) struct WriteBatch {
    dialect: Dialect,
    /// SQLite: a single entry holding every statement; PostgreSQL: one
    /// entry per statement.
    statements: Vec<(String, AnyArguments)>,
    /// The first value that could not be encoded, reported by `execute`
    /// (as sqlx's own `bind` defers it).
    error: Option<sqlx::error::BoxDynError>,
}

impl WriteBatch {
    pub fn new(dialect: Dialect) -> Self {
        WriteBatch {
            dialect,
            statements: Vec::new(),
            error: None,
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Adds a statement; its values follow with [`WriteBatch::bind`].
    pub fn push(&mut self, sql: &str) -> &mut Self {
        match (self.dialect, self.statements.last_mut()) {
            (Dialect::Sqlite, Some((all, _))) => {
                all.push_str(";\n");
                all.push_str(sql);
            }
            _ => self
                .statements
                .push((sql.to_string(), AnyArguments::default())),
        }
        self
    }

    /// The next value of the statement added last.
    pub fn bind<'t, T>(&mut self, value: T) -> &mut Self
    where
        T: sqlx::Encode<'t, Any> + sqlx::Type<Any>,
    {
        if self.error.is_none()
            && let Some((_, args)) = self.statements.last_mut()
            && let Err(e) = args.add(value)
        {
            self.error = Some(e);
        }
        self
    }

    pub async fn execute(self, tx: &mut Tx) -> Result<()> {
        if let Some(e) = self.error {
            return Err(sqlx::Error::Encode(e).into());
        }
        for (sql, args) in self.statements {
            sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// The leased work queues the workers poll.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WorkQueue {
    Outbound,
    Webhooks,
}

#[derive(Clone)]
pub(crate) struct Db {
    pub pool: AnyPool,
    /// SQLite only: the one connection that writes (see [`Db::writer`]).
    writer: Option<AnyPool>,
    pub dialect: Dialect,
    pub blobs: BlobStore,
    /// SQLite only: see [`Db::write_gate`].
    write_gate: Option<Arc<tokio::sync::Mutex<()>>>,
}

/// Where the data lives: an embedded SQLite data directory, or PostgreSQL.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    DataDir(PathBuf),
    Postgres(String),
}

impl StoreLocation {
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::DataDir(p) => format!("SQLite in {}", p.display()),
            // Never print credentials that may sit in the URL.
            StoreLocation::Postgres(url) => format!("PostgreSQL at {}", redact_url(url)),
        }
    }
}

/// `postgres://user:pass@host/db` -> `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A pool on the SQLite database at `url` with this server's settings.
async fn sqlite_pool(url: &str, connections: u32, extra: &'static str) -> Result<AnyPool> {
    Ok(AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(30))
        // An embedded database's connection cannot go stale: no ping (a
        // round trip to the connection's thread) before each use.
        .test_before_acquire(false)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                // WAL: readers never block the writer. synchronous=FULL: a
                // commit is on disk before we answer (durability promise).
                // 64 MiB of page cache per connection (SQLite's default is
                // 2 MiB): the index and full-text pages every request
                // walks stay in memory instead of being read back from
                // the OS, a read call per page (a search for one agent
                // went from 3-4 ms to 1 ms warm on a 1M-message store).
                // temp_store=MEMORY: statement journals (a multi-row
                // insert inside a transaction keeps one) and sorts stay
                // off the file system.
                conn.execute(
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                     PRAGMA foreign_keys=ON; PRAGMA busy_timeout=30000; \
                     PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY;",
                )
                .await?;
                if !extra.is_empty() {
                    conn.execute(extra).await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?)
}

/// WAL frames (4 KiB pages) past which the checkpointer resets the log.
const WAL_RESTART_FRAMES: i64 = 16_384;

/// SQLite: copies the write-ahead log into the database file on a
/// connection of its own, beside the writer instead of inside its commits.
/// With SQLite's automatic checkpoint, every thousandth page written made
/// one commit also copy a thousand pages and sync the database file, a
/// delay for every SMTP client waiting on that group commit.
///
/// A PASSIVE checkpoint never waits for anyone, but it cannot reset a log
/// that the writer keeps appending to; past `WAL_RESTART_FRAMES` a RESTART
/// does, holding the write gate so that this process's writers wait in
/// order rather than in SQLite's sleeping busy handler (and giving up after
/// 100 ms if a long reader holds the log).
///
/// It holds only the write gate and its own connection, and stops once no
/// handle on the database is left (it holds the gate's last reference).
async fn checkpoint_in_background(gate: Arc<tokio::sync::Mutex<()>>, conn: AnyPool) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Arc::strong_count(&gate) > 1 {
        tick.tick().await;
        let frames = match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&conn)
            .await
        {
            Ok((_, frames, _)) => frames,
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed");
                continue;
            }
        };
        if frames > WAL_RESTART_FRAMES {
            let _held = gate.lock().await;
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                .fetch_all(&conn)
                .await
            {
                tracing::debug!(error = %e, frames, "WAL reset postponed");
            }
        }
    }
    conn.close().await;
}

impl Db {
    pub async fn open(location: &StoreLocation) -> Result<Self> {
        install_default_drivers();
        match location {
            StoreLocation::DataDir(dir) => Self::open_sqlite(dir).await,
            StoreLocation::Postgres(url) => Self::open_postgres(url).await,
        }
    }

    async fn open_sqlite(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Internal(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let db_path = dir.join("agentpost.db");
        let url = format!("sqlite://{}?mode=rwc", db_path.display());
        let pool = sqlite_pool(&url, 8, "").await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        // Every write goes through one connection of its own. Handed a
        // different pooled connection per transaction, a writer found its
        // page cache stale (another connection had written since) and read
        // the B-tree pages it was about to change back from the OS.
        // The writer leaves checkpoints to `checkpoint_in_background`.
        let writer = sqlite_pool(&url, 1, "PRAGMA wal_autocheckpoint=0;").await?;
        let checkpoints = sqlite_pool(&url, 1, "PRAGMA busy_timeout=100;").await?;
        let blobs = BlobStore::files(dir.join("blobs"))?;
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        tokio::spawn(checkpoint_in_background(gate.clone(), checkpoints));
        Ok(Db {
            pool,
            writer: Some(writer),
            dialect: Dialect::Sqlite,
            blobs,
            write_gate: Some(gate),
        })
    }

    async fn open_postgres(url: &str) -> Result<Self> {
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // Mailboxes differ by orders of magnitude (a busy agent
                    // holds 50,000 entries, most a hundred): a generic plan
                    // cached for one is wrong for the other, so plan each
                    // execution with its values.
                    conn.execute("SET plan_cache_mode = force_custom_plan")
                        .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| Error::Internal(format!("cannot connect to {}: {e}", redact_url(url))))?;
        // sqlx takes an advisory lock, so several nodes starting at once
        // migrate exactly once.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Db {
            pool,
            writer: None,
            dialect: Dialect::Postgres,
            blobs: BlobStore::database(),
            write_gate: None,
        })
    }

    /// Begins a write transaction and takes the organisation's write lock
    /// first (a no-op update of the audit head). On SQLite this acquires the
    /// database write lock up front, so the transaction can never fail later
    /// with a lock upgrade; on PostgreSQL it row-locks the head, serialising
    /// the audit chain and event ids across every node.
    pub async fn begin_write(&self) -> Result<Tx> {
        let gate = self.write_gate().await;
        let mut inner = self.writer().begin().await?;
        sqlx::query("UPDATE audit_head SET last_id = last_id WHERE id = 1")
            .execute(&mut *inner)
            .await?;
        Ok(Tx { inner, _gate: gate })
    }

    /// A write transaction without the organisation's write lock (no audit
    /// entry, no event), still behind this process's SQLite write gate.
    pub async fn begin_gated(&self) -> Result<Tx> {
        let gate = self.write_gate().await;
        let inner = self.writer().begin().await?;
        Ok(Tx { inner, _gate: gate })
    }

    /// Where writes run: SQLite's own write connection (use it behind
    /// [`Db::write_gate`]), or the PostgreSQL pool.
    pub fn writer(&self) -> &AnyPool {
        self.writer.as_ref().unwrap_or(&self.pool)
    }

    /// On SQLite, this process's writers queue here, in order, for the
    /// database's single write lock. Without it they would queue inside
    /// SQLite's busy handler, which polls by sleeping 1, 2, 5, … up to 100
    /// ms: under load a waiting writer slept on average 11 ms after the lock
    /// was free (the send and delivery-result commits and the queue claims
    /// spent a third of their time asleep). Other processes on the same
    /// file (the CLI) still meet the busy handler. `None` on PostgreSQL,
    /// whose lock waits wake at once.
    pub async fn write_gate(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.write_gate {
            Some(gate) => Some(gate.clone().lock_owned().await),
            None => None,
        }
    }

    /// Whether a work queue has a row in `status` that is due at `now` and
    /// not leased. Workers ask this with a read before claiming with a
    /// write: most polls find nothing, and on SQLite the claim would queue
    /// for the write lock behind the mail group commit for nothing.
    pub async fn has_due(&self, queue: WorkQueue, now: i64) -> Result<bool> {
        let (table, status) = match queue {
            WorkQueue::Outbound => ("outbound_queue", "queued"),
            WorkQueue::Webhooks => ("webhook_deliveries", "pending"),
        };
        let sql = format!(
            "SELECT 1 FROM {table} WHERE status = '{status}' AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until < $1) LIMIT 1"
        );
        let due: Option<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(due.is_some())
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
