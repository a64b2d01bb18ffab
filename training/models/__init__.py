"""ResNet re-ID networks with optional CDD channel indicators."""

from training.models.indicator import ChannelIndicator
from training.models.network import ReIDNet, TrainOutput, build_network
from training.models.resnet import ResNetBackbone, load_imagenet_weights

__all__ = ["ChannelIndicator", "ReIDNet", "ResNetBackbone", "TrainOutput", "build_network", "load_imagenet_weights"]
