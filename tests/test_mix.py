"""etf_train/data/mix.py: the batched device-path mix against torchvision's v2 MixUp / CutMix (the DataLoader path)."""

from __future__ import annotations

import inspect
import math
import pickle

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from etf_train.cli import config_dir
from etf_train.data import MIXES, build_data, build_loaders, build_mix, set_epoch
from etf_train.errors import EtfTrainError

B, K, C, S = 4, 4, 2, 8
Y = torch.arange(B) % K  # every sample's partner (the previous one) has another label, so lam can be read off


def images(seed: int = 0) -> torch.Tensor:
    """A batch whose samples differ at every pixel, so each output pixel shows which sample it came from."""
    return torch.arange(B, dtype=torch.float32)[:, None, None, None] * 100 + torch.rand(
        B, C, S, S, generator=torch.Generator().manual_seed(seed)
    )


def device_path(mix, n: int, seed: int):
    """n batches through the batched mix, drawing from one generator (as DeviceLoader does)."""
    g = torch.Generator().manual_seed(seed)
    return [mix(images(i), Y, g) for i in range(n)]


def dataloader_path(mix, n: int, seed: int):
    """n batches through the collate step (torchvision's transform), drawing from the global RNG."""
    torch.manual_seed(seed)
    return [mix.collate(list(zip(images(i), Y))) for i in range(n)]


def weights(target: torch.Tensor) -> torch.Tensor:
    """lam of a batch: the weight of each sample's own label, the same for every sample.  (B, K) -> ()"""
    own = target[torch.arange(B), Y]
    assert torch.allclose(own, own[0].expand(B))
    return own[0]


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_the_batched_mix_equals_torchvisions_for_the_same_random_numbers(name):
    """Catches a pairing other than the roll by one, lam and 1 - lam swapped, a wrong box or label correction, or the draws in another order than torchvision's."""
    mix = build_mix(name, alpha=0.7, prob=0.5, num_classes=K)
    x, samples = images(), list(zip(images(), Y))
    mixed = 0
    for seed in range(100):
        torch.manual_seed(seed)
        x_dev, t_dev = mix(x, Y, torch.default_generator)  # the same generator torchvision draws from
        torch.manual_seed(seed)
        x_tv, t_tv = mix.collate(samples)
        assert torch.equal(x_dev, x_tv) and torch.equal(t_dev, t_tv), seed
        mixed += not torch.equal(x_dev, x)
    assert 30 < mixed < 70  # prob = 0.5 of 100 batches (cutmix: minus the few whose box is empty)


