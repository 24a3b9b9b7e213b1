//! The Kubernetes request-attribute parser against arbitrary input: it must never panic, and
//! a path it accepts must be plain (no escapes, no empty or dot segments) and read the same
//! way twice. Input: `METHOD\nPATH\nQUERY`.
#![no_main]

use jitgate::front::kube::attrs::{decode_path, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let method = parts.next().unwrap_or("GET");
    let raw = parts.next().unwrap_or("/");
    let query = parts.next();
    if let Ok(decoded) = decode_path(raw) {
        assert!(!decoded.contains('%'), "{raw:?} decoded to {decoded:?}");
        let inner = decoded.trim_matches('/');
        assert!(
            inner.is_empty() || inner.split('/').all(|s| !s.is_empty() && s != "." && s != ".."),
            "{raw:?} decoded to {decoded:?}"
        );
        assert_eq!(decode_path(&decoded).unwrap(), decoded);
        assert_eq!(parse(method, &decoded, query), parse(method, &decoded, query));
    }
});
