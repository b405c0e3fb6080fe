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
# Runs one site stage of the stage plan (`stage` parameter) at every remote site: per site and step a pre-flight check, then the step as **groups** — cut along the step's sharding dimensions from the pipeline, `processing.group_size` values each (defaults: 500 exposures or visits, 10 tracts; a global step is one group) — each group one submission (`pipetask` or one BPS submission, as the site manifest says) with its own RUN `P/S/T/gNNNN`, at most `workflow.groups_in_flight` at a time per site. A failed group is retried alone (its failed quanta only) up to `processing.retries` times, then *held* with its cause while every other group goes on; the gate names the held groups and the command that retries them. A succeeded group's RUN is chained into the step's collection `P/S/T`, which the site's chain `P/S` holds.

# %% tags=["parameters"]
# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""
world_dir = ""  # the world the campaign runs on (the chain passes it); empty: $MSNB_WORLD, or none
stage = "early"  # which stage of the campaign's stage plan this run of the notebook serves
facilities_manifest = "parameters/sites/facilities.yaml"  # the site manifest of the real facilities (PanDA)
prepare_only = False  # True: build each site's PanDA workflow offline with facilities_manifest; submit nothing

# %%

import pandas as pd
from IPython.display import Markdown, display

from multisite_nb import phases
from multisite_nb.domain.naming import samples_dir, table_path
from multisite_nb.domain.wiring import campaign_wiring
from multisite_nb.phases.submit.samples import sample_submit_files
from multisite_nb.phases.submit.summary import failures_table, groups_table, steps_table
from multisite_nb.run.notebook import open_phase, show_gate
from multisite_nb.views.figures import plot_wiring
from multisite_nb.views.tables import summarize

campaign, run_dir = open_phase("submit", campaign_file, run_dir, world_dir)

# %% [markdown]
# ## What crosses the site boundary (derived from the pipeline graph)

# %%
wiring = campaign_wiring(campaign)
_ = plot_wiring(wiring)
pd.DataFrame(wiring.table())

# %% [markdown]
# ## Submit files
#
# The same phase code writes the PanDA submit file for the real facilities (`facilities_manifest`) and the one this deployment runs; only the site manifest differs. First step of this stage at the first site, written under the run folder's `artifacts/submit/` (a step's data ID table, its visits or patches, beside its submit file):

# %%
shown = samples_dir(run_dir, stage)
for sample in sample_submit_files(campaign, stage, shown, facilities_manifest):
    table = sample.step_run.data_id_table
    print(f"# {sample.title}: {sample.path.name}" + (f", data ID table: {table}" if table else ""))
    print(sample.path.read_text())

# %% [markdown]
# ## Run
#
# With `prepare_only = True`, each site's PanDA workflow of every step of the stage is built offline by
# ctrl_bps_panda with `facilities_manifest` — queues, clouds, memory, attempts and each job's command — and
# nothing is submitted: the gate says what was prepared and does not pass (nothing ran). A step whose inputs
# come from an earlier step of the stage can be prepared once that step has run.

# %%
result, steps = phases.submit.run(
    campaign, run_dir, stage, prepare_only=prepare_only, manifest=facilities_manifest if prepare_only else ""
)
if prepare_only:
    display(summarize(pd.read_csv(table_path(run_dir, result.phase, "prepared")), max_rows=40))
else:
    display(Markdown("**Groups per site and step**: how each step was cut, its groups by state, held ones' causes"))
    display(groups_table(steps))
    display(steps_table(steps))
    failures = failures_table(steps)
    display(summarize(failures) if len(failures) else Markdown("No failed quanta."))

# %%
show_gate(result)  # the chain reads the recorded result; a failed gate stops it
