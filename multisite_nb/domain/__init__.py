"""The domain layer: the campaign, its records and its rules, with no external system.

Models of parameter files (:mod:`.config`, read by :mod:`.params`), the names the toolkit makes
(:mod:`.naming`), records of steps, rules and shipments (:mod:`.records`), phase results and their
typed summaries (:mod:`.results`, :mod:`.summaries`), the plan (:mod:`.plan`), verification and QA
records, and the rules derived from the sky and the pipeline: ownership, wiring, footprints,
overlaps, query builders. It imports no other layer of the package.
"""
