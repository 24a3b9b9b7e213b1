use std::collections::HashMap;
use std::sync::Arc;

use super::identity::{Identity, Principal};
use super::profile::AccessProfile;

/// The validated access profiles, looked up by name, and who administers the proxy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    profiles: Vec<Arc<AccessProfile>>,
    by_name: HashMap<String, usize>,
    admins: Vec<Principal>,
}

impl Policy {
    /// Profiles must already be validated (unique names); see `config`.
    pub fn new(profiles: Vec<AccessProfile>, admins: Vec<Principal>) -> Self {
        let profiles: Vec<_> = profiles.into_iter().map(Arc::new).collect();
        let by_name = profiles.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
        Policy {
            profiles,
            by_name,
            admins,
        }
    }

    pub fn profile(&self, name: &str) -> Option<&Arc<AccessProfile>> {
        self.by_name.get(name).map(|&i| &self.profiles[i])
    }

    pub fn profiles(&self) -> &[Arc<AccessProfile>] {
        &self.profiles
    }

    pub fn is_admin(&self, who: &Identity) -> bool {
        Principal::any_matches(&self.admins, who)
    }

    pub fn admins(&self) -> &[Principal] {
        &self.admins
    }
}
