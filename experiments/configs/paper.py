"""The paper's experiments on a 2-core CPU (experiments/README.md): one small U-Net, one recipe.

    python -m sagd_jax.main --config=experiments/configs/paper.py:VARIANT --workdir=DIR

Variants (the data): ``fashion_mnist`` (28x28), ``natural_patches`` (32x32 grayscale crops of
scikit-image's photographs), ``omission_corrupted`` (Fashion-MNIST plus random-phase stripes
confined to the band 0.45 <= rho <= 0.55), ``omission_clean`` (its clean reference), ``grf``
(16x16 Gaussian random fields: the exact answer is known), ``fashion_mnist_cond``
(``fashion_mnist`` made class-conditional on its 10 classes: ``data.num_classes`` and
``model.num_classes`` 10, label dropout 0.1 so that the same network also learns the
unconditional prediction of classifier-free guidance; in-training samples unguided),
``fashion_mnist_dit`` (``fashion_mnist`` with a Diffusion Transformer of about the U-Net's size
in place of the U-Net: patch 2, so 14 x 14 tokens, width 128, 4 blocks of 4 heads; 1.3M
parameters; the optimiser, schedule and budget unchanged). The
arms of each experiment override ``noise.*`` (see experiments/catalog.py). Equal steps,
batch and seed across the arms of a comparison.
"""

from sagd_jax.config import check_variant, default_config

OMISSION_BAND = (0.45, 0.55)
VARIANTS = ("fashion_mnist", "natural_patches", "omission_corrupted", "omission_clean", "grf",
            "fashion_mnist_cond", "fashion_mnist_dit")


def get_config(variant: str = "fashion_mnist"):
    check_variant(variant, VARIANTS)
    c = default_config()
    c.data.name = "fashion_mnist"
    c.data.image_size, c.data.channels = 28, 1
    if variant == "natural_patches":
        c.data.name, c.data.image_size, c.data.num_examples = "natural_patches", 32, 50_000
    if variant == "omission_corrupted":
        c.data.corruption.update(dict(kind="stripes", lo=OMISSION_BAND[0], hi=OMISSION_BAND[1],
                                      amplitude=0.3, seed=0))
    if variant == "grf":
        c.data.name, c.data.image_size, c.data.num_examples = "grf", 16, 50_000
    if variant == "fashion_mnist_cond":  # section 1's recipe, class-conditional
        c.data.num_classes = c.model.num_classes = 10
        c.train.label_dropout, c.train.guidance = 0.1, 1.0
    c.noise.gamma, c.noise.rho0, c.noise.bands = 1.0, 0.1, ""
    # About 1M parameters (experiments/run.py prints the count).
    c.model.update(dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                        attn_resolutions=(7, 8, 4), dropout=0.0, num_groups=8))
    if variant == "fashion_mnist_dit":  # configs/fashion_mnist.py:dit's network
        c.model.update(dict(name="dit", patch_size=2, hidden_size=128, depth=4, num_heads=4,
                            mlp_ratio=4.0))
    c.optim.update(dict(learning_rate=1e-3, warmup_steps=100, ema_decay=0.999))
    # Sized by measuring (bare jitted step, 2-core CPU, batch 32): 17.8 img/s at 28x28, 18.9 at
    # 32x32, 70 img/s on 16x16 grf; about 30 minutes of training per run.
    steps = 3000 if variant == "grf" else 900
    c.train.update(dict(num_steps=steps, batch_size=32, log_every=50, checkpoint_every=150,
                        sample_every=steps, num_samples=64, sampler="ddpm", sample_steps=100))
    return c
