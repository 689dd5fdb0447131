//! /v1/webhooks (admin): register endpoints, rotate their signing secrets,
//! read the delivery log, send a test ping and replay deliveries.

use super::agents::PageParams;
use crate::AppState;
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::problem::{ApiResult, Problem};
use agentpost_core::{
    NewWebhook, Page, ReplayRequest, Replayed, Webhook, WebhookDelivery, WebhookPatch,
    WebhookWithSecret,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

/// Register an endpoint. The signing secret (`whsec_…`) is in this answer only.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = NewWebhook,
    responses((status = 201, body = WebhookWithSecret), (status = 403, body = Problem), (status = 422, body = Problem, description = "bad or private URL (field `url`), bad event type")))]
pub async fn create_webhook(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(b): ApiJson<NewWebhook>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(s.svc.create_webhook(&ctx, b).await?),
    ))
}

/// List endpoints (no secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", params(PageParams), responses((status = 200, body = Page<Webhook>)))]
pub async fn list_webhooks(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Webhook>>> {
    Ok(Json(
        s.svc
            .list_webhooks(&ctx, q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// One endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)), responses((status = 200, body = Webhook), (status = 404, body = Problem)))]
pub async fn get_webhook(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Webhook>> {
    Ok(Json(s.svc.get_webhook(&ctx, &id).await?))
}

/// Change the URL, event filter, agent filter or description; `enabled: true` re-enables it.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)), request_body = WebhookPatch,
    responses((status = 200, body = Webhook), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update_webhook(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<WebhookPatch>,
) -> ApiResult<Json<Webhook>> {
    Ok(Json(s.svc.update_webhook(&ctx, &id, b).await?))
}

/// Delete an endpoint; deliveries not yet made are cancelled.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)), responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_webhook(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.svc.delete_webhook(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// New signing secret (shown once); the old one also signs for 24 hours.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = String, Path)), responses((status = 200, body = WebhookWithSecret), (status = 404, body = Problem)))]
pub async fn rotate_webhook_secret(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookWithSecret>> {
    Ok(Json(s.svc.rotate_webhook_secret(&ctx, &id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// pending, succeeded, failed or cancelled
    pub status: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// Deliveries to this endpoint, newest first, each with its attempts (time, status code, latency, error).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = String, Path), DeliveryParams),
    responses((status = 200, body = Page<WebhookDelivery>), (status = 404, body = Problem)))]
pub async fn list_deliveries(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveryParams>,
) -> ApiResult<Json<Page<WebhookDelivery>>> {
    Ok(Json(
        s.svc
            .list_webhook_deliveries(&ctx, &id, q.status.as_deref(), q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// Send a `webhook.test` ping now (one attempt; see the deliveries log for the result).
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks", params(("id" = String, Path)), responses((status = 202, body = WebhookDelivery), (status = 404, body = Problem)))]
pub async fn test_webhook(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::ACCEPTED,
        Json(s.svc.test_webhook(&ctx, &id).await?),
    ))
}

/// Re-send one event (`event_id`) or every failed delivery since a time (`since`), with the same `webhook-id`.
#[utoipa::path(post, path = "/v1/webhooks/{id}/replay", tag = "webhooks", params(("id" = String, Path)), request_body = ReplayRequest,
    responses((status = 202, body = Replayed), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn replay_webhook(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ReplayRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::ACCEPTED,
        Json(s.svc.replay_webhook(&ctx, &id, b).await?),
    ))
}
