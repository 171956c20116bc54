"""Held-out quality of quickstart checkpoints against predicting 0 px everywhere.

    python bench/quickstart_quality.py runs/quickstart/version_0/checkpoints/last.ckpt [...]

Renders the quickstart's held-out ``embedded`` and ``proxy`` sets with more scenes than the
run validates on (``--scenes``, default 24 each: the run's own 6 are too few to tell settings
apart) and prints, per checkpoint and set, the mean per-image MAE of sigma (px) and the mean
per-image Spearman rank correlation between the predicted and the true sigma map (images whose
true or predicted map is constant are left out of the correlation). The first row is the
trivial estimator that predicts 0 px everywhere.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def held_out_sets(config: Path, scenes: int) -> dict[str, list[dict]]:
    from dmenet.data.datamodule import DMENetDataModule

    data = yaml.safe_load(config.read_text())["data"]
    data.update(embedded_eval_scenes=scenes, proxy_images=scenes)
    dm = DMENetDataModule(**data)
    dm.setup("fit")
    return {name: list(loader) for name, loader in zip(data["val_sets"], dm.val_dataloader())}


def score(predict, batches: list[dict]) -> tuple[float, float, int]:
    """``(mean MAE px, mean Spearman, images in the correlation)`` of ``predict(image) -> (H, W)``."""
    from scipy.stats import spearmanr

    mae, rho = [], []
    for batch in batches:
        truth = batch["sigma_px"][0, 0].numpy()
        pred = predict(batch["image"])
        mae.append(float(np.abs(pred - truth).mean()))
        if truth.std() > 1e-6 and pred.std() > 1e-9:
            rho.append(float(spearmanr(pred.ravel(), truth.ravel())[0]))
    return float(np.mean(mae)), float(np.mean(rho)) if rho else float("nan"), len(rho)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    parser.add_argument("--scenes", type=int, default=24, help="held-out scenes per set")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    import dmenet

    sets = held_out_sets(args.config, args.scenes)
    rows = [("predict 0 px everywhere", lambda image: np.zeros(image.shape[-2:], np.float32))]
    for path in args.checkpoints:
        estimator = dmenet.load(path, device="cpu")
        rows.append((str(path), lambda image, e=estimator: e.predict(image)[0, 0].numpy()))
    print("| estimator | " + " | ".join(f"{s}: MAE (px) / Spearman" for s in sets) + " |")
    print("|---|" + "---|" * len(sets))
    for name, predict in rows:
        cells = []
        for batches in sets.values():
            mae, rho, n = score(predict, batches)
            cells.append(f"{mae:.3f} / " + ("-" if n == 0 else f"{rho:.3f}"))
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
