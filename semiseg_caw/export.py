"""Export of the inference model (auxiliary model + core model) to ONNX.

    python -m semiseg_caw.export CHECKPOINT OUTPUT.onnx [--image-size N] [--overwrite]

The image size defaults to the one the checkpoint was trained at. An existing OUTPUT is
refused unless ``--overwrite`` is given.

The ONNX graph takes ``image`` (B, C, H, W) float32 and returns ``mask_prob``
(B, 1, H, W) and, when the model classifies, ``class_prob`` (B, K); with the model's
``flip_tta`` the graph averages them over the image and its left-right mirror. Its
``keep_largest_lesion`` is not in the graph; the metadata says whether to apply it.
Prepare an image as the data module does: decode it as 8-bit grayscale (repeated to C
channels when C = 3), resize it to H x W (bilinear), then ``(pixel / 255 - 0.5) / 0.25``.
The file's metadata (``metadata_props``) says so too, with the class names and the image
size. Needs the ``export`` extra: ``pip install -e '.[export]'``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor, nn


class InferenceModel(nn.Module):
    """Probabilities from a LightningModule's networks: what a deployment needs."""

    def __init__(self, task: nn.Module) -> None:
        super().__init__()
        self.task = task

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        mask_logits, class_logits = self.task.evaluate({"image": image}, postprocess=False)
        if class_logits is None:
            return (torch.sigmoid(mask_logits),)
        return torch.sigmoid(mask_logits), torch.softmax(class_logits, dim=1)


def export_onnx(
    task: nn.Module, path: str | Path, image_size: int = 256, overwrite: bool = False
) -> Path:
    """Write ``task``'s inference model to ``path`` as ONNX with a dynamic batch size; an
    existing file there is refused (``FileExistsError``) unless ``overwrite``."""
    try:
        import onnxscript  # noqa: F401  (needed by torch's ONNX exporter)
    except ImportError as err:
        raise ImportError(
            "ONNX export needs the export extra: pip install 'semiseg-caw[export]'"
        ) from err
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(refusal(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    model = InferenceModel(task).eval()
    example = torch.zeros(2, task.in_channels, image_size, image_size)
    with torch.no_grad():
        outputs = model(example)
    names = ["mask_prob", "class_prob"][: len(outputs)]
    tmp = path.with_name(path.name + ".part")
    try:
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=True,
            input_names=["image"],
            output_names=names,
            dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
            external_data=False,
        )
        _add_metadata(tmp, _metadata(task, image_size))
        tmp.replace(path)  # never leave a half-written model under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return path


def refusal(path: Path) -> str:
    return f"{path} exists: give another file name, or --overwrite (overwrite=True in Python)"


def _metadata(task: nn.Module, image_size: int) -> dict[str, str]:
    """What a deployment needs to feed the graph and read its outputs."""
    from semiseg_caw.data.transforms import MEAN, STD

    names = getattr(task, "class_names", None)
    return {
        "image_size": str(image_size),
        "in_channels": str(task.in_channels),
        "preprocessing": (
            f"8-bit grayscale (repeated to in_channels), bilinear resize to image_size "
            "(PIL, antialiased when shrinking), "
            f"(pixel / 255 - {MEAN}) / {STD}"
        ),
        "class_names": ",".join(names) if names else "",
        "mask_threshold": "0.5",
        # The graph itself averages image and mirror when the model was set to.
        "flip_tta": str(bool(task.hparams.get("flip_tta"))).lower(),
        # Not in the graph (it runs on the host): for the deployment to apply to mask_prob.
        "keep_largest_lesion": str(bool(task.hparams.get("keep_largest_lesion"))).lower(),
    }


def _add_metadata(path: Path, values: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a ClassElevateSeg or SemiSegCAW checkpoint")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument(
        "--image-size", type=int, default=None, help="default: the size it was trained at"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    from semiseg_caw.checkpoints import CheckpointError, read_checkpoint
    from semiseg_caw.lit import ClassElevateSeg, SemiSegCAW
    from semiseg_caw.lit.base import INPUT_MULTIPLE

    output = Path(args.output)
    if output.is_dir():
        parser.error(f"output {output} is a folder: name the .onnx file to write")
    try:
        ckpt = read_checkpoint(args.checkpoint)  # names the file: missing, corrupt or foreign
    except CheckpointError as err:
        parser.error(str(err))
    hparams = ckpt.get("hyper_parameters", {})
    trained = (ckpt.get("datamodule_hyper_parameters") or {}).get("image_size")
    size = args.image_size if args.image_size is not None else trained or 256
    if size < INPUT_MULTIPLE or size % INPUT_MULTIPLE:
        parser.error(f"--image-size must be a positive multiple of {INPUT_MULTIPLE}, got {size}")
    if output.exists() and not args.overwrite:
        parser.error(refusal(output))  # before the model is loaded and exported
    cls = SemiSegCAW if "backbone" in hparams else ClassElevateSeg
    task = cls.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=True)
    print(export_onnx(task, args.output, size, overwrite=args.overwrite))


if __name__ == "__main__":
    main()
