# pgonce: a PostgreSQL transactional-outbox job runner.
# Tests need a PostgreSQL: TEST_DATABASE_URL, else the installed server binaries
# (a throwaway cluster), else Docker through testcontainers-go.

GO        ?= go
PKGS      ?= ./...
TESTFLAGS ?=
GOLANGCI  := $(or $(shell command -v golangci-lint 2>/dev/null),$(wildcard $(shell $(GO) env GOPATH)/bin/golangci-lint))

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z\/_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: run
run: build ## Start the runner on a throwaway database and SMTP sink, push a workload through it, print the audit
	./bin/runner demo $(ARGS)

.PHONY: serve
serve: build ## Serve the API and work jobs in development mode (throwaway database, SMTP sink, generated token)
	./bin/runner serve --dev --log-format text $(ARGS)

.PHONY: build
build: ## Build bin/runner
	$(GO) build -o bin/runner ./cmd/runner

.PHONY: test
test: ## Run every test against a real PostgreSQL
	$(GO) test -count=1 -timeout 20m $(TESTFLAGS) $(PKGS)

.PHONY: chaos
chaos: build ## Kill runners and restart PostgreSQL under load for a minute, then audit that nothing was lost or doubled
	./bin/runner chaos $(ARGS)

.PHONY: test/race
test/race: ## Run every test with the race detector
	$(GO) test -count=1 -race -timeout 30m $(TESTFLAGS) $(PKGS)

.PHONY: lint
lint: ## go vet, gofmt, and golangci-lint when installed
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
ifneq ($(GOLANGCI),)
	$(GOLANGCI) run $(PKGS)
else
	@echo "golangci-lint not installed (go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0); ran go vet and gofmt only"
endif

.PHONY: bench
bench: build ## Measure against the commit ceiling and bare River in one run (about 4 minutes), print the table
	./bin/runner bench $(ARGS)
