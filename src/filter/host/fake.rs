//! An in-memory host for the shell's tests: shared data, headers, properties, a clock and
//! queues held in plain maps, and a journal of every call, so a test can say exactly which
//! host calls a request made.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};

use crate::core::reply::Answer;

use super::{Buffer, GrpcTarget, Host, HostError, Map, MetricKind, Saved};

/// One host call as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Clock,
    Property(String),
    Header(Map, String),
    Buffer,
    SharedRead(String),
    SharedWrite(String),
    LocalReply(u32),
    HttpCall(String),
    DefineMetric(String),
    Metric(u32),
    Tick(u32),
    Queue,
    /// A gRPC call or stream opened, by method.
    Grpc(String),
    GrpcSend(u32),
    GrpcCancel(u32),
    Resume,
}

#[derive(Default)]
pub struct FakeHost {
    pub clock_ms: Cell<u64>,
    pub properties: RefCell<HashMap<Vec<u8>, Vec<u8>>>,
    pub headers: RefCell<HashMap<(Map, String), Vec<u8>>>,
    pub shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    pub replies: RefCell<Vec<Answer>>,
    pub counters: RefCell<HashMap<String, u64>>,
    metric_names: RefCell<Vec<String>>,
    queues: RefCell<Vec<VecDeque<Vec<u8>>>>,
    /// Every gRPC message sent (calls and streams), by token, in order.
    pub grpc_sent: RefCell<Vec<(u32, Vec<u8>)>>,
    grpc_tokens: Cell<u32>,
    /// What the next read of the gRPC receive buffer returns.
    pub grpc_answer: RefCell<Vec<u8>>,
    /// Clusters an HTTP call to is refused, as Envoy refuses one it does not know.
    pub unknown_clusters: RefCell<Vec<String>>,
    journal: RefCell<Vec<Call>>,
}

impl FakeHost {
    pub fn at(clock_ms: u64) -> FakeHost {
        let host = FakeHost::default();
        host.clock_ms.set(clock_ms);
        host
    }

    pub fn advance(&self, ms: u64) {
        self.clock_ms.set(self.clock_ms.get() + ms);
    }

    /// Sets a property by its dotted path (`xds.cluster_name`).
    pub fn set_property(&self, path: &str, value: &[u8]) {
        let key = path.replace('.', "\0").into_bytes();
        self.properties.borrow_mut().insert(key, value.to_vec());
    }

    pub fn set_header(&self, map: Map, name: &str, value: &str) {
        self.headers
            .borrow_mut()
            .insert((map, name.to_string()), value.as_bytes().to_vec());
    }

    /// Forgets the current stream's headers and properties, as a new stream starts.
    pub fn new_stream(&self) {
        self.headers.borrow_mut().clear();
        self.properties.borrow_mut().clear();
    }

    /// The calls made since the last look, and a fresh start.
    pub fn take_journal(&self) -> Vec<Call> {
        std::mem::take(&mut *self.journal.borrow_mut())
    }

