//! Apps, on the proxy's own origin: the login handoff to an app's host (`/auth/app`), and
//! the page that offers to request access to an app (`/apps/{name}`).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::view::request_form;
use super::{login_redirect, not_found, query_param, NewRequestForm, Notice};
use crate::front::api::ApiState;
use crate::front::apps::{self, AppSite};
use crate::front::web::redirect::safe_redirect;
use crate::front::web::{error_page, page, MaybeSession, WebSession};
use crate::identity::session::Session;
use crate::time::Timestamp;

/// The app whose origin `rd` is on, if it names one of the configured apps.
pub(super) fn app_of<'a>(state: &'a ApiState, rd: &str) -> Option<&'a AppSite> {
    let url = url::Url::parse(rd).ok()?;
    let origin = url.origin().ascii_serialization();
    state.apps.iter().find(|a| a.origin == origin)
}

/// Path and query of `rd` if it is on `app`'s origin.
fn on_app(app: &AppSite, rd: &str) -> Option<String> {
    let url = url::Url::parse(rd).ok()?;
    if url.origin().ascii_serialization() != app.origin {
        return None;
    }
    let mut to = url.path().to_owned();
    if let Some(q) = url.query() {
        to.push('?');
        to.push_str(q);
    }
    Some(to)
}

/// `/auth/app?app=NAME&rd=URL`: a logged-in browser gets a one-time code for the app's host,
/// which trades it for that app's own cookie; anyone else logs in first and comes back.
pub(super) async fn app_login(
    State(state): State<Arc<ApiState>>,
    MaybeSession(s): MaybeSession,
    RawQuery(q): RawQuery,
) -> Response {
    let site = &state.site;
    let Some(s) = s else {
        let here = format!("/auth/app?{}", q.as_deref().unwrap_or_default());
        return login_redirect(&here);
    };
    let name = query_param(q.as_deref(), "app").unwrap_or_default();
    let Some(app) = state.apps.iter().find(|a| a.name == name) else {
        return not_found(site, "app of that name");
    };
    let to = query_param(q.as_deref(), "rd")
        .and_then(|rd| on_app(app, &rd))
        .unwrap_or_else(|| "/".to_owned());
    // Only a sign-in the app's host started (it set the browser's state cookie) goes on;
    // anything else is sent to the app to start one.
    let Some(browser_state) = query_param(q.as_deref(), "state").filter(|s| apps::plausible_state(s)) else {
        return Redirect::to(&format!("{}{to}", app.origin)).into_response();
    };
    match apps::start_handoff(&state, app, &s, &to, &browser_state).await {
        Ok(url) => Redirect::to(&url).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot start an app session");
            error_page(
                site,
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                "The proxy cannot reach its store, so it cannot open the app. Try again shortly.",
            )
        }
    }
}

/// `/apps/NAME?rd=URL`: which profiles would open the app, and a form to request one.
pub(super) async fn app_page(
    State(state): State<Arc<ApiState>>,
    WebSession(s): WebSession,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let Some(app) = state.apps.iter().find(|a| a.name == name) else {
        return not_found(&state.site, "app of that name");
    };
    let rd = query_param(q.as_deref(), "rd")
        .filter(|rd| on_app(app, rd).is_some())
        .unwrap_or_else(|| format!("{}/", app.origin));
    // Already granted (approved meanwhile): straight on to the app.
    if state
        .broker
        .app_grants(&s.identity, &app.name, Timestamp::now())
        .is_ok_and(|g| !g.is_empty())
    {
        return Redirect::to(&safe_redirect(&state.site, Some(&rd))).into_response();
    }
    app_request_page(&state, &s, app, &rd, Notice::Nothing, None, StatusCode::OK).await
}

pub(super) async fn app_request_page(
    state: &ApiState,
    s: &Session,
    app: &AppSite,
    rd: &str,
    notice: Notice,
    draft: Option<&NewRequestForm>,
    status: StatusCode,
) -> Response {
    let requestable: Vec<_> = state
        .broker
        .profiles_for(&s.identity)
        .into_iter()
        .filter(|v| v.can_request)
        .map(|v| v.profile)
        .filter(|p| {
            p.http
                .as_ref()
                .is_some_and(|h| h.apps.iter().any(|a| a.reaches(&app.name)))
        })
        .collect();
    let body = html! {
        h1 { "No access to " (app.name) " yet" }
        (notice.render())
        p {
            "You are logged in as " strong { (s.identity.user) } ", but you hold no active grant that opens "
            code { (app.host) } "."
            @if requestable.is_empty() {
                " No profile you may request opens it: ask the team that runs " (app.name) " or your admins."
            } @else {
                " Request one of the profiles below; once it is approved, "
                a href=(rd) { "open " (app.name) " again" } "."
            }
        }
        @if !requestable.is_empty() {
            ul.scope {
                @for p in &requestable {
                    li {
                        strong { (p.name) }
                        @if !p.description.is_empty() { " — " (p.description) }
                        @if let Some(h) = &p.http {
                            " (" (h.apps.iter().filter(|a| a.reaches(&app.name)).map(|a| a.describe()).collect::<Vec<_>>().join(", ")) ")"
                        }
                    }
                }
            }
            (request_form(s, &requestable, draft, Some(rd)))
        }
    };
    page(&state.site, status, &format!("Access to {}", app.name), Some(s), body)
}
