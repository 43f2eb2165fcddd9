"""jaxrec: JAX/Flax library of the Kuaishou line of recommender models.

Layers (dependencies point downwards): cli -> models -> nn -> kernels; train/, parallel/, data/, cache/,
serving/ are engine pieces usable alone. See README.md and ../shared/DESIGN.md.
"""

__version__ = "0.1.0"
