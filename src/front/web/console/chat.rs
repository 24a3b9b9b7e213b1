//! The console's Slack page: link your Slack account (the bot sends a code to it, you type
//! the code here, so both ends are proven), see or end your link; admins see everyone's.
//! The steps are the API's own (`jitgate link slack`), so the rules are the same.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::{bad_form, login_redirect, not_found, when, Notice};
use crate::front::api::{confirm_link, end_link, start_link, ApiState};
use crate::front::web::{check_csrf, page, MaybeSession, WebSession};
use crate::identity::session::Session;
use crate::notify::SLACK;

pub(super) async fn slack_page(
    State(state): State<Arc<ApiState>>,
    WebSession(s): WebSession,
    RawQuery(q): RawQuery,
) -> Response {
    // Only known codes, each a fixed sentence: nothing from the URL is echoed.
    let notice = match super::query_param(q.as_deref(), "done").as_deref() {
        Some("sent") => {
            Notice::Done("A code is on its way to your Slack direct messages: enter it below within 10 minutes.")
        }
        Some("linked") => Notice::Done("Your Slack account is linked: buttons you press there count as you."),
        Some("unlinked") => Notice::Done("Your Slack account is unlinked: its buttons no longer count as you."),
        _ => Notice::Nothing,
    };
    render(&state, &s, notice, StatusCode::OK).await
}

#[derive(Deserialize)]
pub(super) struct LinkForm {
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    code: String,
}

/// `start` (send a code), `confirm` (type it back) or `unlink`.
pub(super) async fn slack_action(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    MaybeSession(s): MaybeSession,
    Path(action): Path<String>,
    form: Result<Form<LinkForm>, FormRejection>,
) -> Response {
    let site = &state.site;
    let Some(s) = s else { return login_redirect("/slack") };
    let Ok(Form(form)) = form else { return bad_form(site) };
    if let Err(r) = check_csrf(site, &headers, &s, &form.csrf) {
        return r;
    }
    let who = &s.identity;
    let outcome = match action.as_str() {
        "start" => {
            let email = Some(form.email.trim().to_owned())
                .filter(|e| !e.is_empty())
                .or_else(|| s.email.clone());
            start_link(&state, who, email, None).await.map(|_| "sent")
        }
        "confirm" => confirm_link(&state, who, &form.code).await.map(|_| "linked"),
        "unlink" => end_link(&state, who).await.map(|_| "unlinked"),
        _ => return not_found(site, "such page"),
    };
    match outcome {
        // Post/redirect/get: a reload does not send another code.
        Ok(done) => Redirect::to(&format!("/slack?done={done}")).into_response(),
        Err(e) => render(&state, &s, Notice::Refused(e.reason().to_owned()), e.status()).await,
    }
}

async fn render(state: &ApiState, s: &Session, notice: Notice, status: StatusCode) -> Response {
    let site = &state.site;
    let store = state.broker.store();
    let admin = state.broker.policy().is_admin(&s.identity);
    let mine = store
        .chat_links(SLACK, Some(&s.identity.user))
        .await
        .unwrap_or_default();
    let everyone = if admin {
        store.chat_links(SLACK, None).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let body = html! {
        h1 { "Slack" }
        (notice.render())
        @if state.chat.is_none() {
            p.empty { "This proxy has no Slack app configured." }
        } @else {
            section {
                h2 { "Your Slack account" }
                @if let Some(link) = mine.first() {
                    p { "Linked to Slack member " code { (link.chat_user) } " since " (when(link.linked_at)) "." }
                    form method="post" action="/slack/unlink" {
                        input type="hidden" name="csrf" value=(s.csrf);
                        button.deny type="submit" { "Unlink" }
                    }
                } @else {
                    p.empty { "Not linked: Slack buttons you press decide nothing." }
                }
            }
            section {
                h2 { "Link it" }
                form method="post" action="/slack/start" {
                    input type="hidden" name="csrf" value=(s.csrf);
                    label for="email" { "Email of your Slack account" }
                    input #email type="email" name="email" placeholder=(s.email.as_deref().unwrap_or("you@example.com"));
                    button type="submit" { "Send me a code in Slack" }
                }
                form method="post" action="/slack/confirm" {
                    input type="hidden" name="csrf" value=(s.csrf);
                    label for="code" { "The code the bot sent you" }
                    input #code type="text" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="6";
                    button type="submit" { "Link" }
                }
            }
            @if admin {
                section {
                    h2 { "Linked accounts" }
                    @if everyone.is_empty() {
                        p.empty { "Nobody has linked a Slack account." }
                    } @else {
                        table {
                            thead { tr { th { "User" } th { "Slack member" } th { "Since" } } }
                            tbody {
                                @for l in &everyone {
                                    tr { td { (l.user) } td { code { (l.chat_user) } } td { (when(l.linked_at)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        p { a href="/" { "Back to the start page" } }
    };
    page(site, status, "Slack", Some(s), body)
}
