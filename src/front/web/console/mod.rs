//! The console pages: who you are, your requests and grants, asking for access, and deciding
//! other people's requests. Every action goes through the broker exactly as the JSON API's
//! does, so policy is decided in one place; a post is checked for CSRF first, then acts, then
//! redirects back to its page (post/redirect/get), or shows the page again with the refusal.
//! `console.js` polls `/console/state` and reloads the page when what it shows has changed.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use maud::{html, Markup};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::redirect::safe_redirect;
use super::{check_csrf, error_page, page, secure_headers, MaybeSession, Site, WebSession};
use crate::access::{AccessRequest, Grant, GrantState, Identity, Refusal, RequestState};
use crate::broker::BrokerError;
use crate::front::api::{check_text, ApiError, ApiState, MAX_REASON_CHARS};
use crate::identity::session::Session;
use crate::time::{format_duration, parse_duration, Timestamp};

mod apps;
mod chat;
mod view;

use view::*;

const CONSOLE_CSS: &str = include_str!("static/console.css");
const CONSOLE_JS: &str = include_str!("static/console.js");
/// How many of your own past requests the start page lists.
const OWN_REQUESTS_SHOWN: usize = 20;
const STATE_PATH: &str = "/console/state";

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/", get(home))
        .route("/requests", get(|| async { Redirect::to("/") }).post(create))
        .route("/requests/{id}", get(request_page))
        .route("/apps/{name}", get(apps::app_page))
        .route("/auth/app", get(apps::app_login))
        .route("/requests/{id}/{action}", post(request_action))
        .route("/grants/{id}/revoke", post(revoke))
        .route("/slack", get(chat::slack_page))
        .route("/slack/{action}", post(chat::slack_action))
        .route(STATE_PATH, get(live_state))
        // Browsers ask for it on every page; an empty answer keeps their consoles clean.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/static/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .route(
            "/static/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

/// What a page says above its content: what was just done, or why it was refused.
enum Notice {
    Nothing,
    Done(&'static str),
    Refused(String),
}

impl Notice {
    /// Only known codes are shown, each as a fixed sentence: nothing from the URL is echoed.
    fn from_query(query: Option<&str>) -> Notice {
        let text = match query_param(query, "done").as_deref() {
            Some("requested") => "Request sent. It waits for approval; this page updates when it is decided.",
            Some("active") => "Access granted at once: this profile needs no approval.",
            Some("approved") => "Your approval is recorded.",
            Some("denied") => "Request denied.",
            Some("cancelled") => "Request cancelled.",
            Some("revoked") => "Grant revoked; its connections are cut.",
            _ => return Notice::Nothing,
        };
        Notice::Done(text)
    }

