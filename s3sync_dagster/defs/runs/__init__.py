"""What a run does: the asset's run of keys (assets), its checks, the repair, re-embed, backfill and plan jobs,
and a sync run lingering on its source's queue after its keys.

May import: failpoints, links, names, resources, run_config, sensors, state, tags, webserver.
"""
