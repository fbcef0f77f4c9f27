"""The paper's vocabulary, importable without torch (command-line parsers use it).

The modules that implement each name import it from here, so a ``--help`` that lists the
choices stays instant and the choices cannot drift from the code.
"""

#: The normalization kinds, in the order the paper introduces them: none, batch norm,
#: weight norm, normalization propagation, weight norm with a translated ReLU.
NORM_KINDS: tuple[str, ...] = ("none", "bn", "wn", "np", "trelu")

#: Kinds meaningful for a purely linear network (NP and TReLU are activations).
DEEP_LINEAR_NORMS: tuple[str, ...] = ("none", "bn", "wn")

#: Data sets the loaders accept; ``fashion-mnist`` is the default (``synthetic`` only by name).
DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "imagenet", "synthetic")

#: Environment variable naming a folder searched for data sets after ``--data-dir``.
DATA_ENV_VAR = "NORMSTAB_DATA"

#: Where Debian's ``dataset-fashion-mnist`` package installs the idx files.
SYSTEM_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
