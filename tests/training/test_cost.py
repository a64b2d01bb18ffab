"""Params/FLOPs counted one way for teacher, full student and slim student."""


from training.arch_spec import ArchSpec
from training.cost import FlopsModel, count_module_cost, deployed_cost
from training.models import build_network


def test_resnet50_imagenet_shape_matches_known_count():
    # torchvision ResNet-50 at 224x224: 4.09 GMACs, 23.5M params without fc (25.56M - 2.05M).
    spec = ArchSpec(depth=50, width=1.0, last_stride=2, input_size=(224, 224), embedding_dim=512)
    net = build_network(spec)
    backbone = count_module_cost(net.backbone, (224, 224))
    assert abs(backbone.flops - 4.09e9) / 4.09e9 < 0.01
    assert abs(backbone.params - 23.508e6) / 23.508e6 < 0.001


def test_teacher_and_unpruned_student_cost_the_same_and_classifier_excluded():
    teacher = ArchSpec(depth=18, width=0.25, input_size=(64, 32), num_classes=100)
    student = ArchSpec(depth=18, width=0.25, input_size=(64, 32), num_classes=100, indicators=True)
    assert deployed_cost(teacher) == deployed_cost(student)
    assert deployed_cost(teacher) == deployed_cost(ArchSpec(depth=18, width=0.25, input_size=(64, 32)))


def test_slim_cost_is_linear_in_kept_channels():
    spec = ArchSpec(depth=18, width=0.25, input_size=(64, 32), indicators=True)
    full = deployed_cost(spec)
    half = deployed_cost(spec.with_kept([list(range(p // 2)) for _, p in spec.blocks()]))
    first = spec.blocks()[0][1]
    one = deployed_cost(spec.with_kept([[0]] + [list(range(p)) for _, p in spec.blocks()[1:]]))
    # block layer1.0 (basic): conv1 16->k and conv2 k->16 at 16x8 -> 2 * 9 * 16 * 128 MACs per channel
    assert full.flops - one.flops == (first - 1) * 2 * 9 * 16 * 16 * 8
    assert half.flops < full.flops and half.params < full.params


def test_flops_model_is_exact_for_random_kept_counts():
    import random

    spec = ArchSpec(depth=50, width=0.125, input_size=(64, 32), indicators=True)
    model = FlopsModel.for_spec(spec)
    rng = random.Random(0)
    for _ in range(3):
        kept = [sorted(rng.sample(range(p), rng.randint(1, p))) for _, p in spec.blocks()]
        assert model.flops([len(k) for k in kept]) == deployed_cost(spec.with_kept(kept)).flops
