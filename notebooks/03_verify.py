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
# # Phase 3 — verification
#
# Per site, the plan against Rucio (rule OK, replicas AVAILABLE: dataset counts first, files only where counts differ), the site's Butler (same UUID, planned collection) and the disk (size and adler32).

# %% tags=["parameters"]
# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""
world_dir = ""  # the world the campaign runs on (the chain passes it); empty: $MSNB_WORLD, or none
repair = False  # True: act on the problems found (Rucio re-replicates, rules retried, re-ingest), then verify again

# %%
from IPython.display import Markdown, display

from multisite_nb import phases
from multisite_nb.run.notebook import open_phase, show_gate
from multisite_nb.views import tables

campaign, run_dir = open_phase("verify", campaign_file, run_dir, world_dir)

# %%
result, reports = phases.verify.run(campaign, run_dir)
tables.verification_frame(reports)

# %%
problems = tables.problems_frame(reports)
problems if len(problems) else Markdown("No problems.")

# %% [markdown]
# ## Repair
#
# With `repair = True` (or `multisite-nb repair RUN_DIR`): a corrupt or missing replica is declared bad to Rucio,
# which re-replicates it from a good copy (its central source is checked first); a STUCK rule is retried with its
# reason shown; a dataset a site's Butler lacks is ingested again. Then the sites are verified again and this
# phase's gate is recorded anew (the repair's own is `results/repair.json`; `notebooks/08_repair` runs it alone).

# %%
if repair and not result.passed:
    repaired, actions, _ = phases.repair.run(campaign, run_dir, log=print)
    display(tables.frame(actions))
    result, reports = phases.verify.run(campaign, run_dir)

# %%
show_gate(result)  # the chain reads the recorded result; a failed gate stops it
