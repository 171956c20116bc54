"""The batched renderer (the path a GPU takes, run here on the CPU): its compositing and fill
against the per-layer loop, batch independence, and what it dispatches (no host round trip
whose count grows with the layers or the batch; no op count that grows with the batch)."""

from __future__ import annotations

import pytest
import torch

import dmenet.data.syndof.batched as batched
from dmenet.data.syndof import render_defocus, render_from_sigma
from dmenet.data.syndof.batched import _run, back_step, compiled_kernels, front_step
from dmenet.data.syndof.composite import composite_run, layer_rgba, over, unpremultiply
from dmenet.data.syndof.fill import checkerboard, start_kernel
from dmenet.data.thin_lens import Camera
from dmenet.profiling import DispatchCounter, counting_calls


def texture(b=1, h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, h // 4, w // 4, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear",
                                          align_corners=False)
    return (0.5 * img + 0.5 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)


def dense_scene(h, w, seed, slope_x=40.0, occluder=(8, 22, 20, 34)):
    """A slanted, noisy depth (a layer at nearly every 0.1 px CoC step) with a box occluder
    at 700 mm, focused at 3 m (c = 28 px at the occluder): most layers are in front of the
    focus, each with its own fill."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    depth = (900.0 + slope_x * xx + 8.0 * yy + 60.0 * torch.rand(h, w, generator=g))[None, None]
    y0, y1, x0, x1 = occluder
    depth[..., y0:y1, x0:x1] = 700.0
    return texture(h=h, w=w, seed=seed + 1), depth, Camera([3000.0], [28.0 / (3000.0 / 700.0 - 1.0)])


def test_a_run_of_layers_at_once_equals_layer_by_layer():
    """:func:`composite_run` (a reverse cumulative product over the layer axis) equals
    compositing layer by layer (:func:`layer_rgba`, then :func:`over`), from states that are
    empty, partly covered and opaque."""
    g = torch.Generator().manual_seed(0)
    b, k, h, w = 3, 7, 9, 11
    raw = torch.rand(b, k, 4, h, w, generator=g)
    raw[:, :, 3:] *= (torch.rand(b, k, 1, h, w, generator=g) > 0.4)  # masks that miss pixels
    raw[:, 2, 3:] = torch.where(raw[:, 2, 3:] > 0.5, 1.0, raw[:, 2, 3:])  # opaque pixels
    raw[:, :, :3] *= raw[:, :, 3:]  # premultiplied
    raw[:, 4, 3:] *= 1e-5  # below MASK_EPS: zeroed with its colour
    rgba = layer_rgba(raw)
    assert torch.equal(rgba[:, 4], torch.zeros_like(rgba[:, 4]))
    alpha = torch.rand(b, 1, h, w, generator=g) * (torch.rand(b, 1, h, w, generator=g) > 0.3)
    alpha[0] = 1.0
    acc = torch.rand(b, 3, h, w, generator=g) * alpha
    got_acc, got_alpha = composite_run(acc, alpha, raw)  # it masks as layer_rgba does
    ref_acc, ref_alpha = acc, alpha
    for j in range(k):
        ref_acc, ref_alpha = over(ref_acc, ref_alpha, rgba[:, j])
    assert torch.allclose(got_acc, ref_acc, atol=1e-6)
    assert torch.allclose(got_alpha, ref_alpha, atol=1e-6)
    # un-premultiplying keeps the colour and makes every covered pixel opaque
    colour, opaque = unpremultiply(got_acc, got_alpha)
    covered = got_alpha > 0
    assert torch.equal(opaque, covered.float())
    assert torch.allclose((colour * got_alpha)[covered.expand_as(colour)],
                          got_acc[covered.expand_as(colour)], atol=1e-6)


CONVERGED_SWEEPS = 100
"""Sweeps per fill that converge on these scenes (0.0002 / 255 from the exact fill on the dense
scene below, 0.02 / 255 with 40 sweeps; the bar is 0.01 / 255)."""


@pytest.mark.parametrize("fill_dtype, levels", [(torch.float32, 0.01), (torch.float16, 1.0)])
@pytest.mark.parametrize("render_mode", ["paper", "reference"])
def test_converged_fills_render_what_the_loop_renders(render_mode, fill_dtype, levels,
                                                      monkeypatch):
    """With its fill relaxed to convergence, the batched renderer computes what the per-layer
    loop computes (the exact fill before every front layer), on a dense-layer scene: within
    0.01 levels with the fill's iterate in float32, within a level in half precision (its
    :data:`~dmenet.data.syndof.batched.FILL_DTYPE`; measured 0.3-0.5)."""
    monkeypatch.setattr(batched, "RELAX_SWEEPS", CONVERGED_SWEEPS)
    monkeypatch.setattr(batched, "FILL_DTYPE", fill_dtype)
    image, depth, cam = dense_scene(20, 32, seed=4, occluder=(5, 15, 10, 20))
    loop = render_defocus(image, depth, cam, render_mode=render_mode, renderer="loop")
    got = render_defocus(image, depth, cam, render_mode=render_mode, renderer="batched")
    assert int(loop.num_layers[0]) > 80
    assert float((got.image - loop.image).abs().max()) < levels / 255
    for key in ("sigma_px", "coc_px", "binary", "layer_id"):
        assert torch.equal(getattr(got, key), getattr(loop, key))


@pytest.mark.parametrize("grey", [30 / 255, 128 / 255, 200 / 255])
def test_the_half_precision_fill_keeps_a_constant_photo_constant(grey):
    """The fill's iterate in :data:`~dmenet.data.syndof.batched.FILL_DTYPE` (half), the colour
    filled above the photo's darkest: a constant photo fills with colour 0, so rounding alpha
    cannot move it (within 0.01 levels over ~190 fills; filled as plain premultiplied colour, the
    same scene drifts 0.04-0.46 levels)."""
    assert batched.FILL_DTYPE == torch.float16
    image, depth, cam = dense_scene(40, 64, seed=4, occluder=(5, 25, 10, 30))
    out = render_defocus(torch.full_like(image, grey), depth, cam, render_mode="reference",
                         renderer="batched")
    assert int(out.num_layers[0]) > 150
    assert float((out.image - grey).abs().max()) < 0.01 / 255


def test_converged_fills_with_the_disc_aperture(monkeypatch):
    """The disc (a 2-D kernel per layer) through :func:`render_from_sigma` (the fill's iterate in
    float32)."""
    monkeypatch.setattr(batched, "RELAX_SWEEPS", CONVERGED_SWEEPS)
    monkeypatch.setattr(batched, "FILL_DTYPE", torch.float32)
    g = torch.Generator().manual_seed(6)
    sigma = (torch.rand(1, 1, 8, 10, generator=g) * 3.0).repeat_interleave(
        4, 2).repeat_interleave(4, 3)
    order = torch.rand(1, 1, 8, 10, generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3)
    image = texture(h=32, w=40, seed=7)
    kw = {"aperture": "disc", "gamma": 2.2}
    loop = render_from_sigma(image, sigma, order, renderer="loop", **kw)
    got = render_from_sigma(image, sigma, order, renderer="batched", **kw)
    assert float((got - loop).abs().max()) < 0.01 / 255


@pytest.mark.parametrize("render_mode", ["paper", "reference"])
def test_default_fills_stay_close_to_the_exact_ones(render_mode):
    """With its fixed number of sweeps per layer: within the fidelity bars of the official
    generator (>= 40 dB; here much closer) of the exact per-layer fill on a dense-layer scene
    whose every layer is in a ramp in front of the focus."""
    image, depth, cam = dense_scene(40, 64, seed=2)
    exact = render_defocus(image, depth, cam, render_mode=render_mode, renderer="tiled").image
    got = render_defocus(image, depth, cam, render_mode=render_mode, renderer="batched").image
    mse = float(((got - exact) ** 2).mean())
    assert 10 * torch.log10(torch.tensor(1.0 / mse)) > 48.0
    assert float((got - exact).abs().max()) < 6.0 / 255


def test_a_sample_renders_alike_alone_and_in_a_batch():
    """Every sample is composited with its own layers, kernels and fill start whatever the
    others hold: four different scenes and cameras in one batch render as each does alone."""
    scenes = [dense_scene(24, 32, seed=s, slope_x=20.0 * (s + 1), occluder=(4, 12, 6, 6 + 4 * s))
              for s in range(4)]
    image = torch.cat([s[0] for s in scenes])
    depth = torch.cat([s[1] for s in scenes])
    depth[2] = 2000.0 + 0.0 * depth[2]  # one flat, in-focus sample
    cam = Camera([3000.0, 1200.0, 2000.0, 900.0], [9.0, 20.0, 15.0, 4.0])
    batch = render_defocus(image, depth, cam, renderer="batched", render_mode="reference",
                           sigma_rule="reference")
    for i in range(4):
        alone = render_defocus(image[i:i + 1], depth[i:i + 1], Camera(cam.focus_mm[i:i + 1],
                               cam.alpha_px[i:i + 1]), renderer="batched",
                               render_mode="reference", sigma_rule="reference")
        assert float((alone.image - batch.image[i:i + 1]).abs().max()) < 1e-5, i
    assert torch.equal(batch.image[2], image[2])


def test_each_chunk_blurs_only_the_samples_that_still_have_a_layer_there(monkeypatch):
    """Samples with few layers beside one with many: each phase orders the samples by its own
    layer count, so a chunk of layers holds the prefix of samples that have a layer there and
    the frames blurred are about the layers there are (the whole batch in every chunk blurred
    3.3x more frames than layers on Sintel windows in batches of 12)."""
    import numpy as np

    from dmenet.data.syndof import batched

    b, big_l, side = 8, 60, 16
    num_layers = torch.tensor([60, 5, 12, 1, 33, 8, 60, 2])
    start = torch.tensor([9, 4, 11, 0, 2, 7, 50, 1])  # the fill before every layer after it
    sigma = 0.5 + 2.5 * torch.rand(b, big_l, generator=torch.Generator().manual_seed(0))
    # 2 layers of the whole batch per chunk at this frame size
    monkeypatch.setattr(batched, "CHUNK_ELEMENTS", 2 * b * 5 * (side + 2 * 9) ** 2)
    p = batched.plan(sigma, num_layers, start, (b, 3, side, side), "gaussian", None)
    back = np.clip(start.numpy() + 1, 0, num_layers.numpy())
    front = num_layers.numpy() - back
    assert p.radius == 9 and all(idx.shape[1] <= 2 for idx, _ in p.back)
    assert sum(idx.numel() for idx, _ in p.back) <= back.sum() + b  # at most one pad a sample
    assert sum(idx[:active[0]].numel() for idx, _, active, _ in p.front) <= front.sum() + b
    # every layer of every sample is in exactly one chunk, with the sample it belongs to
    for chunks, rows, count, first in ((p.back, p.back_rows, back, 0 * back),
                                       ([(i, r) for i, r, _, _ in p.front], p.front_rows,
                                        front, back)):
        rows = list(range(b)) if rows is None else rows.tolist()
        seen = [(rows[i], int(idx[i, j])) for idx, _ in chunks
                for i, j in (idx >= 0).nonzero().tolist()]
        assert sorted(seen) == [(i, int(first[i]) + j) for i in range(b) for j in range(count[i])]


def ramp_scene(b: int, layers: int):
    """``b`` copies of a slanted plane whose CoC takes about ``layers`` steps of 0.1 px, most
    of them in front of the focus."""
    h, w = 24, 32
    depth = torch.linspace(800.0, 4000.0, h * w).view(1, 1, h, w).repeat(b, 1, 1, 1)
    alpha = layers * 0.1 / (3000.0 / 800.0 - 1.0 + 1.0 - 3000.0 / 4000.0)
    cam = Camera([3000.0] * b, [alpha] * b)
    return texture(b, h, w), depth, cam


def dispatched(b: int, layers: int) -> tuple[DispatchCounter, int, list]:
    """What rendering ``b`` ramps of about ``layers`` layers dispatches, and what each of its
    steps dispatches within that, with what it would launch compiled."""
    image, depth, cam = ramp_scene(b, layers)
    with counting_calls(batched, "front_step", keep=lambda args: args[-1]) as fronts, \
            counting_calls(batched, "back_step", keep=lambda args: None) as backs, \
            DispatchCounter() as count:
        out = render_defocus(image, depth, cam, renderer="batched")
    steps = [(inner, compiled_kernels(front_step, fill)) for inner, fill in fronts]
    steps += [(inner, compiled_kernels(back_step)) for inner, _ in backs]
    return count, int(out.num_layers[0]), steps


def test_host_round_trips_do_not_grow_with_layers_or_batch():
    counts = {}
    for b, layers in ((1, 20), (1, 300), (16, 20), (16, 300)):
        count, n, _ = dispatched(b, layers)
        assert abs(n - layers) <= 0.1 * layers, n
        counts[b, layers] = count
    syncs = {key: c.syncs for key, c in counts.items()}
    assert len(set(syncs.values())) == 1, syncs
    assert 0 < syncs[1, 20] <= 6  # the layer count, the layer table, the depth checks
    assert counts[16, 300].by_op["aten.nonzero.default"] == 0


def test_dispatched_ops_do_not_grow_with_the_batch():
    """The same ops for 2 and 16 samples (one batch of one takes a view where Kornia copies
    per-sample kernels for more: two ops fewer)."""
    dispatched(1, 20)  # imports and one-time set-up outside the counts
    for layers in (20, 120):
        one, _, _ = dispatched(1, layers)
        two, _, _ = dispatched(2, layers)
        sixteen, n, steps = dispatched(16, layers)
        assert sixteen.ops == two.ops and one.ops <= two.ops <= one.ops + 2, layers
    # what the renderer exists for: a few ops per crop and layer at batch 16 (the tiled
    # renderer's torch path dispatched 570-990; here 120 layers), as a GPU runs it: each front
    # layer's step and each chunk's behind it compiled (compiled_kernels; counted on the device
    # by bench/gpu.sh)
    assert sum(kernels == compiled_kernels(front_step, True) for _, kernels in steps) > 50
    on_gpu = sixteen.ops + sum(kernels - inner.ops for inner, kernels in steps)
    assert on_gpu / (16 * n) < 3  # measured 2.6
    assert sixteen.ops / (16 * n) < 30  # every op dispatched, uncompiled (measured 25.4)


def front_state(b: int, h: int, w: int, k: int, g: torch.Generator) -> list:
    """:func:`front_step`'s arguments but ``fill``, for ``b`` samples and a chunk of ``k``
    layers, at random."""
    alpha = torch.rand(b, 1, h, w, generator=g) * (torch.rand(b, 1, h, w, generator=g) > 0.2)
    acc = torch.rand(b, 3, h, w, generator=g) * alpha
    stack = torch.rand(b, k, 5, h, w, generator=g)
    stack[:, :, :3] *= stack[:, :, 3:4]
    return [acc, alpha, stack,
            torch.randint(3, 7, (b, k), generator=g),
            torch.randint(0, k, (1,), generator=g), torch.randint(0, 9, (b, 1, h, w), generator=g),
            0.1 * torch.rand(b, 3, 1, 1, generator=g), *checkerboard(h, w), start_kernel()]


def test_a_compiled_front_step_equals_the_uncompiled_one(monkeypatch):
    """Each front layer's step as ``torch.compile`` makes it (the CUDA path) computes what the
    uncompiled step computes, in place, with a fill and without, on whole batches and on
    prefixes of them, for frames and chunks of several sizes. The fill's iterate in float32
    here: the half-precision rounding is the next test's."""
    monkeypatch.setattr(batched, "RELAX_SWEEPS", 2)  # a quicker compilation, shared with the next
    monkeypatch.setattr(batched, "FILL_DTYPE", torch.float32)
    g = torch.Generator().manual_seed(3)
    for b, n, h, w, k in ((3, 3, 20, 24, 4), (4, 2, 17, 30, 3)):
        for fill in (True, False):
            state = front_state(b, h, w, k, g)
            eager = [t.clone() for t in state]
            _run(front_step, True, *(t[:n] if t.shape[0] == b else t for t in state), fill)
            front_step(*(t[:n] if t.shape[0] == b else t for t in eager), fill)
            for got, want in zip(state[:2], eager[:2]):  # acc, alpha: in place
                assert float((got - want).abs().max()) < 1e-5
            assert torch.equal(state[0][n:], eager[0][n:])  # the other samples untouched
        # and a chunk behind the focus
        acc, alpha, stack = (t.clone() for t in state[:3])
        eager = [acc.clone(), alpha.clone()]
        _run(back_step, True, acc[:n], alpha[:n], stack[:n, :, :4])
        back_step(*(t[:n] for t in eager), stack[:n, :, :4])
        for got, want in zip((acc, alpha), eager):
            assert float((got - want).abs().max()) < 1e-5
    assert not batched._COMPILE_FAILED  # it ran compiled, not the uncompiled fallback


