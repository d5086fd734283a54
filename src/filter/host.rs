//! Every host call the filter makes, each one total: whatever status the host returns
//! becomes a [`HostError`], never a panic. The SDK's own wrappers panic on statuses they do
//! not expect, and a panic traps the worker's VM, so the filter declares the imports itself.

use std::ptr::{null, null_mut};

/// A host call that did not succeed, with the status it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

const BUFFER_REQUEST_BODY: u32 = 0;
const BUFFER_RESPONSE_BODY: u32 = 1;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const METRIC_COUNTER: u32 = 0;
const METRIC_GAUGE: u32 = 1;

/// Log levels of the proxy-wasm ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info = 2,
    Warn = 3,
    Error = 4,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
        out_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, out_id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

fn check(status: u32) -> Result<(), HostError> {
    if status == OK {
        Ok(())
    } else {
        Err(HostError(status))
    }
}

/// Takes ownership of a buffer the host allocated through the SDK's
/// `proxy_on_memory_allocate`, which hands out `Vec` storage of exactly `size` bytes.
unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

/// Writes a line to Envoy's log; a refused log line has nowhere else to go.
pub fn log(level: Level, message: &str) {
    unsafe {
        proxy_log(level as u32, message.as_ptr(), message.len());
    }
}

/// Host wall-clock time in milliseconds since the Unix epoch; 0 if the host refuses.
pub fn now_ms() -> u64 {
    let mut nanos = 0u64;
    match unsafe { check(proxy_get_current_time_nanoseconds(&mut nanos)) } {
        Ok(()) => nanos / 1_000_000,
        Err(_) => 0,
    }
}

pub fn set_tick_period_ms(period: u32) -> Result<(), HostError> {
    unsafe { check(proxy_set_tick_period_milliseconds(period)) }
}

/// Header maps of the current stream, or of the answer to an HTTP callout.
#[derive(Debug, Clone, Copy)]
pub enum Map {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
    CallResponseHeaders = 6,
}

/// One header of the current stream; `None` when absent.
pub fn header(map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    let mut data = null_mut();
    let mut len = 0;
    let status = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut len)
    };
    match status {
        OK => Ok(unsafe { owned(data, len) }),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// The response body chunk the current `on_http_response_body` call is about.
pub fn response_body(size: usize) -> Result<Vec<u8>, HostError> {
    buffer(BUFFER_RESPONSE_BODY, size)
}

/// The request body buffered so far.
pub fn request_body(size: usize) -> Result<Vec<u8>, HostError> {
    buffer(BUFFER_REQUEST_BODY, size)
}

fn buffer(kind: u32, size: usize) -> Result<Vec<u8>, HostError> {
    let mut data = null_mut();
    let mut len = 0;
    let status = unsafe { proxy_get_buffer_bytes(kind, 0, size, &mut data, &mut len) };
    match status {
        OK => Ok(unsafe { owned(data, len) }.unwrap_or_default()),
        NOT_FOUND => Ok(Vec::new()),
        other => Err(HostError(other)),
    }
}

/// Sends an HTTP request to an Envoy cluster; the answer comes to the calling context's
/// `on_http_call_response` with the returned token. This one goes through the SDK: its
/// dispatcher must record the token, or the answer would arrive for a token it does not
/// know and trap the VM. The SDK only panics on statuses Envoy's `httpCall` never returns
/// (it answers Ok, BadArgument or InternalFailure).
pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, HostError> {
    proxy_wasm::hostcalls::dispatch_http_call(
        cluster,
        headers.to_vec(),
        Some(body),
        Vec::new(),
        std::time::Duration::from_millis(u64::from(timeout_ms)),
    )
    .map_err(|status| HostError(status as u32))
}

/// The plugin configuration handed to `on_configure`.
pub fn plugin_configuration(size: usize) -> Result<Vec<u8>, HostError> {
    let mut data = null_mut();
    let mut len = 0;
    let status = unsafe {
        proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, size, &mut data, &mut len)
    };
    match status {
        OK => Ok(unsafe { owned(data, len) }.unwrap_or_default()),
        NOT_FOUND => Ok(Vec::new()),
        other => Err(HostError(other)),
    }
}

/// A property such as `xds.cluster_name`, given as its path; `None` when absent.
/// `path` is the segments joined by NUL bytes, as the ABI wants them.
pub fn property(path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    let mut data = null_mut();
    let mut len = 0;
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut len) };
    match status {
        OK => Ok(unsafe { owned(data, len) }),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// An integer property (8 bytes, little-endian), such as `response.code`.
pub fn property_u64(path: &[u8]) -> Result<Option<u64>, HostError> {
    Ok(property(path)?.and_then(|bytes| {
        let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        Some(u64::from_le_bytes(raw))
    }))
}

/// Shared-data bytes of `key` and their compare-and-swap stamp; `None` when absent. Envoy
/// hands back an empty value as a null pointer; the key still exists then.
pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
    let mut data = null_mut();
    let mut len = 0;
    let mut cas = 0u32;
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut len, &mut cas) };
    match status {
        OK => Ok(Some((unsafe { owned(data, len) }.unwrap_or_default(), cas))),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Outcome of a shared-data write.
pub enum Saved {
    Done,
    CasMismatch,
}

/// Writes `value` under `key` if its stamp is still `cas` (0: unconditionally).
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<Saved, HostError> {
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    match status {
        OK => Ok(Saved::Done),
        CAS_MISMATCH => Ok(Saved::CasMismatch),
        other => Err(HostError(other)),
    }
}

/// Answers the current request locally; `details` shows in Envoy's access log as the
/// response code details. With `grpc_status`, a gRPC caller gets a gRPC answer (HTTP 200,
/// `grpc-status`, and the body as `grpc-message`).
pub fn send_local_response(
    status: u32,
    details: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    grpc_status: Option<u32>,
) -> Result<(), HostError> {
    let headers = serialize_map(headers);
    unsafe {
        check(proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            if body.is_empty() {
                null()
            } else {
                body.as_ptr()
            },
            body.len(),
            headers.as_ptr(),
            headers.len(),
            grpc_status
                .and_then(|g| i32::try_from(g).ok())
                .unwrap_or(-1),
        ))
    }
}

/// Kind of an Envoy stat.
#[derive(Debug, Clone, Copy)]
pub enum MetricKind {
    Counter,
    Gauge,
}

pub fn define_metric(kind: MetricKind, name: &str) -> Result<u32, HostError> {
    let kind = match kind {
        MetricKind::Counter => METRIC_COUNTER,
        MetricKind::Gauge => METRIC_GAUGE,
    };
    let mut id = 0u32;
    unsafe {
        check(proxy_define_metric(
            kind,
            name.as_ptr(),
            name.len(),
            &mut id,
        ))?
    };
    Ok(id)
}

pub fn increment_metric(id: u32, by: u64) -> Result<(), HostError> {
    let by = i64::try_from(by).unwrap_or(i64::MAX);
    unsafe { check(proxy_increment_metric(id, by)) }
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    unsafe { check(proxy_record_metric(id, value)) }
}

/// The ABI's header map layout: count, then each name and value length, then each name
/// and value NUL-terminated.
fn serialize_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        4 + pairs
            .iter()
            .map(|(k, v)| 10 + k.len() + v.len())
            .sum::<usize>(),
    );
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}
