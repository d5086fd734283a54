//! The control API's requests, decided without the host: which command a method and path
//! name, whether the caller may run it, and what a body says. Every refusal is a JSON
//! error with the status that fits, and nothing is changed by a refused call.

use super::settings::Mode;

/// Name of the Envoy route whose requests the control API answers.
pub const ROUTE_NAME: &str = "circuit_breaker_control";
/// Host environment variable holding the bearer token for changes.
pub const TOKEN_ENV: &str = "CIRCUIT_BREAKER_ADMIN_TOKEN";
/// Largest request body read.
pub const MAX_BODY: usize = 4_096;
/// The dashboard page: one file, no outside assets.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Health,
    List,
    Dashboard,
    Show(String),
    /// The breaker's last fifteen minutes.
    History(String),
    Reset(String),
    ResetAll,
    SetMode(String),
}

impl Command {
    /// Whether it changes anything, and so needs the token.
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Command::Reset(_) | Command::ResetAll | Command::SetMode(_)
        )
    }

    pub fn needs_body(&self) -> bool {
        matches!(self, Command::SetMode(_))
    }

    /// The breaker it is about, if one.
    pub fn breaker(&self) -> Option<&str> {
        match self {
            Command::Show(n) | Command::History(n) | Command::Reset(n) | Command::SetMode(n) => {
                Some(n)
            }
            _ => None,
        }
    }
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u32,
    pub code: &'static str,
    pub message: String,
    /// For 405: the methods the path takes.
    pub allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: u32, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, "NOT_FOUND", message)
    }

    pub fn too_large() -> ApiError {
        ApiError::new(
            413,
            "BODY_TOO_LARGE",
            format!("request bodies are limited to {MAX_BODY} bytes"),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "STATE_STORE_UNAVAILABLE", message)
    }

    pub fn body(&self) -> String {
        serde_json::json!({"error": self.code, "message": self.message}).to_string()
    }

    /// Headers that go with the status.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("content-type", "application/json".to_string())];
        if self.status == 401 {
            h.push((
                "www-authenticate",
                "Bearer realm=\"circuit-breaker\"".to_string(),
            ));
        }
        if let Some(allow) = self.allow {
            h.push(("allow", allow.to_string()));
        }
        h
    }
}

/// Decides the command for `method` and `path` (query ignored).
pub fn route(method: &str, path: &str) -> Result<Command, ApiError> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let (expected, command) = match path {
        "/health" => ("GET", Command::Health),
        "/circuit-breakers" | "/circuit-breakers/" => ("GET", Command::List),
        "/circuit-breakers/dashboard" => ("GET", Command::Dashboard),
        "/circuit-breakers/reset-all" => ("POST", Command::ResetAll),
        _ => {
            let Some(rest) = path.strip_prefix("/circuit-breakers/") else {
                return Err(unknown(path));
            };
            let mut parts = rest.split('/');
            let name = decode(parts.next().unwrap_or_default())?;
            match (parts.next(), parts.next()) {
                (None, _) => ("GET", Command::Show(name)),
                (Some("history"), None) => ("GET", Command::History(name)),
                (Some("reset"), None) => ("POST", Command::Reset(name)),
                (Some("mode"), None) => ("PUT", Command::SetMode(name)),
                _ => return Err(unknown(path)),
            }
        }
    };
    if command.breaker().is_some_and(str::is_empty) {
        return Err(unknown(path));
    }
    if method != expected {
        return Err(ApiError {
            allow: Some(expected),
            ..ApiError::new(
                405,
                "METHOD_NOT_ALLOWED",
                format!(
                    "{} takes {expected}, not {}",
                    printable(path),
                    printable(method)
                ),
            )
        });
    }
    Ok(command)
}

fn unknown(path: &str) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {}; see GET /circuit-breakers, GET /health, GET /circuit-breakers/dashboard",
        printable(path)
    ))
}

/// Text fit to echo in a message: control characters dropped, at most 200 characters.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Percent-decodes one path segment (a breaker name may hold `/` as `%2F`).
fn decode(segment: &str) -> Result<String, ApiError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        400,
                        "BAD_PATH",
                        format!("bad percent-escape in {}", printable(segment)),
                    )
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::new(400, "BAD_PATH", "breaker names are UTF-8"))
}

