//! etcd v3 as the fleet speaks it, by job: the messages declared by hand with prost
//! ([`messages`]), the requests built from them ([`requests`]), and the bounded decoding of
//! etcd's answers ([`answers`]). Everything is re-exported here, so callers name
//! `fleet::etcd::X` whichever file `X` lives in.

pub mod answers;
pub mod messages;
pub mod requests;

pub use answers::*;
pub use messages::*;
pub use requests::*;

#[cfg(test)]
mod tests;
