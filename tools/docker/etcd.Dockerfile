# Stand-in for quay.io/coreos/etcd:v3.4.23, built by tools/docker/stand-ins.sh only when that
# image cannot be pulled: Debian bookworm's etcd-server and etcd-client (3.4.23), with the
# binaries where the official image has them (/usr/local/bin/etcd, /usr/local/bin/etcdctl)
# and the v3 API selected for etcdctl, as there.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends etcd-server etcd-client \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/etcd /usr/local/bin/etcd \
 && ln -s /usr/bin/etcdctl /usr/local/bin/etcdctl \
 && mkdir -p /var/etcd /var/lib/etcd \
 && etcd --version | grep -q '3\.4\.23'
ENV ETCDCTL_API=3
EXPOSE 2379 2380
CMD ["/usr/local/bin/etcd"]
