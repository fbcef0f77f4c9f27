"""Experiments over the library and the paper's parts, each an importable ``run(config)``.

The scripts in ``analyses/`` and ``figures/`` only parse arguments into a config,
call ``run`` and print.
"""
