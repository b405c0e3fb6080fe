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
# # Campaign dashboard
#
# Where each site stands, read **live** from Rucio, the site Butlers and the run folder: one card per
# site (green *ok*, amber *busy*, red *trouble*, grey *idle*), the sky by site, the steps grid and the
# transfer progress.
#
# <details><summary>How to run it (Voilà wall screen, batch, parameters)</summary>
#
# * **Wall screen, read-only, with Voilà** (from the checkout, world up):
#
#   ```
#   MSNB_WORLD=$PWD/world MSNB_RUN_DIR=runs/3x3/<run id> MSNB_AUTO_REFRESH_S=30 \
#     .venv/bin/voila notebooks/00_dashboard.ipynb --no-browser --port 8866 --Voila.ip=127.0.0.1
#   ```
#
#   then open <http://127.0.0.1:8866/>. Voilà takes no papermill parameters, so the run folder comes
#   from `$MSNB_RUN_DIR` (or the page URL `?run=<run id>` of a folder under `runs/<campaign>/`, or else
#   the newest run folder of the campaign) and auto-refresh from `$MSNB_AUTO_REFRESH_S` (or `?refresh=30`).
#   The world folder comes from `$MSNB_WORLD`.
# * **Interactively** (JupyterLab): live widgets with a *Refresh* button and an *Auto-refresh* toggle
#   (a background thread: the kernel stays free).
# * **Batch** (papermill, the chain, nbval): one static snapshot (HTML cards and the plots as images)
#   so the executed notebook reads without a kernel; with a `run_dir` it is also recorded as
#   `results/dashboard.json` and `artifacts/dashboard/snapshot.html`. Batch unless Voilà or a Jupyter
#   server started the kernel; `MSNB_DASHBOARD_MODE=batch|live` forces either.
# </details>
#

# %% tags=["parameters"]
# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
world_dir = ""  # the world the campaign runs on (the chain passes it); empty: $MSNB_WORLD, or none
run_dir = ""  # empty: $MSNB_RUN_DIR, else the newest run folder of the campaign under runs/
auto_refresh_s = 0  # live mode: seconds between refreshes (0: $MSNB_AUTO_REFRESH_S, else off)

# %%
from multisite_nb.domain.params import repo_root
from multisite_nb.run.context import load_for_world
from multisite_nb.views import dashboard as dashboard_phase
from multisite_nb.views.dashboard import Dashboard, resolve_auto_refresh, resolve_run_dir

Dashboard.stop_all()  # re-running this cell replaces an auto-refreshing dashboard
campaign = load_for_world(campaign_file, world_dir or None, base=repo_root())
dashboard = Dashboard(campaign, resolve_run_dir(campaign, run_dir))
status = dashboard.show(auto_refresh_s=resolve_auto_refresh(auto_refresh_s))

# %%
# A batch run with a run folder leaves the snapshot there (results/dashboard.json, snapshot.html).
if dashboard.batch and run_dir:
    dashboard_phase.run(campaign, run_dir, dashboard)
