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
# # Phase 4 — processing at the sites
#
# Runs one site stage of the stage plan (`stage` parameter) at every remote site: per site and step a pre-flight check, then the step (BPS submit file per site and step; `pipetask` or BPS as the site manifest says), its quanta succeeded / failed / pending and, for failures, the first error lines of the failed quantum's log. A step whose output run exists is resumed (only missing quanta run).

# %% tags=["parameters"]
# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""
stage = "early"  # which stage of the campaign's stage plan this run of the notebook serves
prepare_only = False  # True: build each site's PanDA workflow offline (no submission), e.g. with manifest below
manifest = ""  # another site manifest for prepare_only, e.g. "parameters/sites/facilities.yaml"

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from multisite_nb import phases
from multisite_nb.notebook import open_phase, show_gate
from multisite_nb.results import summarize
from multisite_nb.submission import sample_submit_files
from multisite_nb.views.figures import plot_wiring
from multisite_nb.wiring import derive_wiring, load_pipeline_graph

campaign, run_dir = open_phase("submit", campaign_file, run_dir)

# %% [markdown]
# ## What crosses the site boundary (derived from the pipeline graph)

# %%
wiring = derive_wiring(load_pipeline_graph(campaign.pipeline_path), campaign.config.stages)
_ = plot_wiring(wiring)
pd.DataFrame(wiring.table())

# %% [markdown]
# ## Submit files
#
# The same phase code writes the PanDA submit file for the real facilities (`parameters/sites/facilities.yaml`) and the one this deployment runs; only the site manifest differs. First step of this stage at the first site, written under the run folder's `artifacts/submit/` (a step's data ID table, its visits or patches, beside its submit file):

# %%
shown = Path(run_dir) / "artifacts" / "submit" / stage
for sample in sample_submit_files(campaign, stage, shown, "parameters/sites/facilities.yaml"):
    table = sample.step_run.data_id_table
    print(f"# {sample.title}: {sample.path.name}" + (f", data ID table: {table}" if table else ""))
    print(sample.path.read_text())

# %% [markdown]
# ## Prepare only
#
# With `prepare_only = True` (and the facilities' `manifest`), each site's PanDA workflow of every step of the stage
# is built offline by ctrl_bps_panda — queues, clouds, memory, attempts and each job's command — and nothing is
# submitted. A step whose inputs come from an earlier step of the stage can be prepared once that step has run.

# %%
if prepare_only:
    from multisite_nb.naming import logs_dir
    from multisite_nb.submission.panda_prepare import prepare_stage

    target = campaign.with_manifest(manifest, env={}) if manifest else campaign
    prepared = pd.DataFrame(prepare_stage(target, campaign.stage(stage).steps, logs_dir(run_dir) / "prepare" / stage))
    display(summarize(prepared, max_rows=40))

# %% [markdown]
# ## Run

# %%
if not prepare_only:
    result, steps = phases.submit(campaign, run_dir, stage)
    display(phases.steps_table(steps))
    failures = [{"site": s, "step": k, **f} for s, by in steps.items() for k, v in by.items() for f in v["failures"]]
    display(summarize(pd.DataFrame(failures)) if failures else Markdown("No failed quanta."))
    show_gate(result)  # the chain reads the recorded result; a failed gate stops it
