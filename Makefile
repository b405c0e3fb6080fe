# The two commands a newcomer needs (see README.md). Both set up what they need on first use.
# what the PostgreSQL session runs (make test-postgresql, and beside the main session in test-world)
POSTGRESQL_TESTS := tests/test_phases_1_3.py tests/test_neighbours_e2e.py

.PHONY: campaign test test-unit test-world test-postgresql setup setup-test lock lint notebooks world-up world-down clean-world

campaign: setup            ## set up, bring the world up, run the whole 3x3 campaign
	.venv/bin/multisite-nb campaign

test: setup-test lint test-unit test-world  ## set up, lint and type-check, then both tiers (what CI runs)

test-unit: setup           ## the fast tier: no world (parameter files, domain, registries, views, the chain)
	.venv/bin/python -m pytest tests/unit

test-world: setup-test     ## the world tier: against the embedded world the session starts, the PostgreSQL session beside it
	bash scripts/world_tiers.sh $(POSTGRESQL_TESTS)

test-postgresql: setup-test  ## the phase 1-3 tests and the neighbours campaign, on PostgreSQL worlds
	.venv/bin/python -m pytest --db postgresql $(POSTGRESQL_TESTS)

lint: setup                ## ruff (lint + format check) and mypy, as CI runs them
	.venv/bin/ruff check multisite_nb tests bench scripts notebooks
	.venv/bin/ruff format --check multisite_nb tests bench scripts notebooks
	.venv/bin/mypy

notebooks: setup           ## after editing notebooks/*.py: bring the paired .ipynb up to date
	.venv/bin/jupytext --sync notebooks/*.py

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --browser --postgres

lock:                      ## re-resolve requirements/*.txt into the hash-pinned requirements/*.lock setup.sh installs
	bash scripts/lock.sh

world-up: setup
	.venv/bin/multisite-nb world up

world-down:
	.venv/bin/multisite-nb world down

clean-world:               ## stop the world (if any) and remove its folder
	if [ -e world ]; then .venv/bin/multisite-nb world down; fi
	rm -rf world
