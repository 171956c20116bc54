"""B, D, C, S: one file each. Importing this package registers every part (dmenet.registry)."""

from dmenet.modules.blur_estimator import BlurEstimator
from dmenet.modules.content_loss import ContentLoss
from dmenet.modules.contracts import BlurEstimate
from dmenet.modules.domain_discriminator import DomainDiscriminator
from dmenet.modules.light_blur_estimator import LightBlurEstimator
from dmenet.modules.sharpness_calibrator import SharpnessCalibrator

__all__ = [
    "BlurEstimate",
    "BlurEstimator",
    "ContentLoss",
    "DomainDiscriminator",
    "LightBlurEstimator",
    "SharpnessCalibrator",
]
