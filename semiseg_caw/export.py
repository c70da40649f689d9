"""Export of the inference model (auxiliary model + core model) to ONNX.

    python -m semiseg_caw.export CHECKPOINT OUTPUT.onnx [--image-size N] [--overwrite]

The image size defaults to the one the checkpoint was trained at; a checkpoint that does
not record it (a model fitted on the user's own loaders) needs ``--image-size``. An
existing OUTPUT is refused unless ``--overwrite`` is given; the checkpoint, or any other
PyTorch file, is never replaced. The checkpoint, the image size and the output file are
checked before the model is exported.

The ONNX graph takes ``image`` (B, C, H, W) float32 and returns ``mask_prob``
(B, 1, H, W) and, when the model classifies, ``class_prob`` (B, K); with the model's
``flip_tta`` the graph averages them over the image and its left-right mirror. Its
``keep_largest_lesion`` is not in the graph; the metadata says whether to apply it.
Prepare an image as the data module does: decode it as 8-bit grayscale (repeated to C
channels when C = 3), resize it to H x W (bilinear), then ``(pixel / 255 - 0.5) / 0.25``.
The file's metadata (``metadata_props``) says so too, with the class names and the image
size. A model with LayerCAM auxiliary maps (``aux_source: layercam``) cannot be exported:
its maps need gradients at inference. Needs the ``export`` extra:
``pip install -e '.[export]'``.
"""

from __future__ import annotations

import argparse
import copy
import os
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from semiseg_caw.data.io import check_file_writable, file_exists_error

PROG = "python -m semiseg_caw.export"


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
    task: nn.Module, path: str | Path, image_size: int | None = None, overwrite: bool = False
) -> Path:
    """Write ``task``'s inference model to ``path`` as ONNX with a dynamic batch size.

    ``image_size`` defaults to the size the model was fitted at (``trained_image_size``:
    known for a model loaded from a checkpoint of the data module, or fitted with it in
    this process); a model that does not know it needs one (``ValueError``).
    Checked before exporting: ``image_size`` (a positive multiple of 32, ``ValueError``),
    the model (not LayerCAM, ``ValueError``) and ``path`` (see ``check_output``: an
    existing file is refused with ``FileExistsError`` unless ``overwrite``). The caller's
    model is left as it was: its training mode, dtype and device (a model not in float32
    on the CPU is exported from such a copy).
    """
    try:
        import onnxscript  # noqa: F401  (needed by torch's ONNX exporter)
    except ImportError as err:
        raise ImportError(
            "ONNX export needs the export extra: pip install -e '.[export]' in a checkout "
            "(onnx, onnxruntime and onnxscript)"
        ) from err
    if image_size is None:
        image_size = getattr(task, "trained_image_size", None)
        if image_size is None:
            raise ValueError(
                "give image_size: this model does not record the image size it was fitted at "
                "(fitted on your own loaders, or not loaded from a checkpoint)"
            )
    check_image_size(image_size)
    check_exportable(task.hparams)
    path = check_output(path, overwrite)
    tmp = _staging(path)
    try:
        with _in_eval_mode(_float32_on_cpu(task)) as exported:
            _export(exported, tmp, image_size)
        tmp.replace(path)  # never leave a half-written model under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _export(task: nn.Module, tmp: Path, image_size: int) -> None:
    model = InferenceModel(task).eval()  # the wrapper too: the exporter warns otherwise
    example = torch.zeros(2, task.in_channels, image_size, image_size)
    with torch.no_grad():
        outputs = model(example)
    torch.onnx.export(
        model,
        (example,),
        str(tmp),
        dynamo=True,
        input_names=["image"],
        output_names=["mask_prob", "class_prob"][: len(outputs)],
        dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
        external_data=False,
    )
    _add_metadata(tmp, _metadata(task, image_size))


def check_image_size(size: Any, name: str = "image_size") -> None:
    """Refuse (``ValueError``) a size the networks cannot take: they halve it 5 times."""
    from semiseg_caw.lit.base import INPUT_MULTIPLE

    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % INPUT_MULTIPLE:
        raise ValueError(f"{name} must be a positive multiple of {INPUT_MULTIPLE}, got {size}")


def check_exportable(hparams: Mapping[str, Any]) -> None:
    """Refuse (``ValueError``) a model the exporter cannot trace, named before it fails deep
    inside ``torch.export``."""
    if hparams.get("aux_source") == "layercam":
        raise ValueError(
            "a model with aux_source 'layercam' cannot be exported to ONNX: LayerCAM computes "
            "its auxiliary maps from gradients at inference, which an ONNX graph has not. "
            "Export a model with aux_source 'classelevate' or 'none'"
        )


