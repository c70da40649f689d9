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

import lightning as L  # noqa: E402
import onnx  # noqa: E402
from fit_args import quick_trainer  # noqa: E402
from lightning.pytorch.demos.boring_classes import BoringModel  # noqa: E402

from semiseg_caw import SemiSegCAW  # noqa: E402
from semiseg_caw.checkpoints import TASK_CLASS_KEY  # noqa: E402
from semiseg_caw.cli import main  # noqa: E402
from semiseg_caw.export import InferenceModel, export_onnx  # noqa: E402
from semiseg_caw.export import main as export_main  # noqa: E402

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


def test_export_keeps_an_existing_file_unless_told_to_overwrite(
    tmp_path: Path, fake_export: list[dict[str, object]]
) -> None:
    earlier = tmp_path / "m.onnx"
    earlier.write_bytes(b"an earlier export")
    with pytest.raises(FileExistsError, match="m.onnx exists: give another file name"):
        export_onnx(SemiSegCAW(aux_source="none"), earlier, image_size=SIZE)
    assert earlier.read_bytes() == b"an earlier export"
    export_onnx(SemiSegCAW(aux_source="none"), earlier, image_size=SIZE, overwrite=True)
    assert len(fake_export) == 1 and onnx.load(earlier).graph.name == "empty"


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
            *quick_trainer(epochs=1),
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
    # (The export itself is the one checked above: faked, to save the exporter's 15 s.)
    exports = use_fake_exporter(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["export", str(ckpt), str(out), "--overwrite"])
    runpy.run_module("semiseg_caw.export", run_name="__main__")
    assert len(exports) == 1 and onnx.load(out).graph.name == "empty"


