//! Who is calling: local users (argon2id) for the embedded default and proxy-issued tokens
//! (ES256 JWTs) that every identity source ends in.

pub mod local;
pub mod oidc;
pub mod session;
pub mod token;

pub use token::{Claims, TokenError, TokenIssuer};
