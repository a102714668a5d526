"""geodistill: distil light segmentation students for multispectral Earth observation imagery."""

from geodistill.errors import GeodistillError

__version__ = "0.1.0"

__all__ = ["GeodistillError", "__version__"]
