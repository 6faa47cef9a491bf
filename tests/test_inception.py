"""The FID Inception-v3 in Flax against torch-fidelity's ``FeatureExtractorInceptionV3`` (pure
torch) with the same random weights, read from the same ``.pth`` file; the weights lookup."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import stat
import sys
import threading
import types

import numpy as np
import pytest

from sagd_jax.metrics import inception
from sagd_jax.metrics.inception import InceptionFeatures, resize_tf1

torch = pytest.importorskip("torch")


def _torch_fidelity_module():
    """torch-fidelity's Inception module, without its package ``__init__`` (which imports
    torchvision, unusable beside the CPU torch here)."""
    import importlib.util

    if "torch_fidelity" not in sys.modules:
        spec = importlib.util.find_spec("torch_fidelity")
        if spec is None:
            pytest.skip("torch-fidelity is not installed (pip install --no-deps torch-fidelity)")
        package = types.ModuleType("torch_fidelity")
        package.__spec__ = spec
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["torch_fidelity"] = package
    import torch_fidelity.feature_extractor_inceptionv3 as module

    return module


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """torch-fidelity's network with random weights (batch norms calibrated on images so that
    every layer is O(1)), and the ``.pth`` file of its state dict."""
    module = _torch_fidelity_module()
    cls = module.FeatureExtractorInceptionV3
    original_load = cls.load_state_dict
    original_torch_load = module.torch.load
    cls.load_state_dict = lambda self, state, *a, **k: None  # keep torch's random init
    module.torch.load = lambda *a, **k: {}
    try:
        torch.manual_seed(0)
        net = cls("inception-v3-compat", ["2048", "logits_unbiased"],
                  feature_extractor_weights_path="unused")
    finally:
        cls.load_state_dict, module.torch.load = original_load, original_torch_load
    generator = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=generator)
            m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=generator)
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch gives its exact statistics
    net.train()
    with torch.no_grad():
        net(_images(8, 64, 3, seed=2).permute(0, 3, 1, 2).contiguous())
    net.eval()
    path = tmp_path_factory.mktemp("inception") / "weights.pth"
    torch.save(net.state_dict(), path)
    return net, str(path)


def _images(count: int, size: int | tuple[int, int], channels: int, seed: int):
    """Smooth random uint8 images (low-pass noise plus a gradient), ``(N, H, W, C)``."""
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, max(height // 4, 2), max(width // 4, 2), channels))
    yy = np.linspace(0, 1, height)[:, None]
    xx = np.linspace(0, 1, width)[None, :]
    idx_y = (yy[:, 0] * (coarse.shape[1] - 1)).round().astype(int)
    idx_x = (xx[0] * (coarse.shape[2] - 1)).round().astype(int)
    image = coarse[:, idx_y][:, :, idx_x] * 0.7 + 60 * (yy + xx)[None, :, :, None]
    image += rng.normal(0, 8, image.shape)
    return torch.from_numpy(np.clip(image, 0, 255).astype(np.uint8))


def _relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


@pytest.mark.slow
def test_features_and_logits_equal_torch_fidelity_for_images_of_several_sizes(reference):
    net, path = reference
    ours = InceptionFeatures.from_file(path, batch_size=4)
    for size, channels in ((28, 1), (32, 3), (64, 3), ((48, 80), 3), (256, 3)):
        images = _images(3, size, channels, seed=hash(str(size)) % 1000)
        rgb = images.repeat(1, 1, 1, 3) if channels == 1 else images
        with torch.no_grad():
            feats, logits = net(rgb.permute(0, 3, 1, 2).contiguous())
        f, g = ours.features_and_logits(images.numpy())
        assert f.shape == (3, 2048) and g.shape == (3, 1008) and f.dtype == np.float32
        assert _relative(f, feats.numpy()) < 1e-4, size
        assert _relative(g, logits.numpy()) < 1e-4, size
        # Not trivially equal: the images differ, so do their features.
        assert np.abs(f[0] - f[1]).max() > 1e-2 * np.abs(f).max()


def test_tf1_resize_equals_torch_fidelitys_and_keeps_constant_images_constant():
    module = _torch_fidelity_module()
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )

    del module
    x = _images(2, (37, 61), 3, seed=5).float()
    theirs = interpolate_bilinear_2d_like_tensorflow1x(
        x.permute(0, 3, 1, 2), size=(299, 299), align_corners=False).permute(0, 2, 3, 1)
    ours = np.asarray(resize_tf1(x.numpy()))
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=1e-3)
    flat = np.full((1, 20, 30, 3), 77.0, np.float32)
    np.testing.assert_array_equal(np.asarray(resize_tf1(flat)), 77.0)


@pytest.mark.slow
def test_features_are_the_same_in_any_batch_size_and_bad_images_are_refused(reference):
    _, path = reference
    images = _images(5, 32, 3, seed=9).numpy()
    a = InceptionFeatures.from_file(path, batch_size=2)(images)
    b = InceptionFeatures.from_file(path, batch_size=8)(images)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        InceptionFeatures.from_file(path)(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(N >= 1, H, W, 1 or 3\)"):
        InceptionFeatures.from_file(path)(images[..., :2])


def test_a_state_dict_of_another_network_is_refused_in_one_line(tmp_path, reference):
    net, _ = reference
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    del state["Mixed_7c.branch_pool.conv.weight"]
    path = tmp_path / "partial.npz"
    np.savez(path, **state)
    with pytest.raises(ValueError) as err:
        inception.read_weights(str(path))
    assert "missing: Mixed_7c.branch_pool.conv.weight" in str(err.value)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    state["Mixed_7c.branch_pool.conv.weight"] = np.zeros((192, 2048, 3, 1), np.float32)
    np.savez(path, **state)
    with pytest.raises(ValueError, match="Mixed_7c.branch_pool.conv.weight has shape"):
        inception.read_weights(str(path))


def test_weights_lookup_order_and_the_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    given = tmp_path / "w.pth"
    given.write_bytes(b"x")
    monkeypatch.setenv(inception.ENV_VAR, str(given))
    assert inception.weights_path() == str(given)
    assert inception.weights_path(str(given)) == str(given)
    with pytest.raises(ValueError, match=r"^--inception_weights=/nonexistent: no such file$"):
        inception.weights_path("/nonexistent")
    monkeypatch.delenv(inception.ENV_VAR)
    # No file and no network (a closed local port): one line naming the file, the source and
    # the place to put it; nothing written.
    with pytest.raises(ValueError) as err:
        inception.weights_path(url="http://127.0.0.1:9/none.pth", timeout_s=2)
    message = str(err.value)
    assert "\n" not in message and inception.WEIGHTS_FILE in message
    assert inception.WEIGHTS_URL in message and "download failed" in message
    assert os.path.join(str(tmp_path / "cache"), "inception", inception.WEIGHTS_FILE) in message
    assert not (tmp_path / "cache").exists()
    cached = tmp_path / "cache" / "inception" / inception.WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert inception.weights_path(download=False) == str(cached)


FAKE_WEIGHTS = b"not really Inception, but hashed like it" * 100


def _cache_files(cache) -> list[str]:
    """Every file under the cache folder, hidden temporary ones included."""
    return sorted(os.path.relpath(os.path.join(root, name), cache)
                  for root, _, names in os.walk(cache) for name in names)


@pytest.fixture
def download_env(tmp_path, monkeypatch):
    """An empty cache at ``tmp_path/cache``, no weights given, and the progress lines
    (``console.info`` and ``console.warning``) collected in a list."""
    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    monkeypatch.delenv(inception.URL_ENV_VAR, raising=False)
    lines = []
    monkeypatch.setattr(inception.console, "info", lambda msg, *a: lines.append(msg % a))
    monkeypatch.setattr(inception.console, "warning", lambda msg, *a: lines.append(msg % a))
    return tmp_path / "cache", lines


@contextlib.contextmanager
def _server(plan: list[str]):
    """A localhost HTTP server of ``FAKE_WEIGHTS`` at ``/w-<hash prefix>.pth``; request i
    follows ``plan[i]`` (past its end: serve): ``drop`` closes the connection without an
    answer, ``truncate`` sends half the bytes, ``404`` answers Not Found. Yields the URL and
    the list of requests served."""
    served = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            action = plan[len(served)] if len(served) < len(plan) else "serve"
            served.append(action)
            if action == "drop":
                self.close_connection = True
                return
            if action == "404":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(FAKE_WEIGHTS)))
            self.end_headers()
            if action == "truncate":
                self.wfile.write(FAKE_WEIGHTS[:len(FAKE_WEIGHTS) // 2])
                self.close_connection = True
                return
            self.wfile.write(FAKE_WEIGHTS)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    prefix = hashlib.sha256(FAKE_WEIGHTS).hexdigest()[:8]
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/w-{prefix}.pth", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_download_whose_hash_matches_its_name_lands_in_the_cache(tmp_path, download_env,
                                                                    monkeypatch):
    cache, lines = download_env
    assert inception.hash_prefix(inception.WEIGHTS_URL) == "6726825d"
    assert inception.hash_prefix("https://x/weights-inception-2015-12-05-6726825d.pth") == \
        "6726825d"
    assert inception.hash_prefix("https://x/inception.pth") is None
    digest = hashlib.sha256(FAKE_WEIGHTS).hexdigest()
    source = tmp_path / "mirror" / f"pt_inception-{digest[:10]}.pth"
    source.parent.mkdir()
    source.write_bytes(FAKE_WEIGHTS)
    monkeypatch.setenv(inception.URL_ENV_VAR, source.as_uri())  # a cluster's mirror
    old_umask = os.umask(0o022)
    try:
        path = inception.weights_path()
    finally:
        os.umask(old_umask)
    cached = cache / "inception" / inception.WEIGHTS_FILE
    assert path == str(cached) and cached.read_bytes() == FAKE_WEIGHTS
    assert stat.S_IMODE(cached.stat().st_mode) == 0o644  # as open() makes it, as torch.hub
    assert _cache_files(cache) == [os.path.join("inception", inception.WEIGHTS_FILE)]
    (line,) = lines
    assert source.as_uri() in line and f"({len(FAKE_WEIGHTS)} bytes)" in line
    assert str(cached) in line
    assert inception.weights_path() == path and len(lines) == 1  # cached: no second download


def test_a_download_whose_hash_differs_from_its_name_is_refused_and_leaves_nothing(
        tmp_path, download_env):
    cache, _ = download_env
    digest = hashlib.sha256(FAKE_WEIGHTS).hexdigest()
    wrong = "0123abcd" if not digest.startswith("0123abcd") else "fedc4321"
    source = tmp_path / f"pt_inception-2015-12-05-{wrong}.pth"
    source.write_bytes(FAKE_WEIGHTS)
    with pytest.raises(ValueError) as err:
        inception.weights_path(url=source.as_uri())
    message = str(err.value)
    assert "\n" not in message and "download failed" in message
    assert wrong in message and digest in message and source.as_uri() in message
    assert inception.WEIGHTS_URL in message  # and how to get the file by hand
    assert _cache_files(cache) == []
    # A name without a hash: the bytes must read as the network's weights instead.
    plain = tmp_path / "inception.pth"
    plain.write_bytes(FAKE_WEIGHTS)
    with pytest.raises(ValueError, match="download failed"):
        inception.weights_path(url=plain.as_uri())
    assert _cache_files(cache) == []


@pytest.mark.parametrize("failure", ["drop", "truncate"])
def test_a_failed_first_download_is_retried_once(download_env, failure):
    cache, lines = download_env
    with _server([failure]) as (url, served):
        path = inception.weights_path(url=url, timeout_s=5)
    assert served == [failure, "serve"]
    assert open(path, "rb").read() == FAKE_WEIGHTS
    assert _cache_files(cache) == [os.path.join("inception", inception.WEIGHTS_FILE)]
    assert any("trying again" in line and url in line for line in lines), lines


def test_a_download_failing_twice_or_not_found_gives_the_one_line_error(download_env):
    cache, _ = download_env
    for plan, tries in ((["drop", "truncate", "serve"], ["drop", "truncate"]), (["404"], ["404"])):
        with _server(plan) as (url, served):
            with pytest.raises(ValueError) as err:
                inception.weights_path(url=url, timeout_s=5)
        assert served == tries  # one retry, none for a 404
        message = str(err.value)
        assert "\n" not in message and message.startswith("Inception weights: no ")
        assert "download failed" in message and inception.WEIGHTS_URL in message
        assert str(cache / "inception" / inception.WEIGHTS_FILE) in message
        assert _cache_files(cache) == []
