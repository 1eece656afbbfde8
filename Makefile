# The two commands a new user needs:  make app  and  make test
.PHONY: app test setup bench lint

lint: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

setup:
	@bash scripts/setup.sh

app: setup
	.venv/bin/streamlit run app/main.py

test: setup
	@bash scripts/install-browser.sh
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -n 2 --dist loadgroup -q

bench: setup
	.venv/bin/python -m benchmarks.run_all
