"""Behaviour of the networks in semiseg_caw.models: shapes, sizes, gradients, modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semiseg_caw.models import class_elevate
from semiseg_caw.models.cam import layercam
from semiseg_caw.models.class_elevate import ClassElevateNet
from semiseg_caw.models.heads import AuxGuidedClassifier
from semiseg_caw.models.malunet import MALUNet
from semiseg_caw.models.outputs import ClassElevateOutput, SegOutput, SemiSegOutput
from semiseg_caw.models.semiseg import BACKBONES, SemiSegCAWNet, build_semiseg_net
from semiseg_caw.models.unext import UNeXt

SIZE = 64


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def all_outputs_loss(out: tuple) -> torch.Tensor:
    """A scalar touching every tensor in a (possibly nested) output structure."""
    total = torch.zeros(())
    for t in out:
        if isinstance(t, torch.Tensor) and t.requires_grad:
            total = total + t.square().mean()
        elif isinstance(t, tuple):
            total = total + all_outputs_loss(t)
    return total


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class BaseSegModelTest:
    """One test suite for every segmentation network; subclasses set the class attributes."""

    model_cls: type[nn.Module]
    params_at_3ch: int  # exact reference parameter count at 3 input channels
    mask_channels = 1
    output_type: type = SegOutput
    grads_strided_unlike_weights: tuple[str, ...] = ()  # see strided_unlike_their_weights

    def make(self, in_channels: int = 3) -> nn.Module:
        return self.model_cls(in_channels=in_channels)

    @pytest.mark.parametrize("in_channels", [1, 3])
    def test_output_shapes(self, in_channels: int) -> None:
        model = self.make(in_channels)
        out = model(torch.randn(2, in_channels, SIZE, SIZE))
        assert isinstance(out, self.output_type)
        assert out.mask_logits.shape == (2, self.mask_channels, SIZE, SIZE)
        assert out.features.shape == (2, model.feature_channels, SIZE // 32, SIZE // 32)
        assert all(torch.isfinite(t).all() for t in out)

    def test_parameter_count(self) -> None:
        assert abs(n_params(self.make(3)) - self.params_at_3ch) <= 0.01 * self.params_at_3ch

    def test_in_channels_set_first_conv(self) -> None:
        for c in (1, 2, 4):
            assert first_conv(self.make(c)).weight.shape[1] == c

    def test_every_parameter_gets_a_gradient(self) -> None:
        model = self.make(1)
        all_outputs_loss(model(torch.randn(2, 1, SIZE, SIZE))).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        assert strided_unlike_their_weights(model) == list(self.grads_strided_unlike_weights)


def strided_unlike_their_weights(model: nn.Module) -> list[str]:
    """The parameters whose gradient is laid out unlike them: DDP copies each such gradient
    and warns "Grad strides do not match bucket view strides". (UNeXt's token maps reach
    convolutions transposed, which gives some weights gradients that differ from them only
    in the strides of size-1 dimensions: the same memory layout. Copying the maps to avoid
    the warning made a CPU step slower, so UNeXt keeps it.)"""
    return [n for n, p in model.named_parameters() if p.grad.stride() != p.stride()]

    def test_rejects_bad_in_channels(self) -> None:
        with pytest.raises(ValueError):
            self.make(0)


class TestMALUNet(BaseSegModelTest):
    model_cls = MALUNet
    params_at_3ch = 177_943

    def test_exact_reference_size(self) -> None:
        assert n_params(MALUNet()) == 177_943
        assert n_params(MALUNet(split_att="conv")) == 177_943

    def test_invalid_options(self) -> None:
        with pytest.raises(ValueError, match="split_att"):
            MALUNet(split_att="attn")
        with pytest.raises(ValueError, match="c_list"):
            MALUNet(c_list=(8, 16, 24, 32, 48))
        with pytest.raises(ValueError, match="divisible by 32"):
            MALUNet()(torch.randn(1, 3, 48, 48))
        with pytest.raises(ValueError, match=r"expects a \(B, C, H, W\) batch, got shape \(3, 32"):
            MALUNet()(torch.randn(3, 32, 32))  # one image without its batch dimension

    def test_gradients_are_strided_as_weights_with_conv_attention_heads(self) -> None:
        model = MALUNet(in_channels=1, split_att="conv")
        all_outputs_loss(model(torch.randn(2, 1, SIZE, SIZE))).backward()
        assert not strided_unlike_their_weights(model)

    def test_without_bridge(self) -> None:
        out = MALUNet(in_channels=1, bridge=False)(torch.randn(2, 1, SIZE, SIZE))
        assert out.mask_logits.shape == (2, 1, SIZE, SIZE)

    def test_overfits_one_batch(self) -> None:
        x = torch.randn(2, 1, 32, 32) * 0.1
        yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
        y = torch.stack(
            [((yy - 12) ** 2 + (xx - 12) ** 2 < 40), ((yy - 20) ** 2 + (xx - 18) ** 2 < 60)]
        )
        y = y.float().unsqueeze(1)  # (2, 1, 32, 32) blobs
        x = x + y
        model = MALUNet(in_channels=1)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(40):
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(x).mask_logits, y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.1 * losses[0]


class TestUNeXt(BaseSegModelTest):
    model_cls = UNeXt
    params_at_3ch = 1_471_921
    grads_strided_unlike_weights = (
        "block1.mlp.dwconv.weight",
        "block2.mlp.dwconv.weight",
        "dblock1.mlp.dwconv.weight",
        "dblock2.mlp.dwconv.weight",
    )

    def test_exact_reference_size(self) -> None:
        assert n_params(UNeXt()) == 1_471_921

    @pytest.mark.parametrize("hw", [(256, 256), (64, 96)])
    def test_other_input_sizes(self, hw: tuple[int, int]) -> None:
        model = UNeXt(in_channels=1).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 1, *hw))
        assert out.mask_logits.shape == (1, 1, *hw)
        assert out.features.shape == (1, 256, hw[0] // 32, hw[1] // 32)

    def test_stochastic_depth_drops_residual_branches_in_training_only(self) -> None:
        torch.manual_seed(0)
        model = UNeXt(in_channels=1, drop_path_rate=0.5)
        x = torch.randn(2, 1, 32, 32)
        model.train()
        assert not torch.equal(model(x).mask_logits, model(x).mask_logits)
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(x).mask_logits, model(x).mask_logits)

    def test_stochastic_depth_follows_the_reference_spread(self) -> None:
        # The reference's linspace(0, rate, 3) over depths [1, 1, 1]: blocks take 0 and rate/2.
        model = UNeXt(in_channels=1, drop_path_rate=0.4)
        for block in (model.block1, model.dblock1):
            assert isinstance(block.drop_path, torch.nn.Identity)
        for block in (model.block2, model.dblock2):
            assert block.drop_path.drop_prob == pytest.approx(0.2)

    def test_invalid_options(self) -> None:
        with pytest.raises(ValueError, match="embed_dims"):
            UNeXt(embed_dims=(128, 160))
        with pytest.raises(ValueError, match="divisible by 32"):
            UNeXt()(torch.randn(1, 3, 48, 48))


class TestClassElevateNet(BaseSegModelTest):
    model_cls = ClassElevateNet
    # segmentation_models_pytorch Unet(resnet18) + linear class head (512 -> 2).
    params_at_3ch = 14_328_209 + 512 * 2 + 2
    output_type = ClassElevateOutput

    def test_class_logits_shape(self) -> None:
        out = ClassElevateNet(in_channels=1, num_classes=3)(torch.randn(2, 1, SIZE, SIZE))
        assert out.class_logits.shape == (2, 3)

    def test_unet_part_matches_smp(self) -> None:
        model = ClassElevateNet(in_channels=3)
        assert n_params(model) - n_params(model.classifier) == 14_328_209

    def test_cam(self) -> None:
        model = ClassElevateNet(in_channels=1)
        out = model(torch.randn(2, 1, SIZE, SIZE))
        cam = model.cam(out.features, torch.tensor([0, 1]), (SIZE, SIZE))
        assert cam.shape == (2, 1, SIZE, SIZE)
        assert cam.min() >= 0 and cam.max() <= 1
        zero = model.cam(torch.zeros_like(out.features), torch.tensor([0, 1]), (SIZE, SIZE))
        assert torch.equal(zero, torch.zeros_like(zero))  # eps-safe normalisation

    def test_pretrained_failure_is_clear(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def offline(*args: object, **kwargs: object) -> nn.Module:
            raise OSError("no network")

        monkeypatch.setattr(class_elevate.timm, "create_model", offline)
        with pytest.raises(RuntimeError, match="resnet18"):
            ClassElevateNet(pretrained=True)

    def test_invalid_options(self) -> None:
        with pytest.raises(ValueError, match="unknown timm encoder"):
            ClassElevateNet(encoder="not_a_model")
        with pytest.raises(ValueError, match="decoder_channels"):
            ClassElevateNet(decoder_channels=(256, 128, 64, 32))
        with pytest.raises(ValueError, match="dropout"):
            ClassElevateNet(dropout=1.0)
        with pytest.raises(ValueError, match="num_classes must be >= 2"):
            ClassElevateNet(num_classes=1)


class TestAuxGuidedClassifier:
    def test_shape_and_uniform_default(self) -> None:
        head = AuxGuidedClassifier(64, 3).eval()
        feats = torch.randn(2, 64, 4, 4)
        out = head(feats, None)
        assert out.shape == (2, 3)
        torch.testing.assert_close(out, head(feats, torch.ones(2, 1, SIZE, SIZE)))
        assert not torch.allclose(out, head(feats, torch.rand(2, 1, SIZE, SIZE) ** 4))

    def test_empty_map_is_finite(self) -> None:
        head = AuxGuidedClassifier(8, 2)
        out = head(torch.randn(2, 8, 2, 2), torch.zeros(2, 1, SIZE, SIZE))
        assert torch.isfinite(out).all()

    def test_invalid(self) -> None:
        with pytest.raises(ValueError):
            AuxGuidedClassifier(0, 2)
        with pytest.raises(ValueError, match="aux_map"):
            AuxGuidedClassifier(8, 2)(torch.randn(2, 8, 2, 2), torch.rand(2, 2, 8, 8))


class TestLayerCAM:
    @pytest.mark.parametrize("layer", ["deepest", "fused"])
    def test_range_shape_and_no_side_effects(self, layer: str) -> None:
        model = ClassElevateNet(in_channels=1).train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            cam = layercam(model, torch.randn(2, 1, SIZE, SIZE), layer=layer)
        assert cam.shape == (2, 1, SIZE, SIZE)
        assert not cam.requires_grad
        assert cam.min() >= 0 and cam.max() <= 1
        assert model.training  # mode restored
        assert all(p.grad is None for p in model.parameters())
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())

    def test_same_maps_under_inference_mode(self) -> None:
        # What Lightning's test and predict loops run under: no graph may be built there.
        model = ClassElevateNet(in_channels=1)
        image = torch.randn(2, 1, SIZE, SIZE)
        with torch.no_grad():
            expected = layercam(model, image)
        with torch.inference_mode():
            got = layercam(model, image.clone())
        torch.testing.assert_close(got, expected)

    def test_explicit_target_and_bad_layer(self) -> None:
        model = ClassElevateNet(in_channels=1)
        images = torch.randn(2, 1, SIZE, SIZE)
        cam = layercam(model, images, target=torch.tensor([1, 0]))
        assert cam.shape == (2, 1, SIZE, SIZE)
        # The map is the named class's: the other class's differs.
        assert not torch.allclose(cam, layercam(model, images, target=torch.tensor([0, 1])))
        with pytest.raises(ValueError, match="layer"):
            layercam(model, torch.randn(2, 1, SIZE, SIZE), layer="stem")


class TestSemiSegCAWNet:
    @pytest.mark.parametrize("backbone", sorted(BACKBONES))
    @pytest.mark.parametrize("aux_source", ["classelevate", "layercam", "none"])
    def test_output_shapes(self, backbone: str, aux_source: str) -> None:
        net = build_semiseg_net(backbone, in_channels=1, num_classes=2, aux_source=aux_source)
        out = net(torch.randn(2, 1, SIZE, SIZE))
        assert isinstance(out, SemiSegOutput)
        assert out.mask_logits.shape == (2, 1, SIZE, SIZE)
        assert out.class_logits.shape == (2, 2)
        assert torch.isfinite(out.mask_logits).all() and torch.isfinite(out.class_logits).all()
        if aux_source == "none":
            assert out.aux_map is None and out.aux_output is None
            assert first_conv(net.backbone).weight.shape[1] == 1
        else:
            assert out.aux_map.shape == (2, 1, SIZE, SIZE)
            assert out.aux_map.min() >= 0 and out.aux_map.max() <= 1
            assert first_conv(net.backbone).weight.shape[1] == 2
            assert (out.aux_output is None) == (aux_source == "layercam")

    @pytest.mark.parametrize(("backbone", "millions"), [("malunet", 14.50), ("unext", 15.85)])
    def test_paper_model_size(self, backbone: str, millions: float) -> None:
        net = build_semiseg_net(backbone, in_channels=3)
        assert abs(n_params(net) / 1e6 - millions) <= 0.05

    def test_finetune_mode_trains_everything(self) -> None:
        net = build_semiseg_net("malunet", in_channels=1).train()
        out = net(torch.randn(2, 1, SIZE, SIZE))
        (out.mask_logits.mean() + out.class_logits.mean()).backward(retain_graph=True)
        assert net.aux_model.encoder.conv1.weight.grad is not None  # through the aux map
        all_outputs_loss(out).backward()  # plus the aux model's own outputs
        assert not [n for n, p in net.named_parameters() if p.grad is None]
        assert net.aux_trainable and net.aux_model.training

    def test_gradients_are_strided_as_their_weights(self) -> None:
        net = build_semiseg_net("malunet", in_channels=1, aux_encoder="test_resnet").train()
        all_outputs_loss(net(torch.randn(2, 1, SIZE, SIZE))).backward()
        assert not strided_unlike_their_weights(net)

    @pytest.mark.parametrize("aux_source", ["classelevate", "layercam"])
    def test_fixed_aux_model(self, aux_source: str) -> None:
        net = build_semiseg_net("malunet", in_channels=1, aux_source=aux_source, aux_frozen=True)
        net.train()
        assert net.backbone.training and not net.aux_model.training
        before = {k: v.clone() for k, v in net.aux_model.state_dict().items()}
        out = net(torch.randn(2, 1, SIZE, SIZE))
        all_outputs_loss(out).backward()
        assert all(p.grad is None for p in net.aux_model.parameters())
        assert all(p.grad is not None for p in net.backbone.parameters())
        assert all(torch.equal(v, net.aux_model.state_dict()[k]) for k, v in before.items())

    def test_aux_encoder_frozen_fine_tunes_the_decoder_and_heads_only(self) -> None:
        net = build_semiseg_net("malunet", in_channels=1, aux_encoder_frozen=True).train()
        encoder = net.aux_model.encoder
        assert net.aux_trainable and net.aux_model.training and not encoder.training
        before = {k: v.clone() for k, v in encoder.state_dict().items()}
        all_outputs_loss(net(torch.randn(2, 1, SIZE, SIZE))).backward()
        assert all(p.grad is None for p in encoder.parameters())
        tuned = [net.aux_model.decoder, net.aux_model.segmentation_head, net.aux_model.classifier]
        assert all(p.grad is not None for m in tuned for p in m.parameters())
        # Eval-mode BatchNorm: a training step leaves the encoder's statistics alone.
        assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())
        with pytest.raises(ValueError, match="aux_encoder_frozen"):
            build_semiseg_net("malunet", aux_frozen=True, aux_encoder_frozen=True)

    def test_precomputed_aux_map(self) -> None:
        net = build_semiseg_net("malunet", in_channels=1, aux_frozen=True).eval()
        image = torch.randn(2, 1, SIZE, SIZE)
        cached, _ = net.auxiliary(image)
        out = net(image, aux_map=cached)
        assert out.aux_output is None
        torch.testing.assert_close(out.mask_logits, net(image).mask_logits)
        with pytest.raises(ValueError, match="aux_map"):
            net(image, aux_map=cached[:, :, :32])

    def test_output_skip_starts_as_the_plain_model_and_learns_its_gain(self) -> None:
        torch.manual_seed(0)
        plain = build_semiseg_net("unext", in_channels=1).eval()
        skip = build_semiseg_net("unext", in_channels=1, output_skip=True).eval()
        skip.load_state_dict(plain.state_dict(), strict=False)  # all but the gain
        image = torch.randn(2, 1, SIZE, SIZE)
        torch.testing.assert_close(skip(image).mask_logits, plain(image).mask_logits)
        with torch.no_grad():
            skip.skip_gain.fill_(0.5)
        out = skip(image)
        aux_logit = torch.logit(out.aux_map.clamp(1e-4, 1 - 1e-4))
        torch.testing.assert_close(out.mask_logits, plain(image).mask_logits + 0.5 * aux_logit)
        # A saturated (cached) map stays finite, and the gain gets a gradient.
        skip.train()
        out = skip(image, aux_map=torch.ones(2, 1, SIZE, SIZE))
        assert torch.isfinite(out.mask_logits).all()
        out.mask_logits.mean().backward()
        assert skip.skip_gain.grad is not None and skip.skip_gain.grad != 0
        with pytest.raises(ValueError, match="output_skip"):
            build_semiseg_net("malunet", aux_source="none", output_skip=True)

    def test_aux_dropout_zeroes_whole_maps_in_training_only(self) -> None:
        torch.manual_seed(0)
        net = build_semiseg_net("malunet", in_channels=1, aux_frozen=True, aux_dropout=0.5)
        seen: dict[str, torch.Tensor] = {}
        net.backbone.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
        net.classifier.register_forward_pre_hook(lambda m, args: seen.update(map=args[1]))
        image = torch.randn(64, 1, SIZE, SIZE)
        aux_map = torch.rand(64, 1, SIZE, SIZE) * 0.9 + 0.05  # never exactly 0
        out = net.train()(image, aux_map=aux_map)
        fed = seen["x"][:, 1:]
        dropped = (fed == 0).flatten(1).all(dim=1)
        assert 16 < int(dropped.sum()) < 48  # about half, each map whole or nothing
        torch.testing.assert_close(fed[~dropped], aux_map[~dropped])
        torch.testing.assert_close(seen["map"], fed)  # the classifier sees the same maps
        torch.testing.assert_close(out.aux_map, aux_map)  # the output keeps every map
        net.eval()(image, aux_map=aux_map)
        torch.testing.assert_close(seen["x"][:, 1:], aux_map)
        # With the late-fusion path too, a dropped map adds nothing there either.
        skip = build_semiseg_net("malunet", aux_frozen=True, output_skip=True, aux_dropout=0.5)
        with torch.no_grad():
            skip.skip_gain.fill_(1.0)
        skip.backbone.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
        skip.backbone.register_forward_hook(lambda m, args, out: seen.update(raw=out))
        out = skip.train()(image, aux_map=aux_map)
        dropped = (seen["x"][:, 1:] == 0).flatten(1).all(dim=1)
        assert 16 < int(dropped.sum()) < 48
        raw = seen["raw"].mask_logits
        torch.testing.assert_close(out.mask_logits[dropped], raw[dropped])
        assert not torch.allclose(out.mask_logits[~dropped], raw[~dropped])
        for bad in (-0.1, 1.0):
            with pytest.raises(ValueError, match="aux_dropout"):
                build_semiseg_net("malunet", aux_dropout=bad)
        with pytest.raises(ValueError, match="aux_dropout"):
            build_semiseg_net("malunet", aux_source="none", aux_dropout=0.5)

    def test_without_classifier(self) -> None:
        net = build_semiseg_net("malunet", in_channels=1, use_classifier=False)
        assert net(torch.randn(2, 1, SIZE, SIZE)).class_logits is None

    def test_invalid_options(self) -> None:
        with pytest.raises(ValueError, match="backbone"):
            build_semiseg_net("unet")
        with pytest.raises(ValueError, match="aux_source"):
            build_semiseg_net(aux_source="cam")
        with pytest.raises(ValueError, match="aux_model"):
            SemiSegCAWNet(MALUNet(in_channels=2), None, None, aux_source="classelevate")
        net = build_semiseg_net("malunet", aux_source="none")
        with pytest.raises(ValueError, match="aux_map"):
            net(torch.randn(2, 1, SIZE, SIZE), aux_map=torch.rand(2, 1, SIZE, SIZE))
