//! The auth service: `POST /auth/login` checks a user and hands out a token, `GET
//! /auth/validate` checks a token. Users live in memory; the point is the traffic.

use school_system::server::{self, Incoming, Reply};
use serde_json::json;

const USERS: [(&str, &str, &str); 2] = [
    ("admin@school.test", "admin123", "admin"),
    ("test@example.com", "test123", "teacher"),
];

fn main() -> std::io::Result<()> {
    server::run("auth-service", 8081, handle)
}

fn handle(req: &Incoming) -> Reply {
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/auth/login") => login(req),
        ("GET", "/auth/validate") => validate(req),
        _ => Reply::not_found(),
    }
}

fn login(req: &Incoming) -> Reply {
    let body = match req.json() {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let email = body["email"].as_str().unwrap_or_default();
    let password = body["password"].as_str().unwrap_or_default();
    match USERS.iter().find(|(e, p, _)| *e == email && *p == password) {
        Some((email, _, role)) => Reply::ok(
            200,
            json!({"token": format!("token-{email}"), "user": {"email": email, "role": role}}),
        ),
        None => Reply::error(401, "INVALID_CREDENTIALS", "wrong email or password"),
    }
}

fn validate(req: &Incoming) -> Reply {
    let token = req
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_default();
    match token
        .strip_prefix("token-")
        .and_then(|email| USERS.iter().find(|(e, _, _)| *e == email))
    {
        Some((email, _, role)) => Reply::ok(200, json!({"email": email, "role": role})),
        None => Reply::error(401, "INVALID_TOKEN", "unknown token"),
    }
}
