# medfed: the two commands of the quick start are `make demo` and `make test`.
PY := .venv/bin/python

.PHONY: bootstrap demo test bench clean

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	@$(PY) -m node.cli demo

test: bootstrap
	@$(PY) -m pytest -q -p no:cacheprovider

bench: bootstrap
	@$(PY) -m bench

clean:
	rm -rf .venv build *.egg-info
