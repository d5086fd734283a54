//! The manual (docs/, an mdBook) and the README kept true: the configuration reference
//! lists exactly the JSON Schema's fields, every plugin JSON example passes the filter's own
//! validation, every Envoy YAML example passes `envoy --mode validate`, and every link
//! inside the book or from the README lands on a page and heading that exist.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;
use envoy_circuit_breaker::core::config::PluginConfig;
use serde_json::Value;

/// A fenced code block: its info string's words and its text.
struct Snippet {
    page: String,
    line: usize,
    lang: String,
    kind: String,
    text: String,
}

fn book_dir() -> PathBuf {
    root().join("docs/src")
}

/// Every page of the book, `{{#include}}`s expanded, as (file name, text).
fn pages() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(book_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, expand_includes(&std::fs::read_to_string(&p).unwrap()))
        })
        .collect();
    out.sort();
    assert!(out.len() >= 10, "the book has {} pages", out.len());
    out
}

fn expand_includes(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        match line
            .trim()
            .strip_prefix("{{#include ")
            .and_then(|r| r.strip_suffix("}}"))
        {
            Some(path) => {
                let file = book_dir().join(path.trim());
                out += &std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| panic!("{{{{#include {path}}}}}: {e}"));
            }
            None => out += line,
        }
        out.push('\n');
    }
    out
}

fn snippets(page: &str, text: &str) -> Vec<Snippet> {
    let mut out = Vec::new();
    let mut open: Option<Snippet> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (fence, open.take()) {
            (Some(_), Some(done)) => out.push(done),
            (Some(info), None) => {
                let mut words = info.split_whitespace();
                open = Some(Snippet {
                    page: page.to_string(),
                    line: i + 1,
                    lang: words.next().unwrap_or("").to_string(),
                    kind: words.next().unwrap_or("").to_string(),
                    text: String::new(),
                });
            }
            (None, Some(mut s)) => {
                s.text += line;
                s.text.push('\n');
                open = Some(s);
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "{page}: a code block is never closed");
    out
}

/// The book's code blocks and the README's.
fn all_snippets() -> Vec<Snippet> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut out = snippets("README.md", &readme);
    out.extend(pages().iter().flat_map(|(p, t)| snippets(p, t)));
    out
}

/// The text outside code blocks and inline code, where links live.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            let parts: Vec<&str> = line.split('`').collect();
            for (i, part) in parts.iter().enumerate() {
                if i % 2 == 0 {
                    out += part;
                }
            }
            out.push('\n');
        }
    }
    out
}

/// The anchor mdBook (and GitHub) gives a heading.
fn slug(heading: &str) -> String {
    heading
        .replace('`', "")
        .chars()
        .filter_map(|c| match c {
            c if c.is_alphanumeric() || c == '_' || c == '-' => Some(c.to_ascii_lowercase()),
            c if c.is_whitespace() => Some('-'),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let base = slug(line.trim_start_matches('#').trim());
        let mut id = base.clone();
        let mut n = 1;
        while seen.contains(&id) {
            id = format!("{base}-{n}");
            n += 1;
        }
        seen.insert(id);
    }
    seen
}

/// Every `[text](target)` and `![alt](target)` in prose.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut out = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            out.push(target.to_string());
        }
    }
    out
}

/// Checks one link from `from` (a file in `base`); `inside` bounds where it may land.
fn check_link(from: &Path, target: &str, inside: &Path, problems: &mut Vec<String>) {
    if target.starts_with("http://") || target.starts_with("https://") {
        return;
    }
    let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
    let file = if path.is_empty() {
        from.to_path_buf()
    } else {
        from.parent().unwrap().join(path)
    };
    let Ok(file) = file.canonicalize() else {
        problems.push(format!("{}: {target}: no such file", from.display()));
        return;
    };
    if !file.starts_with(inside.canonicalize().unwrap()) {
        problems.push(format!(
            "{}: {target}: outside {}",
            from.display(),
            inside.display()
        ));
        return;
    }
    if anchor.is_empty() || file.extension().map_or(true, |x| x != "md") {
        return;
    }
    let text = expand_includes(&std::fs::read_to_string(&file).unwrap());
    if !anchors(&text).contains(anchor) {
        problems.push(format!("{}: {target}: no such heading", from.display()));
    }
}

