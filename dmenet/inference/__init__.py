"""Inference for users: photos of any size -> defocus maps, magnified photos, depth, ONNX.

Kept light: importing this package imports nothing heavy. The parts:

* (one floor down, shared with training: :mod:`dmenet.checkpoint` loads B + its label space
  from a checkpoint, :mod:`dmenet.tiling` runs tiled inference in bounded memory, equal to
  untiled, and :mod:`dmenet.data.photos` reads files / folders / globs as a dataset);
* :mod:`~dmenet.inference.writer`: the per-photo outputs (``.npy``, 16-bit PNG, colour PNG, JSON)
  and the Lightning prediction writer of ``dmenet predict``;
* :mod:`~dmenet.inference.deconvolution`: the deblurring algorithm, spatially varying Gaussian
  non-blind deconvolution (K&F hyper-Laplacian);
* the commands ``dmenet infer | magnify | depth | deblur | export | convert-official``
  (:mod:`~dmenet.inference.infer`, ``magnify``, ``depth``, ``deblur``, ``onnx_export``,
  ``convert_official``).
"""
