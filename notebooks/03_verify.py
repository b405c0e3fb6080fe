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

# %%
import os
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from multisite_nb import phases
from multisite_nb.config import load_campaign, repo_root
from multisite_nb.results import summarize
from multisite_nb.runbook import interactive_run_dir

os.chdir(repo_root())  # paths in parameters are relative to the checkout
campaign = load_campaign(campaign_file)
if not run_dir:  # opened by hand: $MSNB_RUN_DIR, else a new run (placement) or the latest one
    run_dir = str(interactive_run_dir(campaign.name, "verify"))
display(Markdown(f"**Campaign** `{campaign.name}` — central {campaign.central}, sites {', '.join(campaign.remote_sites)}; run folder `{run_dir}`"))

# %%
result, reports = phases.verify(campaign, run_dir)
pd.DataFrame([r.counts() for r in reports]).set_index('site')

# %%
from multisite_nb.verify import problems_table
problems = pd.DataFrame(problems_table(reports))
summarize(problems) if len(problems) else Markdown('No problems.')

# %%
# The chain reads the recorded result; a failed gate stops it with this reason.
display(Markdown(f"### Gate: {'PASSED' if result.passed else 'FAILED'}\n\n{result.reason}"))
