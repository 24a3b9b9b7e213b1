//! Protocol code lives here only: the TLS listener and the HTTP API. Front-ends translate
//! what arrives into calls on the broker and map its errors onto the wire exactly once.

pub mod api;
pub mod apps;
pub mod h1pool;
pub mod kube;
mod read_ahead;
pub mod shards;
pub mod ssh;
pub mod throttle;
pub mod tls;
pub mod upstream_tls;
pub mod web;
