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
# # Phase 5 — gather, central stage, redistribute
#
# For a central stage (`stage` parameter): gather what it needs from every site to the central site (Rucio rules, in-place ingest, verification), run it centrally, then split its outputs per site — each site receives only the data IDs it knows — and move, ingest and verify them. With `stage = "final"` it brings the validation set home instead.

# %% tags=["parameters"]
# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""
world_dir = ""  # the world the campaign runs on (the chain passes it); empty: $MSNB_WORLD, or none
stage = "calibration"  # which stage of the campaign's stage plan this run of the notebook serves

# %%
from IPython.display import Markdown, display

from multisite_nb import phases
from multisite_nb.phases.submit.summary import steps_table
from multisite_nb.run.notebook import open_phase, show_gate
from multisite_nb.views.tables import gather_frames

campaign, run_dir = open_phase("gather_redistribute", campaign_file, run_dir, world_dir)

# %%
result, summary = phases.gather_redistribute.run(campaign, run_dir, stage)
for title, shipments in gather_frames(summary):
    display(Markdown(f"**{title}**"))
    display(shipments)

# %%
if summary.steps:
    display(steps_table(summary.steps))
if summary.delivered_runs:
    display(
        Markdown(
            "Delivered to the sites: " + "; ".join(f"{s}: {', '.join(r)}" for s, r in summary.delivered_runs.items())
        )
    )

# %%
show_gate(result)  # the chain reads the recorded result; a failed gate stops it
