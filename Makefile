# Entry points. `make test` is the whole test command (.ci/run calls it).
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup image up down test lint bench

setup:  ## Docker engine, then the toolchain and the test-bed image side by side
	scripts/ensure-docker
	$(MAKE) --no-print-directory -j2 $(VENV)/.installed image

image:  ## The test-bed images (Debian 13 and 12), built from Debian's packages when missing or stale
	molecule/resources/image/build

# uv installs the pinned toolchain in a fraction of pip's time; pip does it where uv cannot (its download
# or the index fails), so the result is the same pins either way. Bytecode is compiled at install: where
# PYTHONDONTWRITEBYTECODE is set (as on the development machines), every ansible-playbook, molecule and pytest
# would otherwise compile its ~500 modules again on each start.
$(VENV)/.installed: requirements.txt app/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet uv==0.9.5 \
	  && $(VENV)/bin/uv pip install --quiet --compile-bytecode --native-tls --python $(VENV)/bin/python -r requirements.txt \
	  || $(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

up:  ## Local test bed: image and toolchain side by side, containers `server` and `laptop`, site.yml, the demo
	scripts/up

down:  ## Remove the local test bed
	molecule destroy --scenario-name default

test:  ## Lint, unit tests and every Molecule scenario, with a summary
	scripts/test

lint: setup  ## YAML, Ansible and Python (ruff.toml), as the test command runs them
	yamllint --strict .
	ansible-lint --offline
	ruff check .
	ruff format --check .

bench: setup  ## Converge timings against a bare install; failover and replica move; task throughput against raw AMQP; API allowance use
	bench/cluster-converge
	bench/speed
	bench/failover
	bench/app-throughput
	molecule destroy --scenario-name app
	bench/quota-usage
