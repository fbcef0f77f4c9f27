"""The paper's parts: normalization layers, its three networks, data sets and training.

Gitman & Ginsburg (2017) compare batch normalization (BN), weight normalization (WN),
normalization propagation (NormProp) and WN with a translated ReLU (TReLU) on cifar10-nv,
ResNet-50 and a 50-layer linear network; this package builds each of them.
"""
