"""The core every capability stands on: registry, recipe, families, masks, calibration, training loop, io.

Core modules never import capability packages (``oneshot``, ``structured``, ``training``, ``data``);
capabilities register their pieces into the core's registries.
"""
