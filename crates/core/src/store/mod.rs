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

/// `(…)` around one group of [`value_groups`].
pub(crate) fn parenthesised(marks: &[String]) -> String {
    format!("({})", marks.join(","))
}

/// Write statements of one transaction that go to the database together,
/// in one round trip instead of one per statement (a dozen per group
/// commit).
///
/// On SQLite they run as ONE multi-statement query: one hand-off to the
/// connection's thread and back. sqlx binds anonymous `?` across the
/// statements in order, so every placeholder must be anonymous there
/// (numbered ones would index the whole list); [`value_groups`] and
/// [`list_marks`] give the right kind.
///
/// PostgreSQL's extended protocol takes one statement per query, and sqlx
/// does not pipeline, so there the statements become data-modifying CTEs
/// of one statement (`WITH w1 AS (…), w2 AS (…) <last>`), each statement's
/// `$n` renumbered after the ones before it. PostgreSQL runs every such CTE
/// to completion whether or not it is referenced, and checks foreign keys
/// at the end of the whole statement, so a row may refer to one inserted
/// by an earlier statement of the batch. What the CTEs cannot do is read
/// each other's writes: no statement of a batch may depend on what another
/// wrote (update a row another inserted, or upsert the same key twice).
/// The `$` of a PostgreSQL statement must be placeholders only.
pub(crate) struct WriteBatch {
    dialect: Dialect,
    queries: Vec<BatchQuery>,
    /// The first value that could not be encoded, reported by `execute`
    /// (as sqlx's own `bind` defers it).
    error: Option<sqlx::error::BoxDynError>,
}

/// One query of a [`WriteBatch`]: its statements and their values.
struct BatchQuery {
    statements: Vec<String>,
    args: AnyArguments,
    /// PostgreSQL: the placeholders used so far (the next statement's `$1`
    /// is this plus one).
    params: usize,
}

/// Bound values one PostgreSQL statement may have (the protocol counts
/// them in 16 bits); a batch that would need more starts a second query.
const PG_MAX_PARAMS: usize = 65_535;

impl WriteBatch {
    pub fn new(dialect: Dialect) -> Self {
        WriteBatch {
            dialect,
            queries: Vec::new(),
            error: None,
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Adds a statement; its values follow with [`WriteBatch::bind`].
    pub fn push(&mut self, sql: &str) -> &mut Self {
        let params = match self.dialect {
            Dialect::Sqlite => 0,
            Dialect::Postgres => max_placeholder(sql),
        };
        let fits = match (self.dialect, self.queries.last()) {
            (_, None) => false,
            (Dialect::Sqlite, Some(_)) => true,
            (Dialect::Postgres, Some(q)) => q.params + params <= PG_MAX_PARAMS,
        };
        if !fits {
            self.queries.push(BatchQuery {
                statements: Vec::new(),
                args: AnyArguments::default(),
                params: 0,
            });
        }
        if let Some(q) = self.queries.last_mut() {
            let sql = match self.dialect {
                Dialect::Sqlite => sql.to_string(),
                Dialect::Postgres => shift_placeholders(sql, q.params),
            };
            q.statements.push(sql);
            q.params += params;
        }
        self
    }

    /// The next value of the statement added last.
    pub fn bind<'t, T>(&mut self, value: T) -> &mut Self
    where
        T: sqlx::Encode<'t, Any> + sqlx::Type<Any>,
    {
        if self.error.is_none()
            && let Some(q) = self.queries.last_mut()
            && let Err(e) = q.args.add(value)
        {
            self.error = Some(e);
        }
        self
    }

    pub async fn execute(self, tx: &mut Tx) -> Result<()> {
        if let Some(e) = self.error {
            return Err(sqlx::Error::Encode(e).into());
        }
        for q in self.queries {
            let sql = match self.dialect {
                Dialect::Sqlite => q.statements.join(";\n"),
                Dialect::Postgres => as_one_statement(q.statements),
            };
            sqlx::query_with(sqlx::AssertSqlSafe(sql), q.args)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// `WITH w1 AS (s1), …, w(n-1) AS (s(n-1)) sn`: PostgreSQL statements as
/// one (see [`WriteBatch`]).
fn as_one_statement(mut statements: Vec<String>) -> String {
    let Some(last) = statements.pop() else {
        return String::new();
    };
    if statements.is_empty() {
        return last;
    }
    let mut sql = String::from("WITH ");
    for (i, s) in statements.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("w{} AS ({s})", i + 1));
    }
    sql.push(' ');
    sql.push_str(&last);
    sql
}

/// The highest `$n` in a PostgreSQL statement (its number of values, as
/// every placeholder up to it is bound).
fn max_placeholder(sql: &str) -> usize {
    placeholders(sql).map(|(_, _, n)| n).max().unwrap_or(0)
}

/// Each `$n` of `sql` as (start, end, n). Written by hand: sqlx exposes no
/// placeholder rewriting, and this crate's statements use `$` for nothing
/// else.
fn placeholders(sql: &str) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let bytes = sql.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if bytes[i] == b'$' {
                let start = i;
                let mut end = i + 1;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                i = end;
                if let Ok(n) = sql[start + 1..end].parse::<usize>() {
                    return Some((start, end, n));
                }
            } else {
                i += 1;
            }
        }
        None
    })
}

