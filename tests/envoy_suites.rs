//! The suites that drive the real Envoy need what `make test` builds and installs first.
//! Under a plain `cargo test` they are left out (the `envoy-tests` feature), and this says
//! so in one line; with the feature on, it checks that their prerequisites are in place.
#![allow(clippy::panic)]

use std::io::Write;

use school_system::stack::{envoy_bin, root};

#[test]
fn the_envoy_suites_have_what_they_need() {
    if !cfg!(feature = "envoy-tests") {
        // Written past the test harness's capture, so a plain `cargo test` shows it.
        let _ = writeln!(
            std::io::stderr(),
            "note: the Envoy integration suites were skipped; run `make test` to build the .wasm, install Envoy and run them"
        );
        return;
    }
    let wasm = root().join("target/wasm32-wasip1/release/envoy_circuit_breaker.wasm");
    for needed in [envoy_bin(), wasm] {
        assert!(
            needed.exists(),
            "{} is missing: run `make test` (it builds and installs what the Envoy suites need)",
            needed.display()
        );
    }
}
