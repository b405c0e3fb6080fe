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
# # Repair — what verification found, through Rucio's own mechanisms (on purpose, never in a chain)
#
# A replica that is corrupt or missing at a site is declared bad to Rucio (after checking its central source),
# which re-replicates it; a STUCK rule is retried with its reason shown; a dataset a site's Butler lacks is
# ingested again. Then the sites are verified again. `multisite-nb repair RUN_DIR` runs the same.

# %% tags=["parameters"]
# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""
world_dir = ""  # the world the campaign runs on (the chain passes it); empty: $MSNB_WORLD, or none
timeout_s = 600.0  # how long to wait for Rucio's re-replication

# %%
from IPython.display import Markdown

from multisite_nb import phases
from multisite_nb.run.notebook import open_phase, show_gate
from multisite_nb.views.tables import frame, verification_frame

campaign, run_dir = open_phase("repair", campaign_file, run_dir, world_dir)

# %%
result, actions, reports = phases.repair.run(campaign, run_dir, timeout_s=timeout_s, log=print)
frame(actions) if actions else Markdown("Nothing to repair.")

# %%
verification_frame(reports) if reports else Markdown("No site needed repair.")

# %%
show_gate(result)
