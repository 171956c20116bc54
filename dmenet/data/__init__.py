"""Data: SYNDOF synthesis (``thin_lens``, ``syndof``), RGB-D sources (``rgbd``, ``procedural``),
the ``dmenet syndof export`` tool (``export``), real-image readers and the DataModule.

Kept light on purpose (no imports here): import the submodule you need, e.g.
``from dmenet.data.syndof import render_defocus``.
"""
