# Stand-in for rust:1.95-slim, built by tools/docker/stand-ins.sh only when that image
# cannot be pulled: Debian bookworm with gcc (the linker driver, as in the official image)
# and the build machine's own Rust 1.95 toolchain, laid out as rustup would. The machine's
# locally added CA certificates come along, so cargo in a container reaches crates.io the way
# the machine does (through a TLS-inspecting proxy, where there is one).
FROM debian:bookworm-slim
ARG RUST_VERSION
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY local-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUST_VERSION=${RUST_VERSION}
COPY toolchain /usr/local/rustup/toolchains/${RUST_VERSION}-x86_64-unknown-linux-gnu
RUN mkdir -p /usr/local/cargo/bin \
 && for b in cargo rustc rustdoc; do \
      ln -s /usr/local/rustup/toolchains/${RUST_VERSION}-x86_64-unknown-linux-gnu/bin/$b /usr/local/cargo/bin/$b; \
    done \
 && cargo --version && rustc --version
CMD ["bash"]