    fn render(&self) -> Markup {
        html! {
            @match self {
                Notice::Nothing => {},
                Notice::Done(text) => p.notice.done role="status" { (text) },
                Notice::Refused(text) => p.notice.refused role="alert" { (text) },
            }
        }
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The page a form came from, where its post returns: the start page or one request's.
#[derive(Clone, Debug, PartialEq)]
enum Back {
    Home,
    Request(String),
}

impl Back {
    fn parse(back: &str) -> Back {
        match back.strip_prefix("/requests/") {
            Some(id) if plausible_id(id) => Back::Request(id.to_owned()),
            _ => Back::Home,
        }
    }

    fn path(&self) -> String {
        match self {
            Back::Home => "/".to_owned(),
            Back::Request(id) => format!("/requests/{id}"),
        }
    }
}

fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn login_redirect(back: &str) -> Response {
    let rd: String = url::form_urlencoded::byte_serialize(back.as_bytes()).collect();
    Redirect::to(&format!("/?rd={rd}")).into_response()
}

fn done(back: &Back, code: &str) -> Response {
    Redirect::to(&format!("{}?done={code}", back.path())).into_response()
}

fn not_found(site: &Site, what: &str) -> Response {
    error_page(
        site,
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("There is no {what} here that you can see."),
    )
}

/// The status and the words a refusal is shown with: the broker's, without the CLI's flags.
fn refusal(e: BrokerError) -> (StatusCode, String) {
    let own_words = match &e {
        BrokerError::Refused(Refusal::DecisionReasonRequired) => {
            Some("A reason is required to deny: write it in the reason field.".to_owned())
        }
        BrokerError::Refused(Refusal::ReasonRequired { profile }) => Some(format!(
            "Profile {profile:?} requires a reason: say why you need it (a ticket id will do)."
        )),
        _ => None,
    };
    let e = ApiError::from(e);
    (e.status(), own_words.unwrap_or_else(|| sentence(e.reason())))
}

fn invalid(e: ApiError) -> (StatusCode, String) {
    (e.status(), sentence(e.reason()))
}

fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => format!("{}{}.", c.to_uppercase(), chars.as_str().trim_end_matches('.')),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// The start page

async fn home(State(state): State<Arc<ApiState>>, MaybeSession(s): MaybeSession, RawQuery(q): RawQuery) -> Response {
    match s {
        None => login_page(&state, q.as_deref()),
        Some(s) => home_page(&state, &s, Notice::from_query(q.as_deref()), None, StatusCode::OK).await,
    }
}

fn login_page(state: &ApiState, query: Option<&str>) -> Response {
    let site = &state.site;
    let rd = safe_redirect(site, query_param(query, "rd").as_deref());
    let body = html! {
        h1 { "Log in" }
        p { "Log in to ask for access, see your grants, and decide requests that wait for you." }
        @if !state.idps.is_empty() {
            ul.providers {
                @for p in state.idps.all() {
                    @let query = url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("idp", &p.config.name)
                        .append_pair("rd", &rd)
                        .finish();
                    li { a.button href={"/auth/login?" (query)} { "Log in with " (p.config.display_name) } }
                }
            }
        }
        @if site.local_users {
            form.login method="post" action="/auth/local" {
                input type="hidden" name="rd" value=(rd);
                label { "User" input type="text" name="user" autocomplete="username" required autofocus; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        }
    };
    page(site, StatusCode::OK, "Log in", None, body)
}

/// What someone was typing into the request form, kept when it is refused.
#[derive(Deserialize, Default)]
struct NewRequestForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    profile: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    duration: String,
    /// Where to go once the grant is active: the app page that sent the user here.
    #[serde(default)]
    rd: String,
}

async fn home_page(
    state: &ApiState,
    s: &Session,
    notice: Notice,
    draft: Option<&NewRequestForm>,
    status: StatusCode,
) -> Response {
    let site = &state.site;
    let who = &s.identity;
    let (requests, grants) = match visible(state, who).await {
        Ok(v) => v,
        Err(e) => return broker_error_page(site, e),
    };
    let version = digest(&requests, &grants);
    let policy = state.broker.policy();
    let admin = policy.is_admin(who);
    let approves_any = policy.profiles().iter().any(|p| p.may_approve(who));
    let requestable: Vec<_> = state
        .broker
        .profiles_for(who)
        .into_iter()
        .filter(|v| v.can_request)
        .map(|v| v.profile)
        .collect();
    let mine: Vec<&AccessRequest> = requests.iter().filter(|r| r.requester.user == who.user).collect();
    let to_decide: Vec<&AccessRequest> = requests
        .iter()
        .filter(|r| r.state == RequestState::Pending && r.requester.user != who.user)
        .filter(|r| policy.profile(&r.profile).is_some_and(|p| p.may_approve(who)))
        .collect();
    let (my_grants, other_grants): (Vec<&Grant>, Vec<&Grant>) = grants.iter().partition(|g| g.user == who.user);
    let now = Timestamp::now();
    let body = html! {
        h1 { "Access" }
        (notice.render())
        (live(Back::Home, &version))
        (identity_section(s, admin))
        @if state.chat.is_some() {
            p { a href="/slack" { "Approve from Slack: link your Slack account" } }
        }
        section {
            h2 { "Your grants" }
            @if my_grants.is_empty() {
                p.empty { "You hold no active grant." }
            } @else {
                table {
                    thead { tr { th { "Profile" } th { "Grant" } th { "Expires" } th { "Time left" } th {} } }
                    tbody {
                        @for g in &my_grants {
                            tr {
                                td { (g.profile) }
                                td { a href={"/requests/" (g.request_id)} { (g.id) } }
                                td { (when(g.expires_at)) }
                                td { (time_left(g.expires_at, now)) }
                                td { (revoke_form(s, g, &Back::Home, "End now")) }
                            }
                        }
                    }
                }
            }
        }
        (request_form(s, &requestable, draft, None))
        @if approves_any {
            section {
                h2 { "Waiting for your decision" }
                @if to_decide.is_empty() {
                    p.empty { "Nothing waits for you." }
                }
                @for r in &to_decide {
                    (pending_card(s, r))
                }
            }
        }
        section {
            h2 { "Your requests" }
            @if mine.is_empty() {
                p.empty { "You have not asked for anything yet." }
            } @else {
                (request_table(mine.iter().take(OWN_REQUESTS_SHOWN).copied()))
            }
        }
        @if admin || !other_grants.is_empty() {
            section {
                h2 { @if admin { "All active grants" } @else { "Active grants of profiles you approve" } }
                @let listed: Vec<&Grant> = if admin { grants.iter().collect() } else { other_grants.clone() };
                @if listed.is_empty() {
                    p.empty { "No grant is active." }
                } @else {
                    table {
                        thead { tr { th { "User" } th { "Profile" } th { "Grant" } th { "Reason" } th { "Time left" } th {} } }
                        tbody {
                            @for g in &listed {
                                tr {
                                    td { (g.user) }
                                    td { (g.profile) }
                                    td { a href={"/requests/" (g.request_id)} { (g.id) } }
                                    td.reason { (g.reason) }
                                    td { (time_left(g.expires_at, now)) }
                                    td { (revoke_form(s, g, &Back::Home, "Revoke")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(site, status, "Access", Some(s), body)
}

// ---------------------------------------------------------------------------------------------
// One request

async fn request_page(
    State(state): State<Arc<ApiState>>,
    WebSession(s): WebSession,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    request_view(&state, &s, &id, Notice::from_query(q.as_deref()), StatusCode::OK).await
}

async fn request_view(state: &ApiState, s: &Session, id: &str, notice: Notice, status: StatusCode) -> Response {
    let site = &state.site;
    let who = &s.identity;
    let r = match state.broker.visible_request(who, id).await {
        Ok(r) => r,
        Err(BrokerError::NotFound(_)) => return not_found(site, "request"),
        Err(e) => return broker_error_page(site, e),
    };
    let grant = match &r.grant_id {
        Some(g) => match state.broker.visible_grant(who, g).await {
            Ok(g) => Some(g),
            Err(BrokerError::NotFound(_)) => None,
            Err(e) => return broker_error_page(site, e),
        },
        None => None,
    };
    let version = match visible(state, who).await {
        Ok((requests, grants)) => digest(&requests, &grants),
        Err(e) => return broker_error_page(site, e),
    };
    // Where it was announced is a courtesy: a store hiccup here must not hide the request.
    let overseer = state.broker.policy().is_admin(who)
        || state
            .broker
            .policy()
            .profile(&r.profile)
            .is_some_and(|p| p.may_approve(who));
    let announced = match state.broker.store().request_notices(&r.id).await {
        Ok(notices) => {
            let all = crate::notify::announcements(&notices, &state.notify_places);
            if overseer {
                all
            } else {
                all.into_iter().map(crate::notify::Announcement::redacted).collect()
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, request_id = %r.id, "cannot read where the request was announced");
            Vec::new()
        }
    };
    let policy = state.broker.policy();
    let profile = policy.profile(&r.profile);
    let approver = profile.is_some_and(|p| p.may_approve(who));
    let pending = r.state == RequestState::Pending;
    let own = r.requester.user == who.user;
    let may_decide = pending && approver && !own && !r.approvals.iter().any(|a| a.approver == who.user);
    let back = Back::Request(r.id.clone());
    let now = Timestamp::now();
    let title = format!("Request {}", r.id);
    let body = html! {
        h1 { "Request " code { (r.id) } }
        (notice.render())
        (live(back.clone(), &version))
        dl.request {
            dt { "State" } dd #request-state data-state=(r.state.as_str()) { (state_badge(r.state.as_str())) }
            dt { "Requested by" }
            dd { (r.requester.user) @if !r.requester.groups.is_empty() { " (" (r.requester.groups.join(", ")) ")" } }
            dt { "Profile" }
            dd {
                (r.profile)
                @if let Some(p) = profile { @if !p.description.is_empty() { " — " (p.description) } }
            }
            @if let Some(p) = profile { dt { "Grants" } dd { (scope(p)) } }
            dt { "Reason" } dd.reason { (r.reason) }
            dt { "Duration" } dd { (format_duration(r.duration)) }
            dt { "Asked" } dd { (when(r.created_at)) }
            @if pending { dt { "Expires unless decided" } dd { (when(r.pending_until)) } }
            dt { "Approvals" }
            dd {
                (r.approvals.len()) " of " (r.approvals_required)
                @if !r.approvals.is_empty() {
                    ul.approvals {
                        @for a in &r.approvals {
                            li {
                                (a.approver) " at " (when(a.at))
                                @if let Some(why) = &a.reason { ": " span.reason { (why) } }
                            }
                        }
                    }
                }
            }
            @if let Some(by) = &r.decided_by {
                dt { "Decided" }
                dd {
                    (r.state) " by " (by)
                    @if let Some(at) = r.decided_at { " at " (when(at)) }
                    @if let Some(why) = &r.decision_reason { ": " span.reason { (why) } }
                }
            }
            @if !announced.is_empty() {
                dt { "Announced" }
                dd {
                    ul.announced {
                        @for a in &announced {
                            li data-state=(a.state) {
                                (a.place) ": " (a.state) " (" (a.event) ")"
                                @if let Some(e) = &a.error { ": " span.reason { (e) } }
                            }
                        }
                    }
                }
            }
            @if let Some(g) = &grant {
                dt { "Grant" }
                dd #grant data-grant-state=(g.state.as_str()) {
                    code { (g.id) } " " (state_badge(g.state.as_str()))
                    @if g.state == GrantState::Active {
                        " · expires " (when(g.expires_at)) " · " (time_left(g.expires_at, now))
                    } @else if let Some(by) = &g.ended_by {
                        " · ended by " (by)
                        @if let Some(at) = g.ended_at { " at " (when(at)) }
                        @if let Some(why) = &g.end_reason { ": " span.reason { (why) } }
                    }
                }
            }
        }
        @if may_decide {
            section { h2 { "Your decision" } (decision_form(s, &r.id, &back)) }
        }
        @if pending && own {
            section {
                form.cancel method="post" action={"/requests/" (r.id) "/cancel"} {
                    input type="hidden" name="csrf" value=(s.csrf);
                    input type="hidden" name="back" value=(back.path());
                    button.deny type="submit" { "Cancel this request" }
                }
            }
        }
        @if let Some(g) = grant.as_ref().filter(|g| g.state == GrantState::Active) {
            @if g.user == who.user || approver || policy.is_admin(who) {
                section { h2 { "End this grant" } (revoke_form(s, g, &back, "Revoke")) }
            }
        }
        p { a href="/" { "Back to the start page" } }
    };
    page(site, status, &title, Some(s), body)
}

// ---------------------------------------------------------------------------------------------
// Actions

async fn create(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    MaybeSession(s): MaybeSession,
    form: Result<Form<NewRequestForm>, FormRejection>,
) -> Response {
    let site = &state.site;
    let Some(s) = s else { return login_redirect("/") };
    let Ok(Form(form)) = form else { return bad_form(site) };
    if let Err(r) = check_csrf(site, &headers, &s, &form.csrf) {
        return r;
    }
    match open_request(&state, &s.identity, &form).await {
        Ok(r) => {
            let code = if r.state == RequestState::Active {
                "active"
            } else {
                "requested"
            };
            // Approved by policy at once: straight back to the app that sent the user here.
            if r.state == RequestState::Active && !form.rd.is_empty() {
                return Redirect::to(&safe_redirect(site, Some(&form.rd))).into_response();
            }
            done(&Back::Request(r.id), code)
        }
        Err((status, text)) if !form.rd.is_empty() => match apps::app_of(&state, &form.rd) {
            Some(app) => {
                apps::app_request_page(&state, &s, app, &form.rd, Notice::Refused(text), Some(&form), status).await
            }
            None => home_page(&state, &s, Notice::Refused(text), Some(&form), status).await,
        },
        Err((status, text)) => home_page(&state, &s, Notice::Refused(text), Some(&form), status).await,
    }
}

async fn open_request(
    state: &ApiState,
    who: &Identity,
    form: &NewRequestForm,
) -> Result<AccessRequest, (StatusCode, String)> {
    check_text("reason", &form.reason, MAX_REASON_CHARS).map_err(invalid)?;
    let duration =
        parse_duration(&form.duration).map_err(|why| (StatusCode::BAD_REQUEST, format!("For how long? {why}.")))?;
    state
        .broker
        .open_request(who, &form.profile, form.reason.clone(), duration, Timestamp::now())
        .await
        .map_err(refusal)
}

/// The fields of the decision and revoke forms.
#[derive(Deserialize)]
struct DecisionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    back: String,
}

#[derive(Clone, Copy)]
enum Act {
    Approve,
    Deny,
    Cancel,
    Revoke,
}

impl Act {
    fn done(self) -> &'static str {
        match self {
            Act::Approve => "approved",
            Act::Deny => "denied",
            Act::Cancel => "cancelled",
            Act::Revoke => "revoked",
        }
    }

    fn target(self) -> &'static str {
        match self {
            Act::Revoke => "grant",
            _ => "request",
        }
    }
}

/// `approve`, `deny` or `cancel`.
async fn request_action(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    MaybeSession(s): MaybeSession,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<DecisionForm>, FormRejection>,
) -> Response {
    let act = match action.as_str() {
        "approve" => Act::Approve,
        "deny" => Act::Deny,
        "cancel" => Act::Cancel,
        _ => return not_found(&state.site, "such page"),
    };
    run(&state, &headers, s, &id, form, act).await
}

async fn revoke(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    MaybeSession(s): MaybeSession,
    Path(id): Path<String>,
    form: Result<Form<DecisionForm>, FormRejection>,
) -> Response {
    run(&state, &headers, s, &id, form, Act::Revoke).await
}

/// Checks the form, asks the broker, and answers with the page the form came from.
async fn run(
    state: &ApiState,
    headers: &HeaderMap,
    session: Option<Arc<Session>>,
    id: &str,
    form: Result<Form<DecisionForm>, FormRejection>,
    act: Act,
) -> Response {
    let site = &state.site;
    let form = form.ok().map(|Form(f)| f);
    let back = Back::parse(form.as_ref().map_or("/", |f| f.back.as_str()));
    let Some(s) = session else {
        return login_redirect(&back.path());
    };
    let Some(form) = form else { return bad_form(site) };
    if let Err(r) = check_csrf(site, headers, &s, &form.csrf) {
        return r;
    }
    if let Err(e) = check_text("reason", &form.reason, MAX_REASON_CHARS) {
        let (status, text) = invalid(e);
        return show_again(state, &s, &back, Notice::Refused(text), status).await;
    }
    let reason = form.reason.trim();
    let optional = (!reason.is_empty()).then(|| reason.to_owned());
    let (who, now, broker) = (&s.identity, Timestamp::now(), &state.broker);
    let outcome = match act {
        Act::Approve => broker.approve(who, id, optional, now).await.map(|r| r.id),
        Act::Deny => broker.deny(who, id, reason.to_owned(), now).await.map(|r| r.id),
        Act::Cancel => broker.cancel(who, id, now).await.map(|r| r.id),
        Act::Revoke => broker.revoke(who, id, optional, now).await.map(|g| g.request_id),
    };
    match outcome {
        Ok(request_id) => {
            let back = match back {
                Back::Request(_) => Back::Request(request_id),
                Back::Home => Back::Home,
            };
            done(&back, act.done())
        }
        Err(BrokerError::NotFound(_)) => not_found(site, act.target()),
        Err(e) => {
            let (status, text) = refusal(e);
            show_again(state, &s, &back, Notice::Refused(text), status).await
        }
    }
}

async fn show_again(state: &ApiState, s: &Session, back: &Back, notice: Notice, status: StatusCode) -> Response {
    match back {
        Back::Home => home_page(state, s, notice, None, status).await,
        Back::Request(id) => request_view(state, s, id, notice, status).await,
    }
}

fn bad_form(site: &Site) -> Response {
    error_page(
        site,
        StatusCode::BAD_REQUEST,
        "Bad form",
        "This form could not be read. Go back, reload the page and try again.",
    )
}

fn broker_error_page(site: &Site, e: BrokerError) -> Response {
    let e = ApiError::from(e);
    error_page(site, e.status(), "Cannot show this page", &sentence(e.reason()))
}

// ---------------------------------------------------------------------------------------------
// Live updates

/// `{"v": DIGEST}`, where the digest changes whenever anything the caller's pages show does.
async fn live_state(State(state): State<Arc<ApiState>>, MaybeSession(s): MaybeSession) -> Response {
    let v = match s {
        None => "logged-out".to_owned(),
        Some(s) => match visible(&state, &s.identity).await {
            Ok((requests, grants)) => digest(&requests, &grants),
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    let mut r = Json(serde_json::json!({ "v": v })).into_response();
    secure_headers(&state.site, r.headers_mut());
    r
}

/// Everything the caller may see that the pages show: requests (their own, those of profiles
/// they approve, or all for admins) and the active grants among the same.
async fn visible(state: &ApiState, who: &Identity) -> Result<(Vec<AccessRequest>, Vec<Grant>), BrokerError> {
    let requests = state.broker.requests(who, false).await?;
    let grants = state.broker.grants(who, false).await?;
    Ok((requests, grants))
}

fn digest(requests: &[AccessRequest], grants: &[Grant]) -> String {
    let mut h = Sha256::new();
    for r in requests {
        h.update(format!(
            "r\0{}\0{}\0{}\0{}\n",
            r.id,
            r.state,
            r.version,
            r.approvals.len()
        ));
    }
    for g in grants {
        h.update(format!("g\0{}\0{}\0{}\n", g.id, g.state, g.version));
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn time_left_reads_like_a_person_wrote_it() {
        assert_eq!(left_text(Duration::from_secs(4320)), "1h 12m left");
        assert_eq!(left_text(Duration::from_secs(250)), "4m 10s left");
        assert_eq!(left_text(Duration::from_secs(9)), "9s left");
        assert_eq!(left_text(Duration::from_secs(2 * 86_400 + 3 * 3600)), "2d 3h left");
        assert_eq!(left_text(Duration::ZERO), "ended");
    }

    #[test]
    fn forms_return_only_to_console_pages() {
        assert_eq!(Back::parse("/requests/req-1"), Back::Request("req-1".into()));
        for other in [
            "/",
            "",
            "https://evil.example/",
            "//evil.example",
            "/requests/a/b",
            "/requests/",
            "/x",
        ] {
            assert_eq!(Back::parse(other), Back::Home, "{other:?}");
        }
    }

    #[test]
    fn only_known_notices_are_shown() {
        assert!(matches!(Notice::from_query(Some("done=approved")), Notice::Done(_)));
        assert!(matches!(Notice::from_query(Some("done=%3Cscript%3E")), Notice::Nothing));
        assert!(matches!(Notice::from_query(None), Notice::Nothing));
    }

    #[test]
    fn refusals_read_as_sentences() {
        let (status, text) = refusal(BrokerError::Refused(Refusal::SelfApproval));
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(text, "You cannot approve or deny your own request.");
        let (status, text) = refusal(BrokerError::Refused(Refusal::DecisionReasonRequired));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("reason is required"), "{text}");
    }
}
