//! `Idempotency-Key` on creating calls: the same key and body replay the
//! first response; the same key with another body is a conflict; keys are
//! kept 24 hours. A stored response may hold a secret shown once (a new
//! agent's token), so it is sealed with a key derived from the caller's own
//! secret: a database dump reveals nothing, and only the same caller can
//! read the replay.

#![allow(deprecated)] // chacha20poly1305 0.10 exposes generic-array 0.14 only

use super::{Ctx, Service};
use crate::error::{Error, Result};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;

const KEEP_MICROS: i64 = 24 * 3600 * 1_000_000;
/// A request still running after this long is presumed dead (crashed node).
const IN_FLIGHT_MICROS: i64 = 5 * 60 * 1_000_000;

pub enum IdempotencyStart {
    /// First time: run the request, then call `idempotency_finish`.
    Proceed,
    /// Seen before with the same body: answer with this.
    Replay { status: u16, body: Vec<u8> },
}

fn cipher(ctx: &Ctx, key: &str) -> ChaCha20Poly1305 {
    let mut h = Sha256::new();
    h.update(ctx.principal.replay_key);
    h.update(key.as_bytes());
    let k: [u8; 32] = h.finalize().into();
    ChaCha20Poly1305::new(Key::from_slice(&k))
}

fn principal_key(ctx: &Ctx) -> Result<String> {
    ctx.principal
        .credential_id
        .as_ref()
        .map(|c| c.0.clone())
        .ok_or_else(|| Error::BadRequest("Idempotency-Key needs an authenticated caller".into()))
}

pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(Error::invalid(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(())
}

impl Service {
    pub async fn idempotency_begin(
        &self,
        ctx: &Ctx,
        key: &str,
        fingerprint: &str,
    ) -> Result<IdempotencyStart> {
        validate_key(key)?;
        let principal = principal_key(ctx)?;
        let now = self.now();
        let mut tx = self.db.begin_gated().await?;
        let row = sqlx::query("SELECT fingerprint, status, sealed_response, created_at FROM idempotency_keys WHERE principal = $1 AND key = $2")
            .bind(&principal)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = row {
            let created: i64 = row.try_get("created_at")?;
            let status: Option<i64> = row.try_get("status")?;
            let expired = now - created > KEEP_MICROS
                || (status.is_none() && now - created > IN_FLIGHT_MICROS);
            if !expired {
                let stored_fp: String = row.try_get("fingerprint")?;
                if stored_fp != fingerprint {
                    return Err(Error::conflict_on(
                        "idempotency-key-reused",
                        "Idempotency-Key",
                        "this Idempotency-Key was used with a different request; use a new key",
                    ));
                }
                let Some(status) = status else {
                    return Err(Error::conflict_on(
                        "idempotency-in-progress",
                        "Idempotency-Key",
                        "a request with this Idempotency-Key is still running; retry shortly",
                    ));
                };
                let sealed: Vec<u8> = row.try_get("sealed_response")?;
                if sealed.len() < 12 {
                    return Err(Error::Internal(
                        "stored idempotent response is corrupt".into(),
                    ));
                }
                let (nonce, ct) = sealed.split_at(12);
                let body = cipher(ctx, key)
                    .decrypt(Nonce::from_slice(nonce), ct)
                    .map_err(|_| {
                        Error::Internal("stored idempotent response does not open".into())
                    })?;
                return Ok(IdempotencyStart::Replay {
                    status: status as u16,
                    body,
                });
            }
            sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2")
                .bind(&principal)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (principal, key, fingerprint, created_at) VALUES ($1,$2,$3,$4) \
             ON CONFLICT (principal, key) DO NOTHING",
        )
        .bind(&principal)
        .bind(key)
        .bind(fingerprint)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if claimed.rows_affected() == 0 {
            return Err(Error::conflict_on(
                "idempotency-in-progress",
                "Idempotency-Key",
                "a request with this Idempotency-Key is still running; retry shortly",
            ));
        }
        Ok(IdempotencyStart::Proceed)
    }

    /// Stores the answer to replay. Server errors are not stored: the key is
    /// released so the client's retry runs again.
    pub async fn idempotency_finish(
        &self,
        ctx: &Ctx,
        key: &str,
        status: u16,
        body: &[u8],
    ) -> Result<()> {
        let principal = principal_key(ctx)?;
        if status >= 500 {
            sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2")
                .bind(&principal)
                .bind(key)
                .execute(&self.db.pool)
                .await?;
            return Ok(());
        }
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ct = cipher(ctx, key)
            .encrypt(Nonce::from_slice(&nonce), body)
            .map_err(|_| Error::Internal("sealing idempotent response".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend(ct);
        sqlx::query("UPDATE idempotency_keys SET status = $1, sealed_response = $2 WHERE principal = $3 AND key = $4")
            .bind(status as i64)
            .bind(sealed)
            .bind(&principal)
            .bind(key)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Forgets keys older than 24 hours. Called by the server's sweeper.
    pub async fn sweep_idempotency_keys(&self) -> Result<u64> {
        let cutoff = self.now() - KEEP_MICROS;
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(cutoff)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
