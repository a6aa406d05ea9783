# Every target creates the virtualenv on first use, so a fresh clone needs only Python 3.11 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench proto clean image image-test
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= localhost/llm-picker:$(VERSION)

$(STAMP): pyproject.toml hatch_build.py picker/prefix/_native.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench,litellm,helm,grpc-engines]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/llm-picker demo

# Bytecode caches written even where PYTHONDONTWRITEBYTECODE is set (this sandbox sets it): the
# suite starts hundreds of interpreters, and each compiled the project's modules from source
# (and every xdist worker re-rewrote every test module's asserts) without them.
test: lint
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n 4 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy --strict hatch_build.py

# The container image (deploy/image/Dockerfile) with buildah, from Debian packages: needs root,
# buildah, podman, skopeo, debootstrap and runc (.ci/run installs them); a minute or two the
# first time (the base image is kept), so not part of `make test`.
image: $(STAMP)
	IMAGE=$(IMAGE) PYTHON=$(BIN)/python bash deploy/image/build.sh

# Build the image, then run it: its configuration, --version, the picker in it behind Envoy.
image-test: image
	LLM_PICKER_IMAGE=$(IMAGE) $(BIN)/python -m pytest -q -p no:xdist tests/integration/test_image.py

bench: $(STAMP)
	$(BIN)/llm-picker bench overhead

# Regenerate the C-backed protobuf modules from the project's own minimal ext_proc, access-log,
# engine-signal and Generate .protos.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iextproc/proto --python_out=extproc/_pb --pyi_out=extproc/_pb extproc/proto/ext_proc.proto
	$(BIN)/python -m grpc_tools.protoc -Iauthz/proto --python_out=authz/_pb --pyi_out=authz/_pb authz/proto/als.proto
	$(BIN)/python -m grpc_tools.protoc -Ipicker/fleet/proto --python_out=picker/fleet/_pb --pyi_out=picker/fleet/_pb picker/fleet/proto/engine_signals.proto
	$(BIN)/python -m grpc_tools.protoc -Ipicker/grpc_route/proto --python_out=picker/grpc_route/_pb --pyi_out=picker/grpc_route/_pb picker/grpc_route/proto/generate.proto picker/grpc_route/proto/vllm_generate.proto

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
