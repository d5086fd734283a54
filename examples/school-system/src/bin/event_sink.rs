//! A webhook receiver for the breaker's transition events: `POST /events` keeps the JSON
//! body, `GET /events` lists what arrived. It has the fault switch too, so a test can make
//! deliveries fail.

use std::sync::Mutex;

use school_system::server::{self, Incoming, Reply};
use serde_json::{json, Value};

fn main() -> std::io::Result<()> {
    let events = Mutex::new(Vec::<Value>::new());
    server::run("event-sink", 8090, move |req| handle(&events, req))
}

fn handle(events: &Mutex<Vec<Value>>, req: &Incoming) -> Reply {
    let Ok(mut events) = events.lock() else {
        return Reply::error(500, "INTERNAL", "state lock poisoned");
    };
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/events") => match req.json() {
            Ok(event) => {
                events.push(event);
                Reply::ok(202, json!({"received": events.len()}))
            }
            Err(reply) => reply,
        },
        ("GET", "/events") => Reply::ok(200, json!(*events)),
        _ => Reply::not_found(),
    }
}
