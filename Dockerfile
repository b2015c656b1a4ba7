# syntax=docker/dockerfile:1
#
# One image with every Herald binary (ingest, router, worker-push,
# worker-email, worker-sms, heraldctl); each Deployment or compose service
# picks its command. Why one image: the binaries share one library crate and
# one dependency tree, so building them together compiles the dependencies
# once; one tag names one release of the whole pipeline, so the migration
# Job (heraldctl) and the services it migrates for can never drift apart;
# and the registry stores one set of layers instead of six nearly identical
# ones (the binaries are a few tens of MB together).
#
# Layer caching: cargo-chef turns the workspace's manifests and lockfile
# into a "recipe"; the dependencies are compiled from the recipe alone, in a
# layer that is rebuilt only when Cargo.toml or Cargo.lock change. A change
# to Herald's own sources rebuilds only the last compile step.
#
#   docker build -t herald:dev .
#   docker run --rm herald:dev heraldctl --help

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.78

FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# The recipe: manifests and lockfile only (cargo-chef writes dummy sources
# from it), so the next stage's cache key ignores source edits.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
# The query macros check Herald's SQL against the query data committed in
# .sqlx/ (copied with the sources below), not against a live database.
ENV SQLX_OFFLINE=true
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only; cached until Cargo.toml or Cargo.lock change. The
# whole workspace, like the build below, so that cargo unifies the same
# features both times and the final step reuses every dependency.
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
# `sqlx::migrate!` embeds migrations/ into every binary at compile time;
# `.sqlx/` came with the sources (SQLX_OFFLINE above).
# (The test crate's `bench` binary is built too, and left out of the image.)
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && cp target/release/ingest target/release/router target/release/worker-push \
       target/release/worker-email target/release/worker-sms target/release/heraldctl /out/

# Runtime: debian:bookworm-slim rather than distroless/cc, because
#  - the binaries are linked against glibc of the same Debian release as the
#    build stage (rust:*-bookworm), so they run unchanged;
#  - the migration Job runs `heraldctl migrate && heraldctl topology` under
#    /bin/sh, and compose's healthchecks probe /healthz with bash's
#    /dev/tcp: distroless has no shell;
#  - ca-certificates: provider TLS (rustls with the platform verifier) trusts
#    the system's roots.
# It costs about 75 MB more than distroless/cc; an operator who wants the
# smaller image can switch the base and run migrations with an exec-form
# command (`heraldctl migrate`, then a second Job for `heraldctl topology`).
FROM debian:bookworm-slim AS runtime
# Unpinned on purpose: the roots should follow Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin herald
COPY --from=build /out/ /usr/local/bin/
# A numeric user, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001
ENV LOG_FORMAT=json
# ingest's port; the others listen on 9100 (router), 9101-9103 (workers).
EXPOSE 8080
CMD ["ingest"]
