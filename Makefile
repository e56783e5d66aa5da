# pulsecheck — the two commands a newcomer needs:
#   make demo   run the main job: a local control plane, a simulated fleet and pulsecheck at work
#   make test   every test: unit, integration (real kube-apiserver + etcd), deploy and alert checks
# Both build what they need first (Go tools from the module proxy, cached by version).

SHELL := bash
CARGO ?= cargo

.PHONY: all tools test lint test-rust test-deploy demo lab bench fmt clippy product-deps

all: test

tools:
	bash tools/build.sh all

test: tools lint test-rust test-deploy

test-rust:
	$(CARGO) build --locked --benches
	$(CARGO) test --locked

test-deploy:
	bash .ci/check-deploy.sh

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
