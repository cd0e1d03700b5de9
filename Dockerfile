# sipside: a static binary in a small image, running as a non-root user.
#
#   docker build -t sipside .
#   docker run --rm -v $PWD/contrib/lab/sipside.toml:/etc/sipside/sipside.toml:ro sipside
#
# The builder stage uses only the module cache and the source; the final stage holds the binary,
# CA roots (amqps:// brokers, https:// backends) and time zone data, nothing else.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Dependencies first: this layer is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# docker build --build-arg VERSION=$(git describe --tags --always) .
ARG VERSION=
# CGO_ENABLED=0: a static binary that runs on any base image (no libc needed).
# -trimpath and -s -w: reproducible and smaller.
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w -X main.buildVersion=${VERSION}" -o /out/sipside ./cmd/sipside \
 && /out/sipside version \
 && /out/sipside check -c /src/contrib/sipside.toml
# The spool directory, owned by the runtime user; copied into the final image.
RUN mkdir -p /out/var/lib/sipside/spool /out/var/log/sipside /out/run/sipside

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/sipside /usr/local/bin/sipside
COPY --from=build --chown=65532:65532 /out/var/lib/sipside /var/lib/sipside
COPY --from=build --chown=65532:65532 /out/var/log/sipside /var/log/sipside
COPY --from=build --chown=65532:65532 /out/run/sipside /run/sipside
# A starting point only (every key, loopback addresses): mount your own config over it, as
# docker-compose.yml does with contrib/lab/sipside.toml.
COPY contrib/sipside.toml /etc/sipside/sipside.toml
# distroless "nonroot": uid/gid 65532, no shell, no package manager.
USER 65532:65532
VOLUME ["/var/lib/sipside"]
# 9690/tcp  /metrics, /healthz, status page
# 8090/udp  event_datagram input          8091/tcp  event_stream input
# 8095/tcp  JSON-RPC for OpenSIPS jsonrpc 8096/tcp  netstring (Kamailio jsonrpcc/janssonrpcc)
# 8097/tcp  HTTP JSON-RPC (http_client)   5090/udp  DMQ node (KDMQ over SIP)
EXPOSE 9690/tcp 8090/udp 8091/tcp 8095/tcp 8096/tcp 8097/tcp 5090/udp
# No HEALTHCHECK here: distroless has no curl. docker-compose.yml checks /healthz with
# `sipside`'s own client instead; Kubernetes users point an httpGet probe at :9690/healthz.
ENTRYPOINT ["sipside"]
CMD ["run", "-c", "/etc/sipside/sipside.toml"]
