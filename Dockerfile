# A static musl binary in an empty image: the binary scripts/build-static.sh builds (same
# target and flags) and the test suite runs, once as this image does (an empty root, uid
# 10001, a host name from etc/hosts).
FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The benchmark is a workspace member: its manifest must be there, though it is not built.
COPY bench ./bench
RUN cargo build --release --locked -p heartbeat

FROM scratch
COPY --from=build /src/target/release/heartbeat /heartbeat
COPY .env /.env
WORKDIR /
USER 10001:10001
EXPOSE 8080
# No curl in a scratch image: the binary asks its own /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=2s CMD ["/heartbeat", "healthcheck"]
ENTRYPOINT ["/heartbeat"]