def check_output(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` as the ONNX file to write, checked before anything is exported.

    Refused: a folder, or a name ending in a slash (``IsADirectoryError``); an existing
    file unless ``overwrite``, and a PyTorch file (a checkpoint) even then
    (``FileExistsError``); a place where the file cannot be written (``OSError``). The
    missing parent folders are created.
    """
    if str(path).endswith(("/", os.sep)):  # Path() drops the slash: it would become a file
        raise IsADirectoryError(
            f"output {path} names a folder: name the .onnx file to write, e.g. {path}model.onnx"
        )
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is a folder: name the .onnx file to write")
    if path.is_file() and zipfile.is_zipfile(path):  # what torch.save writes: a checkpoint
        raise FileExistsError(
            f"{path} is a PyTorch file (a checkpoint?), not an earlier export: it is not "
            "overwritten; give another file name"
        )
    if path.exists() and not overwrite:
        raise file_exists_error(path)
    check_file_writable(path, _staging(path), "output ")
    return path


def _staging(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _float32_on_cpu(task: nn.Module) -> nn.Module:
    """``task`` itself when it is in float32 on the CPU, else such a copy: the graph takes
    float32 (onnxruntime has no float64 convolution), and the caller's model stays as it is."""
    tensors = [*task.parameters(), *task.buffers()]
    if all(
        t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point())
        for t in tensors  # e.g. BatchNorm's batch counter: int64 in any model
    ):
        return task
    twin = copy.deepcopy(task)
    for module in twin.modules():
        # A training forward replayed from a CUDA graph (lit/graphs.py) is the original
        # module's: the copy runs its own.
        vars(module).pop("forward", None)
    return twin.float().cpu()


@contextmanager
def _in_eval_mode(task: nn.Module) -> Iterator[nn.Module]:
    """``task`` in eval mode, and each module's own mode back afterwards (a model being
    trained keeps training; a fixed auxiliary model was in eval mode all along)."""
    modes = [(module, module.training) for module in task.modules()]
    task.eval()
    try:
        yield task
    finally:
        for module, training in modes:
            module.training = training


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
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a ClassElevateSeg or SemiSegCAW checkpoint")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="default: the size it was trained at (needed when the checkpoint does not say)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    from semiseg_caw.checkpoints import CheckpointError, read_checkpoint

    try:
        ckpt = read_checkpoint(args.checkpoint)  # names the file: missing, corrupt or foreign
        task_class = checkpoint_task(args.checkpoint, ckpt)
    except CheckpointError as err:
        parser.error(str(err))
    if Path(args.output).resolve() == Path(args.checkpoint).resolve():  # symlinks too
        parser.error(
            f"output {args.output} is the checkpoint {args.checkpoint} itself: name another "
            "file for the ONNX model"
        )
    size = chosen_image_size(args, ckpt, parser)
    try:  # all before the model is loaded and exported
        check_exportable(ckpt.get("hyper_parameters") or {})
        check_output(args.output, args.overwrite)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    task = task_class.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=True)
    print(export_onnx(task, args.output, size, overwrite=args.overwrite))


def chosen_image_size(args: argparse.Namespace, ckpt: dict, parser: argparse.ArgumentParser) -> int:
    """``--image-size``, else the size the checkpoint records; a checkpoint that records
    none (fitted on the user's own loaders) needs ``--image-size``: the graph's size is
    fixed, and a guess would give a model that sees images at another scale than it learnt."""
    if args.image_size is not None:
        size, name = args.image_size, "--image-size"
    else:
        size = (ckpt.get("datamodule_hyper_parameters") or {}).get("image_size")
        name = f"the image size recorded in {args.checkpoint}"
    if size is None:
        parser.error(
            f"checkpoint {args.checkpoint} does not record the image size it was trained at "
            "(a model fitted without the package's data module): give --image-size, the side "
            "of its training images"
        )
    try:
        check_image_size(size, name)
    except ValueError as err:
        parser.error(str(err))
    return size


def checkpoint_task(path: str | Path, ckpt: dict) -> type:
    """The package's task class that wrote ``ckpt``; ``CheckpointError`` for a checkpoint
    of another model, instead of a list of missing weights when it is loaded.

    A checkpoint names its writer (``TASK_CLASS_KEY``, or the CLI's ``_class_path``);
    one older than that mark is known by a hyper-parameter of the task's own.
    """
    from semiseg_caw.checkpoints import CheckpointError, checkpoint_writer, import_class
    from semiseg_caw.lit import ClassElevateSeg, SemiSegCAW
    from semiseg_caw.lit.base import SegmentationTask

    hparams = ckpt.get("hyper_parameters") or {}
    writer = checkpoint_writer(ckpt)
    if writer:
        task = import_class(writer)
    elif "aux_source" in hparams:
        task = SemiSegCAW
    elif "presence_topk" in hparams:
        task = ClassElevateSeg
    else:
        task = None
    if isinstance(task, type) and issubclass(task, SegmentationTask):
        return task
    by = f" (written by {writer})" if writer else ""
    raise CheckpointError(
        f"{path} is not a semiseg-caw checkpoint{by}: export takes a ClassElevateSeg or "
        "SemiSegCAW checkpoint, written by `semiseg-caw fit` or a Trainer fitting one"
    )


if __name__ == "__main__":
    main()
