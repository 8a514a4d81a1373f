"""``data.pool.large_movers``: the config key reaches the generated pools and their cache key."""
from __future__ import annotations

import numpy as np
import pytest

from videoapp.config import ConfigError, config_from_dict, load_config
from videoapp.data.synthetic import Pool, generate_pool, pool_key
from videoapp.engine.train import train

GEN = dict(num_frames=8, sampling_rate=4, crop_size=64)


def _config(tmp, out: str, large_movers=None) -> dict:
    pool = {"train_clips": 6, "val_clips": 4, "cache_dir": str(tmp / "pools"), "workers": 1}
    if large_movers is not None:
        pool["large_movers"] = large_movers
    return {
        "model": {"name": "mvitv2_xxs_8x64"},
        "data": {"source": "camera_motion", "batch_size": 2, "pool": pool, **GEN},
        "optim": {"lr": 1e-3, "warmup_epochs": 0},
        "train": {"epochs": 1, "seed": 0, "out_dir": str(tmp / out), "bf16": False, "threads": 1,
                  "steps_per_epoch": 1, "log_every": 1, "progress": False},
    }


def test_large_movers_reach_the_pools_and_their_cache_key(tmp_path):
    train(config_from_dict(_config(tmp_path, "plain")))
    train(config_from_dict(_config(tmp_path, "movers", large_movers=1.0)))
    cached = {p.name for p in (tmp_path / "pools").iterdir()}
    plain = {pool_key(6, split="train", seed=0, **GEN), pool_key(4, split="test", seed=1, **GEN)}
    movers = {pool_key(6, split="train", seed=0, large_movers=1.0, **GEN),
              pool_key(4, split="test", seed=1, large_movers=1.0, **GEN)}
    # Four distinct pools: the run with movers did not reuse the plain run's cache.
    assert cached == plain | movers and not plain & movers
    # 0 keeps the names pools had before the option existed.
    assert pool_key(6, split="train", seed=0, large_movers=0.0, **GEN) == pool_key(6, split="train", seed=0, **GEN)
    for split, n, seed in (("train", 6, 0), ("test", 4, 1)):
        got = Pool.load(tmp_path / "pools" / pool_key(n, split=split, seed=seed, large_movers=1.0, **GEN))
        assert got.meta["large_movers"] == 1.0
        ref = generate_pool(n, split=split, seed=seed, large_movers=1.0, **GEN)
        np.testing.assert_array_equal(got.clips, ref.clips)
        np.testing.assert_array_equal(got.labels, ref.labels)
        old = Pool.load(tmp_path / "pools" / pool_key(n, split=split, seed=seed, **GEN))
        # Every clip of the movers pool has figures drawn over it, so none equals its plain twin.
        assert all((a != b).any() for a, b in zip(got.clips, old.clips))


def test_large_movers_out_of_range_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data.pool.large_movers: a probability in \[0, 1\], got 1.5") as err:
        train(config_from_dict(_config(tmp_path, "bad", large_movers=1.5)))
    assert "\n" not in str(err.value)


def test_large_movers_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {pool: {large_movers: 0.25}}\n")
    assert load_config(path).data.pool.large_movers == 0.25
    assert load_config(path, ["data.pool.large_movers=0"]).data.pool.large_movers == 0.0
    assert config_from_dict({}).data.pool.large_movers == 0.0
