"""``keep_largest_lesion``: every predicted region of a mask but the largest is removed."""

from __future__ import annotations

import torch

from semiseg_caw import SemiSegCAW
from semiseg_caw.export import _metadata
from semiseg_caw.lit.stages import stage1_module
from semiseg_caw.postprocess import REMOVED_LOGIT, keep_largest_region


def logits_of(*masks: list[str]) -> torch.Tensor:
    """Mask logits (B, 1, H, W) drawn as text: '#' is +3 (foreground), '.' is -1."""
    rows = [[[3.0 if c == "#" else -1.0 for c in line] for line in mask] for mask in masks]
    return torch.tensor(rows).unsqueeze(1)


def test_only_the_largest_region_of_each_mask_stays() -> None:
    two = ["##....", "##..##", "....##", "....##"]  # 4 pixels and 6
    diagonal = ["#.....", ".#....", "..#...", "......"]  # one 8-connected region
    empty = ["......"] * 4
    logits = logits_of(two, diagonal, empty)
    out = keep_largest_region(logits)
    assert (out[0, 0, :2, :2] == REMOVED_LOGIT).all()  # the smaller region is gone
    assert torch.equal(out[0, 0, :, 2:], logits[0, 0, :, 2:])  # the rest is untouched
    assert torch.equal(out[1:], logits[1:])
    assert out.dtype == logits.dtype and out.shape == logits.shape


def test_evaluation_keeps_the_largest_lesion_when_asked_but_export_does_not() -> None:
    torch.manual_seed(0)
    model = SemiSegCAW(aux_encoder="resnet10t", keep_largest_lesion=True).eval()
    image = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw, raw_class = model.evaluate_batch({"image": image})
        kept, kept_class = model.evaluate({"image": image})
        exported, _ = model.evaluate({"image": image}, postprocess=False)
    assert not torch.equal(kept, raw)  # the untrained model's masks have many regions
    assert torch.equal(kept, keep_largest_region(raw)) and torch.equal(kept_class, raw_class)
    assert torch.equal(exported, raw)
    assert _metadata(model, 32)["keep_largest_lesion"] == "true"
    assert stage1_module(model).hparams.keep_largest_lesion
    assert SemiSegCAW(aux_encoder="resnet10t").hparams.keep_largest_lesion is False
