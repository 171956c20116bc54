"""Data: SYNDOF synthesis (``thin_lens``, ``syndof``), RGB-D sources (``rgbd``, ``procedural``),
the ``dmenet syndof export`` tool (``export``), real-image readers, users' photos (``photos``),
and the DataModule (``datamodule``) with what it wires: the streams (``streams``), on-the-fly
synthesis (``synthetic``) and the evaluation sets (``splits``).

Kept light on purpose (no imports here): import the submodule you need, e.g.
``from dmenet.data.syndof import render_defocus``.
"""
