"""LayerCAM (Jiang et al., IEEE TIP 2021) maps of a ClassElevateNet's classifier.

Used by the ablation that replaces ClassElevateSeg's mask with the class activation maps of
a classifier. For an encoder stage activation A and the gradient G of the target class
score with respect to A, the map is ``ReLU(sum_c ReLU(G_c) * A_c)``, max-normalised per
sample to [0, 1] and bilinearly upsampled to the image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from semiseg_caw.models.class_elevate import ClassElevateNet, normalise_max

LAYERCAM_LAYERS = ("deepest", "penultimate", "fused")
_STAGES = {"deepest": (-1,), "penultimate": (-2,), "fused": (-2, -1)}


def layercam(
    model: ClassElevateNet,
    image: Tensor,
    target: Tensor | None = None,
    layer: str = "deepest",
) -> Tensor:
    """LayerCAM of class ``target`` (B,) for ``image`` (B, C, H, W); (B, 1, H, W) in [0, 1].

    Args:
        model: the classifier; its encoder stages and classification head are used.
        image: input batch.
        target: class per sample; None takes the model's predicted class.
        layer: ``"deepest"`` (last encoder stage, stride 32), ``"penultimate"`` (stride 16,
            finer but less class-specific) or ``"fused"`` (element-wise maximum of the two
            normalised maps).

    The model runs in eval mode (so BatchNorm statistics are untouched) and is put back in
    its previous mode; gradients are taken only with respect to the activations, so no
    parameter's ``.grad`` changes. Works inside ``torch.no_grad()`` and
    ``torch.inference_mode()``; the result is detached.
    """
    if layer not in _STAGES:
        raise ValueError(f"layer must be one of {LAYERCAM_LAYERS}, got {layer!r}")
    was_training = model.training
    model.eval()
    try:
        # Lightning tests and predicts under inference mode, where no graph can be built:
        # leave it for this block, with a normal copy of the (inference) input tensor.
        with torch.inference_mode(False), torch.enable_grad():
            x = image.clone().requires_grad_(True)  # activations need a graph even if frozen
            stages = model.encode(x)
            logits = model.classify(stages[-1])  # (B, num_classes)
            if target is None:
                target = logits.argmax(dim=1)
            if target.shape != (image.shape[0],):
                raise ValueError(f"target must have shape (B,), got {tuple(target.shape)}")
            score = logits.gather(1, target.long().view(-1, 1)).sum()
            acts = [stages[i] for i in _STAGES[layer]]
            grads = torch.autograd.grad(score, acts, allow_unused=True)
    finally:
        model.train(was_training)

    maps = []
    for act, grad in zip(acts, grads, strict=True):
        if grad is None:
            raise ValueError(
                f"layer {layer!r} does not feed the classifier of {model.encoder_name}"
            )
        cam = F.relu((F.relu(grad) * act).sum(dim=1, keepdim=True))  # (B, 1, h, w)
        cam = normalise_max(cam)
        maps.append(F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False))
    return torch.stack(maps).amax(dim=0).detach()  # (B, 1, H, W)
