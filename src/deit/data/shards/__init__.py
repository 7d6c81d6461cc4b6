"""WebDataset shards: writing a data set as tar shards (`deit shard`, with webdataset's writer) and streaming them
to training, evaluation and prediction (our reader: webdataset's sample format, each member's size checked in its
header before it is read).

A shard holds `{key}.{ext}` (the image file's own bytes: jpg, png, tif, ...) and `{key}.cls` (the class index as
text) per sample. `index.json` beside the shards names the classes and, per split, each shard's sample count, so a
run knows its epoch length before it reads a byte. A sample's id is its place in the split: the shards in the
index's order, the samples in each shard's order.

An epoch of training is exact across a job: the shards are put in an order drawn from (seed, epoch) and read as one
sequence; process r of W takes the r-th contiguous block of steps x batch samples of it, and each of its loader
workers a contiguous run of whole batches of that block (a block may start or end inside a shard: that shard is
read by both, each keeping its own samples). Every sample is then seen once per epoch (the last world x batch - 1 at
most left out, another tail each epoch, as `drop_last` does), every process runs the same number of steps, and the
order is a function of (seed, epoch, processes, workers, batch, shuffle buffer): a resumed run repeats it. A
worker's samples pass a shuffle buffer seeded from (seed, epoch, process, worker); each sample is augmented under a
seed drawn from (seed, epoch, its id), as `sampling.py` does for positions, so a view does not depend on the order.
"""
