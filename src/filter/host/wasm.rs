//! The real host: the proxy-wasm ABI imports, each wrapped to be total. Whatever status
//! Envoy returns becomes a [`HostError`], never a panic: the SDK's own wrappers panic on
//! statuses they do not expect, and a panic traps the worker's VM, so the filter declares
//! the imports itself.

use std::ptr::{null, null_mut};

use crate::core::reply::Answer;

use super::{Buffer, GrpcTarget, Host, HostError, Map, MetricKind, Saved};

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const EMPTY: u32 = 7;
const CAS_MISMATCH: u32 = 8;

/// Log levels of the proxy-wasm ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug = 1,
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
    fn proxy_register_shared_queue(name: *const u8, name_size: usize, out_id: *mut u32) -> u32;
    fn proxy_enqueue_shared_queue(id: u32, value: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(id: u32, out: *mut *mut u8, out_size: *mut usize) -> u32;
    fn proxy_grpc_send(token: u32, data: *const u8, size: usize, end_stream: u32) -> u32;
    fn proxy_grpc_cancel(token: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
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
///
/// # Safety
/// `data` must be null or a pointer the host got from `proxy_on_memory_allocate` for
/// exactly `size` bytes, not owned by anything else.
unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        // SAFETY: per this function's contract, `data` came from the SDK's allocator as a
        // `Vec<u8>` with capacity and length `size`, and nothing else owns it.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }
}

/// Reads a host value the host returns through an allocated buffer: `call` gets the two
/// out-parameters and returns the status.
fn fetch(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, HostError> {
    let mut data = null_mut();
    let mut len = 0;
    match call(&mut data, &mut len) {
        // SAFETY: on OK the host has written a buffer it allocated for exactly `len` bytes
        // through `proxy_on_memory_allocate` (or left it null), and hands it to us.
        OK => Ok(unsafe { owned(data, len) }),
        NOT_FOUND | EMPTY => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Writes a line to Envoy's log; a refused log line has nowhere else to go.
pub fn log(level: Level, message: &str) {
    // SAFETY: the pointer and length describe `message`, which outlives the call; the host
    // only reads them.
    unsafe {
        proxy_log(level as u32, message.as_ptr(), message.len());
    }
}

/// The host Envoy gives the filter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wasm;

impl Host for Wasm {
    fn now_ms(&self) -> u64 {
        let mut nanos = 0u64;
        // SAFETY: `nanos` is a valid, writable u64 for the duration of the call.
        match check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) }) {
            Ok(()) => nanos / 1_000_000,
            Err(_) => 0,
        }
    }

    fn property(&self, path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        // SAFETY: `path` outlives the call; the out-parameters are valid locals of `fetch`.
        fetch(|out, len| unsafe { proxy_get_property(path.as_ptr(), path.len(), out, len) })
    }

    fn header(&self, map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        // SAFETY: `name` outlives the call; the out-parameters are valid locals of `fetch`.
        fetch(|out, len| unsafe {
            proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), out, len)
        })
    }

    fn buffer(&self, buffer: Buffer, size: usize) -> Result<Vec<u8>, HostError> {
        // SAFETY: the out-parameters are valid locals of `fetch`.
        fetch(|out, len| unsafe { proxy_get_buffer_bytes(buffer as u32, 0, size, out, len) })
            .map(Option::unwrap_or_default)
    }

    /// Envoy hands back an empty value as a null pointer; the key still exists then.
    fn shared_data(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        let mut data = null_mut();
        let mut len = 0;
        let mut cas = 0u32;
        // SAFETY: `key` outlives the call; `data`, `len` and `cas` are valid, writable locals.
        let status = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut len, &mut cas)
        };
        match status {
            // SAFETY: on OK the host allocated `data` for exactly `len` bytes (or left it null).
            OK => Ok(Some((unsafe { owned(data, len) }.unwrap_or_default(), cas))),
            NOT_FOUND => Ok(None),
            other => Err(HostError(other)),
        }
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<Saved, HostError> {
        // SAFETY: `key` and `value` outlive the call; the host only reads them.
        let status = unsafe {
            proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        };
        match status {
            OK => Ok(Saved::Done),
            CAS_MISMATCH => Ok(Saved::CasMismatch),
            other => Err(HostError(other)),
        }
    }

    fn send_local_response(&self, reply: &Answer, details: &str) -> Result<(), HostError> {
        let headers = serialize_map(&reply.headers);
        let body = &reply.body;
        // SAFETY: every pointer and length describes a slice that outlives the call (the
        // body may be null when empty, which the ABI allows); the host only reads them.
        check(unsafe {
            proxy_send_local_response(
                reply.status,
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
                reply
                    .grpc_status
                    .and_then(|g| i32::try_from(g).ok())
                    .unwrap_or(-1),
            )
        })
    }

    /// This one goes through the SDK: its dispatcher must record the token, or the answer
    /// would arrive for a token it does not know and trap the VM. The SDK only panics on
    /// statuses Envoy's `httpCall` never returns (it answers Ok, BadArgument or
    /// InternalFailure).
    fn http_call(
        &self,
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

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let mut id = 0u32;
        // SAFETY: `name` outlives the call; `id` is a valid, writable local.
        check(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
        Ok(id)
    }

    fn increment_metric(&self, id: u32, by: u64) -> Result<(), HostError> {
        let by = i64::try_from(by).unwrap_or(i64::MAX);
        // SAFETY: plain values, no memory is shared.
        check(unsafe { proxy_increment_metric(id, by) })
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        // SAFETY: plain values, no memory is shared.
        check(unsafe { proxy_record_metric(id, value) })
    }

    fn set_tick_period_ms(&self, period: u32) -> Result<(), HostError> {
        // SAFETY: a plain value, no memory is shared.
        check(unsafe { proxy_set_tick_period_milliseconds(period) })
    }

    fn register_queue(&self, name: &str) -> Result<u32, HostError> {
        let mut id = 0u32;
        // SAFETY: `name` outlives the call; `id` is a valid, writable local.
        check(unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) })?;
        Ok(id)
    }

    fn enqueue(&self, token: u32, message: &[u8]) -> Result<(), HostError> {
        // SAFETY: `message` outlives the call; the host copies it.
        check(unsafe { proxy_enqueue_shared_queue(token, message.as_ptr(), message.len()) })
    }

    fn dequeue(&self, token: u32) -> Result<Option<Vec<u8>>, HostError> {
        // SAFETY: the out-parameters are valid locals of `fetch`.
        fetch(|out, len| unsafe { proxy_dequeue_shared_queue(token, out, len) })
    }

    fn grpc_call(
        &self,
        to: GrpcTarget,
        metadata: &[(&str, &[u8])],
        message: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, HostError> {
        proxy_wasm::hostcalls::dispatch_grpc_call(
            to.grpc_service,
            to.service,
            to.method,
            grpc_metadata(metadata),
            Some(message),
            std::time::Duration::from_millis(u64::from(timeout_ms.max(1))),
        )
        .map_err(|status| HostError(status as u32))
    }

    fn grpc_stream(&self, to: GrpcTarget, metadata: &[(&str, &[u8])]) -> Result<u32, HostError> {
        proxy_wasm::hostcalls::open_grpc_stream(
            to.grpc_service,
            to.service,
            to.method,
            grpc_metadata(metadata),
        )
        .map_err(|status| HostError(status as u32))
    }

    fn grpc_send(&self, token: u32, message: &[u8]) -> Result<(), HostError> {
        // SAFETY: `message` outlives the call; the host copies the bytes before returning.
        check(unsafe { proxy_grpc_send(token, message.as_ptr(), message.len(), 0) })
    }

    fn grpc_cancel(&self, token: u32) -> Result<(), HostError> {
        // SAFETY: a plain value, no memory is shared.
        check(unsafe { proxy_grpc_cancel(token) })
    }

    fn resume_request(&self) -> Result<(), HostError> {
        // SAFETY: a plain value (the ABI's stream type 0, the request), no memory is shared.
        check(unsafe { proxy_continue_stream(0) })
    }
}

/// The SDK's gRPC wrappers, for the same reason as `http_call`: they register the token
/// with the SDK's dispatcher, without which the answer would reach no context. They panic
/// on a status other than Ok, ParseFailure and InternalFailure. Envoy 1.40's
/// `Context::grpcCall`/`grpcStream` return ParseFailure (a bare cluster name Envoy does not
/// know), BadArgument (the async client for the `GrpcService` cannot be made: a
/// `GrpcService` that does not parse as one, which `fleet::etcd::grpc_service` rules out
/// by building only `envoy_grpc { cluster_name }` from a checked name) or
/// InternalFailure (the stream could not start: unknown cluster at send time); the ABI
/// layer adds InvalidMemoryAccess only for pointers outside the VM's memory, which slices
/// never are. So the panicking statuses cannot occur for what the filter sends.
fn grpc_metadata<'a>(metadata: &[(&'a str, &'a [u8])]) -> Vec<(&'a str, &'a [u8])> {
    metadata.to_vec()
}

/// The ABI's header map layout: count, then each name and value length, then each name
/// and value NUL-terminated.
fn serialize_map(pairs: &[(String, String)]) -> Vec<u8> {
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
