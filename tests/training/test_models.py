"""ResNet family, indicator placement/init, torchvision key compatibility, arch spec."""

import pytest
import torch

from training.arch_spec import ArchSpec, ArchSpecError
from training.models import build_network, load_imagenet_weights


@pytest.mark.parametrize("depth,blocks,channels", [(18, 8, 512), (34, 16, 512), (50, 16, 2048),
                                                   (101, 33, 2048), (152, 50, 2048)])
def test_depths_and_widths(depth, blocks, channels):
    spec = ArchSpec(depth=depth, width=0.125, input_size=(64, 32), num_classes=7, embedding_dim=32)
    net = build_network(spec)
    assert len(net.backbone.blocks()) == blocks
    assert net.backbone.out_channels == int(channels * 0.125)
    out = net.train().forward_train(torch.randn(2, 3, 64, 32))
    assert out.embedding.shape == (2, 32) and out.logits.shape == (2, 7)


def test_last_stride_doubles_final_map():
    x = torch.randn(1, 3, 64, 32)
    s1 = build_network(ArchSpec(depth=18, width=0.125, input_size=(64, 32), last_stride=1)).backbone(x)
    s2 = build_network(ArchSpec(depth=18, width=0.125, input_size=(64, 32), last_stride=2)).backbone(x)
    assert s1.shape[-2:] == (4, 2) and s2.shape[-2:] == (2, 1)


@pytest.mark.parametrize("depth", [18, 50])
def test_student_with_identity_indicators_equals_plain_network_at_step0(depth):
    plain_spec = ArchSpec(depth=depth, width=0.25, input_size=(64, 32), num_classes=4)
    torch.manual_seed(0)
    plain = build_network(plain_spec).train()
    student = build_network(ArchSpec(**{**plain_spec.__dict__, "indicators": True})).train()
    missing, unexpected = student.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all(".indicator." in k for k in missing) and missing
    x = torch.randn(4, 3, 64, 32)
    a, b = plain.forward_train(x), student.forward_train(x)
    assert torch.allclose(a.embedding, b.embedding, atol=1e-6)
    # the post-indicator descriptor equals the pre-indicator one at identity init
    blocks = len(student.backbone.blocks())
    assert blocks > 0 and len(b.pre_descriptors) == len(b.post_descriptors) == blocks
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(b.pre_descriptors, b.post_descriptors, strict=True))


def test_indicator_sits_after_bn_before_relu():
    spec = ArchSpec(depth=18, width=0.125, input_size=(64, 32), indicators=True)
    block = build_network(spec).backbone.blocks()[0].eval()
    x = torch.randn(1, block.conv1.in_channels, 8, 8)
    out_identity, pre, _ = block.forward_with_descriptors(x)
    with torch.no_grad():
        block.indicator.weight.mul_(-1)  # a negated identity flips sign BEFORE the ReLU -> output changes
    out_negated, pre2, post = block.forward_with_descriptors(x)
    assert torch.equal(pre, pre2) and torch.allclose(post, -pre)
    # after BN and before ReLU: relu(-h) != relu(h), so the block output changes; after a ReLU it could not
    inner = block.bn1(block.conv1(x))
    shortcut = x if block.downsample is None else block.downsample(x)
    expected = torch.relu(block.bn2(block.conv2(torch.relu(-inner))) + shortcut)
    assert torch.allclose(out_negated, expected, atol=1e-6)
    assert (out_negated - out_identity).abs().max() > 1e-2


@pytest.mark.parametrize("depth", [18, 50])
def test_eval_forward_is_the_train_forward_embedding_with_trained_indicators(depth):
    torch.manual_seed(0)
    net = build_network(ArchSpec(depth=depth, width=0.125, input_size=(64, 32), num_classes=4,
                                 indicators=True))
    with torch.no_grad():
        for indicator in net.indicators():
            indicator.weight.add_(0.3 * torch.randn_like(indicator.weight))  # far from the identity
    net.eval()
    x = torch.randn(3, 3, 64, 32)
    plain = build_network(ArchSpec(depth=depth, width=0.125, input_size=(64, 32), num_classes=4))
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if ".indicator." not in k})
    with torch.no_grad():
        embedding = net.forward_train(x).embedding
        assert torch.equal(net(x), embedding)
        assert (plain.eval()(x) - embedding).abs().max() > 1e-3  # the indicators are really in the path


def test_torchvision_layout_imagenet_file_loads_strictly(tmp_path):
    spec = ArchSpec(depth=50, width=0.125, input_size=(64, 32), indicators=True)
    source = build_network(ArchSpec(depth=50, width=0.125, input_size=(64, 32))).backbone
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.randn(1000, 256)  # torchvision's ImageNet classifier, ignored
    state["fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    net = build_network(spec)
    load_imagenet_weights(net.backbone, path)
    assert torch.equal(net.backbone.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])
    assert torch.equal(net.backbone.layer1[0].indicator.weight.flatten(1), torch.eye(8))
    del state["layer1.0.bn1.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing keys"):
        load_imagenet_weights(build_network(spec).backbone, path)


def test_arch_spec_round_trip_and_errors(tmp_path):
    spec = ArchSpec(depth=18, width=0.25, input_size=(64, 32), indicators=True)
    slim = spec.with_kept([[0, 2]] * len(spec.blocks()))
    path = slim.save(tmp_path / "arch.json")
    assert ArchSpec.load(path) == slim
    with pytest.raises(ArchSpecError, match="8 blocks"):
        spec.with_kept([[0]] * 3)
    with pytest.raises(ArchSpecError, match="sorted, unique"):
        spec.with_kept([[2, 0]] * 8)
    with pytest.raises(ArchSpecError, match="keeps no channel"):
        spec.with_kept([[]] * 8)
    path.write_text(path.read_text().replace('"depth"', '"dept"'))
    with pytest.raises(ArchSpecError, match="unknown fields"):
        ArchSpec.load(path)