/// Whether a caller holding `header` (the `Authorization` value) may change things, given
/// the configured token. No token configured: nobody may (403, and why). Wrong or missing
/// token: 401.
pub fn authorize(token: Option<&str>, header: Option<&[u8]>) -> Result<(), ApiError> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(ApiError::new(
            403,
            "CONTROL_DISABLED",
            format!(
                "changes are disabled: no admin token is configured. Set {TOKEN_ENV} in Envoy's \
                 environment and list it in vm_config.environment_variables.host_env_keys"
            ),
        ));
    };
    let offered = header
        .and_then(|h| h.strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if constant_time_eq(token.as_bytes(), offered) {
        Ok(())
    } else {
        Err(ApiError::new(
            401,
            "UNAUTHORIZED",
            "send Authorization: Bearer <token> with the admin token",
        ))
    }
}

/// Compares a secret with an offered value in time that depends only on the secret's
/// length, so the answer time says nothing about how much of a guess was right.
pub fn constant_time_eq(secret: &[u8], offered: &[u8]) -> bool {
    compare_counting(secret, offered, &mut 0)
}

/// [`constant_time_eq`], counting the byte comparisons it makes into `steps`: the tests
/// check that the count never depends on where (or whether) a guess goes wrong.
fn compare_counting(secret: &[u8], offered: &[u8], steps: &mut usize) -> bool {
    let mut diff = secret.len() ^ offered.len();
    for (i, s) in secret.iter().enumerate() {
        let o = offered.get(i).copied().unwrap_or(!*s);
        diff |= usize::from(s ^ o);
        *steps += 1;
    }
    diff == 0
}

