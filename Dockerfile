# syntax=docker/dockerfile:1
# Multi-stage build of stowline's three commands. docker-compose.yml picks
# a command with its target: ingest, forwarder or stowline (single host).
#
#   docker build --target forwarder -t stowline-forwarder .

FROM golang:1.26.11-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# What the binaries say they are (-version, the start log line,
# stowline_build_info): the build context has no .git for Go to read, so
#   docker build --build-arg STOWLINE_VERSION=1.4.0 --build-arg STOWLINE_REVISION=$(git rev-parse HEAD) \
#     --build-arg STOWLINE_COMMIT_TIME=$(git log -1 --format=%cI) ...
ARG STOWLINE_VERSION=""
ARG STOWLINE_REVISION=""
ARG STOWLINE_COMMIT_TIME=""
# Static binaries: the runtime images have no C library.
RUN CGO_ENABLED=0 go build -trimpath \
    -ldflags="-s -w -X github.com/stowline/stowline/internal/app.version=${STOWLINE_VERSION} -X github.com/stowline/stowline/internal/app.revision=${STOWLINE_REVISION} -X github.com/stowline/stowline/internal/app.commitTime=${STOWLINE_COMMIT_TIME}" \
    -o /out/ ./cmd/ingest ./cmd/forwarder ./cmd/stowline
# The single-host image's data directory, owned by distroless's nonroot
# user (65532): a new volume takes the ownership of the directory it is
# mounted on, and root's would leave the embedded JetStream unable to write.
RUN mkdir -p /out/rootfs/data/nats

FROM gcr.io/distroless/static-debian12:nonroot AS ingest
COPY --from=build /out/ingest /usr/local/bin/ingest
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ingest"]

FROM gcr.io/distroless/static-debian12:nonroot AS forwarder
COPY --from=build /out/forwarder /usr/local/bin/forwarder
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/forwarder"]

FROM gcr.io/distroless/static-debian12:nonroot AS stowline
COPY --from=build /out/stowline /usr/local/bin/stowline
COPY --from=build --chown=65532:65532 /out/rootfs/ /
# Embedded JetStream data (single host): mount a volume here, for one
# container at a time (a second is refused while the first runs). Stop it
# with at least 75 s (docker run --stop-timeout 75), as the systemd unit
# does: it finishes or gives back the studies in flight within
# FORWARDER_SHUTDOWN_GRACE (30 s), answers the webhooks in flight (up to
# 60 s with the longest INGEST_PUBLISH_TIMEOUT), then closes the store.
# With a FORWARDER_SHUTDOWN_GRACE above 50 s: it plus 15 s.
ENV NATS_STORE_DIR=/data/nats
VOLUME ["/data"]
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/stowline"]
