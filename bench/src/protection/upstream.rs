//! The upstream model: hosts with a real capacity (a few slots, each doing a fixed amount of
//! work per request) and a FIFO queue in front of the slots that goes on working on requests
//! whose caller already gave up, as a threaded server does when it only notices the caller
//! while writing the answer. That abandoned work is what keeps an overload going after its
//! trigger is gone, so a model without it could not show a metastable failure.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What a host does with the requests it gets; switchable while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Queued, worked on for the work time, answered 200.
    Healthy,
    /// Answered 503 at once, no work done.
    Fail,
    /// The host is gone: its listener is closed and open connections are dropped.
    Refused,
    /// Read and never answered: the caller's timeout ends it.
    Hang,
    /// Like healthy, with the work time multiplied by the host's slow factor.
    Slow,
}

impl Mode {
    fn code(self) -> u8 {
        self as u8
    }
    fn of(code: u8) -> Mode {
        match code {
            1 => Mode::Fail,
            2 => Mode::Refused,
            3 => Mode::Hang,
            4 => Mode::Slow,
            _ => Mode::Healthy,
        }
    }
}

/// A host's capacity: `slots` requests worked on at once, each for `work`.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub slots: usize,
    pub work: Duration,
}

/// One request waiting for a slot: the connection to answer on.
struct Job {
    stream: TcpStream,
}

/// The state a host's threads share.
struct Shared {
    mode: AtomicU8,
    slow_factor: AtomicU32,
    /// Requests still to answer 503 whatever the mode (an isolated failure).
    fail_next: AtomicU32,
    /// When each request arrived, in ms since `epoch`.
    arrivals: Mutex<Vec<u32>>,
    epoch: Instant,
    stopping: AtomicBool,
    index: usize,
}

/// One upstream host listening on loopback.
pub struct Host {
    shared: Arc<Shared>,
    pub port: u16,
}

impl Host {
    /// Starts a host on `port` (0 for any) with `capacity`; arrivals are timed from `epoch`.
    pub fn start(index: usize, capacity: Capacity, epoch: Instant) -> std::io::Result<Host> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Healthy.code()),
            slow_factor: AtomicU32::new(1),
            fail_next: AtomicU32::new(0),
            arrivals: Mutex::new(Vec::new()),
            epoch,
            stopping: AtomicBool::new(false),
            index,
        });
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..capacity.slots {
            let (queue, shared) = (queue.clone(), shared.clone());
            thread::spawn(move || slot(&queue, &shared, capacity.work));
        }
        let s = shared.clone();
        thread::spawn(move || accept(listener, port, &s, &jobs));
        Ok(Host { shared, port })
    }

    pub fn set_mode(&self, mode: Mode) {
        let was = Mode::of(self.shared.mode.swap(mode.code(), Ordering::SeqCst));
        if was != Mode::Refused && mode == Mode::Refused {
            // Wake the acceptor so it drops the listener now, not at the next caller.
            let _ = TcpStream::connect(("127.0.0.1", self.port));
        }
    }

    pub fn set_slow_factor(&self, factor: u32) {
        self.shared
            .slow_factor
            .store(factor.max(1), Ordering::SeqCst);
    }

    /// The next `n` requests get a 503 whatever the mode.
    pub fn fail_next(&self, n: u32) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    /// Arrival times (ms since the epoch) of every request so far.
    pub fn arrivals(&self) -> Vec<u32> {
        self.shared
            .arrivals
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared
            .mode
            .store(Mode::Refused.code(), Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn mode(shared: &Shared) -> Mode {
    Mode::of(shared.mode.load(Ordering::SeqCst))
}

/// Accepts connections; while the host is refused, holds no listener at all, so callers get
/// a connection refused rather than a reset.
fn accept(listener: TcpListener, port: u16, shared: &Arc<Shared>, jobs: &Sender<Job>) {
    let mut listener = Some(listener);
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match (&listener, mode(shared)) {
            (Some(_), Mode::Refused) => listener = None,
            (None, Mode::Refused) => thread::sleep(Duration::from_millis(5)),
            (None, _) => match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => listener = Some(l),
                Err(_) => thread::sleep(Duration::from_millis(5)),
            },
            (Some(l), _) => {
                if let Ok((stream, _)) = l.accept() {
                    let (shared, jobs) = (shared.clone(), jobs.clone());
                    thread::spawn(move || serve(stream, &shared, &jobs));
                }
            }
        }
    }
}

/// Reads the requests of one connection (one at a time: HTTP/1.1 without pipelining) and
/// hands each to the slots, or answers it at once when the host fails.
fn serve(stream: TcpStream, shared: &Shared, jobs: &Sender<Job>) {
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader);
    loop {
        if !read_head(&mut reader) || shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let at = shared.epoch.elapsed().as_millis() as u32;
        let mode = mode(shared);
        if mode == Mode::Refused {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        if let Ok(mut a) = shared.arrivals.lock() {
            a.push(at);
        }
        let isolated = shared
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let Ok(mut answer) = stream.try_clone() else {
            return;
        };
        if isolated || mode == Mode::Fail {
            let _ = answer.write_all(&response(shared.index, 503, "fail"));
        } else if mode != Mode::Hang && jobs.send(Job { stream: answer }).is_err() {
            return;
        }
    }
}

/// Reads one request head; false once the caller closed the connection.
fn read_head(reader: &mut impl BufRead) -> bool {
    let mut line = String::new();
    let mut any = false;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) if line.trim_end().is_empty() && any => return true,
            Ok(_) => any |= !line.trim_end().is_empty(),
        }
    }
}

/// One slot: takes queued requests in order, does their work whether or not their caller
/// is still there, then answers (a write to a gone caller fails, unnoticed).
fn slot(queue: &Mutex<Receiver<Job>>, shared: &Shared, work: Duration) {
    loop {
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok(mut job) = job else {
            return;
        };
        let factor = match mode(shared) {
            Mode::Slow => shared.slow_factor.load(Ordering::SeqCst),
            _ => 1,
        };
        thread::sleep(work * factor);
        let _ = job.stream.write_all(&response(shared.index, 200, "ok"));
    }
}

fn response(host: usize, status: u16, body: &str) -> Vec<u8> {
    let reason = if status == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nx-upstream-host: {host}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
