//! /v1/agents: provisioning, lifecycle, tokens of one agent, its audit trail.

use crate::AppState;
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::problem::{ApiResult, Problem};
use agentpost_core::audit::AuditEntry;
use agentpost_core::{
    Agent, AgentPatch, AuditQuery, CredentialInfo, Decommissioned, IssuedCredential, NewAgent,
    NewToken, Page,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListAgents {
    /// active, suspended, decommissioning or decommissioned
    pub status: Option<String>,
    pub cursor: Option<String>,
    /// 1 to 200, default 50
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedAgent {
    pub agent: Agent,
    /// The agent's first token; its secret is shown only here.
    pub token: IssuedCredential,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// How long the old secret keeps working; default 86400 (24 h).
    pub overlap_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Provision an agent: its address, its sponsor, and a first token.
#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body = NewAgent,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first response for the same key and body")),
    responses((status = 201, body = CreatedAgent), (status = 409, body = Problem, description = "address taken or tombstoned"), (status = 422, body = Problem)))]
pub async fn create_agent(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(body): ApiJson<NewAgent>,
) -> ApiResult<impl IntoResponse> {
    let (agent, token) = s.svc.create_agent(&ctx, body).await?;
    Ok((StatusCode::CREATED, Json(CreatedAgent { agent, token })))
}

/// List agents (newest last), filtered by status, with cursor pagination.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", params(ListAgents), responses((status = 200, body = Page<Agent>)))]
pub async fn list_agents(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(q): ApiQuery<ListAgents>,
) -> ApiResult<Json<Page<Agent>>> {
    Ok(Json(
        s.svc
            .list_agents(&ctx, q.status.as_deref(), q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// One agent.
#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents", params(("id" = String, Path)), responses((status = 200, body = Agent), (status = 404, body = Problem)))]
pub async fn get_agent(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Agent>> {
    Ok(Json(s.svc.get_agent(&ctx, &id).await?))
}

/// Change display name, sponsor, description or policy (admin).
#[utoipa::path(patch, path = "/v1/agents/{id}", tag = "agents", params(("id" = String, Path)), request_body = AgentPatch, responses((status = 200, body = Agent), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update_agent(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AgentPatch>,
) -> ApiResult<Json<Agent>> {
    Ok(Json(s.svc.update_agent(&ctx, &id, body).await?))
}

/// Suspend: the agent's tokens stop working and its mail is deferred (admin).
#[utoipa::path(post, path = "/v1/agents/{id}/suspend", tag = "agents", params(("id" = String, Path)), responses((status = 200, body = Agent), (status = 409, body = Problem)))]
pub async fn suspend_agent(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Agent>> {
    Ok(Json(s.svc.suspend_agent(&ctx, &id).await?))
}

/// Resume a suspended agent (admin).
#[utoipa::path(post, path = "/v1/agents/{id}/resume", tag = "agents", params(("id" = String, Path)), responses((status = 200, body = Agent), (status = 409, body = Problem)))]
pub async fn resume_agent(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Agent>> {
    Ok(Json(s.svc.resume_agent(&ctx, &id).await?))
}

/// Decommission: revoke every credential, export then purge the data, and
/// tombstone the address (admin).
#[utoipa::path(post, path = "/v1/agents/{id}/decommission", tag = "agents", params(("id" = String, Path)), responses((status = 200, body = Decommissioned), (status = 409, body = Problem)))]
pub async fn decommission_agent(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Decommissioned>> {
    Ok(Json(s.svc.decommission_agent(&ctx, &id).await?))
}

/// Download the decommission export (.tar.gz: agent.json, credentials.json,
/// audit.jsonl, messages/*.eml with *.json metadata) (admin).
#[utoipa::path(get, path = "/v1/agents/{id}/export", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, content_type = "application/gzip", description = "the archive"), (status = 404, body = Problem)))]
pub async fn download_export(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let (info, bytes) = s.svc.get_export(&ctx, &id).await?;
    let disposition = format!(
        "attachment; filename=\"agentpost-export-{}.tar.gz\"",
        info.agent_id
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::HeaderName::from_static("x-content-sha256"),
                info.sha256,
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
        ],
        bytes,
    ))
}

/// Create a token for the agent (admin). The secret is shown once.
#[utoipa::path(post, path = "/v1/agents/{id}/tokens", tag = "tokens", params(("id" = String, Path)), request_body = NewToken, responses((status = 201, body = IssuedCredential), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn create_token(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewToken>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(s.svc.create_token(&ctx, &id, body).await?),
    ))
}

/// The agent's tokens: name, prefix, last four, scopes, times (admin).
#[utoipa::path(get, path = "/v1/agents/{id}/tokens", tag = "tokens", params(("id" = String, Path), PageParams), responses((status = 200, body = Page<CredentialInfo>)))]
pub async fn list_tokens(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<CredentialInfo>>> {
    Ok(Json(
        s.svc
            .list_tokens(&ctx, &id, q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// Revoke a token at once (admin).
#[utoipa::path(post, path = "/v1/agents/{id}/tokens/{token_id}/revoke", tag = "tokens", params(("id" = String, Path), ("token_id" = String, Path)), responses((status = 200, body = CredentialInfo), (status = 404, body = Problem)))]
pub async fn revoke_token(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, tid)): Path<(String, String)>,
) -> ApiResult<Json<CredentialInfo>> {
    Ok(Json(s.svc.revoke_token(&ctx, &id, &tid).await?))
}

/// Rotate a token: a new secret now, the old one valid until the overlap ends (admin).
#[utoipa::path(post, path = "/v1/agents/{id}/tokens/{token_id}/rotate", tag = "tokens", params(("id" = String, Path), ("token_id" = String, Path)), request_body = Rotate, responses((status = 201, body = IssuedCredential), (status = 404, body = Problem)))]
pub async fn rotate_token(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, tid)): Path<(String, String)>,
    ApiJson(body): ApiJson<Rotate>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(
            s.svc
                .rotate_token(&ctx, &id, &tid, body.overlap_seconds)
                .await?,
        ),
    ))
}

/// The agent's audit trail (admins; an agent for itself).
#[utoipa::path(get, path = "/v1/agents/{id}/audit", tag = "audit", params(("id" = String, Path), AuditQuery), responses((status = 200, body = Page<AuditEntry>)))]
pub async fn agent_audit(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    Ok(Json(s.svc.list_agent_audit(&ctx, &id, q).await?))
}
