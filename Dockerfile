# syntax=docker/dockerfile:1
# Build:  docker build -t outboxrelay:v1.2.3 --build-arg VERSION=v1.2.3 .
#         (untagged: --build-arg VERSION="$(git describe --tags --always --dirty)")
#         docker build --target orders-consumer -t outboxrelay-orders-consumer:dev .
# Run:    docker compose up (see docker-compose.yml)

# Base images are pinned by digest, so a rebuild of a tag gets the same
# toolchain and runtime files byte for byte; the tag is kept for readers.
# To move to a newer image, read its digest with
#   docker buildx imagetools inspect golang:1.26.8-bookworm
# (or `crane digest`) and replace both (docs/operations.md, "Base images").
FROM golang:1.26.8-bookworm@sha256:dc9ad6c05acc7a88e5b71bde60a5fe3bd4b9f0db209011711b464107438a8107 AS source
WORKDIR /src
# CGO off: a static binary, which the distroless static image needs (no libc).
# No .git in the context (.dockerignore): VERSION carries the version instead.
ENV CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
# Dependencies first, so source edits do not invalidate the module cache layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .

FROM source AS build
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath \
      -ldflags "-s -w -X github.com/outboxrelay/outboxrelay/cmd/relay/internal/cli.Version=${VERSION}" \
      -o /relay ./cmd/relay

# The inbox example (examples/orders-consumer); a separate stage, so building
# the relay image does not compile it.
FROM source AS build-orders-consumer
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-s -w" -o /orders-consumer ./examples/orders-consumer

FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab AS orders-consumer
COPY --from=build-orders-consumer /orders-consumer /usr/local/bin/orders-consumer
USER 65532:65532
# Configured by ORDERS_DATABASE_URL and ORDERS_AMQP_URL (see -help).
ENTRYPOINT ["orders-consumer"]

# The relay stays the last stage: a build without --target builds it.
FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab AS relay
COPY --from=build /relay /usr/local/bin/relay
# distroless's "nonroot" user, by number: Kubernetes' runAsNonRoot can only
# verify a numeric USER.
USER 65532:65532
# /metrics, /healthz, /readyz on every interface of the container (the
# binary's own default, 127.0.0.1:9600, is unreachable from outside it).
ENV RELAY_HTTP_ADDR=:9600
EXPOSE 9600
ENTRYPOINT ["relay"]
CMD ["run"]
