"""Run under torch.distributed.run (gloo): each process streams two epochs of the shards in argv[1] through the
training loader with 2 loader workers and writes the ids of its views, step by step, to argv[2]/rank_R.json."""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from deit import distributed
from deit.data import build_dataset
from deit.data.loaders import loader_options, train_loader, training_order


def as_tensor(image):
    return torch.from_numpy(np.array(image)).float()[None]


def main(folder: str, out: str) -> None:
    env, _ = distributed.setup("cpu")
    assert env.world_size == 2 and torch.distributed.get_backend() == "gloo"
    shards, _ = build_dataset("wds", folder, True, grayscale=True)
    shards.transform = as_tensor
    sampler = training_order(shards, seed=11, rank=env.rank, world_size=env.world_size, repeated_aug=False)
    loader = train_loader(shards, sampler, batch_size=6, batch_aug=False, options=loader_options(2, False))
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        steps = [batch.indices.tolist() for batch in loader]
        again = [(b.indices.tolist(), torch.equal(b.images.flatten(1)[:, 0].long(), b.indices % 256)) for b in loader]
        # a second pass of the same epoch: the same ids, each view its own image
        pixels_match = [ids for ids, _ in again] == steps and all(ok for _, ok in again)
        epochs.append({"steps": steps, "declared": len(loader), "pixels_match": pixels_match})
    # both processes reach this point: neither waits on the other's missing steps
    distributed.barrier()
    Path(out, f"rank_{env.rank}.json").write_text(json.dumps(epochs))
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
