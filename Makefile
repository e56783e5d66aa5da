# pulsecheck — the two commands a newcomer needs:
#   make demo   run the main job: a local control plane, a simulated fleet and pulsecheck at work
#   make test   every test: unit, integration (real kube-apiserver + etcd), deploy and alert checks
# Both build what they need first (Go tools from the module proxy, cached by version).

SHELL := bash
CARGO ?= cargo

.PHONY: all tools test lint test-rust test-deploy demo lab bench fmt clippy product-deps image release-artifacts release-publish-local

all: test

tools:
	bash tools/build.sh all

test: tools lint image test-rust test-deploy

test-rust:
	$(CARGO) build --locked --benches
	$(CARGO) test --locked

test-deploy:
	bash .ci/check-deploy.sh

# The container image, built here without a registry or a container engine: pulsecheck and the
# node agent pulsecheck-agent linked statically against musl (ring's C by Debian's musl-gcc), the
# two files of an OCI image archive written by the lab (lab/src/image.rs): /pulsecheck (the
# entrypoint, `run` by default) and /pulsecheck-agent (the chart's agent DaemonSet runs it).
# Prints the image reference the archive holds; the install tests (tests/install.rs) load it into
# real nodes' containerd.
MUSL_TARGET := $(shell uname -m)-unknown-linux-musl
TARGET_DIR = $(or $(CARGO_TARGET_DIR),target)
IMAGE_ARCHIVE := target/image/pulsecheck.tar

image:
	@command -v musl-gcc >/dev/null || { echo "make image: musl-gcc is missing (Debian: apt-get install musl-tools)" >&2; exit 1; }
	@rustup target list --installed 2>/dev/null | grep -qx '$(MUSL_TARGET)' || rustup target add $(MUSL_TARGET)
	CC_$(subst -,_,$(MUSL_TARGET))=musl-gcc $(CARGO) build --locked --release --target $(MUSL_TARGET) --bin pulsecheck --bin pulsecheck-agent
	$(CARGO) run --locked --quiet --bin pulsecheck-lab -- image --binary $(TARGET_DIR)/$(MUSL_TARGET)/release/pulsecheck \
	  --agent-binary $(TARGET_DIR)/$(MUSL_TARGET)/release/pulsecheck-agent --out $(IMAGE_ARCHIVE)

# The release (docs/release.md): everything .github/workflows/release.yml publishes, built here
# without publishing (cross-compiled x86_64 + aarch64 musl binaries, the multi-arch OCI image,
# the chart package, krew archives and manifest, SBOM, SHA256SUMS) into
# target/release-artifacts/VERSION; then pushed to a registry on loopback (crane registry serve)
# as the workflow pushes to ghcr.io, without signing.
release-artifacts:
	@test -n "$(VERSION)" || { echo "make release-artifacts: say VERSION=X.Y.Z (Cargo.toml's and the chart's version)" >&2; exit 2; }
	bash release/artifacts.sh $(VERSION)

release-publish-local:
	@test -n "$(VERSION)" || { echo "make release-publish-local: say VERSION=X.Y.Z (after make release-artifacts)" >&2; exit 2; }
	bash release/publish-local.sh $(VERSION) target/release-artifacts/$(VERSION)

demo: tools
	$(CARGO) run --locked --release --bin pulsecheck-lab -- demo

lab: tools
	$(CARGO) run --locked --bin pulsecheck-lab -- up --dir .cache/lab --nodes 5

bench:
	$(CARGO) bench --locked --bench evaluate

lint: fmt clippy product-deps

# The product ships only the product: no lab crate, certificate minting or test helpers in the
# normal dependency tree of the crate the image is built from.
product-deps:
	@if $(CARGO) tree --locked -e normal -p pulsecheck --prefix none | grep -E '^(pulsecheck-lab|rcgen|anyhow|tempfile) '; then \
	  echo "make product-deps: the pulsecheck crate depends on test-only crates (above)" >&2; exit 1; \
	else echo "product-deps: no test-only crate in pulsecheck's dependencies"; fi

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets --locked -- -D warnings
