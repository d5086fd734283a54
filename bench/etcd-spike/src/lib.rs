//! A spike, not the fleet: one root context per Envoy (elected in shared data) sends
//! `core::fleet::etcd`'s messages to a real etcd through Envoy's gRPC host calls, reads the
//! answers with its decoders and logs each as `SPIKE ...`, which `tests/wire.rs` checks.
//! It proves the hand-declared messages on the wire before the filter shell uses them.

use std::hash::BuildHasher;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::{BufferType, LogLevel};

#[allow(dead_code)]
#[path = "../../../src/core/fleet/etcd.rs"]
mod etcd;
#[allow(dead_code)]
#[path = "../../../src/core/fleet/holder.rs"]
mod holder;
#[allow(dead_code)]
#[path = "../../../src/core/fleet/keys.rs"]
mod keys;

use etcd::{method, Delete, Expect, WatchMessage};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| Box::new(Spike::new(id)));
}}

#[link(wasm_import_module = "env")]
extern "C" {
    // Declared here because the SDK's wrappers panic on statuses they do not expect.
    fn proxy_grpc_send(token: u32, data: *const u8, size: usize, end_stream: bool) -> u32;
    fn proxy_grpc_cancel(token: u32) -> u32;
}

fn send(token: u32, message: &[u8]) -> u32 {
    // SAFETY: the pointer and length come from a live slice that outlives the call; the
    // host copies the bytes before returning.
    unsafe { proxy_grpc_send(token, message.as_ptr(), message.len(), false) }
}

fn cancel(token: u32) -> u32 {
    // SAFETY: takes only an integer.
    unsafe { proxy_grpc_cancel(token) }
}

