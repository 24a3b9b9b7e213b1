use std::collections::HashMap;
use std::sync::Arc;

use super::identity::{Identity, Principal};
use super::profile::AccessProfile;

/// The validated access profiles, looked up by name, and who administers the proxy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    profiles: Vec<Arc<AccessProfile>>,
    by_name: HashMap<String, usize>,
    /// Which profiles each requester principal may request, so that finding a caller's
    /// requestable profiles looks at their own few entries, not at every profile.
    by_requester_user: HashMap<String, Vec<usize>>,
    by_requester_group: HashMap<String, Vec<usize>>,
    admins: Vec<Principal>,
}

impl Policy {
    /// Profiles must already be validated (unique names); see `config`.
    pub fn new(profiles: Vec<AccessProfile>, admins: Vec<Principal>) -> Self {
        let profiles: Vec<_> = profiles.into_iter().map(Arc::new).collect();
        let by_name = profiles.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
        let (mut by_requester_user, mut by_requester_group) = (HashMap::new(), HashMap::new());
        for (i, p) in profiles.iter().enumerate() {
            for r in &p.requesters {
                let (map, name) = match r {
                    Principal::User(u) => (&mut by_requester_user, u),
                    Principal::Group(g) => (&mut by_requester_group, g),
                };
                map.entry(name.clone()).or_insert_with(Vec::new).push(i);
            }
        }
        Policy {
            profiles,
            by_name,
            by_requester_user,
            by_requester_group,
            admins,
        }
    }

    /// The profiles `who` may request, each once, in configuration order.
    pub fn requestable_by(&self, who: &Identity) -> Vec<&Arc<AccessProfile>> {
        let as_user = self.by_requester_user.get(&who.user);
        let as_member = who.groups.iter().filter_map(|g| self.by_requester_group.get(g));
        let mut found: Vec<usize> = as_user.into_iter().chain(as_member).flatten().copied().collect();
        found.sort_unstable();
        found.dedup();
        found.into_iter().map(|i| &self.profiles[i]).collect()
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
