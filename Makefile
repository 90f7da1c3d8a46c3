# i2kit — every Kubernetes pod its own microVM.
# `make demo` runs the main job on one machine; `make test` runs the tests. Both install what they need.

SHELL   := /bin/bash
GO      ?= go
# BACKEND is the demo's backend: qemu, or aws (a local EC2 of QEMU VMs).
BACKEND ?= qemu
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.1.0-dev)
LDFLAGS := -X github.com/i2kit/i2kit/internal/version.Version=$(VERSION)
I2KIT   := bin/i2kit
UNIT_PKGS = $(shell $(GO) list ./... | grep -v /test/)

.PHONY: all build agent image chart deps kernel controlplane metrics-server test unit fuzz fuzz-agent e2e lint bench demo demo-down clean

all: build

build: agent ## the i2kit binary (and the agent beside it)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(I2KIT) ./cmd/i2kit

agent: ## the static guest agent, PID 1 of every pod VM
	CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o bin/i2kit-agent ./cmd/i2kit-agent

OCI_LAYOUT ?= bin/oci
image: agent kernel ## the node's OCI image (aws backend) without Docker, reproducibly (SOURCE_DATE_EPOCH: the last commit's time): PUSH=registry/repo:tag [INSECURE=1] pushes it, else an OCI layout in OCI_LAYOUT (bin/oci)
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o bin/image/i2kit ./cmd/i2kit
	@[ -n "$(PUSH)" ] || rm -rf $(OCI_LAYOUT)
	SOURCE_DATE_EPOCH=$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null || echo 0)} \
	  $(GO) run ./hack/image --i2kit bin/image/i2kit --agent bin/i2kit-agent --version $(VERSION) \
	  $(if $(PUSH),--push $(PUSH) $(if $(INSECURE),--insecure),--oci-layout $(OCI_LAYOUT))

chart: ## the Helm chart charts/i2kit as bin/i2kit-<chart version>.tgz, stamped with VERSION (appVersion, the image tag)
	$(GO) run ./charts/pack -version $(VERSION) -out bin

kernel: deps ## the pod-VM kernel from Debian's linux-source-6.1 (cached by the config fragment's hash)
	scripts/kernel.sh
	scripts/debian-kernel.sh

deps: ## system packages (Debian): installed only when missing
	scripts/deps.sh

controlplane: build ## build etcd and the Kubernetes binaries into the versioned cache (once per machine)
	$(I2KIT) dev build

metrics-server: ## metrics-server v0.8.0 from the Go module proxy into the cache (for kubectl top in the e2e tests)
	scripts/metrics-server.sh >/dev/null

test: deps lint unit fuzz fuzz-agent e2e ## everything: lint, unit tests, end-to-end tests against a real control plane

unit: deps ## unit tests (no control plane; erofs-utils from make deps)
	$(GO) test -count=1 -race $(UNIT_PKGS)

FUZZTIME    ?= 15s
FUZZ_TARGETS = FuzzApplyLayer FuzzDecode

fuzz: ## each fuzz target of vmimage (layer extraction, spec decoding) for FUZZTIME (15s); seeds in vmimage/testdata/fuzz
	@GO=$(GO) scripts/fuzz.sh ./vmimage $(FUZZTIME) $(FUZZ_TARGETS)

e2e: deps controlplane kernel metrics-server ## end-to-end tests: real control plane in a network namespace (root), pod VMs under QEMU
	$(GO) test -count=1 -timeout 30m -v ./test/e2e/... ./test/vm/...

lint: ## gofmt, go vet, and the binary's boundaries: the host binary links no guest package (only agent/boot and agent/protocol are shared), no devcloud or test support, and neither the chart package nor Helm
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@guest=$$($(GO) list -deps ./cmd/i2kit | grep -E '^github.com/i2kit/i2kit/agent(/|$$)' | grep -vxE 'github.com/i2kit/i2kit/agent/(boot|protocol)'); \
	if [ -n "$$guest" ]; then echo "cmd/i2kit links guest code (only agent/boot and agent/protocol are shared):"; echo "$$guest"; exit 1; fi
	@dev=$$($(GO) list -deps ./cmd/i2kit | grep -E '^(github.com/i2kit/i2kit/(devcloud|provider/aws/awstest|charts)(/|$$)|helm\.sh/)'); \
	if [ -n "$$dev" ]; then echo "cmd/i2kit links development and test tools (devcloud, awstest, charts, Helm):"; echo "$$dev"; exit 1; fi

AGENT_FUZZ = FuzzReadFrame FuzzReadLine FuzzDial FuzzAccept FuzzDecodeStatus FuzzDecodeStats
fuzz-agent: ## fuzz the agent protocol's decoders, FUZZTIME (15s) each; seeds in agent/protocol/testdata/fuzz
	@GO=$(GO) scripts/fuzz.sh ./agent/protocol/ $(FUZZTIME) $(AGENT_FUZZ)

bench: deps controlplane kernel ## benchmarks, medians printed
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 5x -timeout 30m ./...

demo: deps controlplane kernel build ## local control plane + i2kit node in a network namespace: BACKEND=qemu (default), or aws against a local EC2 whose instances are QEMU VMs (hack/devcloud)
	BACKEND=$(BACKEND) scripts/demo.sh up

demo-down: ## stop everything the demo started
	scripts/demo.sh down

clean:
	rm -rf bin
