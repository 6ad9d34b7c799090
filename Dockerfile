# syntax=docker/dockerfile:1.7
#
# Multi-stage build of the externalsource-controller image.
#   docker build -t ghcr.io/oddkin/externalsource-controller:latest .                                    # memory only
#   docker build --build-arg BACKENDS=filesystem -t ghcr.io/oddkin/externalsource-controller:latest-filesystem .
#   docker build --build-arg BACKENDS=s3 -t ghcr.io/oddkin/externalsource-controller:latest-s3 .
#   docker build --build-arg BACKENDS="memory filesystem s3" -t ghcr.io/oddkin/externalsource-controller:full .
# BACKENDS lists cargo features of the binary (space or comma separated): only those
# backends are linked in (`externalsource-controller --list-backends`).
# Without a registry: deploy/image/build.sh builds the same layout with buildah FROM scratch.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
ARG BACKENDS=memory
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target directory between builds; the binary is copied
# out of the cached target directory within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p externalsource-controller \
      --no-default-features --features "${BACKENDS}" \
 && install -D -m 0755 target/release/externalsource-controller /out/externalsource-controller

# glibc, CA certificates and tzdata, no shell, no package manager; runs as 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
ARG BACKENDS=memory
LABEL org.opencontainers.image.title="externalsource-controller" \
      org.opencontainers.image.description="Turns HTTP resources into Flux ExternalArtifacts (backends: ${BACKENDS})" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/externalsource-controller /externalsource-controller
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/externalsource-controller"]
CMD ["run"]
