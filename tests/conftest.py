"""Test conventions: no network, no W&B, seeded, tiny generated fixtures."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Processes the tests start (DDP ranks, the console script) get one thread each: two ranks
# with two threads each on two cores made small ops 10-100x slower here.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# The test process itself uses two cores where it has two (it waits while its subprocesses
# run): with two threads and the collector frozen after collection (below), the suite took
# 4 min 55 s against 6 min 24 s with one thread and the collector walking everything.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_THREADS = int(os.environ.get("DMENET_TEST_THREADS", str(min(2, _CORES or 1))))
torch.set_num_threads(_THREADS)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB, from /proc (Linux)."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb = line.split()[:2]
                values[key] = int(kb) / 1024.0
    return values.get("VmRSS:", 0.0), values.get("VmHWM:", 0.0)


def _free_heap() -> None:
    """Collect reference cycles (models held by Trainers, CLIs, closures) and hand the freed
    heap back to the OS (glibc keeps it otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# a test that leaves this much more resident memory than it found gets its cycles collected:
# big tensors do not count towards Python's gc thresholds, so trained models in cycles would
# otherwise pile up until the end of the file (about 450 MB per in-process `dmenet fit`)
_RSS_GROWTH_COLLECT_MB = 200.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Keep the suite's memory flat (:data:`_RSS_GROWTH_COLLECT_MB`); with
    ``DMENET_TEST_RSS=FILE``, append per test this process's resident memory after it, its peak
    so far and the largest child process's peak (MB): what makes the suite big."""
    on_linux = Path("/proc/self/status").exists()
    before = _rss_mb()[0] if on_linux else 0.0
    yield
    if not on_linux:
        return
    if _rss_mb()[0] - before > _RSS_GROWTH_COLLECT_MB:
        _free_heap()
    log = os.environ.get("DMENET_TEST_RSS")
    if log:
        import resource

        rss, hwm = _rss_mb()
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        with open(log, "a") as handle:
            handle.write(f"{item.nodeid}\t{rss:.0f}\t{hwm:.0f}\t{children:.0f}\n")


@pytest.fixture(autouse=True, scope="module")
def _release_memory_after_each_file():
    """What a test file's module-scoped fixtures held goes back to the OS after the file."""
    yield
    _free_heap()


def pytest_collection_finish(session):
    """What exists once the tests are collected (modules, classes, functions: about 500,000
    objects) lives for the whole session: the garbage collector stops walking it. Each full
    collection took 0.3-0.9 s before, and the collections after each test file about 27 s of the
    suite."""
    import gc

    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    # Tests that start `dmenet` processes (about 1-2 GB each, DDP two) run first, while this
    # process is still small: it grows over the suite (models, libraries, allocator caches; a
    # 2.73 GB peak), and a subprocess beside it late in the run adds to the process tree's peak.
    items.sort(key=lambda item: "subprocess" not in item.keywords)  # stable: order kept within
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _named_weights_never_downloaded(tmp_path_factory):
    """Named weights (``--ckpt dmenet_bdcs``, dmenet.weights) never come from the real
    hosts in tests: an empty cache and a mirror that refuses connections, unless a test sets its
    own (tests/inference/test_weights.py serves them from a local HTTP server)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DMENET_HOME", str(tmp_path_factory.mktemp("dmenet_home")))
        patch.setenv("DMENET_MIRROR", "http://127.0.0.1:9")  # the discard port: refused
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    # some libraries change the thread count on import (pymatting's numba set-up: torch 1 -> 2);
    # oversubscribed threads made later small-op tests 10-50x slower in the suite
    torch.set_num_threads(_THREADS)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA


@pytest.fixture(scope="session")
def rgbd_samples(shared_data: Path) -> Path:
    path = shared_data / "rgbd_samples"
    if not path.is_dir():
        pytest.skip("../shared/data/rgbd_samples is not present")
    return path
