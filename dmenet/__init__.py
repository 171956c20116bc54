"""dmenet: defocus map estimation from a single photo (DMENet, CVPR 2019) in PyTorch.

Heavy submodules (Lightning, Kornia) are imported lazily, so ``import dmenet`` stays quick.
"""

from dmenet.errors import DataError, DMENetError

__version__ = "0.1.0"

__all__ = ["DMENetError", "DataError", "__version__"]
