"""Our DDPM++ train step against the PyTorch reference network (EDM's SongUNet), same process.

    pip install torch==2.13.0          # CPU build; never a dependency of sagd-jax
    git clone https://github.com/NVlabs/edm DIR
    python benchmarks/peer_edm.py --edm_path=DIR                                  # 64 ch, batch 32
    python benchmarks/peer_edm.py --edm_path=DIR --config=configs/cifar10_ddpmpp.py:full \\
        --batch_size=16                                                            # 128 ch

Both sides train the same architecture (EDM's ``SongUNet`` with its DDPM++ settings, built
from this config's ``model`` section; parameter counts are checked to agree within 2%), on
the same batch size and image shape, fp32, with the same work per step: forward, eps-MSE
loss under a VP process, backward, global-norm gradient clipping, Adam, EMA update. Ours is the
trainer's step (``Run.train_step``) with isotropic noise (gamma = 0). The two alternate in blocks
of ``--steps`` steps in one process, PyTorch in both memory layouts (NCHW and channels-last,
NHWC like ours); the printed ratio is ours over the faster PyTorch, in img/s. The EDM
code is imported from ``--edm_path`` and never copied into this repository.
"""

from __future__ import annotations

import os
import sys
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from benchmarks import common
from benchmarks.train_throughput import BareStep, bare_run
from sagd_jax import console

PARAM_TOLERANCE = 0.02


def load_song_unet(edm_path: str) -> Any:
    """``training.networks.SongUNet`` from a checkout of github.com/NVlabs/edm."""
    if not os.path.isfile(os.path.join(edm_path, "training", "networks.py")):
        raise ValueError(f"--edm_path={edm_path}: no training/networks.py there; expected a "
                         "checkout of https://github.com/NVlabs/edm")
    sys.path.insert(0, os.path.abspath(edm_path))  # EDM's code, imported from its checkout
    from training.networks import SongUNet

    return SongUNet


def song_unet_kwargs(config: Any) -> dict[str, Any]:
    """EDM's ``SongUNet`` arguments for this config's DDPM++ ``model`` section and image."""
    m, d = config.model, config.data
    return dict(img_resolution=d.image_size, in_channels=d.channels, out_channels=d.channels,
                model_channels=m.ch, channel_mult=list(m.ch_mult), num_blocks=m.num_res_blocks,
                attn_resolutions=list(m.attn_resolutions), dropout=m.dropout,
                embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                decoder_type="standard", resample_filter=[1, 1])


class TorchStep:
    """One fp32 PyTorch training step of SongUNet (DDPM++), timed like ours."""

    def __init__(self, song_unet: Any, config: Any, batch_size: int, channels_last: bool,
                 seed: int = 0):
        import torch

        torch.manual_seed(seed)
        d = config.data
        self.net = song_unet(**song_unet_kwargs(config)).train()
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.net = self.net.to(memory_format=layout)
        self.ema = [p.detach().clone() for p in self.net.parameters()]
        self.opt = torch.optim.Adam(self.net.parameters(), lr=float(config.optim.learning_rate),
                                    betas=(config.optim.b1, config.optim.b2),
                                    eps=config.optim.eps)
        self.clip = float(config.optim.grad_clip)
        self.decay = float(config.optim.ema_decay)
        shape = (batch_size, d.channels, d.image_size, d.image_size)
        self.x0 = (torch.rand(shape) * 2 - 1).contiguous(memory_format=layout)
        self.torch = torch

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def step(self) -> float:
        torch = self.torch
        batch = self.x0.shape[0]
        t = torch.rand(batch) * (1 - 1e-3) + 1e-3
        # VP SDE (beta from 0.1 to 20), as sagd_jax.schedules' default.
        log_alpha = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
        alpha = log_alpha.exp().view(-1, 1, 1, 1)
        sigma = (1 - alpha**2).sqrt()
        eps = torch.randn_like(self.x0)
        out = self.net(alpha * self.x0 + sigma * eps, 1000 * t, class_labels=None)
        loss = ((out - eps) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, list(self.net.parameters()), 1 - self.decay)
        return float(loss.detach())

    def run(self, steps: int) -> list[float]:
        import time

        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - start)
        return times


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("edm_path", None, "A checkout of github.com/NVlabs/edm.",
                        flag_values=fv, required=True)
    flags.DEFINE_alias("edm-path", "edm_path", flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "Global batch of both sides.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("steps", 3, "Timed steps per block.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("blocks", 3, "Alternating JAX/PyTorch blocks.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("threads", os.cpu_count(), "PyTorch intra-op threads (XLA uses every "
                         "core).", lower_bound=1, flag_values=fv)


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    config = fv.config
    config.noise.gamma, config.noise.bands = 0.0, ""
    config.train.batch_size = fv.batch_size
    run = bare_run(config)
    song_unet = load_song_unet(fv.edm_path)

    import jax
    import torch

    from sagd_jax.models import count_params

    torch.set_num_threads(fv.threads)
    batch = jax.random.uniform(jax.random.key(0), (fv.batch_size, *run.image_shape),
                               minval=-1.0, maxval=1.0)
    peers = {"nchw": TorchStep(song_unet, run.config, fv.batch_size, channels_last=False),
             "channels_last": TorchStep(song_unet, run.config, fv.batch_size,
                                        channels_last=True)}
    peer = peers["nchw"]
    ours = BareStep(run, batch)
    ours_params = count_params(ours.state.params)
    mismatch = abs(ours_params - peer.num_params) / peer.num_params
    print(f"parameters: sagd-jax {ours_params:,}, EDM SongUNet {peer.num_params:,} "
          f"({100 * mismatch:.2f}% apart)", flush=True)
    if mismatch > PARAM_TOLERANCE:
        raise ValueError(f"--config: parameter counts differ by {100 * mismatch:.1f}% (> 2%): "
                         "not the same architecture")
    for p in peers.values():
        p.run(2)  # warm-up
    jax_times: list[float] = []
    torch_times: dict[str, list[float]] = {name: [] for name in peers}
    for block in range(fv.blocks):
        jax_times += ours.run(fv.steps)
        for name, p in peers.items():
            torch_times[name] += p.run(fv.steps)
        print(f"block {block}: sagd-jax {fv.batch_size / common.median(jax_times):.3g} img/s, "
              + ", ".join(f"PyTorch {name} {fv.batch_size / common.median(t):.3g} img/s"
                          for name, t in torch_times.items()), flush=True)
    rates = {name: fv.batch_size / common.median(t) for name, t in torch_times.items()}
    best = max(rates, key=rates.get)
    jax_rate, torch_rate = fv.batch_size / common.median(jax_times), rates[best]
    result = {
        "batch_size": fv.batch_size,
        "params_sagd_jax": ours_params, "params_edm": peer.num_params,
        "sagd_jax_img_per_s": jax_rate, "pytorch_img_per_s": torch_rate,
        "pytorch_layout": best, **{f"pytorch_{name}_img_per_s": r for name, r in rates.items()},
        "ratio_sagd_jax_over_pytorch": jax_rate / torch_rate,
        "flops_per_image": ours.flops / fv.batch_size,
        "sagd_jax_step_gflops": ours.flops / common.median(jax_times) / 1e9,
        "pytorch_step_gflops_same_flops": ours.flops * torch_rate / fv.batch_size / 1e9,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
    }
    print(console.table(common.scalars(result)))
    return result


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py:cpu")


if __name__ == "__main__":
    sys.exit(main())
