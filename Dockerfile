# One image with every Herald binary; each Deployment picks its command.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins \
 && mkdir /out \
 && cp target/release/ingest target/release/router target/release/worker-push \
       target/release/worker-email target/release/worker-sms target/release/heraldctl /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 herald
COPY --from=build /out/ /usr/local/bin/
USER 10001