fn say(text: &str) {
    let _ = hostcalls::log(LogLevel::Info, &format!("SPIKE {text}"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// The unary calls, in order.
const STEPS: [&str; 12] = [
    "auth", "lease", "publish1", "publish2", "publish3", "publish4", "claim1", "claim2", "claim3",
    "member", "range", "release",
];

#[derive(Default)]
struct Config {
    prefix: String,
    cluster: String,
    record_a: Vec<u8>,
    record_b: Vec<u8>,
    user: Option<(String, String)>,
    keepalive_ms: u64,
}

struct Spike {
    id: u64,
    cfg: Config,
    grpc: String,
    holder: bool,
    step: usize,
    token: Option<String>,
    lease: i64,
    first_revision: i64,
    second_revision: i64,
    last_revision: i64,
    watch: Option<u32>,
    keep: Option<u32>,
    started_ms: u64,
    last_heard_ms: u64,
    last_progress_ms: u64,
    last_keep_ms: u64,
    last_kept_ms: u64,
    keep_silence_said: bool,
    reopen_at_ms: u64,
    done: bool,
}

impl Spike {
    fn new(context_id: u32) -> Spike {
        Spike {
            id: u64::from(context_id),
            cfg: Config::default(),
            grpc: String::new(),
            holder: false,
            step: 0,
            token: None,
            lease: 0,
            first_revision: 0,
            second_revision: 0,
            last_revision: 0,
            watch: None,
            keep: None,
            started_ms: 0,
            last_heard_ms: 0,
            last_progress_ms: 0,
            last_keep_ms: 0,
            last_kept_ms: 0,
            keep_silence_said: false,
            reopen_at_ms: 0,
            done: false,
        }
    }

    fn now_ms(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn metadata(&self) -> Vec<(&str, &[u8])> {
        let mut md: Vec<(&str, &[u8])> = Vec::new();
        if let Some(t) = &self.token {
            md.push((etcd::TOKEN_METADATA, t.as_bytes()));
        }
        md
    }

    fn key(&self) -> String {
        keys::decision(&self.cfg.prefix, "school")
    }

    fn slot(&self) -> String {
        keys::slot(&self.cfg.prefix, "school", 2, 0)
    }

    /// One election step through `core::fleet::holder`: a missing key is first written
    /// empty (the host has no atomic create), then every context decides from the stored
    /// bytes, and the holder writes its heartbeat with the stamp it read.
    fn elect(&mut self, now_ms: u64) -> bool {
        const KEY: &str = "spike:holder";
        let (stored, cas) = match hostcalls::get_shared_data(KEY) {
            Ok((None, None)) => {
                let _ = hostcalls::set_shared_data(KEY, Some(b""), None);
                return false;
            }
            Ok((stored, Some(cas))) => (stored, cas),
            _ => return false,
        };
        match holder::step(stored.as_deref(), self.id, now_ms) {
            holder::Step::Hold(bytes) => {
                hostcalls::set_shared_data(KEY, Some(&bytes), Some(cas)).is_ok()
            }
            holder::Step::Follow { .. } => false,
        }
    }

    fn call(&mut self, service: &str, name: &str, message: Vec<u8>) {
        let result = hostcalls::dispatch_grpc_call(
            &self.grpc,
            service,
            name,
            self.metadata(),
            Some(&message),
            Duration::from_millis(2_000),
        );
        if let Err(status) = result {
            say(&format!(
                "step={} dispatch failed {status:?}",
                STEPS[self.step]
            ));
        }
    }

    /// Sends the current step's call; after the last, opens the streams.
    fn next(&mut self) {
        let p = self.cfg.prefix.clone();
        let key = self.key();
        let slot = self.slot();
        match STEPS.get(self.step).copied() {
            Some("auth") => match self.cfg.user.clone() {
                Some((u, pw)) => self.call(
                    method::AUTH,
                    method::AUTHENTICATE,
                    etcd::authenticate(&u, &pw),
                ),
                None => {
                    self.step += 1;
                    self.next();
                }
            },
            Some("lease") => self.call(method::LEASE, method::LEASE_GRANT, etcd::lease_grant(5)),
            Some("publish1") | Some("publish2") => self.call(
                method::KV,
                method::TXN,
                etcd::txn_publish(key.as_bytes(), &self.cfg.record_a, Expect::Absent, &[]),
            ),
            Some("publish3") => self.call(
                method::KV,
                method::TXN,
                etcd::txn_publish(
                    key.as_bytes(),
                    &self.cfg.record_b,
                    Expect::ModRevision(self.first_revision),
                    &[],
                ),
            ),
            Some("publish4") => self.call(
                method::KV,
                method::TXN,
                etcd::txn_publish(
                    key.as_bytes(),
                    &self.cfg.record_a,
                    Expect::ModRevision(self.first_revision),
                    &[],
                ),
            ),
            Some("claim1") | Some("claim2") => self.call(
                method::KV,
                method::TXN,
                etcd::txn_claim_slot(
                    slot.as_bytes(),
                    b"spike",
                    self.lease,
                    key.as_bytes(),
                    self.second_revision,
                    keys::episode_slots(&p, "school", 2).as_bytes(),
                ),
            ),
            Some("claim3") => self.call(
                method::KV,
                method::TXN,
                etcd::txn_claim_slot(
                    keys::slot(&p, "school", 2, 1).as_bytes(),
                    b"spike",
                    self.lease,
                    key.as_bytes(),
                    self.second_revision,
                    keys::episode_slots(&p, "school", 2).as_bytes(),
                ),
            ),
            Some("release") => self.call(
                method::KV,
                method::TXN,
                etcd::txn_publish(
                    key.as_bytes(),
                    &self.cfg.record_a,
                    Expect::ModRevision(self.second_revision),
                    &[Delete::Key(keys::slot(&p, "school", 2, 1).as_bytes())],
                ),
            ),
            Some("member") => self.call(
                method::KV,
                method::PUT,
                etcd::put(keys::member(&p, "spike").as_bytes(), b"{}", self.lease),
            ),
            Some("range") => self.call(
                method::KV,
                method::RANGE,
                etcd::range_prefix(keys::everything(&p).as_bytes(), 100),
            ),
            _ => {
                self.open_watch();
                self.open_keep_alive();
            }
        }
    }

    fn open_watch(&mut self) {
        let mut md = self.metadata();
        md.push((etcd::HAS_LEADER.0, etcd::HAS_LEADER.1.as_bytes()));
        match hostcalls::open_grpc_stream(&self.grpc, method::WATCH, method::WATCH_STREAM, md) {
            Ok(token) => {
                let from = self.last_revision + 1;
                let create =
                    etcd::watch_create(keys::everything(&self.cfg.prefix).as_bytes(), from, false);
                let sent = send(token, &create);
                say(&format!("watch opened from revision {from} send={sent}"));
                self.watch = Some(token);
                self.last_heard_ms = self.now_ms();
            }
            Err(status) => say(&format!("watch open failed {status:?}")),
        }
    }

    fn open_keep_alive(&mut self) {
        let md = self.metadata();
        match hostcalls::open_grpc_stream(&self.grpc, method::LEASE, method::LEASE_KEEP_ALIVE, md) {
            Ok(token) => {
                self.keep = Some(token);
                self.keep_alive();
            }
            Err(status) => say(&format!("keep-alive open failed {status:?}")),
        }
    }

    fn keep_alive(&mut self) {
        if let Some(token) = self.keep {
            send(token, &etcd::lease_keep_alive(self.lease));
            self.last_keep_ms = self.now_ms();
        }
    }

    fn answered(&mut self, status: u32, body: &[u8]) {
        let name = STEPS.get(self.step).copied().unwrap_or("?");
        if status != 0 {
            say(&format!("step={name} status={status}"));
            self.done = true;
            return;
        }
        match name {
            "auth" => match etcd::auth_token(body) {
                Ok(t) => {
                    say(&format!("step=auth token_len={}", t.len()));
                    self.token = Some(t);
                }
                Err(e) => say(&format!("step=auth undecodable: {e}")),
            },
            "lease" => match etcd::lease_granted(body) {
                Ok((id, ttl)) => {
                    say(&format!("step=lease id={id} ttl={ttl}"));
                    self.lease = id;
                }
                Err(e) => say(&format!("step=lease undecodable: {e}")),
            },
            "member" => say(&format!("step=member bytes={}", body.len())),
            "range" => match etcd::range_answer(body) {
                Ok((revision, kvs)) => {
                    let names: Vec<String> = kvs
                        .iter()
                        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                        .collect();
                    say(&format!(
                        "step=range revision={revision} count={} keys={}",
                        kvs.len(),
                        names.join(",")
                    ));
                    self.last_revision = revision;
                }
                Err(e) => say(&format!("step=range undecodable: {e}")),
            },
            _ => match etcd::txn_outcome(body) {
                Ok(o) => {
                    let kvs: Vec<String> = o
                        .kvs
                        .iter()
                        .map(|kv| {
                            format!(
                                "{}@{}:{}",
                                String::from_utf8_lossy(&kv.key),
                                kv.mod_revision,
                                hex(&kv.value)
                            )
                        })
                        .collect();
                    say(&format!(
                        "step={name} succeeded={} revision={} kvs={}",
                        o.succeeded,
                        o.revision,
                        kvs.join(";")
                    ));
                    if name == "publish1" {
                        self.first_revision = o.revision;
                    }
                    if name == "publish3" {
                        self.second_revision = o.revision;
                    }
                }
                Err(e) => say(&format!("step={name} undecodable: {e}")),
            },
        }
        self.step += 1;
        self.next();
    }
}

impl Context for Spike {
    fn on_grpc_call_response(&mut self, _token: u32, status: u32, size: usize) {
        let body = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.answered(status, &body);
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let body = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        if Some(token) == self.keep {
            self.last_kept_ms = self.now_ms();
            self.keep_silence_said = false;
            match etcd::lease_kept(&body) {
                Ok(ttl) => say(&format!("keep-alive ttl={ttl}")),
                Err(e) => say(&format!("keep-alive undecodable: {e}")),
            }
            return;
        }
        if Some(token) != self.watch {
            return;
        }
        self.last_heard_ms = self.now_ms();
        match etcd::watch_message(&body) {
            Ok(WatchMessage::Created { watch_id, revision }) => {
                self.last_revision = self.last_revision.max(revision);
                say(&format!("watch created id={watch_id} revision={revision}"));
            }
            Ok(WatchMessage::Progress { revision }) => {
                self.last_revision = self.last_revision.max(revision);
                say(&format!("watch progress revision={revision}"));
            }
            Ok(WatchMessage::Events { revision, events }) => {
                self.last_revision = self.last_revision.max(revision);
                for (deleted, kv) in events {
                    say(&format!(
                        "watch event {} key={} mod_revision={} value={}",
                        if deleted { "delete" } else { "put" },
                        String::from_utf8_lossy(&kv.key),
                        kv.mod_revision,
                        hex(&kv.value)
                    ));
                }
            }
            Ok(WatchMessage::Canceled {
                reason,
                compact_revision,
            }) => say(&format!(
                "watch canceled reason={reason:?} compact_revision={compact_revision}"
            )),
            Err(e) => say(&format!("watch undecodable: {e}")),
        }
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        if Some(token) == self.watch {
            say(&format!("watch closed status={status}"));
            self.watch = None;
            self.reopen_at_ms = self.now_ms() + 1_000;
        } else if Some(token) == self.keep {
            say(&format!("keep-alive closed status={status}"));
            self.keep = None;
        }
    }
}

impl RootContext for Spike {
    fn on_configure(&mut self, size: usize) -> bool {
        let text = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        self.cfg = Config {
            prefix: get("prefix").unwrap_or_default(),
            cluster: get("cluster").unwrap_or_else(|| "etcd".into()),
            record_a: unhex(&get("record_a").unwrap_or_default()),
            record_b: unhex(&get("record_b").unwrap_or_default()),
            user: get("user").zip(get("password")),
            keepalive_ms: get("keepalive_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        };
        let Some(grpc) = etcd::grpc_service(&self.cfg.cluster) else {
            say("bad cluster name");
            return false;
        };
        self.grpc = grpc;
        // Context ids repeat from VM to VM and workers configure in the same millisecond,
        // so the holder id is random (WASI random_get, through std's hasher keys).
        self.id = std::collections::hash_map::RandomState::new().hash_one(self.id);
        let _ = hostcalls::set_tick_period(Duration::from_millis(100));
        true
    }

    fn on_tick(&mut self) {
        let now = self.now_ms();
        let holds = self.elect(now);
        if holds && !self.holder {
            self.holder = true;
            self.started_ms = now;
            say(&format!("holder {}", self.id));
            self.next();
        } else if !holds && self.holder {
            say(&format!("holder {} lost the role", self.id));
            self.holder = false;
        }
        if !self.holder {
            return;
        }
        if self.done || self.step < STEPS.len() {
            return;
        }
        match self.watch {
            Some(token) if now.saturating_sub(self.last_heard_ms) > 2_000 => {
                say(&format!(
                    "watch dead: silent for {}ms, cancel={}",
                    now.saturating_sub(self.last_heard_ms),
                    cancel(token)
                ));
                self.watch = None;
                self.reopen_at_ms = now + 1_000;
            }
            Some(token) if now.saturating_sub(self.last_progress_ms) >= 1_000 => {
                send(token, &etcd::watch_progress());
                self.last_progress_ms = now;
            }
            Some(_) => {}
            None if now >= self.reopen_at_ms => self.open_watch(),
            None => {}
        }
        if now.saturating_sub(self.started_ms) < self.cfg.keepalive_ms {
            if now.saturating_sub(self.last_keep_ms) >= 1_000 {
                self.keep_alive();
            }
            // The leader answers keep-alives: silence here is how quorum loss shows.
            let silent = now.saturating_sub(self.last_kept_ms.max(self.started_ms));
            if silent > 2_000 && !self.keep_silence_said {
                say(&format!("keep-alive silent for {silent}ms"));
                self.keep_silence_said = true;
            }
        }
    }
}
