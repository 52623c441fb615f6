# syntax=docker/dockerfile:1

# gochat container image: a static Go binary on a distroless base, run as a
# non-root user. Build and run with `docker compose up --build` (see
# docker-compose.yml) or:
#   docker build -t gochat . && docker run --rm -p 8080:8080 gochat

# ---- build stage ------------------------------------------------------------
# Pinned toolchain (matches the go directive in go.mod). $BUILDPLATFORM keeps the
# compiler native under buildx; GOOS/GOARCH cross-compile to the target.
FROM --platform=$BUILDPLATFORM golang:1.26.8-bookworm AS build
WORKDIR /src

# Module downloads get their own layer, reused while go.mod/go.sum are unchanged.
COPY go.mod go.sum ./
RUN go mod download && go mod verify

COPY . .
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w" -o /out/gochat .

# ---- runtime stage ----------------------------------------------------------
# distroless/static: no shell, no package manager; CA certificates and tzdata
# only. The :nonroot variant's user is 65532, set explicitly below as well.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/gochat /gochat
USER 65532:65532
ENV GOCHAT_ADDR=:8080
EXPOSE 8080
# `-healthcheck` GETs /healthz on the port of -addr/GOCHAT_ADDR and exits 0/1.
# It resolves the port exactly as the server does (flag, then GOCHAT_ADDR,
# then :8080), so change the port with GOCHAT_ADDR, or pass the same -addr
# to both the server and the healthcheck CMD. It is a flag only: a
# GOCHAT_HEALTHCHECK variable is ignored.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/gochat", "-healthcheck"]
# SIGTERM starts a graceful drain (close 1001 to every client, then exit).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/gochat"]
