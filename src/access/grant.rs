use std::fmt;

use serde::{Deserialize, Serialize};

use super::identity::Identity;
use super::policy::Policy;
use super::request::{non_empty, AccessRequest, Refusal};
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantState {
    Active,
    Expired,
    Revoked,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::Expired => "expired",
            GrantState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => GrantState::Active,
            "expired" => GrantState::Expired,
            "revoked" => GrantState::Revoked,
            _ => return None,
        })
    }
}

impl fmt::Display for GrantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The right, for a while, to do what one profile allows. Only an active grant that has not
/// reached `expires_at` authorizes anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub id: String,
    pub request_id: String,
    pub profile: String,
    pub user: String,
    pub groups: Vec<String>,
    pub reason: String,
    pub state: GrantState,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub ended_by: Option<String>,
    pub end_reason: Option<String>,
    #[serde(skip)]
    pub version: i64,
}

impl Grant {
    pub(super) fn start(id: String, request: &AccessRequest, now: Timestamp) -> Grant {
        Grant {
            id,
            request_id: request.id.clone(),
            profile: request.profile.clone(),
            user: request.requester.user.clone(),
            groups: request.requester.groups.clone(),
            reason: request.reason.clone(),
            state: GrantState::Active,
            created_at: now,
            expires_at: now.saturating_add(request.duration),
            ended_at: None,
            ended_by: None,
            end_reason: None,
            version: 0,
        }
    }

    pub fn is_live(&self, now: Timestamp) -> bool {
        self.state == GrantState::Active && now < self.expires_at
    }

    /// Its holder, the profile's approvers and admins may end a grant early.
    pub fn revoke(
        self,
        policy: &Policy,
        by: &Identity,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<Grant, Refusal> {
        let approver = policy.profile(&self.profile).is_some_and(|p| p.may_approve(by));
        if by.user != self.user && !approver && !policy.is_admin(by) {
            return Err(Refusal::MayNotRevoke);
        }
        self.withdraw(&by.user, reason, now)
    }

    /// Ends the grant on an operator's authority rather than by policy: the admin CLI's
    /// `users disable` withdraws every active grant of the disabled user.
    pub fn withdraw(mut self, by: &str, reason: Option<String>, now: Timestamp) -> Result<Grant, Refusal> {
        if self.state != GrantState::Active {
            return Err(Refusal::GrantNotActive { state: self.state });
        }
        // Past its expiry it has already ended, swept or not: the record must say expired.
        if now >= self.expires_at {
            return Err(Refusal::GrantNotActive {
                state: GrantState::Expired,
            });
        }
        self.state = GrantState::Revoked;
        self.ended_at = Some(now);
        self.ended_by = Some(by.to_owned());
        self.end_reason = non_empty(reason);
        Ok(self)
    }

    pub fn expire(mut self, now: Timestamp) -> Result<Grant, Refusal> {
        if self.state != GrantState::Active {
            return Err(Refusal::GrantNotActive { state: self.state });
        }
        if now < self.expires_at {
            return Err(Refusal::NotYetExpired);
        }
        self.state = GrantState::Expired;
        self.ended_at = Some(now);
        self.ended_by = Some("system".into());
        self.end_reason = Some("reached its expiry".into());
        Ok(self)
    }
}
