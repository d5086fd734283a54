//! The fleet's unary calls to etcd: where they go, with which token, and what each call
//! in flight is for, so its answer (`answers.rs`) finds its way.

use std::collections::HashMap;

use crate::core::fleet::etcd::{self, method};
use crate::core::fleet::keys;
use crate::core::fleet::merge::Progress;
use crate::core::fleet::record::FleetRecord;
use crate::core::fleet::settings::FleetSettings;
use crate::core::fleet::vote::Vote;

use crate::filter::host::{GrpcTarget, Host};

use super::shared_link::SharedLink;
use super::watch::RANGE_LIMIT;

/// A unary call in flight, by what its answer is for.
#[derive(Debug, Clone)]
pub enum Pending {
    /// A claim sent as this record, for this breaker.
    Publish {
        breaker: String,
        sent: FleetRecord,
    },
    /// Probes that ended here, sent as the half-open record with the fleet's new count.
    Progress {
        breaker: String,
        sent: FleetRecord,
        progress: Progress,
    },
    /// This member's vote on a breaker, put with this lease.
    Vote {
        breaker: String,
        sent: Vote,
        lease: i64,
    },
    /// This member's vote on a breaker, deleted.
    Unvote {
        breaker: String,
    },
    /// The holder's first read of the prefix, in its connection attempt.
    Range(u32),
    /// A context's one read of the prefix when it starts.
    Peek,
    LeaseGrant,
    /// The member key's put; its answer only matters as a sign of life.
    Member,
    /// The holder's quorum probe (a linearizable read).
    Quorum,
    /// `Authenticate` before the first read of this connection attempt.
    Auth(u32),
    /// `Authenticate` again while connected, after etcd refused the token.
    Reauth,
}

/// Where a call to etcd goes: the configured gRPC service, the service and the method.
pub fn target<'a>(settings: &'a FleetSettings, service: &'a str, name: &'a str) -> GrpcTarget<'a> {
    GrpcTarget {
        grpc_service: &settings.grpc_service,
        service,
        method: name,
    }
}

/// The initial metadata of every etcd call: the authentication token, if any.
pub fn metadata(token: &str) -> Vec<(&str, &[u8])> {
    if token.is_empty() {
        Vec::new()
    } else {
        vec![(etcd::TOKEN_METADATA, token.as_bytes())]
    }
}

/// The calls in flight, by token.
#[derive(Default)]
pub struct Calls {
    in_flight: HashMap<u32, Pending>,
}

impl Calls {
    /// A unary call to etcd, remembered by what its answer is for.
    pub fn send(
        &mut self,
        host: &impl Host,
        settings: &FleetSettings,
        to: (&str, &str),
        message: &[u8],
        pending: Pending,
    ) -> Result<(), u32> {
        let timeout = u32::try_from(settings.timeout_ms).unwrap_or(u32::MAX);
        let auth = SharedLink::load(host).token;
        let token = host
            .grpc_call(
                target(settings, to.0, to.1),
                &metadata(&auth),
                message,
                timeout,
            )
            .map_err(|e| e.0)?;
        self.in_flight.insert(token, pending);
        Ok(())
    }

    /// The first read of the whole prefix (a connection attempt's, or a context's start).
    pub fn read_all(
        &mut self,
        host: &impl Host,
        settings: &FleetSettings,
        pending: Pending,
    ) -> Result<(), u32> {
        let range = etcd::range_prefix(keys::everything(&settings.prefix).as_bytes(), RANGE_LIMIT);
        self.send(host, settings, (method::KV, method::RANGE), &range, pending)
    }

    /// What the call with `token` was for, once: its answer is being handled.
    pub fn answered(&mut self, token: u32) -> Option<Pending> {
        self.in_flight.remove(&token)
    }

    /// Whether a new token is being asked for already.
    pub fn reauthenticating(&self) -> bool {
        self.in_flight
            .values()
            .any(|p| matches!(p, Pending::Reauth))
    }
}
