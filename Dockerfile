# portcullis container image.
#
#   docker build -t portcullis:0.1.0 .
#   docker run --rm -p 8080:8080 -v portcullis-audit:/var/lib/portcullis \
#     -e PORTCULLIS_GITHUB_WEBHOOK_SECRET=... portcullis:0.1.0
#
# The build stage is Debian bookworm, like the runtime (distroless cc-debian12):
# the binary links glibc and aws-lc, so both stages must agree on glibc.

FROM rust:1.95-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# aws-lc-sys builds with cc and its prebuilt bindings here; fail rather than
# fall back to a CMake build that needs tools this image does not have.
ENV AWS_LC_SYS_CMAKE_BUILDER=0 \
    CARGO_TERM_COLOR=never

# Dependency layer: rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin portcullis \
 && rm -rf src

# The sources. Touch the crate roots so cargo sees them newer than the dummy.
COPY src/ src/
COPY config/ config/
COPY schemas/ schemas/
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin portcullis

# The container's default configuration: the example, listening on all
# interfaces, with the audit file on the volume, its policies and evidence
# schema under /etc/portcullis, and without the loopback issuer of the
# local walkthrough. check-config proves the result is valid (it compiles
# the policies and the schema where the image will have them), so a change
# to the example that this edit misses fails the build.
RUN mkdir -p /out/etc/portcullis/schemas /out/var/lib/portcullis \
 && cp -r config/. /out/etc/portcullis/ \
 && cp schemas/*.json /out/etc/portcullis/schemas/ \
 && { echo '# Container default, generated from config/portcullis.example.toml at image build.'; \
      echo '# Mount your own file over /etc/portcullis/portcullis.toml.'; \
      sed -e 's|^listen = .*|listen = "0.0.0.0:8080"|' \
          -e 's|^path = "var/audit.jsonl"|path = "/var/lib/portcullis/audit.jsonl"|' \
          -e 's|"config/policies"|"/etc/portcullis/policies"|' \
          -e 's|"schemas/evidence.schema.json"|"/etc/portcullis/schemas/evidence.schema.json"|' \
          config/portcullis.example.toml \
      | awk 'BEGIN { RS = ""; ORS = "\n\n" } !/name = "local-dev"/'; \
    } > /out/etc/portcullis/portcullis.toml \
 && grep -q '^listen = "0.0.0.0:8080"$' /out/etc/portcullis/portcullis.toml \
 && grep -q '^path = "/var/lib/portcullis/audit.jsonl"$' /out/etc/portcullis/portcullis.toml \
 && ! grep -q '127\.0\.0\.1:9000' /out/etc/portcullis/portcullis.toml \
 && ! grep -q '"config/\|"schemas/' /out/etc/portcullis/portcullis.toml \
 && ln -s /out/etc/portcullis /etc/portcullis \
 && PORTCULLIS_GITHUB_WEBHOOK_SECRET=build-check-only \
    target/release/portcullis check-config --config /out/etc/portcullis/portcullis.toml >/dev/null \
 && cp target/release/portcullis /out/portcullis

FROM gcr.io/distroless/cc-debian12:nonroot
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="Deploy authorizer: verifies CI identities and policy verdicts, then approves or rejects protected deployments on GitHub and GitLab, with a hash-chained audit trail." \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

COPY --from=build /out/portcullis /usr/local/bin/portcullis
# Configuration and policies (config/policies/ when the repository has it).
COPY --from=build /out/etc/portcullis/ /etc/portcullis/
# The audit file lives here; mount a volume (the root filesystem may be read-only).
COPY --from=build --chown=65532:65532 /out/var/lib/portcullis/ /var/lib/portcullis/
VOLUME ["/var/lib/portcullis"]
# Relative paths in a configuration resolve here, on the writable volume.
WORKDIR /var/lib/portcullis

# distroless's nonroot user, numerically, so that Kubernetes' runAsNonRoot
# can verify it without a runAsUser.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]
