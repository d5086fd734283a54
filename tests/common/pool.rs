//! A cluster of several real hosts behind the sample stack: school services started on
//! their own ports, a cluster over all of them with the load balancer asked for, routes to
//! it with and without retries, and a load of concurrent callers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{add_clusters, add_routes, client, is_rejection, Service};

/// Hosts of one cluster, each a school service of its own.
pub struct Pool {
    pub hosts: Vec<Service>,
}

impl Pool {
    pub fn start(n: usize) -> Pool {
        let hosts = (0..n)
            .map(|_| Service::start("school-service", &[]).unwrap())
            .collect();
        Pool { hosts }
    }

    /// `127.0.0.1:<port>` of host `i`, as Envoy reports it in `upstream.address`.
    pub fn address(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.hosts[i].port())
    }

    /// A cluster `name` over every host, balanced by `lb_policy`.
    pub fn cluster(&self, name: &str, lb_policy: &str) -> String {
        self.cluster_with(name, lb_policy, "")
    }

    /// [`Pool::cluster`] with more of the cluster's fields (YAML lines at its indentation).
    pub fn cluster_with(&self, name: &str, lb_policy: &str, extra: &str) -> String {
        let endpoints: String = self
            .hosts
            .iter()
            .map(|h| {
                format!(
                    "        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n",
                    h.port()
                )
            })
            .collect();
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    lb_policy: {lb_policy}\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{endpoints}"
        )
    }
}

/// Retries as the issue measured them: a 5xx is tried twice more, wherever the balancer
/// sends it, within Envoy's default budget of 3 concurrent retries per cluster.
pub const RETRIES: &str = "retry_policy: { retry_on: \"5xx\", num_retries: 2 }";

/// Retries as the sample recommends: twice more, on another host.
pub const RETRIES_ELSEWHERE: &str = "retry_policy: { retry_on: \"5xx,reset,connect-failure\", num_retries: 2, retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }], host_selection_retry_max_attempts: 3 }";

/// The recommended cluster fields for several hosts, as the README shows them: a host
/// failing 5 times in a row ejected, and retries not held to 3 at once.
pub const EJECT_AND_RETRY: &str = "    outlier_detection: { consecutive_5xx: 5, interval: 5s, base_ejection_time: 30s, max_ejection_percent: 50 }\n    circuit_breakers: { thresholds: [{ max_retries: 1000 }] }\n";

/// A route from `/<cluster>` to the cluster's `/schools`, with `retry` (a route's
/// `retry_policy`, or empty).
pub fn route(cluster: &str, retry: &str) -> String {
    let retry = if retry.is_empty() {
        String::new()
    } else {
        format!(", {retry}")
    };
    format!(
        "              - match: {{ prefix: \"/{cluster}\" }}\n                route: {{ cluster: {cluster}, prefix_rewrite: \"/schools\", timeout: 5s{retry} }}\n"
    )
}

/// The sample YAML with `clusters` (name, lb policy, retry policy) over `pool`'s hosts.
pub fn with_pool(yaml: &str, pool: &Pool, clusters: &[(&str, &str, &str)]) -> String {
    let routes: String = clusters.iter().map(|(c, _, r)| route(c, r)).collect();
    let defs: String = clusters
        .iter()
        .map(|(c, lb, _)| pool.cluster(c, lb))
        .collect();
    add_clusters(&add_routes(yaml, &routes), &defs)
}

/// What a load brought back.
#[derive(Debug, Default)]
pub struct Load {
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// The breaker's own refusals.
    pub refused: u64,
}

/// `total` GETs of `path` from `concurrency` callers at once, each on its own connection.
pub fn load(gateway: &str, path: &str, total: usize, concurrency: usize) -> Load {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Load::default());
    std::thread::scope(|s| {
        for _ in 0..concurrency {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let r =
                        client::request("GET", gateway, path, &[], None, Duration::from_secs(10))
                            .unwrap();
                    let mut out = out.lock().unwrap();
                    *out.statuses.entry(r.status).or_default() += 1;
                    if is_rejection(&r) {
                        out.refused += 1;
                    }
                }
            });
        }
    });
    out.into_inner().unwrap()
}