    /// A counter's value by its full stat name.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.borrow().get(name).copied().unwrap_or(0)
    }

    fn note(&self, call: Call) {
        self.journal.borrow_mut().push(call);
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.note(Call::Clock);
        self.clock_ms.get()
    }

    fn property(&self, path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        self.note(Call::Property(
            String::from_utf8_lossy(path).replace('\0', "."),
        ));
        Ok(self.properties.borrow().get(path).cloned())
    }

    fn header(&self, map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.note(Call::Header(map, name.to_string()));
        Ok(self.headers.borrow().get(&(map, name.to_string())).cloned())
    }

    fn buffer(&self, buffer: Buffer, _size: usize) -> Result<Vec<u8>, HostError> {
        self.note(Call::Buffer);
        Ok(match buffer {
            Buffer::GrpcReceive => self.grpc_answer.borrow().clone(),
            _ => Vec::new(),
        })
    }

    fn shared_data(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        self.note(Call::SharedRead(key.to_string()));
        Ok(self.shared.borrow().get(key).cloned())
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<Saved, HostError> {
        self.note(Call::SharedWrite(key.to_string()));
        let mut shared = self.shared.borrow_mut();
        let stamp = shared.get(key).map(|(_, c)| *c);
        if let Some(stamp) = stamp {
            if cas != 0 && cas != stamp {
                return Ok(Saved::CasMismatch);
            }
        }
        shared.insert(key.to_string(), (value.to_vec(), stamp.unwrap_or(0) + 1));
        Ok(Saved::Done)
    }

    fn send_local_response(&self, reply: &Answer, _details: &str) -> Result<(), HostError> {
        self.note(Call::LocalReply(reply.status));
        self.replies.borrow_mut().push(reply.clone());
        Ok(())
    }

    fn http_call(
        &self,
        cluster: &str,
        _headers: &[(&str, &str)],
        _body: &[u8],
        _timeout_ms: u32,
    ) -> Result<u32, HostError> {
        self.note(Call::HttpCall(cluster.to_string()));
        if self.unknown_clusters.borrow().iter().any(|c| c == cluster) {
            return Err(HostError(2));
        }
        self.grpc_tokens.set(self.grpc_tokens.get() + 1);
        Ok(self.grpc_tokens.get())
    }

    fn define_metric(&self, _kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.note(Call::DefineMetric(name.to_string()));
        let mut names = self.metric_names.borrow_mut();
        names.push(name.to_string());
        Ok(names.len() as u32 - 1)
    }

    fn increment_metric(&self, id: u32, by: u64) -> Result<(), HostError> {
        self.note(Call::Metric(id));
        let name = self.metric_names.borrow().get(id as usize).cloned();
        let name = name.ok_or(HostError(1))?;
        *self.counters.borrow_mut().entry(name).or_default() += by;
        Ok(())
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        self.note(Call::Metric(id));
        let name = self.metric_names.borrow().get(id as usize).cloned();
        let name = name.ok_or(HostError(1))?;
        self.counters.borrow_mut().insert(name, value);
        Ok(())
    }

    fn set_tick_period_ms(&self, period: u32) -> Result<(), HostError> {
        self.note(Call::Tick(period));
        Ok(())
    }

    fn register_queue(&self, _name: &str) -> Result<u32, HostError> {
        self.note(Call::Queue);
        let mut queues = self.queues.borrow_mut();
        queues.push(VecDeque::new());
        Ok(queues.len() as u32 - 1)
    }

    fn enqueue(&self, token: u32, message: &[u8]) -> Result<(), HostError> {
        self.note(Call::Queue);
        let mut queues = self.queues.borrow_mut();
        let queue = queues.get_mut(token as usize).ok_or(HostError(1))?;
        queue.push_back(message.to_vec());
        Ok(())
    }

    fn dequeue(&self, token: u32) -> Result<Option<Vec<u8>>, HostError> {
        self.note(Call::Queue);
        let mut queues = self.queues.borrow_mut();
        let queue = queues.get_mut(token as usize).ok_or(HostError(1))?;
        Ok(queue.pop_front())
    }

    fn grpc_call(
        &self,
        to: GrpcTarget,
        _metadata: &[(&str, &[u8])],
        message: &[u8],
        _timeout_ms: u32,
    ) -> Result<u32, HostError> {
        self.note(Call::Grpc(to.method.to_string()));
        let token = self.grpc_tokens.get() + 1;
        self.grpc_tokens.set(token);
        self.grpc_sent.borrow_mut().push((token, message.to_vec()));
        Ok(token)
    }

    fn grpc_stream(&self, to: GrpcTarget, _metadata: &[(&str, &[u8])]) -> Result<u32, HostError> {
        self.note(Call::Grpc(to.method.to_string()));
        let token = self.grpc_tokens.get() + 1;
        self.grpc_tokens.set(token);
        Ok(token)
    }

    fn grpc_send(&self, token: u32, message: &[u8]) -> Result<(), HostError> {
        self.note(Call::GrpcSend(token));
        self.grpc_sent.borrow_mut().push((token, message.to_vec()));
        Ok(())
    }

    fn grpc_cancel(&self, token: u32) -> Result<(), HostError> {
        self.note(Call::GrpcCancel(token));
        Ok(())
    }

    fn resume_request(&self) -> Result<(), HostError> {
        self.note(Call::Resume);
        Ok(())
    }
}
