"""Write the phase notebooks (stored without outputs). Edit here, run, commit both.

Notebooks are views: a parameters cell, one library call per phase, then what a person
wants to see. Run: ``.venv/bin/python scripts/make_notebooks.py``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent.parent / "notebooks"

PARAMS = '''# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""'''

SETUP = '''import os
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
    run_dir = str(interactive_run_dir(campaign.name, PHASE))
display(Markdown(f"**Campaign** `{campaign.name}` — central {campaign.central}, sites {', '.join(campaign.remote_sites)}; run folder `{run_dir}`"))'''

GATE = '''# The chain reads the recorded result; a failed gate stops it with this reason.
display(Markdown(f"### Gate: {'PASSED' if result.passed else 'FAILED'}\\n\\n{result.reason}"))'''


STAGED_PARAMS = PARAMS + '''
stage = "early"  # which stage of the campaign's stage plan this run of the notebook serves'''


def nb(title: str, intro: str, cells: list, params: str = PARAMS) -> nbformat.NotebookNode:
    book = new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    starts = "True" if title.startswith("Phase 1 ") else "False"
    book.cells = [new_markdown_cell(f"# {title}\n\n{intro}"), p,
                  new_code_cell(SETUP.replace("STARTS_RUN", starts)), *cells]
    return book


NOTEBOOKS = {
    "01_placement": nb(
        "Phase 1 — data placement",
        "What each site needs: raws whose visit/detector regions overlap the site's sky units "
        "(spatial registry query at the central Butler), plus the calibrations, reference catalog "
        "shards and sky map the site stages consume (derived from the pipeline graph). Raws more "
        "than one site needs are *boundary* data and are placed at each.",
        [
            new_code_cell("result, plan = phases.placement(campaign, run_dir)\n"
                          "pd.DataFrame(plan.counts()).set_index('site')"),
            new_markdown_cell("## Boundary visits and their cost"),
            new_code_cell("cost = plan.boundary_cost()\n"
                          "display(Markdown(f\"{len(plan.boundary_visits)} boundary visits; \"\n"
                          "                 f\"{cost['files']} raws needed by more than one site, \"\n"
                          "                 f\"{cost['extra_copies']} extra copies ({cost['extra_bytes']} bytes)\"))\n"
                          "pd.DataFrame([{'visit': v, 'sites': ', '.join(s)} for v, s in plan.boundary_visits.items()])"),
            new_markdown_cell("## Suggested assignment (optional)\n\nSky units that share visits grouped together, "
                              "groups spread over the sites by their shares of the volume. Compare with the "
                              "campaign's assignment; change `parameters/` to adopt it."),
            new_code_cell("from multisite_nb.placement import suggest_assignment\n"
                          "current = {str(u): s for s in campaign.remote_sites for u in campaign.sky_units(s)}\n"
                          "pd.DataFrame([{'units': ', '.join(g.units), 'visits': len(g.visits), 'raws': g.raws,\n"
                          "               'suggested site': g.site, 'campaign site': ', '.join(sorted({current[u] for u in g.units}))}\n"
                          "              for g in suggest_assignment(campaign)])"),
            new_markdown_cell("## Sky: sky units by site, planned visit footprints (dashed: boundary visits)"),
            new_code_cell("from multisite_nb.views.figures import plot_sky\n_ = plot_sky(campaign, plan)"),
            new_markdown_cell("## Per-site manifest (first rows; the full CSVs are in the run folder)"),
            new_code_cell("for site in plan.sites:\n"
                          "    display(Markdown(f'**{site}**'))\n"
                          "    display(summarize(pd.DataFrame(plan.manifest_rows(site)), max_rows=6))"),
            new_code_cell(GATE),
        ],
    ),
    "02_transfer": nb(
        "Phase 2 — transfer and ingest",
        "Dimension records travel first, then the data: the planned files are registered where "
        "they sit at the central site (replicas, datasets, `rubin_butler` / `rubin_sidecar` metadata), "
        "one replication rule per site moves them, Rucio's conveyor copies and checks them, and what "
        "arrived is ingested in place into each site's Butler with the same dataset UUIDs. "
        "Re-running creates no second rule and no second ingest.",
        [
            new_code_cell("result, outcomes = phases.transfer(campaign, run_dir)\n"
                          "pd.DataFrame([o.as_row() for o in outcomes]).set_index('shipment')"),
            new_code_cell(GATE),
        ],
    ),
    "03_verify": nb(
        "Phase 3 — verification",
        "Per site, the plan against Rucio (rule OK, replicas AVAILABLE: dataset counts first, files "
        "only where counts differ), the site's Butler (same UUID, planned collection) and the disk "
        "(size and adler32).",
        [
            new_code_cell("result, reports = phases.verify(campaign, run_dir)\n"
                          "pd.DataFrame([r.counts() for r in reports]).set_index('site')"),
            new_code_cell("from multisite_nb.verify import problems_table\n"
                          "problems = pd.DataFrame(problems_table(reports))\n"
                          "summarize(problems) if len(problems) else Markdown('No problems.')"),
            new_code_cell(GATE),
        ],
    ),
    "04_submit": nb(
        "Phase 4 — processing at the sites",
        "Runs one site stage of the stage plan (`stage` parameter) at every remote site: per site and "
        "step a pre-flight check, then the step (BPS submit file per site and step; `pipetask` or BPS "
        "as the site manifest says), its quanta succeeded / failed / pending and, for failures, the "
        "first error lines of the failed quantum's log. A step whose output run exists is resumed "
        "(only missing quanta run).",
        [
            new_markdown_cell("## What crosses the site boundary (derived from the pipeline graph)"),
            new_code_cell("from multisite_nb.views.figures import plot_wiring\n"
                          "from multisite_nb.wiring import derive_wiring, load_pipeline_graph\n"
                          "wiring = derive_wiring(load_pipeline_graph(campaign.pipeline_path), campaign.config.stages)\n"
                          "_ = plot_wiring(wiring)\n"
                          "pd.DataFrame(wiring.table())"),
            new_markdown_cell("## Submit files\n\nThe same phase code writes the PanDA submit file for the real "
                              "facilities (`parameters/sites/facilities.yaml`) and the one this deployment runs; "
                              "only the site manifest differs. First step of this stage at the first site:"),
            new_code_cell("from multisite_nb.submission import step_run, submit_file\n"
                          "import yaml\n"
                          "st = next(s for s in campaign.config.stages if s.name == stage)\n"
                          "site0 = campaign.remote_sites[0]\n"
                          "facilities = campaign.with_manifest('parameters/sites/facilities.yaml', env={})\n"
                          "print('# at the facility (PanDA)')\n"
                          "print(yaml.safe_dump(submit_file(facilities, step_run(facilities, site0, st.steps[0]), 'panda'), sort_keys=False))\n"
                          "print('# here (' + campaign.manifest.workflow.mode + ', site config ' + str(campaign.manifest.workflow.bps_site_config) + ')')\n"
                          "print(yaml.safe_dump(submit_file(campaign, step_run(campaign, site0, st.steps[0])), sort_keys=False))"),
            new_markdown_cell("## Run"),
            new_code_cell("result, steps = phases.submit(campaign, run_dir, stage)\n"
                          "phases.steps_table(steps)"),
            new_code_cell("failures = [{'site': s, 'step': k, **f} for s, by in steps.items() for k, v in by.items() for f in v.get('failures', [])]\n"
                          "summarize(pd.DataFrame(failures)) if failures else Markdown('No failed quanta.')"),
            new_code_cell(GATE),
        ],
        STAGED_PARAMS,
    ),
    "05_gather_redistribute": nb(
        "Phase 5 — gather, central stage, redistribute",
        "For a central stage (`stage` parameter): gather what it needs from every site to the central "
        "site (Rucio rules, in-place ingest, verification), run it centrally, then split its outputs "
        "per site — each site receives only the data IDs it knows — and move, ingest and verify them. "
        "With `stage = \"final\"` it brings the validation set home instead.",
        [
            new_code_cell("result, summary = phases.gather_redistribute(campaign, run_dir, stage)\n"
                          "for key in ('gather_shipments', 'redistribute_shipments', 'shipments'):\n"
                          "    if summary.get(key):\n"
                          "        display(Markdown(f'**{key.replace(\"_\", \" \")}**'))\n"
                          "        display(pd.DataFrame(summary[key]))"),
            new_code_cell("if summary.get('steps'):\n"
                          "    display(phases.steps_table(summary['steps']))\n"
                          "if summary.get('delivered_runs'):\n"
                          "    display(Markdown('Delivered to the sites: ' + '; '.join(f'{s}: {\", \".join(r)}' for s, r in summary['delivered_runs'].items())))"),
            new_code_cell(GATE),
        ],
        STAGED_PARAMS.replace('stage = "early"', 'stage = "calibration"'),
    ),
    "06_qa": nb(
        "Phase 6 — product QA",
        "Completeness per sky unit and band, at each site and at the central site after the final "
        "gather; agreement of every product with a single-site reference run of the same data at the "
        "central site (same counts; same values, the pipeline being deterministic).",
        [
            new_code_cell("result, report = phases.qa(campaign, run_dir)\n"
                          "display(Markdown(f\"## Verdict: {'PASS' if result.passed else 'FAIL'}\\n\\n{result.reason}\"))\n"
                          "pd.DataFrame(report.metrics).set_index('site')"),
            new_code_cell("import matplotlib.pyplot as plt\n"
                          "m = pd.DataFrame(report.metrics).set_index('site')\n"
                          "ax = m[['reference products', 'products at site', 'products gathered']].plot.bar(figsize=(7, 3.5))\n"
                          "ax.set_ylabel('validation products'); ax.set_title('Per site: reference vs produced vs gathered'); plt.show()"),
            new_markdown_cell("## Completeness per sky unit and band"),
            new_code_cell("summarize(pd.DataFrame(report.units), max_rows=24)"),
            new_markdown_cell("## Per dataset type"),
            new_code_cell("summarize(pd.DataFrame(report.completeness), max_rows=30)"),
            new_code_cell("summarize(pd.DataFrame(report.mismatches)) if report.mismatches else Markdown('All values equal the reference.')"),
            new_code_cell(GATE),
        ],
    ),
}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for name, book in NOTEBOOKS.items():
        for i, cell in enumerate(book.cells):  # stable ids: regenerating changes nothing
            cell.id = f"{name.split('_', 1)[0]}-{i:02d}"
        nbformat.write(book, HERE / f"{name}.ipynb")
        print(HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
