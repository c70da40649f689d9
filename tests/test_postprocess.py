"""``keep_largest_lesion``: every predicted region of a mask but the largest is removed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from semiseg_caw import SemiSegCAW
from semiseg_caw.export import InferenceModel, _metadata
from semiseg_caw.lit.stages import stage1_module
from semiseg_caw.lit.writer import PredictionWriter
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


def test_a_pixel_at_probability_one_half_is_part_of_a_region() -> None:
    # The metrics count probability >= 0.5 as lesion: so does the region search.
    logits = logits_of(["##....", "##..##", "....##", "....##"])
    logits[0, 0, :2, :2] = 0.0  # the small region, exactly at 0.5
    out = keep_largest_region(logits)
    assert (out[0, 0, :2, :2] == REMOVED_LOGIT).all()
    assert torch.equal(out[0, 0, :, 2:], logits[0, 0, :, 2:])


def test_evaluation_keeps_the_largest_lesion_when_asked_but_export_does_not() -> None:
    torch.manual_seed(0)
    model = SemiSegCAW(aux_encoder="resnet10t", keep_largest_lesion=True).eval()
    image = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw, raw_class = model.evaluate_batch({"image": image})
        kept, kept_class = model.evaluate({"image": image})
        exported, _ = model.evaluate({"image": image}, postprocess=False)
        traced = InferenceModel(model)(image)[0]  # what the ONNX export traces
    assert not torch.equal(kept, raw)  # the untrained model's masks have many regions
    assert torch.equal(kept, keep_largest_region(raw)) and torch.equal(kept_class, raw_class)
    assert torch.equal(exported, raw)
    assert torch.equal(traced, torch.sigmoid(raw))
    assert _metadata(model, 32)["keep_largest_lesion"] == "true"
    assert stage1_module(model).hparams.keep_largest_lesion
    assert SemiSegCAW(aux_encoder="resnet10t").hparams.keep_largest_lesion is False


def test_written_masks_keep_one_region_at_the_writers_own_threshold(tmp_path) -> None:
    # A large region, and a one-pixel region ringed by probability 0.4: the model removes
    # the small one at 0.5, but at threshold 0.3 its ring would be written as a lesion.
    probs = torch.full((1, 1, 8, 12), 0.05)
    probs[0, 0, 1:5, 1:5] = 0.9
    probs[0, 0, 4:7, 8:11] = 0.4
    probs[0, 0, 5, 9] = 0.9
    kept = torch.sigmoid(keep_largest_region(torch.logit(probs)))
    prediction = {"mask_prob": kept, "orig_size": [(8, 12)], "path": ["-"], "id": ["x"]}
    trainer = SimpleNamespace(datamodule=None, default_root_dir=str(tmp_path))
    written = {}
    for keep in (False, True):
        out = tmp_path / str(keep)
        writer = PredictionWriter(output_dir=str(out), threshold=0.3, overlays=False)
        module = SimpleNamespace(hparams={"keep_largest_lesion": keep})
        writer.setup(trainer, module, "predict")
        writer.write_on_batch_end(trainer, module, prediction, None, {}, 0)
        writer.on_predict_epoch_end(trainer, module)
        written[keep] = np.asarray(Image.open(out / "x_mask.png")) > 0
    assert written[False].sum() == 16 + 8  # the ring came back
    assert written[True].sum() == 16 and written[True][1:5, 1:5].all()
