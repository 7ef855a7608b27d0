"""The experiments layer: stages with content digests, sweeps over teachers x methods x seeds, executors.

Layering: cli -> experiments -> engine / diagnostics / methods / models / data.
"""
