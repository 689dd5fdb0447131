//! Unauthenticated operational routes: health, readiness, metrics, the
//! OpenAPI document and a readable reference page rendered from it.

use crate::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()), responses((status = 200, content_type = "text/plain", body = String), (status = 503, content_type = "text/plain", body = String)))]
pub async fn readyz(State(s): State<AppState>) -> Response {
    match s.svc.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()), responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(s): State<AppState>) -> Response {
    let body = s.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()), responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn openapi_json(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi_json.as_ref().clone(),
    )
        .into_response()
}

/// The API reference page, rendered from this document.
#[utoipa::path(get, path = "/docs", tag = "operations", security(()), responses((status = 200, content_type = "text/html", body = String)))]
pub async fn docs(State(s): State<AppState>) -> Html<String> {
    Html(s.docs_html.as_ref().clone())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the reference page once at start-up. Hand-written on purpose:
/// the usual viewers (Swagger UI, Scalar) load their scripts from a CDN,
/// which a self-hosted, possibly air-gapped server should not depend on.
pub fn render_docs(doc: &utoipa::openapi::OpenApi) -> String {
    let json = serde_json::to_value(doc).unwrap_or_default();
    let mut out = String::from(
        "<!doctype html><html lang=en><meta charset=utf-8><title>agentpost API reference</title>\
         <style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}\
         h2{border-bottom:1px solid #ddd;margin-top:2.5rem}code,pre{font-family:ui-monospace,monospace;font-size:13px}\
         .op{margin:1.2rem 0;padding:.6rem 1rem;border-left:4px solid #3a6ea5;background:#f6f8fa}\
         .m{font-weight:700;text-transform:uppercase;margin-right:.5rem}table{border-collapse:collapse}\
         td,th{padding:2px 10px 2px 0;text-align:left;vertical-align:top}</style>\
         <h1>agentpost API reference</h1><p>All <code>/v1</code> and <code>/v3</code> routes take \
         <code>Authorization: Bearer &lt;admin key or token&gt;</code>. Errors are RFC 9457 problem documents. \
         Machine-readable: <a href=/openapi.json>/openapi.json</a>.</p>",
    );
    let mut by_tag: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    if let Some(paths) = json.get("paths").and_then(|p| p.as_object()) {
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                let tag = op
                    .pointer("/tags/0")
                    .and_then(|t| t.as_str())
                    .unwrap_or("other")
                    .to_string();
                let summary = op.get("summary").and_then(|s| s.as_str()).unwrap_or("");
                let description = op.get("description").and_then(|s| s.as_str()).unwrap_or("");
                let mut html = format!(
                    "<div class=op><div><span class=m>{}</span><code>{}</code></div><div>{}</div>",
                    esc(method),
                    esc(path),
                    esc(summary)
                );
                if !description.is_empty() {
                    html.push_str(&format!("<div>{}</div>", esc(description)));
                }
                if let Some(params) = op.get("parameters").and_then(|p| p.as_array()) {
                    html.push_str("<table><tr><th>parameter<th>in<th>description");
                    for p in params {
                        html.push_str(&format!(
                            "<tr><td><code>{}</code><td>{}<td>{}",
                            esc(p.get("name").and_then(|v| v.as_str()).unwrap_or("")),
                            esc(p.get("in").and_then(|v| v.as_str()).unwrap_or("")),
                            esc(p.get("description").and_then(|v| v.as_str()).unwrap_or(""))
                        ));
                    }
                    html.push_str("</table>");
                }
                if let Some(r) = op
                    .pointer("/requestBody/content/application~1json/schema/$ref")
                    .and_then(|v| v.as_str())
                {
                    html.push_str(&format!(
                        "<div>body: <code>{}</code></div>",
                        esc(r.rsplit('/').next().unwrap_or(r))
                    ));
                }
                if let Some(resps) = op.get("responses").and_then(|r| r.as_object()) {
                    let codes: Vec<String> = resps.keys().map(|k| esc(k)).collect();
                    html.push_str(&format!("<div>responses: {}</div>", codes.join(", ")));
                }
                html.push_str("</div>");
                by_tag.entry(tag).or_default().push(html);
            }
        }
    }
    for (tag, ops) in by_tag {
        out.push_str(&format!("<h2>{}</h2>", esc(&tag)));
        for op in ops {
            out.push_str(&op);
        }
    }
    if let Some(schemas) = json
        .pointer("/components/schemas")
        .and_then(|s| s.as_object())
    {
        out.push_str("<h2>schemas</h2>");
        for (name, schema) in schemas {
            out.push_str(&format!(
                "<h3 id=\"{0}\">{0}</h3><pre>{1}</pre>",
                esc(name),
                esc(&serde_json::to_string_pretty(schema).unwrap_or_default())
            ));
        }
    }
    out
}
