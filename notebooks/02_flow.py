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
# # Phase 2 (flowing) — transfer, verification and the first site stage in one go
#
# The default chain runs this notebook instead of `02_transfer`, `03_verify` and the first `04_submit`. At every remote site, side by side: the inputs move as one shipment per batch of the first step's groups (`processing.groups_per_shipment`; first the files every group needs: calibrations, reference shards), each shipment is verified as soon as it is in place (Rucio, the site's Butler, the disk), and its groups start at once, at most `workflow.groups_in_flight` at a time, while later shipments still move. A shipment that fails, or that verification finds wrong, holds back its own groups only. The stage's later steps follow each site's first step; the central stage waits for every site, as before.
#
# It records the three gates it stands for — `transfer`, `verify` and `submit_<stage>` — each judging all of its shipments or groups, and its own, `flow`: how shipments and groups overlapped at each site.

# %% tags=["parameters"]
# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""
world_dir = ""  # the world the campaign runs on (the chain passes it); empty: $MSNB_WORLD, or none

# %%
import pandas as pd
from IPython.display import Markdown, display

from multisite_nb import phases
from multisite_nb.domain.naming import table_path
from multisite_nb.phases.submit.summary import failures_table, groups_table
from multisite_nb.run.notebook import open_phase, show_gate
from multisite_nb.views.tables import summarize

campaign, run_dir = open_phase("flow", campaign_file, run_dir, world_dir)

# %%
result, flows = phases.flow.run(campaign, run_dir)
display(
    Markdown("**Per site**: shipments, groups released, and when the first group started against the last shipment")
)
display(pd.DataFrame({site: f.model_dump() for site, f in result.summary.sites.items()}).T)

# %% [markdown]
# ## Shipments, each verified as it landed (the `transfer` gate's table)

# %%
summarize(pd.read_csv(table_path(run_dir, "transfer", "shipments")), max_rows=30)

# %% [markdown]
# ## Groups per site and step (the `submit` gate's table)

# %%
steps = {site: f.steps for site, f in flows.items()}
display(groups_table(steps))
failures = failures_table(steps)
display(summarize(failures) if len(failures) else Markdown("No failed quanta."))

# %%
show_gate(result)  # the chain reads the recorded result; a failed gate stops it
