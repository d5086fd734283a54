//! The small school system the sample Envoy config fronts (auth, school and student
//! services), plus what they share: a server loop with seed 003's fault switch and a
//! plain HTTP/1.1 client, which the integration tests use too.

pub mod client;
pub mod docker;
pub mod etcd;
pub mod fault;
pub mod fleet;
pub mod server;
pub mod stack;

/// Reads `--name value` from the command line.
pub fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}
