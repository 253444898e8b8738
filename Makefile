# Two entry points (README): `make demo` and `make test`. Both create/update .venv themselves.
PY ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
MODEL ?= mobilevit_s
PHOTOS ?= ../shared/data/photos

.PHONY: setup demo test bench-peers native clean

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch/torchvision are pinned in constraints.txt (the pair that lies on this machine's disk).
# Reinstalls only when the package metadata changed (the stamp is older than pyproject.toml).
$(VENV)/.installed: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt -e '.[export,openvino,bench,serve,ray,test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/edgeinfer export --model $(MODEL) --weights random --int8 --fp16 $$( [ -d $(PHOTOS) ] && echo --images $(PHOTOS) --calib $(PHOTOS) ) --out artifacts/$(MODEL) --force
	$(VENV)/bin/edgeinfer bench artifacts/$(MODEL) --provider all --precision all $$( [ -d $(PHOTOS) ] && echo --images $(PHOTOS) ) --out artifacts/$(MODEL)/bench

test: setup
	$(VENV)/bin/python -m pytest -q

# the native runner (C++): build/edgeinfer-run and build/libedgeinfer.so (native/README.md)
native: setup
	$(VENV)/bin/edgeinfer native-build --build-dir build

bench-peers: setup
	$(VENV)/bin/python benchmarks/peers.py --photos $(PHOTOS)

clean:
	rm -rf artifacts .pytest_cache
