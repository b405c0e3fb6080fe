# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Phase 2 — transfer and ingest
#
# Dimension records travel first, then the data: the planned files are registered where they sit at the central site (replicas, datasets, `rubin_butler` / `rubin_sidecar` metadata), one replication rule per site moves them, Rucio's conveyor copies and checks them, and what arrived is ingested in place into each site's Butler with the same dataset UUIDs. Re-running creates no second rule and no second ingest.

# %% tags=["parameters"]
# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""
world_dir = ""  # the world the campaign runs on (the chain passes it); empty: $MSNB_WORLD, or none

# %%
from multisite_nb import phases
from multisite_nb.run.notebook import open_phase, show_gate
from multisite_nb.views.tables import shipments_frame

campaign, run_dir = open_phase("transfer", campaign_file, run_dir, world_dir)

# %%
result, outcomes = phases.transfer.run(campaign, run_dir)
shipments_frame(outcomes)

# %%
show_gate(result)  # the chain reads the recorded result; a failed gate stops it