/// `sql` with every `$n` made `$(n + by)`.
fn shift_placeholders(sql: &str, by: usize) -> String {
    if by == 0 {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + sql.len() / 8);
    let mut copied = 0;
    for (start, end, n) in placeholders(sql) {
        out.push_str(&sql[copied..start]);
        out.push_str(&format!("${}", n + by));
        copied = end;
    }
    out.push_str(&sql[copied..]);
    out
}

/// The leased work queues the workers poll.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WorkQueue {
    Outbound,
    Webhooks,
}

/// What a PostgreSQL pool serves, which sets up its connections.
#[derive(Clone, Copy)]
enum PoolRole {
    /// Requests. Mailboxes differ by orders of magnitude (a busy agent
    /// holds 50,000 entries, most a hundred): a generic plan cached for one
    /// is wrong for the other, so every execution is planned with its values.
    Requests,
    /// The group commits. Their statements are inserts of values and
    /// lookups by key, whose plan no value changes, so PostgreSQL's default
    /// applies (after five executions a statement keeps a generic plan
    /// unless it costs more): planned afresh, the commit's one large write
    /// statement cost planning time under the write lock at every commit.
    GroupCommits,
}

async fn postgres_pool(url: &str, connections: u32, role: PoolRole) -> Result<AnyPool> {
    AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if let PoolRole::Requests = role {
                    conn.execute("SET plan_cache_mode = force_custom_plan")
                        .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| Error::Internal(format!("cannot connect to {}: {e}", redact_url(url))))
}

