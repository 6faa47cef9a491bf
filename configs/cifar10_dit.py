"""CIFAR-10 with a pixel-space Diffusion Transformer (DiT, Peebles & Xie 2023), patch 2.

    python -m sagd_jax.main --config=configs/cifar10_dit.py[:VARIANT] --workdir=DIR

Variants: the published DiT sizes at patch 2 on the 32x32x3 images (16 x 16 = 256 tokens, as
many as DiT's 256 px models have on their 32x32 latents): ``s2`` (default: DiT-S/2, 32M
parameters), ``b2`` (DiT-B/2, 130M), ``l2`` (DiT-L/2), ``xl2`` (DiT-XL/2); ``cond`` is ``s2``
made class-conditional on CIFAR-10's 10 classes (TFDS feature ``label``, label dropout 0.1 for
classifier-free guidance; in-training samples unguided).

The default is S/2: at 32M parameters and 12 GFLOP a forward pass (XLA's count) it is the
DiT closest in size to the DDPM++ U-Net of ``configs/cifar10_ddpmpp.py`` (56M parameters, 40
GFLOP) at under a third of its compute; B/2 (130M, 46 GFLOP) matches that U-Net's compute
with more than twice its parameters. Small ViTs with patch 2 are what pixel-space
transformers use on CIFAR-10 (U-ViT-S/2, Bao et al. 2023).

Training: DiT's optimizer (AdamW at a constant 1e-4 after the warm-up, no weight decay),
EMA 0.9999, batch 128 and 400,000 steps as the DDPM++ config; DiT has no dropout
(``model.dropout = 0``). Data as ``configs/cifar10_ddpmpp.py``: TFDS ``cifar10``, split
``train``, 32x32 as they are, random horizontal flips; prepare it once with
``tfds build cifar10 --file_format=array_record [--data_dir=ROOT]`` or set
``data.download=True``.
"""

from sagd_jax.config import check_variant, default_config
from sagd_jax.models.dit import configure_dit

VARIANTS = {"s2": "S/2", "b2": "B/2", "l2": "L/2", "xl2": "XL/2", "cond": "S/2"}


def get_config(variant: str = "s2"):
    check_variant(variant, VARIANTS)
    c = default_config()
    c.data.name = "tfds:cifar10"
    c.data.image_size, c.data.channels, c.data.random_flip = 32, 3, True
    configure_dit(c.model, VARIANTS[variant])
    c.optim.update(dict(learning_rate=1e-4, warmup_steps=5000, weight_decay=0.0,
                        ema_decay=0.9999))
    c.train.update(dict(num_steps=400_000, batch_size=128, checkpoint_every=10_000,
                        sample_every=20_000))
    if variant == "cond":
        c.data.num_classes, c.data.label_key = 10, "label"
        c.model.num_classes = 10
        c.train.label_dropout, c.train.guidance = 0.1, 1.0
    return c
