# Shortcuts for tasks.py, which needs nothing but Python 3.10+ and sets up .venv itself.
PYTHON ?= python3

.PHONY: demo test bench soak clean

demo:
	$(PYTHON) tasks.py demo

test:
	$(PYTHON) tasks.py test

bench:
	$(PYTHON) tasks.py bench

soak:
	$(PYTHON) tasks.py soak

clean:
	rm -rf .venv build *.egg-info
