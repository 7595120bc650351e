"""stroke-ray: ischemic stroke lesion segmentation with three plane Res-UNets on Ray."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stroke-ray")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = ["__version__"]
