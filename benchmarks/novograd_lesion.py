"""Why NovoGrad stalls on a small class: the lesion's share of one update, per loss and optimiser.

Loads a model written by ``smartcache train`` (organ learned, lesion not yet: the stall),
cuts positive crops from the training cases, and for the soft Dice loss (Eq. 1) and
DiceCE reports:

- the lesion's softmax probability on lesion voxels (how saturated the stalled state is),
- the gradient norm reaching the lesion logits, relative to all logits,
- how far one step of NovoGrad and one of Adam would move the weights that produce the
  lesion logit (the output convolution's lesion row) relative to how far they move the
  whole output layer. NovoGrad scales a layer's gradient by the layer's own norm, so a row
  whose gradient is a small part of the layer moves by that small part; Adam scales each
  weight by its own history, so on a first step every weight moves by about the lr.

Usage:
  python benchmarks/novograd_lesion.py --model runs/x/model.pt --data /tmp/demo --class-index 2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common.catalog import load_catalog
from common.preprocess import build_preprocessor
from common.sampling import sample_crops
from trainer.model import build_loss
from trainer.predict import Predictor


def _output_row(model: torch.nn.Module, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the last convolution's weight and of its row that produces class ``c``'s logit."""
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))][-1]
    g = last.weight.grad
    return g, (g[:, c] if isinstance(last, torch.nn.ConvTranspose3d) else g[c])


def diagnose(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, c: int) -> dict[str, dict]:
    """One forward/backward per loss on the same crops; what reaches the class-``c`` logit and weights."""
    out: dict[str, dict] = {}
    for name in ("dice", "dice_ce"):
        model.zero_grad(set_to_none=True)
        logits = model(images)
        logits.retain_grad()
        loss = build_loss(name)(logits, labels)
        loss.backward()
        prob = torch.softmax(logits.detach(), 1)[:, c][labels[:, 0] == c]
        g, g_row = _output_row(model, c)
        out[name] = {"loss": float(loss.detach()), "lesion_prob_on_lesion": float(prob.mean()),
                     "lesion_logit_grad_share": float(logits.grad[:, c].norm() / logits.grad.norm()),
                     # NovoGrad, first step: update = lr * g / ||g_layer|| -> the row's share of the layer's step
                     "novograd_row_step_share": float(g_row.norm() / g.norm()),
                     # Adam, first step: update = lr * g / |g| per weight -> every weight moves about lr
                     "adam_row_step_share": float(np.sqrt(g_row.numel() / g.numel()))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model.pt written by smartcache train")
    parser.add_argument("--data", required=True, help="the MSD folder it was trained on")
    parser.add_argument("--class-index", type=int, default=2, help="the small class (default 2, the lesion)")
    parser.add_argument("--crops", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    predictor = Predictor(args.model)  # reads model.pt with weights_only=True
    cfg, model = predictor.cfg, predictor.model
    catalog = load_catalog(args.data, cfg.data)
    prep = build_preprocessor(catalog, cfg.preprocessing, cfg.sampler.patch_size, cfg.cache.stats_path())
    rng = np.random.default_rng(0)
    images, labels = [], []
    for record in catalog.train:
        vol = prep(record)
        if vol.class_counts[args.class_index] == 0:
            continue
        img, lab, _ = sample_crops(vol, args.crops, 1e6, cfg.sampler.patch_size, rng)  # positive crops only
        keep = [i for i in range(len(lab)) if (lab[i] == args.class_index).any()]
        images.extend(img[keep])
        labels.extend(lab[keep])
        if len(images) >= args.crops:
            break
    x, y = torch.from_numpy(np.stack(images[:args.crops])), torch.from_numpy(np.stack(labels[:args.crops])).long()
    for name, row in diagnose(model, x, y, args.class_index).items():
        print(f"{name:8s} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
