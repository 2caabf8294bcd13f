"""Checkpoints across parallel modes and device counts, on simulated CPU devices; prints ``layouts: ok``.

    python tests/helpers/checkpoint_layouts.py --num-devices 8 --dir /tmp/ckpts

A ``shard_map`` state on all devices and a ``pmap`` state (leading device axis) are saved asynchronously
as the global arrays they are; each is restored against the abstract shardings of runners of the other
mode on fewer devices, and must come back with the same values in that runner's layout.
"""

from __future__ import annotations

import argparse

import cpu_setup
import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-devices", type=int, default=8)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    cpu_setup.configure(args.num_devices)

    import jax

    from ib_attention_jax.runtime.parallel import Runner
    from ib_attention_jax.training.checkpoint import Checkpointer

    devices = jax.devices()
    assert len(devices) == args.num_devices
    host = {"w": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "b": np.ones((5,), np.float32),
            "step": np.asarray(7, np.int32), "key": np.asarray([1, 2], np.uint32)}
    twice = {k: v * 2 for k, v in host.items()}
    ckpt = Checkpointer(args.dir, max_to_keep=5, asynchronous=True)

    sharded = Runner("shard_map", devices)
    view = sharded.checkpoint_view(sharded.replicate(host))
    assert all(x.sharding == sharded.replicated for x in jax.tree_util.tree_leaves(view))
    ckpt.save(1, view)

    pmapped = Runner("pmap", devices)
    pstate = pmapped.replicate(twice)
    assert pstate["w"].shape == (len(devices), 2, 3, 4)
    view = pmapped.checkpoint_view(pstate)  # without the leading axis, replicated on the mesh, no host copy
    assert view["w"].shape == (2, 3, 4) and view["w"].sharding == pmapped.replicated
    ckpt.save(2, view)
    ckpt.wait()

    for step, expected in ((1, host), (2, twice)):
        for mode, n in (("pmap", len(devices) // 2), ("shard_map", 1), ("shard_map", 2)):
            runner = Runner(mode, devices[:n])
            restored, _, got = ckpt.restore(runner.abstract_state(host), step=step)
            assert got == step
            placed = runner.from_checkpoint(restored)
            for key, value in expected.items():
                leaf = placed[key]
                if mode == "pmap":
                    assert leaf.shape == (n,) + value.shape, (key, leaf.shape)
                    for row in np.asarray(leaf):
                        np.testing.assert_array_equal(row, value)
                else:
                    assert leaf.sharding == runner.replicated
                    np.testing.assert_array_equal(np.asarray(leaf), value)
            if mode == "pmap":  # the pmap layout is what pmap takes
                doubled = jax.pmap(lambda t: t["b"] * 2, devices=runner.devices)(placed)
                np.testing.assert_array_equal(np.asarray(doubled)[0], expected["b"] * 2)
    ckpt.close()
    print("layouts: ok", flush=True)


if __name__ == "__main__":
    main()