def save_checkpoint(model: L.LightningModule, path: Path, **entries: object) -> Path:
    """A checkpoint as a plain Trainer writes it (no data module's options), in a
    fraction of a training run's time."""
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(getattr(model, "hparams", {})),
        "pytorch-lightning_version": L.__version__,
    }
    if isinstance(model, SemiSegCAW):
        ckpt[TASK_CLASS_KEY] = "semiseg_caw.lit.semiseg.SemiSegCAW"
    torch.save({**ckpt, **entries}, path)
    return path


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The error ``python -m semiseg_caw.export ARGV`` ends with, in one line."""
    with pytest.raises(SystemExit):
        export_main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture
def no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes a test fail if anything reaches the (slow) ONNX exporter."""

    def exported(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported before refusing")

    monkeypatch.setattr(torch.onnx, "export", exported)


@pytest.fixture
def fake_export(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """An ONNX exporter that writes an empty graph in no time, and records what it was given:
    for tests of what happens around the export."""
    return use_fake_exporter(monkeypatch)


def use_fake_exporter(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Replace the ONNX exporter as ``fake_export`` does, from here on."""
    calls: list[dict[str, object]] = []

    def exporter(model: torch.nn.Module, args: tuple, path: str, **kwargs: object) -> None:
        calls.append({"modes": [m.training for m in model.modules()], "shape": args[0].shape})
        empty = onnx.helper.make_graph([], "empty", [], [])
        onnx.save(onnx.helper.make_model(empty), path)

    monkeypatch.setattr(torch.onnx, "export", exporter)
    return calls


def test_export_command_never_writes_over_its_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_export: None
) -> None:
    ckpt = save_checkpoint(SemiSegCAW(aux_source="none", classifier=False), tmp_path / "m.ckpt")
    before = ckpt.read_bytes()
    link = tmp_path / "link.onnx"
    link.symlink_to(ckpt)
    for output in (ckpt, link):
        error = refused([str(ckpt), str(output), "--image-size=32", "--overwrite"], capsys)
        assert f"output {output} is the checkpoint {ckpt} itself" in error
    # From Python, which is not given the checkpoint: no PyTorch file is replaced.
    task = SemiSegCAW.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    for overwrite in (True, False):  # not told to give --overwrite, which would not help
        with pytest.raises(FileExistsError, match="m.ckpt is a PyTorch file"):
            export_onnx(task, ckpt, image_size=SIZE, overwrite=overwrite)
    assert ckpt.read_bytes() == before


def test_export_command_asks_for_the_image_size_a_checkpoint_does_not_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_export: list[dict[str, object]]
) -> None:
    """A model fitted on the user's own loaders: its size is not guessed (the graph's is fixed)."""
    task = SemiSegCAW(aux_source="none", classifier=False)
    ckpt = save_checkpoint(task, tmp_path / "own-loaders.ckpt")
    out = tmp_path / "m.onnx"
    error = refused([str(ckpt), str(out)], capsys)
    assert "does not record the image size it was trained at" in error
    assert "give --image-size" in error and not out.exists()
    assert fake_export == []
    export_main([str(ckpt), str(out), f"--image-size={SIZE}"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert fake_export[0]["shape"] == (2, 1, SIZE, SIZE)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["image_size"] == str(SIZE)


def test_export_command_names_a_foreign_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_export: None
) -> None:
    boring = "lightning.pytorch.demos.boring_classes.BoringModel"
    for name, entries, says in [
        ("plain.ckpt", {}, "is not a semiseg-caw checkpoint: export takes a ClassElevateSeg"),
        ("cli.ckpt", {"hyper_parameters": {"_class_path": boring}}, f"(written by {boring})"),
    ]:
        ckpt = save_checkpoint(BoringModel(), tmp_path / name, **entries)
        error = refused([str(ckpt), str(tmp_path / "m.onnx"), "--image-size=32"], capsys)
        assert f"{ckpt} " in error and says in error


def test_a_layercam_model_is_refused_before_exporting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_export: None
) -> None:
    task = SemiSegCAW(aux_source="layercam", aux_encoder="test_resnet", classifier=False)
    with pytest.raises(ValueError, match="aux_source 'layercam' cannot be exported to ONNX"):
        export_onnx(task, tmp_path / "m.onnx", image_size=SIZE)
    ckpt = save_checkpoint(task, tmp_path / "layercam.ckpt")
    error = refused([str(ckpt), str(tmp_path / "m.onnx"), "--image-size=32"], capsys)
    assert "LayerCAM computes its auxiliary maps from gradients at inference" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layercam.ckpt"]


@pytest.mark.parametrize(
    ("output", "overwrite", "error", "message"),
    [
        ("a-folder", True, IsADirectoryError, "a-folder is a folder: name the .onnx file"),
        ("new-folder/", False, IsADirectoryError, "new-folder/ names a folder: name the .onnx"),
        ("a-file/m.onnx", False, OSError, "a-file/m.onnx cannot be written"),
        pytest.param(
            "/proc/m.onnx",
            False,
            OSError,
            "/proc/m.onnx cannot be written",
            marks=pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="Linux's /proc"),
        ),
    ],
)
def test_export_refuses_an_output_it_cannot_write_before_exporting(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_export: None,
    output: str,
    overwrite: bool,
    error: type[Exception],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    task = SemiSegCAW(aux_source="none", classifier=False)
    with pytest.raises(error, match=message):
        export_onnx(task, output, image_size=SIZE, overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder"]
    assert list((tmp_path / "a-folder").iterdir()) == []


@pytest.mark.parametrize("size", [0, 16, 48, -32])
def test_export_refuses_an_image_size_the_networks_cannot_take(
    tmp_path: Path, no_export: None, size: int
) -> None:
    task = SemiSegCAW(aux_source="none", classifier=False)
    with pytest.raises(
        ValueError, match=f"image_size must be a positive multiple of 32, got {size}"
    ):
        export_onnx(task, tmp_path / "m.onnx", image_size=size)


def test_export_gives_the_model_back_in_its_own_training_mode(
    tmp_path: Path, fake_export: list[dict[str, object]]
) -> None:
    """A model exported in the middle of training keeps training; its fixed (frozen)
    auxiliary model stays in eval mode."""
    task = SemiSegCAW(aux_mode="frozen", aux_encoder="test_resnet", classifier=False).train()
    modes = [m.training for m in task.modules()]
    assert task.training and not task.net.aux_model.training
    export_onnx(task, tmp_path / "m.onnx", image_size=SIZE)
    assert not any(fake_export[0]["modes"])  # exported in eval mode
    assert [m.training for m in task.modules()] == modes


def test_a_float64_model_exports_a_float32_graph_and_stays_float64(tmp_path: Path) -> None:
    """onnxruntime has no float64 convolution: the graph is the model's, in float32."""
    torch.manual_seed(0)
    task = SemiSegCAW(aux_source="none", classifier=False).double()
    path = export_onnx(task, tmp_path / "m.onnx", image_size=SIZE)
    assert all(p.dtype == torch.float64 for p in task.parameters())
    image = torch.randn(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (expected,) = InferenceModel(task.eval())(image.double())
    (got,) = run_onnx(path, image)
    np.testing.assert_allclose(got, expected.float().numpy(), atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_model_on_cuda_exports_and_stays_there(tmp_path: Path) -> None:
    task = SemiSegCAW(aux_source="none", classifier=False).cuda()
    export_onnx(task, tmp_path / "m.onnx", image_size=SIZE)
    assert all(p.is_cuda for p in task.parameters())
    assert_matches(task.cpu(), tmp_path / "m.onnx", ["mask_prob"])


def test_export_command_errors_are_prefixed_with_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = refused([str(tmp_path / "nothing.ckpt"), str(tmp_path / "m.onnx")], capsys)
    assert error.startswith("python -m semiseg_caw.export: error: checkpoint ")


def test_export_from_python_takes_the_size_the_model_was_fitted_at(
    tmp_path: Path, fake_export: list[dict[str, object]]
) -> None:
    """export_onnx used to export at 256 px whatever the model had trained at."""
    with pytest.raises(ValueError, match="give image_size: this model does not record"):
        export_onnx(SemiSegCAW(aux_source="none", classifier=False), tmp_path / "a.onnx")
    model = SemiSegCAW(aux_source="none", classifier=False)
    data = {"datamodule_hyper_parameters": {"image_size": 64}}
    ckpt = save_checkpoint(model, tmp_path / "m.ckpt", **data)
    task = SemiSegCAW.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    export_onnx(task, tmp_path / "b.onnx")
    export_onnx(task, tmp_path / "c.onnx", image_size=SIZE)  # a size given wins
    assert [call["shape"][-1] for call in fake_export] == [64, SIZE]
