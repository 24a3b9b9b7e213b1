use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Who is acting: a user name and the groups the identity source vouched for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn new(user: impl Into<String>, groups: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Identity {
            user: user.into(),
            groups: groups.into_iter().map(Into::into).collect(),
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// A subject in policy: `user:alice` or `group:dba`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    User(String),
    Group(String),
}

impl Principal {
    pub fn matches(&self, who: &Identity) -> bool {
        match self {
            Principal::User(u) => *u == who.user,
            Principal::Group(g) => who.in_group(g),
        }
    }

    pub fn any_matches(list: &[Principal], who: &Identity) -> bool {
        list.iter().any(|p| p.matches(who))
    }
}

impl FromStr for Principal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a principal (use \"user:NAME\" or \"group:NAME\")");
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        match kind {
            "user" => Ok(Principal::User(name.to_owned())),
            "group" => Ok(Principal::Group(name.to_owned())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User(u) => write!(f, "user:{u}"),
            Principal::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl Serialize for Principal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_parse_and_match() {
        let alice = Identity::new("alice", ["dba"]);
        assert!("user:alice".parse::<Principal>().unwrap().matches(&alice));
        assert!("group:dba".parse::<Principal>().unwrap().matches(&alice));
        assert!(!"group:dba-leads".parse::<Principal>().unwrap().matches(&alice));
        for bad in ["alice", "role:x", "user:", "group:a b"] {
            assert!(bad.parse::<Principal>().is_err(), "{bad}");
        }
    }
}
