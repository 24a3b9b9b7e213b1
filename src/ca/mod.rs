//! Keys and certificates the proxy makes for itself.

pub mod x509;
