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
# # Phase 1 — data placement
#
# What each site needs: raws whose visit/detector regions overlap the site's sky units (spatial registry query at the central Butler), plus the calibrations, reference catalog shards and sky map the site stages consume (derived from the pipeline graph). Raws more than one site needs are *boundary* data and are placed at each.

# %% tags=["parameters"]
# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""
suggest_max_units = 2000  # the suggested assignment is a second footprint pass: skipped above this many sky units

# %%
import pandas as pd
from IPython.display import Markdown, display

from multisite_nb import phases
from multisite_nb.notebook import open_phase, show_gate
from multisite_nb.results import summarize

campaign, run_dir = open_phase("placement", campaign_file, run_dir)

# %%
result, plan = phases.placement(campaign, run_dir)
pd.DataFrame(plan.counts()).set_index("site")

# %% [markdown]
# ## Boundary visits and their cost

# %%
cost = plan.boundary_cost()
display(
    Markdown(
        f"{len(plan.boundary_visits)} boundary visits; "
        f"{cost['files']} raws needed by more than one site, "
        f"{cost['extra_copies']} extra copies ({cost['extra_bytes']} bytes)"
    )
)
summarize(pd.DataFrame([{"visit": v, "sites": ", ".join(s)} for v, s in plan.boundary_visits.items()]))

# %% [markdown]
# ## Suggested assignment (optional)
#
# Sky units that share visits grouped together, groups spread over the sites by their shares of the volume. Compare with the campaign's assignment; change `parameters/` to adopt it. It costs a second footprint pass, so it is skipped above `suggest_max_units` sky units (a data release: there the sky is contiguous and the groups merge anyway).

# %%
from multisite_nb.placement import one_sky, suggest_assignment

n_units = sum(len(campaign.sky_units(s)) for s in campaign.remote_sites)
suggestion = suggest_assignment(campaign) if n_units <= suggest_max_units else []
current = {str(u): s for s in campaign.remote_sites for u in campaign.sky_units(s)}
groups = pd.DataFrame(
    [
        {
            "units": ", ".join(g.units) if len(g.units) <= 6 else f"{', '.join(g.units[:6])}, … ({len(g.units)})",
            "visits": len(g.visits),
            "raws": g.raws,
            "suggested site": g.site,
            "campaign site": ", ".join(sorted({current[u] for u in g.units})),
        }
        for g in suggestion
    ]
)
if n_units > suggest_max_units:
    display(Markdown(f"Skipped: {n_units} sky units, more than `suggest_max_units` ({suggest_max_units})."))
elif one_sky(suggestion, campaign):
    display(
        Markdown(
            "The units share visits across the sites' edges: one group holds nearly all raws (a contiguous sky). "
            "No assignment avoids boundary visits; the boundary cost above is the price of the campaign's split."
        )
    )
else:
    moved = groups[groups["suggested site"] != groups["campaign site"]]
    display(Markdown(f"{len(groups)} groups; {len(moved)} would move to another site"))
    summarize(moved if len(moved) else groups)

# %% [markdown]
# ## Sky: sky units by site, planned visit footprints (dashed: boundary visits)

# %%
from multisite_nb.views.figures import plot_sky

_ = plot_sky(campaign, plan)

# %% [markdown]
# ## Per-site manifest (first rows; each site's full table is `artifacts/placement/files/<site>.parquet`)

# %%
tracts = pd.DataFrame(plan.tract_rows())
if len(tracts):
    display(Markdown("Files per tract, per site (the spread of the sites' tracts):"))
    display(tracts.groupby("site")["files"].describe()[["count", "min", "50%", "max"]])
for site in plan.sites:
    display(Markdown(f"**{site}**: {plan.summary.sites[site].files} files"))
    display(pd.DataFrame(plan.manifest_rows(site, limit=6)))

# %%
show_gate(result)  # the chain reads the recorded result; a failed gate stops it
