//! The breaker's decisions with no host in sight: settings, the shared record and its
//! transitions, windows, outcome classification, replies and the byte encoding. Nothing
//! here imports proxy-wasm or reads a clock; time is always an argument.

pub mod breaker;
pub mod bytes;
pub mod cache;
pub mod codec;
pub mod config;
pub mod config_error;
pub mod control;
pub mod duration;
pub mod fallback;
pub mod fleet;
pub mod headroom;
pub mod history;
pub mod hosts;
pub mod limits;
pub mod outcome;
pub mod probe;
pub mod probe_spec;
pub mod registry;
pub mod reply;
pub mod retry_after;
pub mod settings;
pub mod state;
pub mod store;
pub mod timeline;
pub mod view;
pub mod window;
