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
# # Phase 6 — product QA
#
# Completeness of **every** sky unit and band, at each site and at the central site after the final gather; agreement with a single-site reference run at the central site over a **sample** of sky units (the campaign's `qa:` key: a few units per site by default, boundary units among them; `sample_units_per_site: all` for the full run).
#
# On the sample the expected products are the reference's and their values must be equal (the pipeline being deterministic). Off the sample the expected products come from the central registry by each dataset type's dimensions, counted per unit and band (`by rule`, also shown on the sample as a cross-check). A sample reference reads the campaign's own run of central steps with global tasks (a global calibration made from every visit cannot be remade from a sample): it checks what the sites did with that solution, not the solution itself.

# %% tags=["parameters"]
# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""
world_dir = ""  # the world the campaign runs on (the chain passes it); empty: $MSNB_WORLD, or none

# %%
from IPython.display import Markdown, display

from multisite_nb import phases
from multisite_nb.run.notebook import open_phase, show_gate
from multisite_nb.views import tables
from multisite_nb.views.figures import qa_figure

campaign, run_dir = open_phase("qa", campaign_file, run_dir, world_dir)

# %%
result, report = phases.qa.run(campaign, run_dir)
display(Markdown(f"## Verdict: {'PASS' if result.passed else 'FAIL'}\n\n{result.reason}"))
tables.frame(report.metrics, index="site")

# %%
display(qa_figure(report))

# %% [markdown]
# ## The sample

# %%
display(Markdown(result.summary.sample.note))
tables.summarize(tables.frame(report.sample), max_rows=24)

# %% [markdown]
# ## Completeness per sky unit and band
#
# `sampled`: expected from the reference; otherwise from the registry rule. Units with a product missing come first.

# %%
tables.qa_units_frame(report)

# %% [markdown]
# ## Per dataset type

# %%
tables.summarize(tables.frame(report.completeness), max_rows=30)

# %%
tables.summarize(tables.frame(report.mismatches)) if report.mismatches else Markdown("All values equal the reference.")

# %%
show_gate(result)  # the chain reads the recorded result; a failed gate stops it
