//! `pulsecheck-agent`: see `src/agent.rs` of the pulsecheck crate for the Lease it writes.
fn main() {}
