//! What the bench binaries share: a keep-alive HTTP client (exact request counts without
//! connection set-ups in them) and fleet mode's set-up (a real etcd, the Envoy cluster that
//! reaches it, the plugin's fleet block) with the readers of the stats the fleet benches
//! compare.

pub mod fleet;
pub mod keep_alive;

/// The `@type` of Envoy's HTTP connection manager, for the configs the benches write.
pub const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// An Envoy that is the benches' upstream: `ok` for every request, a 500 for the requests
/// `fail_match` (a route `match`, such as `prefix: "/fail"`) selects.
pub fn upstream_yaml(port: u16, fail_match: &str) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: gateway
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: upstream
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ {fail_match} }}
                direct_response: {{ status: 500, body: {{ inline_string: "fail" }} }}
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}
