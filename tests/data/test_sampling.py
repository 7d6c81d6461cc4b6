"""The training sampler: which images an epoch holds, in which order, under which seeds."""


def test_repeat_passes_over_the_set_r_times_an_epoch_each_copy_its_own_view():
    """--repeat R: an epoch holds every index R times, shuffled; positions (the view seeds) run over all R x N."""
    from deit.data.sampling import train_sampler

    data = list(range(10))
    sampler = train_sampler(data, seed=0, rank=0, world_size=1, repeated_aug=False, repeat=3)
    keys = list(sampler)
    assert len(sampler) == len(keys) == 30
    assert sorted(index for index, _, _ in keys) == sorted(data * 3)
    assert sorted(position for _, _, position in keys) == list(range(30))
    assert len({seed for _, seed, _ in keys}) == 30
    sampler.set_epoch(1)
    assert [k[0] for k in sampler] != [k[0] for k in keys]  # reshuffled each epoch
    halves = [list(train_sampler(data, seed=0, rank=r, world_size=2, repeated_aug=False, repeat=3)) for r in (0, 1)]
    assert sorted(k[0] for half in halves for k in half) == sorted(data * 3)  # split over processes, none lost