#[derive(Clone)]
pub(crate) struct Db {
    pub pool: AnyPool,
    /// SQLite only: the one connection that writes (see [`Db::writer`]).
    writer: Option<AnyPool>,
    /// PostgreSQL only: the group commits' own connections (see
    /// [`Db::begin_group_commit`]).
    group_writer: Option<AnyPool>,
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
            group_writer: None,
            dialect: Dialect::Sqlite,
            blobs,
            write_gate: Some(gate),
        })
    }

    async fn open_postgres(url: &str) -> Result<Self> {
        let pool = postgres_pool(url, 16, PoolRole::Requests).await?;
        // sqlx takes an advisory lock, so several nodes starting at once
        // migrate exactly once.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        // The group commits' own connections: from the shared pool a commit
        // met a connection that had not prepared its statement yet about
        // every other time (a parse, and five custom plans per connection,
        // times the batch sizes). Three: a send commit, and two batches of
        // inbound mail, one committing and the next waiting for the lock
        // (ingest.rs).
        let group_writer = postgres_pool(url, 3, PoolRole::GroupCommits).await?;
        Ok(Db {
            pool,
            writer: None,
            group_writer: Some(group_writer),
            dialect: Dialect::Postgres,
            blobs: BlobStore::database(),
            write_gate: None,
        })
    }

    /// Begins a write transaction holding the organisation's write lock,
    /// in the one round trip that begins it. On SQLite, `BEGIN IMMEDIATE`
    /// takes the database write lock up front, so the transaction can
    /// never fail later with a lock upgrade. On PostgreSQL a no-op update
    /// row-locks the audit head, serialising the audit chain and event ids
    /// across every node; it rides in the `BEGIN`'s simple query.
    pub async fn begin_write(&self) -> Result<Tx> {
        self.begin_locked(self.writer()).await
    }

    /// [`Db::begin_write`] for a group commit (inbound mail, sends): on
    /// PostgreSQL on the group committers' own connections, whose prepared
    /// statements stay warm.
    pub async fn begin_group_commit(&self) -> Result<Tx> {
        self.begin_locked(self.group_writer.as_ref().unwrap_or(self.writer()))
            .await
    }

    /// [`Db::begin_write`] on connections of `on`.
    async fn begin_locked(&self, on: &AnyPool) -> Result<Tx> {
        let gate = self.write_gate().await;
        let begin = match self.dialect {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            // One simple query: BEGIN and the lock.
            Dialect::Postgres => "BEGIN; UPDATE audit_head SET last_id = last_id WHERE id = 1",
        };
        let inner = on.begin_with(begin).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_shift_after_the_statements_before() {
        assert_eq!(
            max_placeholder("INSERT INTO t VALUES ($1, $2), ($3, $12)"),
            12
        );
        assert_eq!(max_placeholder("UPDATE t SET a = 1"), 0);
        assert_eq!(
            shift_placeholders("UPDATE t SET a = $1 WHERE b = $10 AND c = '$'", 5),
            "UPDATE t SET a = $6 WHERE b = $15 AND c = '$'"
        );
        assert_eq!(shift_placeholders("SELECT $1", 0), "SELECT $1");
    }

    #[test]
    fn postgres_statements_become_ctes_of_the_last() {
        let mut batch = WriteBatch::new(Dialect::Postgres);
        batch
            .push("INSERT INTO a VALUES ($1, $2)")
            .bind(1_i64)
            .bind(2_i64);
        batch
            .push("UPDATE b SET x = $1 WHERE id = $2")
            .bind(3_i64)
            .bind(4_i64);
        batch.push("SELECT pg_notify('c', '')");
        assert_eq!(batch.queries.len(), 1);
        let q = batch.queries.pop().expect("one query");
        assert_eq!(q.params, 4);
        assert_eq!(
            as_one_statement(q.statements),
            "WITH w1 AS (INSERT INTO a VALUES ($1, $2)), \
             w2 AS (UPDATE b SET x = $3 WHERE id = $4) SELECT pg_notify('c', '')"
        );
        assert_eq!(as_one_statement(vec!["SELECT 1".into()]), "SELECT 1");
    }

    #[test]
    fn a_postgres_batch_over_the_protocol_limit_starts_a_second_query() {
        let marks = |n: usize| (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>();
        let big = format!("INSERT INTO a VALUES ({})", marks(40_000).join(","));
        let mut batch = WriteBatch::new(Dialect::Postgres);
        batch.push(&big);
        batch.push(&big);
        batch.push("UPDATE b SET x = $1").bind(1_i64);
        assert_eq!(batch.queries.len(), 2);
        assert_eq!(batch.queries[1].params, 40_001);
        assert!(batch.queries[1].statements[1].ends_with("$40001"));
    }

    #[test]
    fn sqlite_statements_stay_one_query_as_written() {
        let mut batch = WriteBatch::new(Dialect::Sqlite);
        batch
            .push("INSERT INTO a VALUES (?, ?)")
            .bind(1_i64)
            .bind(2_i64);
        batch.push("UPDATE b SET x = ?").bind(3_i64);
        assert_eq!(batch.queries.len(), 1);
        assert_eq!(
            batch.queries[0].statements,
            vec!["INSERT INTO a VALUES (?, ?)", "UPDATE b SET x = ?"]
        );
    }
}