def cutmix_box_law(alpha: float, size: int) -> tuple[float, float]:
    """(P(empty box), E[box area / image area]) of CutMix on size x size images, written out: half side
    h = floor(sqrt(1 - lam) size / 2) = j for lam in (1 - (2(j+1)/size)^2, 1 - (2j/size)^2], centre c uniform on
    {0..size-1} per axis, side min(c + h, size) - max(c - h, 0)."""
    lam = scipy.stats.beta(alpha, alpha)
    p_empty, mean_area = 0.0, 0.0
    for j in range(size // 2 + 1):
        p = lam.cdf(1 - (2 * j / size) ** 2) - lam.cdf(1 - (2 * (j + 1) / size) ** 2)
        side = sum(min(c + j, size) - max(c - j, 0) for c in range(size)) / size
        p_empty += p if j == 0 else 0.0
        mean_area += p * (side / size) ** 2
    return p_empty, mean_area


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_both_paths_draw_lam_and_boxes_with_the_same_statistics(name):
    """Catches a device path whose lam law or box law is off (e.g. uniform lam, boxes not clipped, a fixed centre) or whose pixels and labels disagree; the exact test above catches subtler slips."""
    alpha, n = 0.4, 600
    mix = build_mix(name, alpha=alpha, prob=1.0, num_classes=K)
    lams = {}
    for path, draws in (("device", device_path(mix, n, seed=1)), ("dataloader", dataloader_path(mix, n, seed=2))):
        lam, area = [], []
        for i, (x, target) in enumerate(draws):
            x0, w = images(i), weights(target)
            assert torch.allclose(target.sum(1), torch.ones(B))
            if name == "mixup":
                assert torch.allclose(x, w * x0 + (1 - w) * x0.roll(1, 0), atol=1e-4)
            else:
                box = (x == x0.roll(1, 0)).all(1)  # (B, S, S): pixels taken from the previous sample
                assert torch.equal(x, torch.where(box[:1, None], x0.roll(1, 0), x0))  # one box for the whole batch
                assert torch.equal(box[0], box[0].any(1)[:, None] & box[0].any(0))  # a rectangle
                area.append(float(box[0].float().mean()))
                assert math.isclose(float(w), 1 - area[-1], abs_tol=1e-6)  # the label weight is the pixel share
            lam.append(float(w))
        lams[path] = lam
        if name == "mixup":
            assert scipy.stats.kstest(lam, scipy.stats.beta(alpha, alpha).cdf).pvalue > 1e-3, path
        else:
            p_empty, mean_area = cutmix_box_law(alpha, S)
            empty = sum(a == 0 for a in area)
            assert abs(empty - n * p_empty) < 4 * math.sqrt(n * p_empty * (1 - p_empty)), (path, empty, n * p_empty)
            area = torch.tensor(area, dtype=torch.float64)
            assert abs(area.mean() - mean_area) < 4 * area.std() / math.sqrt(n), (path, area.mean(), mean_area)
    assert scipy.stats.ks_2samp(lams["device"], lams["dataloader"]).pvalue > 1e-3


def test_both_paths_mix_the_same_fraction_of_batches():
    """Catches prob ignored, inverted (mixing with probability 1 - prob), or drawn once per epoch instead of per batch."""
    n, prob = 1000, 0.3
    mix = build_mix("mixup", alpha=1.0, prob=prob, num_classes=K)
    for path, draws in (("device", device_path(mix, n, seed=3)), ("dataloader", dataloader_path(mix, n, seed=4))):
        mixed = sum(float(weights(t)) < 1 for _, t in draws)
        assert abs(mixed - prob * n) < 4 * math.sqrt(n * prob * (1 - prob)), (path, mixed)


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_soft_labels_are_two_label_mixes_with_weights_lam_and_one_minus_lam(name):
    """Catches soft labels mixed with the wrong partner, weights not summing to 1, or a third label leaking in."""
    mix = build_mix(name, alpha=1.0, prob=1.0, num_classes=6)
    y = torch.tensor([0, 5, 5, 2, 1, 0, 3])  # repeats: a sample paired with its own label gets one-hot
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        _, t = mix(torch.rand(7, 1, 6, 6, generator=g), y, g)
        lam = t[0, 0] if y[0] != y[-1] else None
        for b in range(7):
            partner = y[b - 1]
            own = t[b, y[b]]
            if partner == y[b]:
                assert torch.equal(t[b], F.one_hot(y[b], 6).float())
            else:
                assert torch.allclose(t[b, partner], 1 - own) and (lam is None or torch.equal(own, lam))
            others = torch.ones(6, dtype=torch.bool)
            others[[int(y[b]), int(partner)]] = False
            assert bool((t[b, others] == 0).all())


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_prob_zero_leaves_batches_alone_and_none_keeps_hard_labels(name):
    """Catches a batch mixed although prob=0, and mix=none turning hard labels into soft ones (which would change CE's bits)."""
    mix = build_mix(name, alpha=1.0, prob=0.0, num_classes=K)
    for i, (x_out, t) in enumerate(device_path(mix, 20, seed=6)):
        assert torch.equal(x_out, images(i)) and torch.equal(t, F.one_hot(Y, K).float())
    for i, (x_out, t) in enumerate(dataloader_path(mix, 20, seed=6)):
        assert torch.equal(x_out, images(i)) and torch.equal(t, F.one_hot(Y, K).float())
    none, x = build_mix("none", num_classes=K), images()
    x_out, y_out = none(x, Y, torch.Generator())
    assert x_out is x and y_out is Y
    x_out, y_out = none.collate(list(zip(x, Y)))
    assert torch.equal(x_out, x) and torch.equal(y_out, Y) and y_out.dtype == torch.long


@pytest.mark.parametrize("mode", ["device", "dataloader"])
def test_loaders_mix_train_batches_only(mode):
    """Catches mixing that skips one loader path, leaks into test/eval_train, or is not reseeded by the epoch on the device path."""
    b = build_data("synthetic", num_classes=K, image_size=6, channels=1, train_per_class=8, test_per_class=4)
    mix = build_mix("cutmix", alpha=1.0, prob=1.0, num_classes=K)
    plain = build_loaders(b, 8, mode=mode)
    train, test, eval_train = build_loaders(b, 8, mode=mode, mix=mix)

    def epoch(loader, e):
        set_epoch(loader, e)
        return [(x, t) for x, t in loader]

    torch.manual_seed(0)
    batches = epoch(train, 1)
    assert all(t.shape == (len(x), K) and t.dtype == torch.float32 for x, t in batches)
    assert any(not torch.equal(t, F.one_hot(t.argmax(1), K).float()) for _, t in batches)
    for mixed, unmixed in ((test, plain[1]), (eval_train, plain[2])):
        for (x, y), (x0, y0) in zip(mixed, unmixed):
            assert torch.equal(x, x0) and torch.equal(y, y0) and y.dim() == 1
    if mode == "device":
        assert all(torch.equal(t, t2) for (_, t), (_, t2) in zip(batches, epoch(train, 1)))
        assert any(not torch.equal(t, t2) for (_, t), (_, t2) in zip(batches, epoch(train, 2)))
    pickle.loads(pickle.dumps(mix.collate))  # DataLoader workers under spawn receive the collate step pickled


def test_bad_mix_settings_are_one_line_errors():
    """Catches a mix that would fail mid-epoch (or mix positions of the UFM) instead of stopping before training with the config key."""
    for args, match in (
        (("blend", 1.0, 1.0), "unknown mix 'blend'"),
        (("mixup", 0.0, 1.0), "mix.alpha"),
        (("cutmix", -1.0, 1.0), "mix.alpha"),
        (("mixup", 1.0, 1.5), "mix.prob"),
        (("mixup", 1.0, "always"), "mix.prob"),
    ):
        name, alpha, prob = args
        with pytest.raises(EtfTrainError, match=match) as info:
            build_mix(name, num_classes=K, alpha=alpha, prob=prob)
        assert "\n" not in str(info.value)
    for name, options in (("mixup", {"alfa": 1.0}), ("none", {"alpha": 1.0})):  # +mix.alfa=1: a traceback before
        unknown = rf"mix {name}: unknown option\(s\) {list(options)[0]}; its options"
        with pytest.raises(EtfTrainError, match=unknown) as info:
            build_mix(name, num_classes=K, **options)
        assert "\n" not in str(info.value)
    ufm = build_data("ufm", num_classes=K, per_class=4)
    with pytest.raises(EtfTrainError, match="dataset ufm has no image inputs: use mix=none") as info:
        build_loaders(ufm, 4, mix=build_mix("mixup", num_classes=K))
    assert "\n" not in str(info.value)


def test_every_mix_has_a_yaml_spelling_out_its_options():
    """Catches a mix without a config file, or yaml defaults that drift from build_mix's."""
    files = sorted((config_dir() / "mix").glob("*.yaml"))
    assert {f.stem for f in files} == set(MIXES.names())
    parameters = inspect.signature(MIXES.get("mixup")).parameters
    defaults = {k: p.default for k, p in parameters.items() if k in ("alpha", "prob")}
    for f in files:
        cfg = OmegaConf.to_container(OmegaConf.load(f))
        assert cfg.pop("name") == f.stem
        assert cfg == ({} if f.stem == "none" else defaults), f.stem
