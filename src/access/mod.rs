//! The protocol-free core: who may ask for what, who must approve, and what an active grant
//! lets its holder do. Nothing here touches a socket, a database or the clock; callers pass
//! in `now` and a snapshot of the grants.

mod decision;
mod grant;
mod identity;
mod policy;
mod profile;
mod request;
mod resource;

pub use decision::{app_grants, authorize, ssh_host_granted, Authorized, Denied, GrantIndex};
pub use grant::{Grant, GrantState};
pub use identity::{Identity, Principal};
pub use policy::Policy;
pub use profile::{AccessProfile, AppScope, HttpScope, KubeScope, SshScope};
pub use request::{AccessRequest, Approval, Outcome, Refusal, RequestState};
pub use resource::{Action, Resource};
