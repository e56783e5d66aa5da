# syntax=docker/dockerfile:1.7
# pulsecheck container image: a static musl binary on distroless, running as UID 65532.
#
#   docker build -t ghcr.io/pulsecheck/pulsecheck:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/pulsecheck/pulsecheck:0.1.0 --push .
#
# Each platform compiles natively (under emulation for a foreign one): the musl target is chosen
# from the build machine's architecture, so no cross toolchain is needed.

FROM rust:1.95-bookworm AS builder
# musl-gcc builds ring's C and assembly for the static target.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
# The workspace: the product (src/), the node agent (agent/) and the lab crate (lab/), which Cargo
# needs to resolve the workspace; the `pulsecheck` and `pulsecheck-agent` binaries are shipped.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src
COPY agent ./agent
COPY lab ./lab
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    set -eux; \
    target="$(uname -m)-unknown-linux-musl"; \
    rustup target add "$target"; \
    cargo build --release --locked --target "$target" --bin pulsecheck --bin pulsecheck-agent; \
    mkdir -p /out; \
    cp "target/$target/release/pulsecheck" "target/$target/release/pulsecheck-agent" /out/

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="pulsecheck" \
      org.opencontainers.image.description="Finds Kubernetes nodes that claim Ready but are dead, and taints or cordons them safely" \
      org.opencontainers.image.source="https://github.com/pulsecheck/pulsecheck" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/pulsecheck /pulsecheck
# The opt-in node agent (chart value agent.enabled, docs/agent.md).
COPY --from=builder /out/pulsecheck-agent /pulsecheck-agent
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/pulsecheck"]
CMD ["run"]
