//! The HTML pages of SSO reviews: small, escaped, never cached or framed.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;

use crate::domain::DeploymentRequest;

pub(super) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A minimal page. `code` is a stable machine-readable code, also in a
/// `<meta>` so scripts and tests can read it.
pub(super) fn page(status: StatusCode, code: &str, title: &str, body_html: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"portcullis-code\" content=\"{}\">\
         <title>{} · portcullis</title><style>body{{font-family:sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}\
         button{{font-size:1.1em;margin-right:1em;padding:.4em 1.2em}}</style></head><body><h1>{}</h1>{}</body></html>",
        html_escape(code),
        html_escape(title),
        html_escape(title),
        body_html
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .insert_header(("referrer-policy", "no-referrer"))
        .insert_header(("x-frame-options", "DENY"))
        .insert_header((
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ))
        .body(html)
}

pub(super) fn refused(status: StatusCode, code: &str, title: &str, why: &str) -> HttpResponse {
    page(
        status,
        code,
        title,
        &format!("<p>{}</p><p>Nothing was recorded.</p>", html_escape(why)),
    )
}

pub(super) fn already_decided(req: &DeploymentRequest) -> HttpResponse {
    refused(
        StatusCode::CONFLICT,
        "already_decided",
        "Already decided",
        &crate::slack::interaction::already_decided(req),
    )
}

/// The signed-in reviewer's form: the request, what it still waits for, and
/// Approve/Reject buttons posting `grant` back to `/reviews/{id}`.
pub(super) fn review_form(id: &str, email: &str, request: &DeploymentRequest, grant: &str) -> HttpResponse {
    let missing = crate::slack::interaction::status_line(request);
    let body = format!(
        "<p>Signed in as <strong>{email}</strong>.</p>\
         <p>Deployment of <code>{repo}</code> at <code>{sha}</code> ({platform} {run}) to <strong>{env}</strong>.</p>\
         <p>{missing}</p>\
         <form method=\"post\" action=\"/reviews/{id}\">\
         <input type=\"hidden\" name=\"grant\" value=\"{grant}\">\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\
         <button type=\"submit\" name=\"decision\" value=\"reject\">Reject</button></form>",
        email = html_escape(email),
        repo = html_escape(&request.repository),
        sha = html_escape(&request.sha),
        platform = request.platform,
        run = html_escape(&request.run),
        env = html_escape(&request.environment),
        missing = html_escape(&missing),
        id = html_escape(id),
        grant = html_escape(grant),
    );
    page(StatusCode::OK, "review_form", "Review the deployment", &body)
}

/// The page after a review is recorded; `state` is the request's status line.
pub(super) fn recorded(approve: bool, environment: &str, email: &str, state: &str) -> HttpResponse {
    let verb = if approve { "approval" } else { "rejection" };
    page(
        StatusCode::OK,
        "review_recorded",
        "Review recorded",
        &format!(
            "<p>Recorded your {verb} of the deployment to {} as {} (identity verified by sign-in).</p><p>{}</p>",
            html_escape(environment),
            html_escape(email),
            html_escape(state)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
