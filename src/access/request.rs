//! The life of an access request, as a state machine that consumes itself:
//!
//! ```text
//! pending ──approve (enough distinct approvers)──▶ active ──▶ expired | revoked
//!    └──▶ denied | cancelled | expired (nobody decided within request_ttl)
//! ```
//!
//! `approvals_required = 0` activates at once. Every transition takes `now` and returns the
//! next value or a `Refusal` that says why, leaving the caller's copy untouched.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::grant::Grant;
use super::identity::Identity;
use super::profile::AccessProfile;
use crate::time::{format_duration, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    Pending,
    Active,
    Expired,
    Revoked,
    Denied,
    Cancelled,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Active => "active",
            RequestState::Expired => "expired",
            RequestState::Revoked => "revoked",
            RequestState::Denied => "denied",
            RequestState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => RequestState::Pending,
            "active" => RequestState::Active,
            "expired" => RequestState::Expired,
            "revoked" => RequestState::Revoked,
            "denied" => RequestState::Denied,
            "cancelled" => RequestState::Cancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub approver: String,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessRequest {
    pub id: String,
    pub profile: String,
    pub requester: Identity,
    pub reason: String,
    #[serde(with = "crate::time::duration_str")]
    pub duration: Duration,
    pub state: RequestState,
    pub created_at: Timestamp,
    /// A pending request that nobody decided by then expires.
    pub pending_until: Timestamp,
    pub approvals: Vec<Approval>,
    pub approvals_required: u32,
    pub decided_at: Option<Timestamp>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub grant_id: Option<String>,
    /// Optimistic-concurrency counter kept by the store; the core never reads it.
    #[serde(skip)]
    pub version: i64,
}

/// What an approval (or opening a request) leads to. Short-lived, moved once: boxing the
/// larger variant would buy nothing.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Pending(AccessRequest),
    Activated(AccessRequest, Grant),
}

impl Outcome {
    pub fn request(&self) -> &AccessRequest {
        match self {
            Outcome::Pending(r) | Outcome::Activated(r, _) => r,
        }
    }
}

/// Why policy refused a step. The messages are what the user reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("you may not request profile {profile:?}: you are not among its requesters")]
    NotRequester { profile: String },
    #[error("profile {profile:?} requires a reason (--reason)")]
    ReasonRequired { profile: String },
    #[error("{requested} is longer than profile {profile:?} allows (at most {max})")]
    DurationTooLong {
        profile: String,
        requested: String,
        max: String,
    },
    #[error("you are not an approver of profile {profile:?}")]
    NotApprover { profile: String },
    #[error("you cannot approve or deny your own request")]
    SelfApproval,
    #[error("you have already approved this request; it needs a different approver")]
    AlreadyApproved,
    #[error("request is {state}, not pending; only pending requests can be decided")]
    NotPending { state: RequestState },
    #[error("request expired at {at} without a decision; ask again")]
    RequestExpired { at: Timestamp },
    #[error("only the requester can cancel a request")]
    NotOwner,
    #[error("grant is {state}, not active")]
    GrantNotActive { state: super::GrantState },
    #[error("grant has not reached its expiry yet")]
    NotYetExpired,
    #[error("you may not revoke this grant: only its holder, the profile's approvers or an admin can")]
    MayNotRevoke,
    #[error("a reason is required (--reason)")]
    DecisionReasonRequired,
}

pub(crate) fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

