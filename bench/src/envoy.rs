//! The one Envoy configuration the benches write: a bootstrap of HTTP listeners on
//! loopback (each a connection manager with its routes and its filters, the router last)
//! and static clusters. Each bench says only what differs: its routes, its filter, its
//! clusters.

/// The `@type` of Envoy's HTTP connection manager.
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// One HTTP listener on loopback.
pub struct Listener<'a> {
    pub name: &'a str,
    pub port: u16,
    pub stat_prefix: &'a str,
    /// Its route entries, from [`route`] and [`direct`], in order.
    pub routes: String,
    /// The HTTP filters in front of the router, from [`wasm_filter`]; empty for none.
    pub filters: String,
}

/// A whole bootstrap: the node id (if any), the admin on a free port, the listeners and
/// the clusters (entries from [`cluster`], or the fleet's etcd cluster; empty for none).
pub fn bootstrap(node: Option<&str>, listeners: &[Listener], clusters: &str) -> String {
    let mut yaml = String::new();
    if let Some(id) = node {
        yaml.push_str(&format!("node: {{ id: {id} }}\n"));
    }
    yaml.push_str(
        "admin:\n  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }\n\
         static_resources:\n  listeners:\n",
    );
    for l in listeners {
        yaml.push_str(&listener(l));
    }
    if !clusters.is_empty() {
        yaml.push_str("  clusters:\n");
        yaml.push_str(clusters);
    }
    yaml
}

fn listener(l: &Listener) -> String {
    let Listener {
        name,
        port,
        stat_prefix,
        routes,
        filters,
    } = l;
    format!(
        r#"  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: {stat_prefix}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// A route entry sending what `matches` (a route `match`, such as `prefix: "/"`) to
/// `cluster`.
pub fn route(matches: &str, cluster: &str) -> String {
    format!(
        "              - match: {{ {matches} }}\n                route: {{ cluster: {cluster} }}\n"
    )
}

/// A route entry Envoy answers itself with `status` and `body`; `name` names the route
/// (the breaker's control API is found by its route name).
pub fn direct(name: Option<&str>, matches: &str, status: u16, body: &str) -> String {
    let name = name.map_or(String::new(), |n| format!("name: {n}\n                "));
    format!(
        "              - {name}match: {{ {matches} }}\n                direct_response: {{ status: {status}, body: {{ inline_string: \"{body}\" }} }}\n"
    )
}

/// A static cluster of one endpoint on loopback.
pub fn cluster(name: &str, port: u16) -> String {
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n"
    )
}

/// A wasm HTTP filter: the `.wasm` at `path` under root and VM id `id`, given `json` as its
/// configuration and the host environment variables `env` (names) to read.
pub fn wasm_filter(id: &str, path: &str, json: &str, env: &[&str]) -> String {
    let env = if env.is_empty() {
        String::new()
    } else {
        format!(
            "                  environment_variables: {{ host_env_keys: [{}] }}\n",
            env.iter()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {id}
                root_id: {id}
                vm_config:
                  vm_id: {id}
                  runtime: envoy.wasm.runtime.v8
{env}                  code: {{ local: {{ filename: "{path}" }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{json}'
"#
    )
}

/// An Envoy that is the benches' upstream: `ok` for every request, a 500 for the requests
/// `fail_match` (a route `match`, such as `prefix: "/fail"`) selects.
pub fn upstream_yaml(port: u16, fail_match: &str) -> String {
    let routes = direct(None, fail_match, 500, "fail") + &direct(None, r#"prefix: "/""#, 200, "ok");
    bootstrap(
        None,
        &[Listener {
            name: "gateway",
            port,
            stat_prefix: "upstream",
            routes,
            filters: String::new(),
        }],
        "",
    )
}
