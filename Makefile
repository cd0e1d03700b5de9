# sipside — the targets an operator and a developer use.
GO       ?= go
PKGS     ?= ./...
# The whole suite stays well under this on 2 cores; it is a guard, not a goal.
TEST_TIMEOUT ?= 30m
FUZZTIME ?= 10s
BENCHTIME ?= 1s

.PHONY: all build run test test-short deps bench fuzz lint clean lab lab-down

all: build

build:
	$(GO) build -o bin/sipside ./cmd/sipside

# The main job on the embedded default config: OpenSIPS event_datagram on
# udp:127.0.0.1:8090 -> one JSON line per event on stdout; metrics on :9690.
run:
	$(GO) run ./cmd/sipside run

# Installs what the tests need (Kamailio and its modules, RabbitMQ, sipp;
# needs root), then runs every test with the race detector. Tests start
# their own private Kamailio and RabbitMQ nodes on loopback.
test: deps
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)

# Unit tests only: no Kamailio, no RabbitMQ (tests that need them skip).
test-short:
	$(GO) test -short -race $(PKGS)

deps:
	sh testenv/install.sh

# Every benchmark, each beside its baseline in the same run.
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -timeout $(TEST_TIMEOUT) $(PKGS)

# A short pass of every fuzz target (go test runs one target at a time).
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

# The lab without Docker: a private RabbitMQ, a Kamailio DMQ pair with evapi and
# janssonrpcc, and sipside on loopback; runs the scenario and prints what went
# where. Leaves it running; 'make lab-down' stops it by pid.
lab: deps
	$(GO) build -o bin/sipside-lab ./testenv/lab
	bin/sipside-lab up -d
	bin/sipside-lab scenario

lab-down:
	bin/sipside-lab down

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)

clean:
	rm -rf bin