/// Reads `{"mode": "<mode>"}` (or `{"mode": null}`, which clears the override).
pub fn parse_mode(body: &[u8]) -> Result<Option<Mode>, ApiError> {
    let bad = |m: String| ApiError::new(400, "BAD_REQUEST", m);
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the body is not JSON ({e}); send {{\"mode\": \"dry_run\"}}"
        ))
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object like {\"mode\": \"dry_run\"}".into()))?;
    if let Some(other) = obj.keys().find(|k| *k != "mode") {
        return Err(bad(format!(
            "unknown field {:?}; only \"mode\" is allowed",
            printable(other)
        )));
    }
    let names = "enforce, dry_run, forced_open, disabled, or null to clear the override";
    match obj.get("mode") {
        None => Err(bad(format!("field \"mode\" is missing; it takes {names}"))),
        Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Mode::parse(s)
            .map(Some)
            .ok_or_else(|| bad(format!("mode {:?} is not one of {names}", printable(s)))),
        Some(other) => Err(bad(format!(
            "mode must be a string ({names}), but was {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_name_their_commands() {
        assert_eq!(route("GET", "/health"), Ok(Command::Health));
        assert_eq!(route("GET", "/circuit-breakers"), Ok(Command::List));
        assert_eq!(route("GET", "/circuit-breakers?x=1"), Ok(Command::List));
        assert_eq!(
            route("GET", "/circuit-breakers/dashboard"),
            Ok(Command::Dashboard)
        );
        assert_eq!(
            route("GET", "/circuit-breakers/auth"),
            Ok(Command::Show("auth".into()))
        );
        assert_eq!(
            route("POST", "/circuit-breakers/auth/reset"),
            Ok(Command::Reset("auth".into()))
        );
        assert_eq!(
            route("POST", "/circuit-breakers/reset-all"),
            Ok(Command::ResetAll)
        );
        assert_eq!(
            route("PUT", "/circuit-breakers/auth/mode"),
            Ok(Command::SetMode("auth".into()))
        );
        assert_eq!(
            route("GET", "/circuit-breakers/school%2Fschool_item"),
            Ok(Command::Show("school/school_item".into()))
        );
        assert_eq!(
            route("GET", "/circuit-breakers/school%2Fschool_item/history"),
            Ok(Command::History("school/school_item".into()))
        );
        let e = route("POST", "/circuit-breakers/auth/history").unwrap_err();
        assert_eq!((e.status, e.allow), (405, Some("GET")));
    }

    #[test]
    fn wrong_methods_and_unknown_paths_are_refused() {
        let e = route("GET", "/circuit-breakers/auth/reset").unwrap_err();
        assert_eq!((e.status, e.allow), (405, Some("POST")));
        let e = route("DELETE", "/circuit-breakers/auth").unwrap_err();
        assert_eq!(e.status, 405);
        for path in [
            "/",
            "/metrics",
            "/circuit-breakers/a/b/c",
            "/circuit-breakers//reset",
            "/circuit-breakers/a/delete",
        ] {
            assert_eq!(route("GET", path).unwrap_err().status, 404, "{path}");
        }
        assert_eq!(
            route("GET", "/circuit-breakers/%zz").unwrap_err().status,
            400
        );
        assert_eq!(
            route("GET", "/circuit-breakers/%ff").unwrap_err().status,
            400
        );
    }

    #[test]
    fn traversal_like_names_are_just_names() {
        assert_eq!(
            route("GET", "/circuit-breakers/..%2F..%2Fetc"),
            Ok(Command::Show("../../etc".into()))
        );
        assert_eq!(
            route("GET", "/circuit-breakers/../health")
                .unwrap_err()
                .status,
            404
        );
    }

    #[test]
    fn echoed_text_is_stripped_of_control_characters() {
        let e = route("GET", "/nope\r\nset-cookie: x").unwrap_err();
        assert!(!e.message.contains('\r') && !e.message.contains('\n'));
        // Found by `make fuzz`: the wrong-method answer echoed a known path raw.
        let e = route("POST", "/circuit-breakers/\0\r\nreset-allcircuit-breakers").unwrap_err();
        assert_eq!(e.status, 405);
        assert!(!e.message.contains('\r') && !e.message.contains('\n'));
    }

    #[test]
    fn no_token_configured_refuses_every_change_with_the_reason() {
        let e = authorize(None, Some(b"Bearer x")).unwrap_err();
        assert_eq!(e.status, 403);
        assert!(e.message.contains(TOKEN_ENV));
        assert_eq!(authorize(Some(""), None).unwrap_err().status, 403);
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        assert_eq!(authorize(Some("s3cret"), Some(b"Bearer s3cret")), Ok(()));
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret!",
            b"s3cret",
            b"Basic s3cret",
            b"Bearer ",
            b"",
        ] {
            let e = authorize(Some("s3cret"), Some(wrong)).unwrap_err();
            assert_eq!(e.status, 401, "{:?}", String::from_utf8_lossy(wrong));
            assert!(e.headers().iter().any(|(k, _)| *k == "www-authenticate"));
        }
        assert_eq!(authorize(Some("s3cret"), None).unwrap_err().status, 401);
    }

    #[test]
    fn the_comparison_does_the_same_work_wherever_a_guess_goes_wrong() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let mut guesses: Vec<Vec<u8>> =
            vec![secret.to_vec(), Vec::new(), b"x".to_vec(), secret.repeat(3)];
        for at in 0..secret.len() {
            let mut wrong = secret.to_vec();
            wrong[at] ^= 0x5a;
            guesses.push(wrong);
            guesses.push(secret[..at].to_vec());
        }
        for guess in &guesses {
            let mut steps = 0;
            let _ = compare_counting(secret, guess, &mut steps);
            assert_eq!(steps, secret.len(), "{:?}", String::from_utf8_lossy(guess));
        }
    }

    proptest! {
        #[test]
        fn constant_time_eq_is_equality(a in proptest::collection::vec(any::<u8>(), 0..40),
                                        b in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(constant_time_eq(&a, &b), a == b);
            prop_assert!(constant_time_eq(&a, &a.clone()));
        }

        #[test]
        fn routing_never_panics(method in "[A-Z]{0,8}", path in "\\PC{0,80}") {
            let _ = route(&method, &path);
        }

        #[test]
        fn mode_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_mode(&body);
        }
    }

    #[test]
    fn mode_bodies_say_what_is_wrong() {
        assert_eq!(
            parse_mode(br#"{"mode": "dry_run"}"#),
            Ok(Some(Mode::DryRun))
        );
        assert_eq!(parse_mode(br#"{"mode": null}"#), Ok(None));
        for (body, expected) in [
            (&b"nope"[..], "not JSON"),
            (b"[]", "JSON object"),
            (b"{}", "\"mode\" is missing"),
            (br#"{"mode": "off"}"#, "\"off\" is not one of"),
            (br#"{"mode": 3}"#, "must be a string"),
            (
                br#"{"mode": "enforce", "force": true}"#,
                "unknown field \"force\"",
            ),
        ] {
            let e = parse_mode(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(
                e.message.contains(expected),
                "{}: {}",
                String::from_utf8_lossy(body),
                e.message
            );
        }
    }
}