#[test]
fn every_link_in_the_book_and_from_the_readme_lands() {
    let mut problems = Vec::new();
    let mut count = 0;
    for (page, text) in pages() {
        for target in links(&text) {
            count += 1;
            check_link(&book_dir().join(&page), &target, &book_dir(), &mut problems);
        }
    }
    let readme = root().join("README.md");
    for target in links(&std::fs::read_to_string(&readme).unwrap()) {
        count += 1;
        check_link(&readme, &target, &root(), &mut problems);
    }
    assert!(
        count > 50,
        "only {count} links found: is the scanner broken?"
    );
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_link_checker_finds_a_broken_link_and_a_missing_heading() {
    let mut problems = Vec::new();
    let page = book_dir().join("configuration.md");
    check_link(
        &page,
        "fleet.md#no-such-heading",
        &book_dir(),
        &mut problems,
    );
    check_link(&page, "no-such-page.md", &book_dir(), &mut problems);
    check_link(&page, "../../README.md", &book_dir(), &mut problems);
    check_link(
        &page,
        "fleet.md#the-fleet-trips-on-agreement",
        &book_dir(),
        &mut problems,
    );
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

/// Field paths of the plugin JSON, from the committed schema: top-level fields, a
/// cluster's fields, and the fields of the blocks inside them as `block.field`.
fn schema_fields() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("schema/plugin-config.schema.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    let defs = &schema["$defs"];
    let mut out = BTreeSet::new();
    let add = |props: &Value, prefix: &str, out: &mut BTreeSet<String>| {
        for (name, spec) in props.as_object().unwrap() {
            out.insert(format!("{prefix}{name}"));
            if let Some(def) = referenced(spec) {
                if let Some(inner) = defs[def]["properties"].as_object() {
                    for sub in inner.keys() {
                        if def != "SettingsDoc" {
                            out.insert(format!("{name}.{sub}"));
                        }
                    }
                }
            }
        }
    };
    add(&schema["properties"], "", &mut out);
    add(&defs["SettingsDoc"]["properties"], "", &mut out);
    out
}

/// The `$defs` entry a property points at, directly or through `anyOf`/`allOf`.
fn referenced(spec: &Value) -> Option<&str> {
    if let Some(r) = spec["$ref"].as_str() {
        return r.strip_prefix("#/$defs/");
    }
    ["anyOf", "allOf", "oneOf"]
        .iter()
        .filter_map(|k| spec[k].as_array())
        .flatten()
        .find_map(referenced)
}

/// Field names in the first column of the configuration reference's tables.
fn reference_fields() -> BTreeSet<String> {
    let text = std::fs::read_to_string(book_dir().join("configuration.md")).unwrap();
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let first = line.split('|').nth(1).unwrap_or("");
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 {
                out.insert(part.to_string());
            }
        }
    }
    out
}

#[test]
fn the_configuration_reference_lists_exactly_the_schemas_fields() {
    let schema = schema_fields();
    let documented = reference_fields();
    assert!(schema.len() > 40, "{schema:?}");
    let missing: Vec<_> = schema.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&schema).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "in the schema, not in docs/src/configuration.md: {missing:?}\n\
         in docs/src/configuration.md, not in the schema: {unknown:?}"
    );
}

#[test]
fn every_code_block_says_what_it_holds() {
    let untagged: Vec<String> = all_snippets()
        .iter()
        .filter(|s| (s.lang == "json" || s.lang == "yaml") && s.kind.is_empty())
        .map(|s| format!("{}:{}", s.page, s.line))
        .collect();
    assert!(
        untagged.is_empty(),
        "json and yaml blocks need a second word (json plugin, json response, yaml envoy, \
         yaml envoy-cluster, ...): {untagged:?}"
    );
}

#[test]
fn every_plugin_json_example_passes_the_filters_validation() {
    let plugin: Vec<Snippet> = all_snippets()
        .into_iter()
        .filter(|s| s.lang == "json" && s.kind == "plugin")
        .collect();
    assert!(plugin.len() >= 5, "only {} plugin examples", plugin.len());
    for s in plugin {
        if let Err(e) = PluginConfig::parse(s.text.as_bytes()) {
            panic!("{}:{}: {e}\n{}", s.page, s.line, s.text);
        }
    }
}

