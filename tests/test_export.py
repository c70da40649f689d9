"""ONNX export: onnxruntime gives PyTorch's probabilities, in Python and from the command line."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript", reason="needs the export extra")
ort = pytest.importorskip("onnxruntime", reason="needs the export extra")

from semiseg_caw import SemiSegCAW  # noqa: E402
from semiseg_caw.cli import main  # noqa: E402
from semiseg_caw.export import InferenceModel, export_onnx  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZE = 32


def run_onnx(path: Path, image: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    return session.run(None, {"image": image.numpy()})


def assert_matches(task: torch.nn.Module, path: Path, names: list[str]) -> None:
    """onnxruntime's outputs equal PyTorch's within 1e-4, at a batch size other than export's."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    image = torch.randn(3, task.in_channels, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = InferenceModel(task.eval())(image)
    got = run_onnx(path, image)
    assert len(got) == len(expected) == len(names)
    for name, g, e in zip(names, got, expected, strict=True):
        assert g.shape == tuple(e.shape), name
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4, rtol=0, err_msg=name)


def test_semiseg_caw_exports_with_auxiliary_model_and_classifier(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # resnet10t: the same U-Net on a shallower timm encoder, to keep the export short.
    task = SemiSegCAW(  # with flip_tta: the mirror is part of the graph
        backbone="malunet",
        aux_source="classelevate",
        aux_encoder="resnet10t",
        classifier=True,
        flip_tta=True,
    )
    task.class_names = ["cyst", "solid"]
    path = export_onnx(task, tmp_path / "model.onnx", image_size=SIZE)
    assert path.is_file() and not path.with_name("model.onnx.part").exists()
    assert_matches(task, path, ["mask_prob", "class_prob"])
    meta = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    assert meta["class_names"] == "cyst,solid" and meta["image_size"] == str(SIZE)
    assert meta["in_channels"] == "1" and "(pixel / 255 - 0.5) / 0.25" in meta["preprocessing"]
    assert meta["flip_tta"] == "true"


def test_a_failed_export_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_written(model, args, path, **kwargs):
        Path(path).write_bytes(b"half")
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", half_written)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(SemiSegCAW(aux_source="none"), tmp_path / "m.onnx", image_size=SIZE)
    assert list(tmp_path.iterdir()) == []


def test_export_keeps_an_existing_file_unless_told_to_overwrite(tmp_path: Path) -> None:
    earlier = tmp_path / "m.onnx"
    earlier.write_bytes(b"an earlier export")
    with pytest.raises(FileExistsError, match="m.onnx exists: give another file name"):
        export_onnx(SemiSegCAW(aux_source="none"), earlier, image_size=SIZE)
    assert earlier.read_bytes() == b"an earlier export"
    export_onnx(SemiSegCAW(aux_source="none"), earlier, image_size=SIZE, overwrite=True)
    assert earlier.read_bytes() != b"an earlier export"


@pytest.mark.filterwarnings("ignore:'semiseg_caw.export' found in sys.modules:RuntimeWarning")
def test_export_command_on_a_cli_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m semiseg_caw.export`` on a baseline (no auxiliary model, no classifier)."""
    main(
        [
            "fit",
            f"--config={CONFIGS / 'demo.yaml'}",
            f"--config={CONFIGS / 'baselines' / 'full.yaml'}",
            f"--data.image_size={SIZE}",
            "--data.batch_size=4",
            "--data.synthetic_samples=40",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    out = tmp_path / "export" / "baseline.onnx"
    # What `python -m semiseg_caw.export CKPT OUT` runs, in this process: at the size the
    # model was trained at (the graph's height and width are fixed; assert_matches feeds SIZE).
    monkeypatch.setattr(sys, "argv", ["export", str(ckpt), str(out)])
    runpy.run_module("semiseg_caw.export", run_name="__main__")
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    for bad in ("0", "48"):
        monkeypatch.setattr(sys, "argv", ["export", str(ckpt), str(out), f"--image-size={bad}"])
        with pytest.raises(SystemExit):
            runpy.run_module("semiseg_caw.export", run_name="__main__")
        assert f"must be a positive multiple of 32, got {bad}" in capsys.readouterr().err
    # A missing checkpoint and a folder as output are named, without a traceback.
    for argv, message in [
        ([str(tmp_path / "nothing.ckpt"), str(out)], "nothing.ckpt"),
        ([str(ckpt), str(tmp_path)], "is a folder: name the .onnx file"),
    ]:
        monkeypatch.setattr(sys, "argv", ["export", *argv])
        with pytest.raises(SystemExit):
            runpy.run_module("semiseg_caw.export", run_name="__main__")
        assert message in capsys.readouterr().err
    task = SemiSegCAW.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert task.net.aux_model is None and task.hparams.classifier is False
    assert_matches(task, out, ["mask_prob"])
    # An existing model file is kept unless --overwrite says to replace it.
    out.write_bytes(b"an earlier export")
    monkeypatch.setattr(sys, "argv", ["export", str(ckpt), str(out)])
    with pytest.raises(SystemExit):
        runpy.run_module("semiseg_caw.export", run_name="__main__")
    assert f"{out} exists: give another file name, or --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier export"
    monkeypatch.setattr(sys, "argv", ["export", str(ckpt), str(out), "--overwrite"])
    runpy.run_module("semiseg_caw.export", run_name="__main__")
    assert_matches(task, out, ["mask_prob"])
