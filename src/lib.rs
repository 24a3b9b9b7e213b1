//! jitgate: an identity-aware access proxy for just-in-time, just-enough-privilege access.
//!
//! The modules follow the boxes of the design: `access` is the protocol-free core, `store`
//! and `audit` keep state, `identity` and `ca` mint credentials, `live` cuts connections,
//! `notify` tells Slack and webhooks, `front` holds every piece of protocol code and `cli` the client commands.

pub mod access;
pub mod audit;
pub mod broker;
pub mod ca;
pub mod cli;
pub mod config;
pub mod front;
pub mod identity;
pub mod live;
pub mod notify;
pub mod server;
pub mod store;
pub mod time;

/// The hasher of the caches and maps the request paths look up on every request, keyed by
/// cookies, session ids and names: std's SipHash took about 1,600 instructions a proxied
/// request, mostly on a few-hundred-byte app cookie. foldhash is seeded per map but does not
/// claim to resist deliberate flooding: use it only where what goes in was checked first
/// (signed cookies, tokens, session hashes, configured names), as every use here does.
pub type FastHash = foldhash::quality::RandomState;
