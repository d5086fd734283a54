# Stand-in for prom/prometheus:v2.42.0, built by tools/docker/stand-ins.sh only when that
# image cannot be pulled: Debian's prometheus package (2.42.0), started the way the official
# image starts it (entrypoint, default flags, user, data directory).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus \
 && prometheus --version
VOLUME ["/prometheus"]
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
