//! The console's markup: the pieces the pages are built of. Every value goes through maud,
//! which escapes it; nothing here reads the store.

use std::sync::Arc;
use std::time::Duration;

use maud::{html, Markup};

use super::{Back, NewRequestForm, STATE_PATH};
use crate::access::{AccessProfile, AccessRequest, Grant};
use crate::front::api::MAX_REASON_CHARS;
use crate::identity::session::Session;
use crate::time::{format_duration, Timestamp};

pub(super) fn identity_section(s: &Session, admin: bool) -> Markup {
    html! {
        section.identity {
            h2 { "Who you are" }
            dl {
                dt { "User" } dd { (s.identity.user) }
                @if let Some(email) = &s.email { dt { "Email" } dd { (email) } }
                dt { "Groups" }
                dd {
                    @if s.identity.groups.is_empty() { "none" } @else { (s.identity.groups.join(", ")) }
                }
                dt { "Admin" } dd { @if admin { "yes" } @else { "no" } }
                dt { "Logged in with" }
                dd { @if s.idp == "local" { "a local password" } @else { (s.idp) } }
                dt { "Session ends" } dd { (when(s.expires_at)) }
            }
        }
    }
}

pub(super) fn request_form(
    s: &Session,
    requestable: &[Arc<AccessProfile>],
    draft: Option<&NewRequestForm>,
    rd: Option<&str>,
) -> Markup {
    let chosen = draft.map_or("", |d| d.profile.as_str());
    html! {
        section {
            h2 { "Request access" }
            @if requestable.is_empty() {
                p.empty { "There is no profile you may request." }
            } @else {
                form.new-request method="post" action="/requests" {
                    input type="hidden" name="csrf" value=(s.csrf);
                    @if let Some(rd) = rd { input type="hidden" name="rd" value=(rd); }
                    label {
                        "Profile"
                        select name="profile" required {
                            @for p in requestable {
                                option value=(p.name) selected[p.name == chosen] {
                                    (p.name)
                                    @if !p.description.is_empty() { " — " (p.description) }
                                    " (at most " (format_duration(p.max_duration)) ", "
                                    (approvals_needed(p.approvals_required)) ")"
                                }
                            }
                        }
                    }
                    label {
                        "Reason"
                        input type="text" name="reason" maxlength=(MAX_REASON_CHARS)
                            placeholder="INC-4411: patch the orders table" value=(draft.map_or("", |d| d.reason.as_str()));
                    }
                    label {
                        "For"
                        input type="text" name="duration" required size="6" placeholder="1h"
                            value=(draft.map_or("1h", |d| d.duration.as_str()));
                    }
                    button type="submit" { "Request" }
                }
            }
        }
    }
}

pub(super) fn approvals_needed(n: u32) -> String {
    match n {
        0 => "no approval needed".to_owned(),
        1 => "1 approval".to_owned(),
        n => format!("{n} approvals"),
    }
}

pub(super) fn pending_card(s: &Session, r: &AccessRequest) -> Markup {
    let already = r.approvals.iter().any(|a| a.approver == s.identity.user);
    html! {
        article.pending {
            p {
                strong { (r.requester.user) } " asks for " strong { (r.profile) } " for " (format_duration(r.duration))
                " · " a href={"/requests/" (r.id)} { (r.id) }
            }
            p.reason { (r.reason) }
            p.meta {
                "asked " (when(r.created_at)) " · " (r.approvals.len()) " of " (r.approvals_required) " approvals"
            }
            @if already {
                p.meta { "You approved; it waits for another approver." }
            } @else {
                (decision_form(s, &r.id, &Back::Home))
            }
        }
    }
}

pub(super) fn request_table<'a>(requests: impl Iterator<Item = &'a AccessRequest>) -> Markup {
    html! {
        table {
            thead { tr { th { "State" } th { "Profile" } th { "Reason" } th { "Asked" } th { "Request" } } }
            tbody {
                @for r in requests {
                    tr {
                        td { (state_badge(r.state.as_str())) }
                        td { (r.profile) }
                        td.reason { (r.reason) }
                        td { (when(r.created_at)) }
                        td { a href={"/requests/" (r.id)} { (r.id) } }
                    }
                }
            }
        }
    }
}

pub(super) fn decision_form(s: &Session, id: &str, back: &Back) -> Markup {
    html! {
        form.decide method="post" action={"/requests/" (id) "/approve"} {
            input type="hidden" name="csrf" value=(s.csrf);
            input type="hidden" name="back" value=(back.path());
            input type="text" name="reason" maxlength=(MAX_REASON_CHARS) placeholder="Reason (required to deny)"
                aria-label="Reason";
            button.approve type="submit" { "Approve" }
            button.deny type="submit" formaction={"/requests/" (id) "/deny"} { "Deny" }
        }
    }
}

pub(super) fn revoke_form(s: &Session, g: &Grant, back: &Back, label: &str) -> Markup {
    html! {
        form.revoke method="post" action={"/grants/" (g.id) "/revoke"} {
            input type="hidden" name="csrf" value=(s.csrf);
            input type="hidden" name="back" value=(back.path());
            input type="text" name="reason" maxlength=(MAX_REASON_CHARS) placeholder="Reason (optional)"
                aria-label="Reason";
            button.deny type="submit" { (label) }
        }
    }
}

pub(super) fn state_badge(state: &str) -> Markup {
    html! { span class={"state " (state)} { (state) } }
}

pub(super) fn when(t: Timestamp) -> Markup {
    let text = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(t.as_millis())
        .map_or_else(|| t.to_rfc3339(), |d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string());
    html! { time datetime=(t.to_rfc3339()) { (text) } }
}

/// A countdown that `console.js` keeps current; the server's text is right at render time.
pub(super) fn time_left(expires_at: Timestamp, now: Timestamp) -> Markup {
    html! { span.left data-expires=(expires_at.to_rfc3339()) { (left_text(now.until(expires_at))) } }
}

/// `1h 12m left`, `4m 10s left`, `2d 3h left`: the same words `console.js` writes.
pub(super) fn left_text(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60, s % 60);
    match () {
        _ if s == 0 => "ended".to_owned(),
        _ if days > 0 => format!("{days}d {hours}h left"),
        _ if hours > 0 => format!("{hours}h {minutes}m left"),
        _ if minutes > 0 => format!("{minutes}m {seconds}s left"),
        _ => format!("{seconds}s left"),
    }
}

/// The marker `console.js` polls by: where to ask, what it saw at render time, where to reload.
pub(super) fn live(back: Back, version: &str) -> Markup {
    html! { div #live data-poll=(STATE_PATH) data-v=(version) data-page=(back.path()) {} }
}

/// What a grant of `p` lets its holder do, in words.
pub(super) fn scope(p: &AccessProfile) -> Markup {
    html! {
        ul.scope {
            @for line in p.scope_lines() { li { (line) } }
            li { "At most " (format_duration(p.max_duration)) "; " (approvals_needed(p.approvals_required)) }
        }
    }
}
