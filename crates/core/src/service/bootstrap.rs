//! First start: the organisation, its first domain and the first admin key.
//! Safe to race: several `serve` processes on one empty PostgreSQL take the
//! write lock in turn and only the first one creates anything.

use super::credentials::IssuedCredential;
use super::{Ctx, Service};
use crate::address::normalise_domain;
use crate::error::{Error, Result};
use crate::ids::OrgId;
use crate::secret::{self, CredentialKind};
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Clone, Serialize)]
pub struct Bootstrapped {
    pub organisation_id: String,
    pub domain: String,
    /// Generated key (shown once); None when the key was handed in by file.
    pub admin_key: Option<IssuedCredential>,
    pub admin_key_id: String,
}

impl Service {
    /// Creates the organisation unless one exists. `provided_admin_key` is a
    /// key the deployment generated itself (AGENTPOST_ADMIN_KEY_FILE): only
    /// its hash is stored. Returns None when already initialised.
    pub async fn bootstrap(
        &self,
        domain: &str,
        provided_admin_key: Option<&str>,
    ) -> Result<Option<Bootstrapped>> {
        let domain = normalise_domain(domain).map_err(|m| Error::invalid("domain", m))?;
        if let Some(k) = provided_admin_key {
            match secret::parse(k) {
                Ok(CredentialKind::Admin) => {}
                Ok(_) => {
                    return Err(Error::invalid(
                        "admin_key_file",
                        "holds an agent or approver token, not an admin key (ap_adm_…)",
                    ));
                }
                Err(e) => {
                    return Err(Error::invalid(
                        "admin_key_file",
                        format!("does not hold a valid admin key: {e}"),
                    ));
                }
            }
        }
        let ctx = Ctx::system("bootstrap");
        let mut tx = self.db.begin_write().await?;
        let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM organisations LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Ok(None);
        }
        let org = OrgId::new();
        let now = self.now();
        sqlx::query("INSERT INTO organisations (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(org.as_str())
            .bind("default")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let domain_id = self
            .insert_domain(&mut tx, org.as_str(), &domain, true)
            .await?;
        let (admin_key, admin_key_id, hint) = match provided_admin_key {
            None => {
                let issued = super::credentials::insert_credential(
                    self,
                    &mut tx,
                    &ctx,
                    CredentialKind::Admin,
                    None,
                    "initial",
                    None,
                    &[],
                    None,
                )
                .await?;
                let (id, hint) = (issued.credential.id.clone(), issued.credential.hint.clone());
                (Some(issued), id, hint)
            }
            Some(k) => {
                let id = crate::ids::CredentialId::new();
                let last4 = secret::last4(k);
                sqlx::query(
                    "INSERT INTO credentials (id, org_id, kind, name, secret_hash, last4, scopes, created_at) \
                     VALUES ($1, $2, 'admin', 'provided', $3, $4, '', $5)",
                )
                .bind(id.as_str())
                .bind(org.as_str())
                .bind(secret::hash(k))
                .bind(&last4)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                (None, id.0, super::hint_for(CredentialKind::Admin, &last4))
            }
        };
        let entry = self.entry(
            &ctx,
            "org.init",
            Some("organisation"),
            Some(org.0.clone()),
            None,
            "success",
            json!({ "domain": domain, "domain_id": domain_id, "admin_key": hint, "admin_key_id": admin_key_id }),
        );
        self.record(
            &mut tx,
            &entry,
            Some(("org.initialised", json!({ "domain": domain }))),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Bootstrapped {
            organisation_id: org.0,
            domain,
            admin_key,
            admin_key_id,
        }))
    }
}
