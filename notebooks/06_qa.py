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
# Completeness per sky unit and band, at each site and at the central site after the final gather; agreement of every product with a single-site reference run of the same data at the central site (same counts; same values, the pipeline being deterministic).

# %% tags=["parameters"]
# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""

# %%
import pandas as pd
from IPython.display import Markdown, display

from multisite_nb import phases
from multisite_nb.notebook import open_phase, show_gate
from multisite_nb.results import summarize

campaign, run_dir = open_phase("qa", campaign_file, run_dir)

# %%
result, report = phases.qa(campaign, run_dir)
display(Markdown(f"## Verdict: {'PASS' if result.passed else 'FAIL'}\n\n{result.reason}"))
pd.DataFrame(report.metrics).set_index("site")

# %%
import matplotlib.pyplot as plt

m = pd.DataFrame(report.metrics).set_index("site")
ax = m[["reference products", "products at site", "products gathered"]].plot.bar(figsize=(7, 3.5))
ax.set_ylabel("validation products")
ax.set_title("Per site: reference vs produced vs gathered")
plt.show()

# %% [markdown]
# ## Completeness per sky unit and band

# %%
summarize(pd.DataFrame(report.units), max_rows=24)

# %% [markdown]
# ## Per dataset type

# %%
summarize(pd.DataFrame(report.completeness), max_rows=30)

# %%
summarize(pd.DataFrame(report.mismatches)) if report.mismatches else Markdown("All values equal the reference.")

# %%
show_gate(result)  # the chain reads the recorded result; a failed gate stops it
