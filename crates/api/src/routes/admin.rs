//! Organisation-level routes: who am I, admin keys, approvers, domains, audit.

use super::agents::{PageParams, Rotate};
use crate::AppState;
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::problem::{ApiResult, Problem};
use agentpost_core::audit::AuditEntry;
use agentpost_core::{AuditQuery, CredentialInfo, Domain, IssuedCredential, Me, NewApprover, Page};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

/// Who the caller is: kind, scopes, and its agent if it is one.
#[utoipa::path(get, path = "/v1/me", tag = "identity", responses((status = 200, body = Me), (status = 401, body = Problem)))]
pub async fn me(State(s): State<AppState>, Caller(ctx): Caller) -> ApiResult<Json<Me>> {
    Ok(Json(s.svc.me(&ctx).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAdminKey {
    pub name: Option<String>,
}

/// Create an admin key (the organisation's root: keep it like a database root password).
#[utoipa::path(post, path = "/v1/admin-keys", tag = "admin keys", request_body = NewAdminKey, responses((status = 201, body = IssuedCredential)))]
pub async fn create_admin_key(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(b): ApiJson<NewAdminKey>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(s.svc.create_admin_key(&ctx, b.name).await?),
    ))
}

/// List admin keys.
#[utoipa::path(get, path = "/v1/admin-keys", tag = "admin keys", params(PageParams), responses((status = 200, body = Page<CredentialInfo>)))]
pub async fn list_admin_keys(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<CredentialInfo>>> {
    Ok(Json(
        s.svc
            .list_admin_keys(&ctx, q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// Revoke an admin key (never the last valid one).
#[utoipa::path(post, path = "/v1/admin-keys/{id}/revoke", tag = "admin keys", params(("id" = String, Path)), responses((status = 200, body = CredentialInfo), (status = 409, body = Problem)))]
pub async fn revoke_admin_key(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<CredentialInfo>> {
    Ok(Json(s.svc.revoke_admin_key(&ctx, &id).await?))
}

/// Rotate an admin key with an overlap window.
#[utoipa::path(post, path = "/v1/admin-keys/{id}/rotate", tag = "admin keys", params(("id" = String, Path)), request_body = Rotate, responses((status = 201, body = IssuedCredential)))]
pub async fn rotate_admin_key(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<Rotate>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(s.svc.rotate_admin_key(&ctx, &id, b.overlap_seconds).await?),
    ))
}

/// Create an approver token for a human who may confirm the sends of agents they sponsor.
#[utoipa::path(post, path = "/v1/approvers", tag = "approvers", request_body = NewApprover, responses((status = 201, body = IssuedCredential), (status = 422, body = Problem)))]
pub async fn create_approver(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(b): ApiJson<NewApprover>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(s.svc.create_approver(&ctx, b).await?),
    ))
}

/// List approver tokens.
#[utoipa::path(get, path = "/v1/approvers", tag = "approvers", params(PageParams), responses((status = 200, body = Page<CredentialInfo>)))]
pub async fn list_approvers(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<CredentialInfo>>> {
    Ok(Json(
        s.svc
            .list_approvers(&ctx, q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// Revoke an approver token.
#[utoipa::path(post, path = "/v1/approvers/{id}/revoke", tag = "approvers", params(("id" = String, Path)), responses((status = 200, body = CredentialInfo)))]
pub async fn revoke_approver(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<CredentialInfo>> {
    Ok(Json(s.svc.revoke_approver(&ctx, &id).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    pub name: Option<String>,
}

/// Add a mail domain: creates Ed25519 and RSA-2048 DKIM keys and answers with the DNS records to publish.
#[utoipa::path(post, path = "/v1/domains", tag = "domains", request_body = NewDomain, responses((status = 201, body = Domain), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn add_domain(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(b): ApiJson<NewDomain>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(s.svc.add_domain(&ctx, b.name).await?),
    ))
}

/// List domains with their DNS records.
#[utoipa::path(get, path = "/v1/domains", tag = "domains", responses((status = 200, body = Vec<Domain>)))]
pub async fn list_domains(
    State(s): State<AppState>,
    Caller(ctx): Caller,
) -> ApiResult<Json<Vec<Domain>>> {
    Ok(Json(s.svc.list_domains(&ctx).await?))
}

/// The DNS records to publish for a domain (MX, SPF, DKIM per selector, DMARC).
#[utoipa::path(get, path = "/v1/domains/{name}/dns", tag = "domains", params(("name" = String, Path)), responses((status = 200, body = Domain), (status = 404, body = Problem)))]
pub async fn domain_dns(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Domain>> {
    Ok(Json(s.svc.domain_dns(&ctx, &name).await?))
}

/// The organisation's audit trail (admin), newest first by default.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery), responses((status = 200, body = Page<AuditEntry>)))]
pub async fn list_audit(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    Ok(Json(s.svc.list_audit(&ctx, q).await?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyResult {
    pub ok: bool,
    pub entries: i64,
    pub head_id: i64,
    pub head_hash: String,
    pub first_bad_entry: Option<i64>,
    pub problem: Option<String>,
}

/// Walk the hash chain and report the first entry edited, deleted or reordered (admin).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", responses((status = 200, body = VerifyResult)))]
pub async fn verify_audit(
    State(s): State<AppState>,
    Caller(ctx): Caller,
) -> ApiResult<Json<VerifyResult>> {
    let r = s.svc.verify_audit(&ctx).await?;
    Ok(Json(VerifyResult {
        ok: r.problem.is_none(),
        entries: r.entries,
        head_id: r.head_id,
        head_hash: r.head_hash,
        first_bad_entry: r.problem.as_ref().map(|p| p.entry_id),
        problem: r.problem.map(|p| p.message),
    }))
}
