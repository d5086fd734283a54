//! The list of breakers that exist in this Envoy process, kept in the state store so every
//! worker's timer and every view can find breakers it has not served traffic for. Only
//! cluster names from Envoy's own configuration enter it, and it is capped, so no request
//! can grow the key space.

/// Most breakers one process keeps; a cluster beyond this is passed through untouched.
pub const MAX_BREAKERS: usize = 512;

/// Why a name could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Full,
    BadName,
}

/// The names in a stored list, in the order they were added.
pub fn names(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| std::str::from_utf8(line).ok())
        .map(str::to_string)
        .collect()
}

/// The stored list with `name` added: `Ok(None)` when it is already there.
pub fn with(bytes: &[u8], name: &str) -> Result<Option<Vec<u8>>, Refused> {
    with_limited(bytes, name, "", usize::MAX)
}

/// Like [`with`], but also refuses when `limit` names starting with `prefix` exist
/// already: the cap on route breakers inside one cluster.
pub fn with_limited(
    bytes: &[u8],
    name: &str,
    prefix: &str,
    limit: usize,
) -> Result<Option<Vec<u8>>, Refused> {
    if name.is_empty() || name.len() > 400 || name.contains('\n') {
        return Err(Refused::BadName);
    }
    let mut count = 0;
    let mut same_prefix = 0;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if line == name.as_bytes() {
            return Ok(None);
        }
        count += 1;
        if line.starts_with(prefix.as_bytes()) {
            same_prefix += 1;
        }
    }
    if count >= MAX_BREAKERS || same_prefix >= limit {
        return Err(Refused::Full);
    }
    let mut out = Vec::with_capacity(bytes.len() + name.len() + 1);
    out.extend_from_slice(bytes);
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_added_once_in_order() {
        let list = with(b"", "auth").unwrap().unwrap();
        let list = with(&list, "school").unwrap().unwrap();
        assert_eq!(with(&list, "auth"), Ok(None));
        assert_eq!(names(&list), ["auth", "school"]);
    }

    #[test]
    fn the_list_is_capped() {
        let mut list = Vec::new();
        for i in 0..MAX_BREAKERS {
            list = with(&list, &format!("c{i}")).unwrap().unwrap();
        }
        assert_eq!(with(&list, "one-more"), Err(Refused::Full));
        assert_eq!(with(&list, "c7"), Ok(None), "known names still answer");
    }

    #[test]
    fn names_that_would_break_the_list_are_refused() {
        assert_eq!(with(b"", ""), Err(Refused::BadName));
        assert_eq!(with(b"", "a\nb"), Err(Refused::BadName));
        assert_eq!(with(b"", &"x".repeat(401)), Err(Refused::BadName));
    }

    #[test]
    fn a_prefix_can_have_its_own_cap() {
        let list = with(b"", "school").unwrap().unwrap();
        let list = with_limited(&list, "school/a", "school/", 2)
            .unwrap()
            .unwrap();
        let list = with_limited(&list, "school/b", "school/", 2)
            .unwrap()
            .unwrap();
        assert_eq!(
            with_limited(&list, "school/c", "school/", 2),
            Err(Refused::Full)
        );
        assert_eq!(with_limited(&list, "school/a", "school/", 2), Ok(None));
        assert!(with_limited(&list, "auth/a", "auth/", 2).unwrap().is_some());
    }

    #[test]
    fn damaged_lists_still_read() {
        assert_eq!(names(b"auth\n\xff\xfe\nschool"), ["auth", "school"]);
    }
}
