//! Content-addressed blobs (raw messages, exports).
//!
//! Blobs up to `TABLE_BLOB_MAX` live in the `blobs` table on both backends
//! and are written inside the caller's transaction: the commit that files a
//! message also makes its bytes durable, so small mail costs no file, no
//! inode and no fsync of its own (on SQLite the file per message used to be
//! a third of ingest CPU). Larger blobs go to files in the data directory on
//! SQLite (written to a temporary file, fsynced, renamed, the directory
//! fsynced) and to the table on PostgreSQL, where every node must see them.
//!
//! Hand-written rather than `object_store`: we need the explicit fsync of the
//! file and its directory before acknowledging, which it does not promise.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest blob kept in the `blobs` table when a file store exists. SQLite's
/// own measurements put the break-even of in-table versus file reads near
/// 100 KB for 4 KiB pages; nearly all mail is smaller.
const TABLE_BLOB_MAX: usize = 128 * 1024;

#[derive(Clone, Debug)]
pub(crate) struct BlobStore {
    /// Directory for blobs above `TABLE_BLOB_MAX` (SQLite); `None` keeps
    /// every blob in the table (PostgreSQL).
    files: Option<PathBuf>,
}

pub(crate) fn blob_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl BlobStore {
    pub fn files(root: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(BlobStore { files: Some(root) })
    }

    pub fn database() -> Self {
        BlobStore { files: None }
    }

    fn path_for(root: &Path, hash: &str) -> PathBuf {
        root.join(&hash[..2]).join(hash)
    }

    /// Whether `put` of this many bytes is a row in the caller's transaction,
    /// cheap enough to do under the write lock. Bigger blobs should be stored
    /// with `put_alone` before the transaction and checked with `exists`
    /// inside it.
    pub fn fits_in_transaction(&self, len: usize) -> bool {
        len <= TABLE_BLOB_MAX
    }

    /// The file directory, if this blob belongs in a file.
    fn file_root(&self, len: usize) -> Option<&Path> {
        self.files.as_deref().filter(|_| len > TABLE_BLOB_MAX)
    }

    /// Stores the bytes durably and returns their hash: a row that commits
    /// with the caller's transaction, or an fsynced file.
    pub async fn put(&self, conn: &mut sqlx::AnyConnection, bytes: &[u8]) -> Result<String> {
        let hash = blob_hash(bytes);
        match self.file_root(bytes.len()) {
            Some(root) => write_file(root, &hash, bytes).await?,
            None => {
                sqlx::query(
                    "INSERT INTO blobs (hash, data) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
                )
                .bind(&hash)
                .bind(bytes.to_vec())
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(hash)
    }

    /// Stores the bytes durably on their own, outside any write lock: an
    /// fsynced file, or a row committed in its own transaction.
    pub async fn put_alone(&self, pool: &sqlx::AnyPool, bytes: &[u8]) -> Result<String> {
        if let Some(root) = self.file_root(bytes.len()) {
            let hash = blob_hash(bytes);
            write_file(root, &hash, bytes).await?;
            return Ok(hash);
        }
        let mut tx = pool.begin().await?;
        let hash = self.put(&mut tx, bytes).await?;
        tx.commit().await?;
        Ok(hash)
    }

    pub async fn get(&self, pool: &sqlx::AnyPool, hash: &str) -> Result<Option<Vec<u8>>> {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT data FROM blobs WHERE hash = $1")
            .bind(hash)
            .fetch_optional(pool)
            .await?;
        if let Some((data,)) = row {
            return Ok(Some(data));
        }
        let Some(root) = &self.files else {
            return Ok(None);
        };
        match tokio::fs::read(Self::path_for(root, hash)).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the blob is present (checked again under the write lock, in
    /// case the collector removed an identical, then unreferenced, blob).
    pub async fn exists(&self, conn: &mut sqlx::AnyConnection, hash: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM blobs WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&mut *conn)
            .await?;
        if row.is_some() {
            return Ok(true);
        }
        match &self.files {
            Some(root) => Ok(tokio::fs::try_exists(Self::path_for(root, hash)).await?),
            None => Ok(false),
        }
    }

    /// Removes a blob; call under the write lock after checking nothing
    /// references it. A file is removed at once (a crash then leaves no
    /// dangling reference, only a missing orphan).
    pub async fn delete(&self, conn: &mut sqlx::AnyConnection, hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM blobs WHERE hash = $1")
            .bind(hash)
            .execute(&mut *conn)
            .await?;
        if let Some(root) = &self.files {
            match tokio::fs::remove_file(Self::path_for(root, hash)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Every stored hash (for collecting orphans left by crashes).
    pub async fn list(&self, pool: &sqlx::AnyPool) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT hash FROM blobs")
            .fetch_all(pool)
            .await?;
        let mut out: Vec<String> = rows.into_iter().map(|r| r.0).collect();
        if let Some(root) = &self.files {
            let root = root.clone();
            let files = tokio::task::spawn_blocking(move || list_files(&root))
                .await
                .map_err(|e| Error::Internal(format!("blob lister: {e}")))??;
            out.extend(files);
        }
        Ok(out)
    }
}

async fn write_file(root: &Path, hash: &str, bytes: &[u8]) -> Result<()> {
    let (root, hash, data) = (root.to_path_buf(), hash.to_string(), bytes.to_vec());
    tokio::task::spawn_blocking(move || write_durably(&root, &hash, &data))
        .await
        .map_err(|e| Error::Internal(format!("blob writer: {e}")))?
}

fn write_durably(root: &Path, hash: &str, data: &[u8]) -> Result<()> {
    let dest = BlobStore::path_for(root, hash);
    if dest.exists() {
        return Ok(());
    }
    let dir = dest.parent().unwrap_or(root).to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(root.join("tmp"))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&dest)
        .map_err(|e| Error::Internal(format!("blob rename: {e}")))?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(())
}

fn list_files(root: &Path) -> Result<Vec<String>> {
    let mut out = vec![];
    for dir in std::fs::read_dir(root)?.flatten() {
        let name = dir.file_name();
        if name.len() != 2 || !dir.path().is_dir() {
            continue; // skips tmp/
        }
        for f in std::fs::read_dir(dir.path())?.flatten() {
            let n = f.file_name().to_string_lossy().into_owned();
            if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push(n);
            }
        }
    }
    Ok(out)
}
