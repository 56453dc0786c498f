# syntax=docker/dockerfile:1
# Build:  docker build -t outboxrelay:dev --build-arg VERSION=v1.2.3 .
# Run:    docker compose up (see docker-compose.yml)

FROM golang:1.26 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-mod=readonly
# Dependencies first, so source edits do not invalidate the module cache layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath \
      -ldflags "-s -w -X github.com/outboxrelay/outboxrelay/internal/cli.Version=${VERSION}" \
      -o /relay ./cmd/relay

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /relay /usr/local/bin/relay
USER nonroot:nonroot
# /metrics, /healthz, /readyz (set RELAY_HTTP_ADDR=:9600 inside a container)
EXPOSE 9600
ENTRYPOINT ["relay"]
CMD ["run"]