@pytest.mark.parametrize("fill_dtype, tolerance", [(torch.float32, 1e-5),
                                                   (torch.float16, 1.0 / 255)])
def test_the_cuda_path_runs_on_the_cpu(fill_dtype, tolerance, monkeypatch):
    """The renderer with each front layer's step compiled, as on a CUDA device, renders what it
    renders uncompiled (in half precision within a level: uncompiled, every op rounds to half;
    compiled, only what is stored)."""
    monkeypatch.setattr(batched, "RELAX_SWEEPS", 2)  # the compilations of the test above
    monkeypatch.setattr(batched, "FILL_DTYPE", fill_dtype)
    image, depth, cam = dense_scene(24, 40, seed=5, occluder=(6, 16, 10, 22))
    eager = render_defocus(image, depth, cam, renderer="batched", render_mode="reference")
    monkeypatch.setattr(batched, "COMPILE_ON", ("cpu", "cuda"))
    compiled = render_defocus(image, depth, cam, renderer="batched", render_mode="reference")
    assert float((compiled.image - eager.image).abs().max()) < tolerance
    assert not batched._COMPILE_FAILED


def test_the_compiled_step_compiles_a_few_graphs_for_many_batches(monkeypatch):
    """Batches of 1 to 5 samples with their own layers (so chunks of several sizes, and every
    prefix of samples) compile a few graphs of each step, not one per shape: dynamo stops
    compiling a function at 8 and runs it uncompiled from then on. (Counted by a backend that
    runs each graph as captured; inductor compiled 4 of the front step over eight batches of 1-9
    training windows of the four sources. A backend that runs the graph as captured does not see
    what inductor specialises: the next test.)"""
    graphs = {front_step: [], back_step: []}

    def counting(step):
        def backend(graph, example_inputs):
            graphs[step].append(graph)
            return graph.forward
        return torch.compile(step, backend=backend)

    compiled = {step: counting(step) for step in graphs}
    monkeypatch.setattr(batched, "_compiled", compiled.get)
    monkeypatch.setattr(batched, "COMPILE_ON", ("cpu",))
    monkeypatch.setattr(batched, "_COMPILE_FAILED", [])
    for b in (3, 1, 5, 2):
        scenes = [dense_scene(24, 40, seed=b + s, slope_x=10.0 * (b + s), occluder=(4, 12, 6, 6 + 3 * s))
                  for s in range(b)]
        image, depth = torch.cat([s[0] for s in scenes]), torch.cat([s[1] for s in scenes])
        cam = Camera([3000.0 - 150.0 * s for s in range(b)], [6.0 + 4.0 * s for s in range(b)])
        render_defocus(image, depth, cam, renderer="batched", render_mode="reference")
    assert not batched._COMPILE_FAILED
    assert all(1 <= len(g) <= 4 for g in graphs.values()), graphs  # measured 2 and 3


