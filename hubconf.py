"""torch.hub entry points of dmenet.

    import torch
    estimator = torch.hub.load("path/to/dmenet", "dmenet_bdcs", source="local")  # published weights
    estimator = torch.hub.load("path/to/dmenet", "dmenet", checkpoint="model.ckpt", source="local")
    sigma_px = estimator.predict("photo.jpg")   # (H, W) float32 NumPy, sigma in px

The same estimator as :func:`dmenet.load` (see README.md, "Python API").
"""

dependencies = ["torch", "numpy", "cv2", "lightning"]


def dmenet(checkpoint, device="auto", **kwargs):
    """A defocus estimator: ``predict(image)`` returns the defocus sigma in px.

    Args:
        checkpoint: the name of published weights (``"dmenet_bdcs"``), a ``dmenet fit``
            checkpoint, a ``dmenet convert-official`` output, or ``"zhuo_sim"`` (the classical
            baseline, no weights).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` ...
        **kwargs: ``tile``, ``overlap``, ``half``, ``trust_checkpoint`` (see :func:`dmenet.load`).
    """
    from dmenet.api import load

    return load(checkpoint, device=device, **kwargs)


def dmenet_bdcs(device="auto", **kwargs):
    """The published DMENet_BDCS weights (the DMENet authors' retrained model; AGPL-3.0, like the
    official code), fetched, converted and cached on first use: ``predict(image)`` returns the
    defocus sigma in px. Same arguments as :func:`dmenet` without ``checkpoint``."""
    from dmenet.api import load

    return load("dmenet_bdcs", device=device, **kwargs)
