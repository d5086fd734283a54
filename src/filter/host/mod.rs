//! The host as the shell sees it: one small trait, [`Host`], for every call the filter
//! makes into Envoy (clock, properties, headers, bodies, shared data, local replies,
//! callouts, stats, shared queues). [`wasm::Wasm`] makes the real calls; the shell's tests
//! put an in-memory double in its place and count what a request costs.

use crate::core::reply::Answer;

pub mod wasm;

#[cfg(test)]
pub mod fake;

/// A host call that did not succeed, with the status it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

/// Header maps of the current stream, or of the answer to an HTTP callout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Map {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
    CallResponseHeaders = 6,
}

/// Buffers the filter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    RequestBody = 0,
    ResponseBody = 1,
    /// The message of a gRPC answer or stream message, in the callback that announces it.
    GrpcReceive = 5,
    PluginConfiguration = 7,
}

/// Outcome of a shared-data write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Done,
    CasMismatch,
}

/// Kind of an Envoy stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// Where a gRPC call or stream goes: the serialized `GrpcService` naming the Envoy
/// cluster (a bare name can make Envoy abort), the service and the method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcTarget<'a> {
    pub grpc_service: &'a str,
    pub service: &'a str,
    pub method: &'a str,
}

/// Every call the shell makes into the host, each one total: a refused call is a
/// [`HostError`], never a panic.
pub trait Host {
    /// Wall-clock time in milliseconds since the Unix epoch; 0 if the host refuses.
    fn now_ms(&self) -> u64;
    /// A property given as its path segments joined by NUL bytes; `None` when absent.
    fn property(&self, path: &[u8]) -> Result<Option<Vec<u8>>, HostError>;
    /// One header of the current stream; `None` when absent.
    fn header(&self, map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// Up to `size` bytes of a buffer; empty when there is none.
    fn buffer(&self, buffer: Buffer, size: usize) -> Result<Vec<u8>, HostError>;
    /// Shared-data bytes of `key` and their compare-and-swap stamp; `None` when absent.
    fn shared_data(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError>;
    /// Writes `value` under `key` if its stamp is still `cas` (0: unconditionally).
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<Saved, HostError>;
    /// Answers the current request locally; `details` shows in Envoy's access log.
    fn send_local_response(&self, reply: &Answer, details: &str) -> Result<(), HostError>;
    /// Sends an HTTP request to an Envoy cluster; the answer arrives at the root context
    /// with the returned token.
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, HostError>;
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    fn increment_metric(&self, id: u32, by: u64) -> Result<(), HostError>;
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError>;
    fn set_tick_period_ms(&self, period: u32) -> Result<(), HostError>;
    /// Registers a queue under `name` for this VM; notices enqueued on it wake this root
    /// context.
    fn register_queue(&self, name: &str) -> Result<u32, HostError>;
    /// Adds `message` to the queue with `token`.
    fn enqueue(&self, token: u32, message: &[u8]) -> Result<(), HostError>;
    /// Takes the next message off the queue with `token`; `None` when it is empty.
    fn dequeue(&self, token: u32) -> Result<Option<Vec<u8>>, HostError>;
    /// Sends one unary gRPC call; the answer (or the timeout, as status 14) arrives at the
    /// calling context with the returned token. `timeout_ms` must not be 0 (no timeout).
    fn grpc_call(
        &self,
        to: GrpcTarget,
        metadata: &[(&str, &[u8])],
        message: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, HostError>;
    /// Opens a gRPC stream; its messages and its close arrive at the calling context.
    fn grpc_stream(&self, to: GrpcTarget, metadata: &[(&str, &[u8])]) -> Result<u32, HostError>;
    /// Sends one message on an open stream.
    fn grpc_send(&self, token: u32, message: &[u8]) -> Result<(), HostError>;
    /// Cancels a call or a stream; no callback follows.
    fn grpc_cancel(&self, token: u32) -> Result<(), HostError>;
    /// Lets a request paused in its headers go on to the upstream.
    fn resume_request(&self) -> Result<(), HostError>;
}

/// This Envoy's node id (`--service-node` or the bootstrap's `node.id`), when set.
pub fn node_id(host: &impl Host) -> Option<String> {
    // `xds.node` is the attribute's name since Envoy 1.2x; `node` the older one.
    [&b"xds\0node\0id"[..], b"node\0id"]
        .iter()
        .find_map(|path| {
            let bytes = host.property(path).ok().flatten()?;
            String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
        })
}

/// A header value as a number, as status headers carry them.
pub fn header_u32(host: &impl Host, map: Map, name: &str) -> Option<u32> {
    let value = host.header(map, name).ok().flatten()?;
    std::str::from_utf8(&value).ok()?.trim().parse().ok()
}

/// An integer property (8 bytes, little-endian), such as `response.code`.
pub fn property_u64(host: &impl Host, path: &[u8]) -> Option<u64> {
    let bytes = host.property(path).ok().flatten()?;
    let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}
