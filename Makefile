# The two commands a newcomer needs (see README.md). Both set up what they need on first use.
.PHONY: campaign test setup world-up world-down clean-world

campaign: setup            ## set up, bring the world up, run the whole 3x3 campaign
	.venv/bin/multisite-nb campaign

test: setup-test           ## set up and run the whole test suite (what CI runs)
	.venv/bin/python -m pytest

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --browser

world-up: setup
	.venv/bin/multisite-nb world up

world-down:
	.venv/bin/multisite-nb world down

clean-world: world-down
	rm -rf world
