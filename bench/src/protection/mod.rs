//! `make bench-protection`: outages played against Envoy with no protection, with Envoy's
//! own tools and with the breaker, side by side, measured from the users' side and the
//! upstream's.

pub mod load;
pub mod plot;
pub mod scenario;
pub mod summary;
pub mod upstream;
pub mod variants;
