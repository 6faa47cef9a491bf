"""SAGD on Fashion-MNIST, 28x28, a ~6M-parameter DDPM++ U-Net.

    python -m sagd_jax.main --config=configs/fashion_mnist.py --workdir=DIR \
        [--config.noise.gamma=2 --config.noise.bands=bandstop:0.4:0.6]

Variants (``--config=configs/fashion_mnist.py:VARIANT``): ``sagd`` (default, gamma = 1),
``iso`` (isotropic diffusion, gamma = 0), ``bandstop`` (gamma = 1 with w = 0 on 0.4..0.6),
``cond`` (``sagd`` made class-conditional on Fashion-MNIST's 10 classes, label dropout 0.1 for
classifier-free guidance; in-training samples unguided, ``train.guidance = 1``), ``dit``
(``sagd`` with a CPU-sized Diffusion Transformer instead of the U-Net: patch 2, so 14 x 14
tokens, width 128, 4 blocks of 4 heads, no dropout: 1.3M parameters and 0.4 GFLOP a forward
pass against this U-Net's 7.0M and 2.4; its train step runs at about the speed of the 1.3M U-Net
of ``experiments/configs/paper.py``, 4 to 6 times this U-Net's, on a 2-core CPU). A ``cond``
run's samples carry their labels, and ``python -m sagd_jax.evaluate`` reports the classifier's
``class_accuracy`` under them.
"""

from sagd_jax.config import check_variant, default_config

VARIANTS = {
    "sagd": dict(gamma=1.0, bands=""),
    "iso": dict(gamma=0.0, bands=""),
    "bandstop": dict(gamma=1.0, bands="bandstop:0.4:0.6"),
    "cond": dict(gamma=1.0, bands=""),  # and the classes below
    "dit": dict(gamma=1.0, bands=""),  # and the network below
}


def get_config(variant: str = "sagd"):
    check_variant(variant, VARIANTS)
    c = default_config()
    c.data.name = "fashion_mnist"
    c.data.image_size, c.data.channels = 28, 1
    c.noise.update(VARIANTS[variant])
    c.model.update(dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,),
                        dropout=0.1))
    c.train.update(dict(num_steps=50_000, batch_size=128))
    if variant == "dit":
        c.model.update(dict(name="dit", patch_size=2, hidden_size=128, depth=4, num_heads=4,
                            mlp_ratio=4.0, dropout=0.0))
    if variant == "cond":
        c.data.num_classes = c.model.num_classes = 10
        c.train.label_dropout, c.train.guidance = 0.1, 1.0
    return c
