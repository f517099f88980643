"""Flax Linen models: backbones (VGG16, ResNet-50, Inception v3), DrCT1/DrCT2, blend-sign net."""
