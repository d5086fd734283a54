//! A per-cluster answer while open, as configured: status, headers and body, with
//! `{cluster}` and `{retry_after}` filled in. Parsed once when the configuration is read,
//! so refusing costs a little formatting, never a parse.

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Cluster,
    RetryAfter,
}

/// Text with `{cluster}` and `{retry_after}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

impl Template {
    pub fn parse(text: &str) -> Template {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find('{') {
            let (before, after) = rest.split_at(at);
            let (piece, len) = if after.starts_with("{cluster}") {
                (Some(Piece::Cluster), "{cluster}".len())
            } else if after.starts_with("{retry_after}") {
                (Some(Piece::RetryAfter), "{retry_after}".len())
            } else {
                (None, 1)
            };
            push_text(&mut pieces, before);
            match piece {
                Some(p) => pieces.push(p),
                None => push_text(&mut pieces, "{"),
            }
            rest = &after[len..];
        }
        push_text(&mut pieces, rest);
        Template(pieces)
    }

    pub fn render(&self, cluster: &str, retry_after: u64) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Cluster => out.push_str(cluster),
                Piece::RetryAfter => out.push_str(&retry_after.to_string()),
            }
        }
        out
    }
}

fn push_text(pieces: &mut Vec<Piece>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Piece::Text(last)) = pieces.last_mut() {
        last.push_str(text);
    } else {
        pieces.push(Piece::Text(text.to_string()));
    }
}

/// A configured answer while open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub status: u32,
    /// Header names lower-case; values are templates.
    pub headers: Vec<(String, Template)>,
    pub body: Template,
}
