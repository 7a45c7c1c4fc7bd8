# Convenience targets; the scripts are what the README and CI use.
.PHONY: setup demo test lint bench
setup:
	scripts/setup.sh
demo:
	scripts/demo.sh
test:
	scripts/test.sh
lint:
	.venv/bin/ruff check robot audio engines tests scripts
	.venv/bin/ruff format --check robot audio engines tests scripts
	.venv/bin/mypy
bench:
	scripts/setup.sh --test
	.venv/bin/python scripts/bench_voice.py
	.venv/bin/python scripts/bench_stories.py
	.venv/bin/python scripts/bench_button.py
