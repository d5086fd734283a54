//! The student service: list, read and create students. Creating one checks the school
//! through Envoy (`--gateway`), so when the school breaker is open the caller gets a fast,
//! clear refusal instead of a hang.

use std::sync::Mutex;
use std::time::Duration;

use school_system::client;
use school_system::server::{self, Incoming, Reply};
use serde_json::{json, Value};

fn main() -> std::io::Result<()> {
    let gateway = school_system::arg("--gateway").unwrap_or_else(|| "127.0.0.1:10000".into());
    let students = Mutex::new(vec![
        json!({"id": 1, "name": "Ada Lovelace", "email": "ada@school.test", "school_id": 1}),
    ]);
    server::run("student-service", 8083, move |req| {
        handle(&gateway, &students, req)
    })
}

fn handle(gateway: &str, students: &Mutex<Vec<Value>>, req: &Incoming) -> Reply {
    let id = req.path.strip_prefix("/students/").map(str::parse::<u64>);
    match (req.method.as_str(), req.path.as_str(), id) {
        ("GET", "/students", _) => match students.lock() {
            Ok(s) => Reply::ok(200, json!(*s)),
            Err(_) => Reply::error(500, "INTERNAL", "state lock poisoned"),
        },
        ("POST", "/students", _) => create(gateway, students, req),
        ("GET", _, Some(Ok(id))) => match students.lock() {
            Ok(s) => match s.iter().find(|st| st["id"] == id) {
                Some(st) => Reply::ok(200, st.clone()),
                None => Reply::error(404, "STUDENT_NOT_FOUND", &format!("no student {id}")),
            },
            Err(_) => Reply::error(500, "INTERNAL", "state lock poisoned"),
        },
        _ => Reply::not_found(),
    }
}

fn create(gateway: &str, students: &Mutex<Vec<Value>>, req: &Incoming) -> Reply {
    let body = match req.json() {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let (Some(name), Some(school_id)) = (body["name"].as_str(), body["school_id"].as_u64()) else {
        return Reply::error(400, "INVALID_STUDENT", "name and school_id are required");
    };
    if let Err(reply) = check_school(gateway, school_id) {
        return reply;
    }
    let Ok(mut students) = students.lock() else {
        return Reply::error(500, "INTERNAL", "state lock poisoned");
    };
    let student = json!({
        "id": students.len() as u64 + 1,
        "name": name,
        "email": body["email"].as_str().unwrap_or_default(),
        "school_id": school_id,
    });
    students.push(student.clone());
    Reply::ok(201, student)
}

/// Asks the school service, through Envoy, whether the school exists.
fn check_school(gateway: &str, school_id: u64) -> Result<(), Reply> {
    let path = format!("/schools/{school_id}");
    let answer = client::request("GET", gateway, &path, &[], None, Duration::from_secs(5));
    let response = match answer {
        Ok(r) => r,
        Err(e) => {
            return Err(Reply::error(
                503,
                "SCHOOL_SERVICE_UNAVAILABLE",
                &format!("could not reach the school service: {e}"),
            ))
        }
    };
    match response.status {
        200 => Ok(()),
        404 => Err(Reply::error(
            400,
            "SCHOOL_NOT_FOUND",
            &format!("school {school_id} does not exist"),
        )),
        _ => {
            let upstream = response.json().unwrap_or(Value::Null);
            let message = if upstream["error"] == "CIRCUIT_BREAKER_OPEN" {
                format!(
                    "school service temporarily unavailable (circuit breaker open, retry in {}s)",
                    upstream["retry_after_seconds"]
                )
            } else {
                format!(
                    "school service answered {} while checking school {school_id}",
                    response.status
                )
            };
            Err(Reply::error(503, "SCHOOL_SERVICE_UNAVAILABLE", &message))
        }
    }
}
