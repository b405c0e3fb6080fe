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
world_dir = ""  # the world the campaign runs on (the chain passes it); empty: $MSNB_WORLD, or none
suggest_max_units = 2000  # the suggested assignment is a second footprint pass: skipped above this many sky units
measured_from = "last"  # capacities for the forecast: "last" (the last passed run of this campaign), "" (the manifest), or a run folder

# %%
from IPython.display import Markdown, display

from multisite_nb import phases
from multisite_nb.phases.placement.suggest import suggest
from multisite_nb.run.notebook import open_phase, show_gate
from multisite_nb.views import tables
from multisite_nb.views.figures import plot_sky

campaign, run_dir = open_phase("placement", campaign_file, run_dir, world_dir)

# %%
result, plan = phases.placement.run(campaign, run_dir)
tables.placement_frame(plan)

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
tables.boundary_frame(plan)

# %% [markdown]
# ## Forecast, before a byte moves
#
# From the plan (files and bytes per site), the group plan and the capacities in the site manifest (each link's bandwidth and per-file cost, a group's and a shipment's fixed cost, each step's seconds per quantum; `measured_from`: a passed run's measured figures instead): the expected wall time of each stage at each site, phase by phase and flowing, the critical path, the bytes each link carries and what the boundary visits cost. A manifest without a capacity the forecast needs is refused here, naming the file and the key.

# %%
from multisite_nb.phases.placement.forecast import campaign_forecast, save_forecast

forecast = campaign_forecast(campaign, plan, measured_from=measured_from or None, run_dir=run_dir)
save_forecast(run_dir, forecast)
display(
    Markdown(
        f"**Expected wall time**: {forecast.flowing_s:.0f} s flowing, {forecast.phase_by_phase_s:.0f} s phase by phase; "
        f"critical path: {forecast.critical_path}; capacities: {forecast.capacities_from}. "
        f"Boundary visits: {forecast.boundary_extra_bytes} extra bytes, {forecast.boundary_extra_s:.1f} s on the slowest link."
    )
)
display(tables.forecast_frame(forecast))
display(tables.links_frame(forecast))

# %% [markdown]
# ## Suggested assignment (optional)
#
# Sky units that share visits grouped together, groups spread over the sites by their shares of the volume. Compare with the campaign's assignment; change `parameters/` to adopt it. It costs a second footprint pass, so it is skipped above `suggest_max_units` sky units (a data release: there the sky is contiguous and the groups merge anyway).

# %%
suggestion = suggest(campaign, suggest_max_units)
if suggestion.skipped:
    display(Markdown(f"Skipped: {suggestion.skipped} (`suggest_max_units`)."))
elif suggestion.one_sky:
    display(
        Markdown(
            "The units share visits across the sites' edges: one group holds nearly all raws (a contiguous sky). "
            "No assignment avoids boundary visits; the boundary cost above is the price of the campaign's split."
        )
    )
else:
    display(Markdown(f"{len(suggestion.groups)} groups; {len(suggestion.moved)} would move to another site"))
    display(tables.suggestion_frame(suggestion))

# %% [markdown]
# ## Sky: sky units by site, planned visit footprints (dashed: boundary visits)

# %%
_ = plot_sky(campaign, plan)

# %% [markdown]
# ## Per-site manifest (first rows; each site's full table is `artifacts/placement/files/<site>.parquet`)

# %%
spread = tables.tract_spread(plan)
if len(spread):
    display(Markdown("Files per tract, per site (the spread of the sites' tracts):"))
    display(spread)
for site in plan.sites:
    display(Markdown(f"**{site}**: {plan.summary.sites[site].files} files"))
    display(tables.manifest_frame(plan, site))

# %%
show_gate(result)  # the chain reads the recorded result; a failed gate stops it
