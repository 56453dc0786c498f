# Outbox Relay developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO        ?= go
BENCH_N   ?= 100000
ENV_FILE  := .services/env

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: up
up: ## start PostgreSQL and RabbitMQ (Docker Compose, or local Debian packages) and print their URLs
	@scripts/services.sh up

.PHONY: down
down: ## stop the services (and the demo relay and demo consumer)
	@scripts/services.sh down

.PHONY: build
build: ## build bin/relay and bin/orders-consumer (the inbox example)
	$(GO) build -trimpath -o bin/relay ./cmd/relay
	$(GO) build -trimpath -o bin/orders-consumer ./examples/orders-consumer

# staticcheck at a pinned version, fetched through the Go module proxy on
# first use and cached by the go command after that.
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: lint
lint: ## go vet and staticcheck (both modules, fault suite included) and gofmt
	$(GO) vet ./...
	$(GO) vet -tags fault ./test/fault
	$(STATICCHECK) -tags fault ./...
	cd deploy && $(GO) vet ./...
	cd deploy && $(STATICCHECK) ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: docs
docs: ## regenerate docs/configuration.md from the configuration's key table (config/config.go)
	$(GO) generate ./config

.PHONY: test
test: ## install and start the services, lint, run every test with the race detector, a short fuzz of each target, then the fault and partition suites
	@scripts/services.sh up >/dev/null
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory rules
	. $(ENV_FILE) && $(GO) test -race -count=1 -timeout 15m ./...
	@$(MAKE) --no-print-directory deploy-check
	@$(MAKE) --no-print-directory fuzz FUZZTIME=3s
	@$(MAKE) --no-print-directory fault
	@$(MAKE) --no-print-directory partition

.PHONY: screenshots
screenshots: ## refresh docs/console-overview.png and docs/console-row.png: headless Chromium against a seeded console
	@scripts/services.sh up >/dev/null
	. $(ENV_FILE) && RELAY_SCREENSHOTS=$(CURDIR)/docs $(GO) test -count=1 -run '^TestScreenshots$$' ./cmd/relay/internal/console

.PHONY: deploy-check
deploy-check: ## check docker-compose.yml, the Dockerfile, the Kubernetes manifests and the systemd units with real parsers (module deploy/)
	cd deploy && CI=$${CI:-} $(GO) test -race -count=1 ./...

.PHONY: rules
rules: ## check and unit-test the Prometheus rules (deploy/prometheus), installing Debian's prometheus if promtool is absent
	@scripts/install-prometheus.sh
	promtool check rules deploy/prometheus/rules.yml
	cd deploy/prometheus && promtool test rules rules_test.yml

.PHONY: fault
fault: ## the fault suite alone: kills, broker and database restarts, cuts, cluster failover, alarms (restarts the local services)
	@scripts/services.sh up >/dev/null
	. $(ENV_FILE) && $(GO) test -tags fault -race -count=1 -v -timeout 25m ./test/fault 2>&1 | grep --line-buffered -vE '^=== (RUN|PAUSE|CONT)'; exit $${PIPESTATUS[0]}

.PHONY: partition
partition: ## the partition and failover suite alone: RabbitMQ nodes in network namespaces cut off, bridged, flapping, a slow lossy link; a PostgreSQL primary promoted mid-drain (root; PARTITION_SEED, RUN to pick)
	@scripts/services.sh up >/dev/null
	@scripts/services.sh netns-up ignore >/dev/null
	. $(ENV_FILE) && $(GO) test -tags partition -race -count=1 -v -timeout 30m $(if $(RUN),-run '$(RUN)') ./test/partition 2>&1 | grep --line-buffered -vE '^=== (RUN|PAUSE|CONT)'; rc=$${PIPESTATUS[0]}; \
	  scripts/services.sh netns-down >/dev/null; exit $$rc

.PHONY: demo
demo: build ## bring everything up, run the relay and the orders consumer, insert rows with plain SQL, show them arrive and apply exactly once
	@scripts/demo.sh

.PHONY: bench
bench: ## short benchmark suite: drains (1 and 3 relays, quorum and classic, vs the raw broker limit), xmin, latency, ordering, tracing on/off, insert cost per path
	@scripts/services.sh up >/dev/null
	. $(ENV_FILE) && BENCH_N=$(BENCH_N) $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./test/bench | grep --line-buffered -vE '^(goos|goarch|pkg|cpu):'; exit $${PIPESTATUS[0]}

.PHONY: bench-long
bench-long: ## the short suite plus a 20-minute soak at 2,000 msg/s (BENCH_SOAK to change)
	@scripts/services.sh up >/dev/null
	. $(ENV_FILE) && BENCH_N=$(BENCH_N) BENCH_SOAK=$${BENCH_SOAK:-20m} $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 90m ./test/bench | grep --line-buffered -vE '^(goos|goarch|pkg|cpu):'; exit $${PIPESTATUS[0]}

.PHONY: fuzz
FUZZTIME ?= 30s
fuzz: ## run each fuzz target for FUZZTIME (30s; make test runs them for 3s)
	. $(ENV_FILE) && $(GO) test -run '^$$' -fuzz '^FuzzDecodeHeaders$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./relay
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME) ./config
	$(GO) test -run '^$$' -fuzz '^FuzzSecretNeverEchoed$$' -fuzztime $(FUZZTIME) ./config
	$(GO) test -run '^$$' -fuzz '^FuzzAttemptsHeader$$' -fuzztime $(FUZZTIME) ./inbox
	$(GO) test -run '^$$' -fuzz '^FuzzFit$$' -fuzztime $(FUZZTIME) ./inbox
