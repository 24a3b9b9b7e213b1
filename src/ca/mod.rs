//! Keys and certificates the proxy makes for itself.

pub mod ssh;
pub mod x509;