impl AccessRequest {
    /// Opens a request, or activates it at once when the profile needs no approval.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        id: String,
        profile: &AccessProfile,
        requester: Identity,
        reason: String,
        duration: Duration,
        now: Timestamp,
        request_ttl: Duration,
        grant_id: impl FnOnce() -> String,
    ) -> Result<Outcome, Refusal> {
        if !profile.may_request(&requester) {
            return Err(Refusal::NotRequester {
                profile: profile.name.clone(),
            });
        }
        let reason = reason.trim().to_owned();
        if profile.require_reason && reason.is_empty() {
            return Err(Refusal::ReasonRequired {
                profile: profile.name.clone(),
            });
        }
        if duration > profile.max_duration {
            return Err(Refusal::DurationTooLong {
                profile: profile.name.clone(),
                requested: format_duration(duration),
                max: format_duration(profile.max_duration),
            });
        }
        let request = AccessRequest {
            id,
            profile: profile.name.clone(),
            requester,
            reason,
            duration,
            state: RequestState::Pending,
            created_at: now,
            pending_until: now.saturating_add(request_ttl),
            approvals: Vec::new(),
            approvals_required: profile.approvals_required,
            decided_at: None,
            decided_by: None,
            decision_reason: None,
            grant_id: None,
            version: 0,
        };
        Ok(request.activate_when_approved(now, "policy", grant_id))
    }

    /// Records one approval; the request activates when it has enough distinct approvers.
    pub fn approve(
        mut self,
        profile: &AccessProfile,
        approver: &Identity,
        reason: Option<String>,
        now: Timestamp,
        grant_id: impl FnOnce() -> String,
    ) -> Result<Outcome, Refusal> {
        self.ensure_decidable(profile, approver, now)?;
        if self.approvals.iter().any(|a| a.approver == approver.user) {
            return Err(Refusal::AlreadyApproved);
        }
        // The profile may have been tightened since the request was opened: what activates
        // must satisfy the policy in force now.
        if !profile.may_request(&self.requester) {
            return Err(Refusal::NotRequester {
                profile: profile.name.clone(),
            });
        }
        if self.duration > profile.max_duration {
            return Err(Refusal::DurationTooLong {
                profile: profile.name.clone(),
                requested: format_duration(self.duration),
                max: format_duration(profile.max_duration),
            });
        }
        self.approvals_required = self.approvals_required.max(profile.approvals_required);
        self.approvals.push(Approval {
            approver: approver.user.clone(),
            at: now,
            reason: non_empty(reason),
        });
        let by = approver.user.clone();
        Ok(self.activate_when_approved(now, &by, grant_id))
    }

    pub fn deny(
        mut self,
        profile: &AccessProfile,
        by: &Identity,
        reason: String,
        now: Timestamp,
    ) -> Result<AccessRequest, Refusal> {
        self.ensure_decidable(profile, by, now)?;
        let reason = non_empty(Some(reason)).ok_or(Refusal::DecisionReasonRequired)?;
        self.state = RequestState::Denied;
        self.decided_at = Some(now);
        self.decided_by = Some(by.user.clone());
        self.decision_reason = Some(reason);
        Ok(self)
    }

    pub fn cancel(mut self, by: &Identity, now: Timestamp) -> Result<AccessRequest, Refusal> {
        if by.user != self.requester.user {
            return Err(Refusal::NotOwner);
        }
        if self.state != RequestState::Pending {
            return Err(Refusal::NotPending { state: self.state });
        }
        self.state = RequestState::Cancelled;
        self.decided_at = Some(now);
        self.decided_by = Some(by.user.clone());
        Ok(self)
    }

    /// A pending request that nobody decided within its time-to-live.
    pub fn expire_pending(mut self, now: Timestamp) -> Result<AccessRequest, Refusal> {
        if self.state != RequestState::Pending {
            return Err(Refusal::NotPending { state: self.state });
        }
        if now < self.pending_until {
            return Err(Refusal::NotYetExpired);
        }
        self.state = RequestState::Expired;
        self.decided_at = Some(now);
        self.decided_by = Some("system".into());
        self.decision_reason = Some("nobody decided before the request expired".into());
        Ok(self)
    }

    /// Mirrors the end of this request's grant.
    pub fn grant_ended(mut self, grant: &Grant) -> AccessRequest {
        self.state = match grant.state {
            super::GrantState::Active => self.state,
            super::GrantState::Expired => RequestState::Expired,
            super::GrantState::Revoked => RequestState::Revoked,
        };
        self
    }

    fn ensure_decidable(&self, profile: &AccessProfile, who: &Identity, now: Timestamp) -> Result<(), Refusal> {
        if self.state != RequestState::Pending {
            return Err(Refusal::NotPending { state: self.state });
        }
        if now >= self.pending_until {
            return Err(Refusal::RequestExpired { at: self.pending_until });
        }
        if who.user == self.requester.user {
            return Err(Refusal::SelfApproval);
        }
        if !profile.may_approve(who) {
            return Err(Refusal::NotApprover {
                profile: profile.name.clone(),
            });
        }
        Ok(())
    }

    fn activate_when_approved(mut self, now: Timestamp, by: &str, grant_id: impl FnOnce() -> String) -> Outcome {
        if (self.approvals.len() as u64) < u64::from(self.approvals_required) {
            return Outcome::Pending(self);
        }
        let grant = Grant::start(grant_id(), &self, now);
        self.state = RequestState::Active;
        self.decided_at = Some(now);
        self.decided_by = Some(by.to_owned());
        self.grant_id = Some(grant.id.clone());
        Outcome::Activated(self, grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{HttpScope, Principal};

    fn profile(max_hours: u64, required: u32, requesters: &[&str]) -> AccessProfile {
        AccessProfile {
            name: "p".into(),
            description: String::new(),
            max_duration: Duration::from_secs(max_hours * 3600),
            requesters: requesters.iter().map(|r| r.parse::<Principal>().unwrap()).collect(),
            approvers: vec!["group:leads".parse().unwrap()],
            approvals_required: required,
            require_reason: false,
            ssh: None,
            kube: None,
            http: Some(HttpScope {
                apps: vec![crate::access::AppScope::unrestricted("grafana")],
            }),
            notify: Vec::new(),
            approve_in_chat: false,
        }
    }

    #[test]
    fn approval_follows_the_profile_in_force_now() {
        let now = Timestamp::from_millis(1_000);
        let alice = Identity::new("alice", ["dba"]);
        let (bob, carol) = (Identity::new("bob", ["leads"]), Identity::new("carol", ["leads"]));
        let open = |p: &AccessProfile| {
            let out = AccessRequest::open(
                "r".into(),
                p,
                alice.clone(),
                String::new(),
                Duration::from_secs(8 * 3600),
                now,
                Duration::from_secs(3600),
                || "g".into(),
            );
            match out.unwrap() {
                Outcome::Pending(r) => r,
                Outcome::Activated(..) => panic!("needs approval"),
            }
        };
        let r = open(&profile(8, 1, &["group:dba"]));
        let shorter = profile(2, 1, &["group:dba"]);
        assert!(matches!(
            r.clone().approve(&shorter, &bob, None, now, || "g".into()),
            Err(Refusal::DurationTooLong { .. })
        ));
        let no_longer = profile(8, 1, &["group:sre"]);
        assert!(matches!(
            r.clone().approve(&no_longer, &bob, None, now, || "g".into()),
            Err(Refusal::NotRequester { .. })
        ));
        let stricter = profile(8, 2, &["group:dba"]);
        let Ok(Outcome::Pending(r)) = r.approve(&stricter, &bob, None, now, || "g".into()) else {
            panic!("one approval no longer suffices")
        };
        assert!(matches!(
            r.approve(&stricter, &carol, None, now, || "g".into()),
            Ok(Outcome::Activated(..))
        ));
    }
}
