# Entry points. `make test` is the whole test command (.ci/run calls it).
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup image up down test lint bench

setup: $(VENV)/.installed  ## Docker engine, toolchain and test-bed image
	scripts/ensure-docker
	molecule/resources/image/build

$(VENV)/.installed: requirements.txt app/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

up: setup  ## Local test bed: containers `server` and `laptop`, then site.yml on them
	molecule converge --scenario-name default

down:  ## Remove the local test bed
	molecule destroy --scenario-name default

test:  ## Lint, unit tests and every Molecule scenario, with a summary
	scripts/test

lint: setup
	yamllint --strict .
	ansible-lint --offline

bench: setup  ## Converge timings against a bare install; failover and replica move; task throughput against raw AMQP; API allowance use
	bench/cluster-converge
	bench/failover
	bench/app-throughput
	molecule destroy --scenario-name app
	bench/quota-usage