def test_one_compiled_front_step_serves_every_number_of_samples(monkeypatch):
    """Compiled by inductor for 3 samples, the front step with a fill runs on 2, 4 and 5 without
    compiling again (``torch.compiler.set_stance("fail_on_recompile")``). With the fill's start
    blurred by its kernel expanded to the samples, inductor specialised on their number: a graph
    for each, up to dynamo's limit of 8."""
    monkeypatch.setattr(batched, "RELAX_SWEEPS", 2)  # the compilation of the tests above
    monkeypatch.setattr(batched, "FILL_DTYPE", torch.float32)
    monkeypatch.setattr(batched, "_COMPILE_FAILED", [])
    g = torch.Generator().manual_seed(3)
    _run(front_step, True, *front_state(3, 20, 24, 4, g), True)
    with torch.compiler.set_stance("fail_on_recompile"):
        for b in (2, 4, 5):
            _run(front_step, True, *front_state(b, 20, 24, 4, g), True)
    assert not batched._COMPILE_FAILED, batched._COMPILE_FAILED


def test_a_step_that_cannot_compile_warns_and_runs_uncompiled(monkeypatch):
    def no_compiler(step):
        def fail(*args):
            raise RuntimeError("no C++ compiler found\nsecond line")
        return fail

    monkeypatch.setattr(batched, "_compiled", no_compiler)
    monkeypatch.setattr(batched, "_COMPILE_FAILED", [])
    g = torch.Generator().manual_seed(4)
    state = front_state(2, 8, 8, 2, g)
    eager = [t.clone() for t in state]
    with pytest.warns(RuntimeWarning, match="torch.compile failed .RuntimeError: no C.. "
                                            "compiler found.; its steps run uncompiled"):
        _run(front_step, True, *state, True)
    front_step(*eager, True)
    assert all(torch.equal(a, b) for a, b in zip(state, eager))
    assert batched._COMPILE_FAILED  # once: later steps do not try again

    def silent_failure(step):
        def fail(*args):
            raise RuntimeError()  # an error without a message
        return fail

    monkeypatch.setattr(batched, "_COMPILE_FAILED", [])
    monkeypatch.setattr(batched, "_compiled", silent_failure)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: \)"):
        _run(front_step, True, *state, True)
