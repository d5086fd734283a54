//! The school service: list, read and create schools. The student service asks it whether
//! a school exists, through Envoy, which is how a school outage cascades.

use std::sync::Mutex;

use school_system::server::{self, Incoming, Reply};
use serde_json::{json, Value};

fn main() -> std::io::Result<()> {
    let schools = Mutex::new(vec![
        json!({"id": 1, "name": "Riverside High", "address": "1 River Rd"}),
        json!({"id": 2, "name": "Hillcrest Primary", "address": "22 Hill St"}),
    ]);
    server::run("school-service", 8082, move |req| handle(&schools, req))
}

fn handle(schools: &Mutex<Vec<Value>>, req: &Incoming) -> Reply {
    let Ok(mut schools) = schools.lock() else {
        return Reply::error(500, "INTERNAL", "state lock poisoned");
    };
    let id = req.path.strip_prefix("/schools/").map(str::parse::<u64>);
    match (req.method.as_str(), req.path.as_str(), id) {
        ("GET", "/schools", _) => Reply::ok(200, json!(*schools)),
        ("POST", "/schools", _) => {
            let body = match req.json() {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            let Some(name) = body["name"].as_str().filter(|n| !n.is_empty()) else {
                return Reply::error(400, "INVALID_SCHOOL", "name is required");
            };
            let school = json!({
                "id": schools.len() as u64 + 1,
                "name": name,
                "address": body["address"].as_str().unwrap_or_default(),
            });
            schools.push(school.clone());
            Reply::ok(201, school)
        }
        ("GET", _, Some(Ok(id))) => match schools.iter().find(|s| s["id"] == id) {
            Some(s) => Reply::ok(200, s.clone()),
            None => Reply::error(404, "SCHOOL_NOT_FOUND", &format!("no school {id}")),
        },
        _ => Reply::not_found(),
    }
}