#[test]
fn a_bad_plugin_json_example_would_be_caught() {
    let bad = r#"{ "default": { "success_threshold": 0 } }"#;
    assert!(PluginConfig::parse(bad.as_bytes()).is_err());
}

/// A complete Envoy config in which the fragments of each kind are placed.
#[cfg(feature = "envoy-tests")]
mod envoy_yaml {
    use super::*;
    use serde_json::json;
    use std::process::Command;

    fn wasm() -> String {
        root()
            .join("target/wasm32-wasip1/release/envoy_circuit_breaker.wasm")
            .to_string_lossy()
            .into_owned()
    }

    fn cluster(name: &str) -> Value {
        json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8082}}}}]}]}})
    }

    fn base() -> Value {
        let router = json!({"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}});
        json!({"static_resources": {
            "listeners": [{"name": "gateway", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "gateway",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "school"}}]}]},
                        "http_filters": [router]}}]}]}],
            "clusters": [cluster("school"), cluster("auth"), cluster("student"), cluster("etcd")]}})
    }

    fn place(kind: &str, fragment: Value) -> Option<Value> {
        let mut config = base();
        let hcm = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        match kind {
            "envoy" => return Some(fragment),
            "envoy-http-filters" => {
                hcm["http_filters"] = match fragment.get("http_filters") {
                    Some(list) => list.clone(),
                    None => fragment,
                }
            }
            "envoy-route" => {
                let mut route = fragment;
                if route.get("match").is_none() {
                    route["match"] = json!({"prefix": "/"});
                }
                hcm["route_config"]["virtual_hosts"][0]["routes"] = json!([route]);
            }
            "envoy-cluster" => {
                let added = match fragment {
                    Value::Array(list) => list,
                    one => vec![one],
                };
                let clusters = config["static_resources"]["clusters"].as_array_mut()?;
                clusters.retain(|c| added.iter().all(|a| a["name"] != c["name"]));
                clusters.extend(added);
            }
            _ => return None,
        }
        Some(config)
    }

    fn validate(config: &Value) -> Result<(), String> {
        let dir = scratch_dir().unwrap();
        let file = dir.join("envoy.json");
        let text = config
            .to_string()
            .replace("/path/to/envoy_circuit_breaker.wasm", &wasm());
        std::fs::write(&file, text).unwrap();
        let out = Command::new(envoy_bin())
            .current_dir(&dir)
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success() && text.contains("OK"))
            .then_some(())
            .ok_or(text)
    }

    /// Kinds of YAML that are not Envoy configuration (compose files, Kubernetes, Prometheus).
    const NOT_ENVOY: &[&str] = &["compose", "kubernetes", "prometheus"];

    #[test]
    fn every_envoy_yaml_example_passes_envoy_validate() {
        let mut checked = 0;
        for s in all_snippets().into_iter().filter(|s| s.lang == "yaml") {
            if NOT_ENVOY.contains(&s.kind.as_str()) {
                continue;
            }
            let fragment: Value = serde_yaml::from_str(&s.text)
                .unwrap_or_else(|e| panic!("{}:{}: not YAML: {e}", s.page, s.line));
            let config = place(&s.kind, fragment)
                .unwrap_or_else(|| panic!("{}:{}: unknown kind {:?}", s.page, s.line, s.kind));
            if let Err(e) = validate(&config) {
                panic!(
                    "{}:{} ({}): envoy --mode validate:\n{e}",
                    s.page, s.line, s.kind
                );
            }
            checked += 1;
        }
        assert!(checked >= 3, "only {checked} Envoy examples");
    }

    #[test]
    fn a_bad_envoy_example_would_be_caught() {
        let bad = json!({"name": "school", "type": "STATIC", "lb_policy": "NO_SUCH_POLICY"});
        assert!(validate(&place("envoy-cluster", bad).unwrap()).is_err());
        assert!(validate(&base()).is_ok());
    }
}
