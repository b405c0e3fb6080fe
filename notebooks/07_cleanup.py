# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Cleanup — remove a campaign's products (on purpose, never in a chain)
#
# Lists every collection under the campaign's output prefix at every site and every Rucio rule of its gather,
# redistribution and final shipments. With `dry_run = False` it deletes those rules (their replicas left to Rucio's
# reaper) and removes those collections with their files, under the campaign's operator lock. The placement stays:
# its rules pin the sites' copies of the inputs, which the site Butlers hold.

# %% tags=["parameters"]
# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""
world_dir = ""  # the world the campaign runs on (the chain passes it); empty: $MSNB_WORLD, or none
dry_run = True  # False: remove for real

# %%
from multisite_nb import phases
from multisite_nb.run.notebook import open_phase, show_gate
from multisite_nb.views.tables import frame

campaign, run_dir = open_phase("cleanup", campaign_file, run_dir, world_dir)

# %%
result, items = phases.cleanup.run(campaign, run_dir, dry_run=dry_run)
frame(items)

# %%
show_gate(result)
