"""Training: recipes, determinism, the CLI end to end into a temporary folder, bad settings."""
import json
import shlex

import pytest
import torch

from unetlab import cli
from unetlab.checkpoints import DATA_DIR, load_checkpoint, read_manifest, read_metadata
from unetlab.train import Recipe, get_recipe, list_recipes, register_recipe, shapes_batch, train


def test_chapter3_recipes_differ_only_in_skips():
    a, b = get_recipe("simple-skips"), get_recipe("simple-noskips")
    assert a.config["use_skips"] is True and b.config["use_skips"] is False
    assert {k: v for k, v in a.config.items() if k != "use_skips"} == {k: v for k, v in b.config.items() if k != "use_skips"}
    for field in ("steps", "batch_size", "lr", "seed", "warmup_steps", "make_batch"):
        assert getattr(a, field) == getattr(b, field)
    assert {"simple-skips", "simple-noskips"} <= set(list_recipes())


def test_batches_come_from_the_training_stream():
    first, second = shapes_batch(0, 4)["x0"], shapes_batch(1, 4)["x0"]
    assert first.shape == (4, 3, 32, 32) and not torch.equal(first, second)
    torch.testing.assert_close(shapes_batch(0, 8)["x0"][4:], second)


def test_training_is_deterministic_and_learns():
    a = train("simple-skips", steps=6, batch_size=4, progress=False)
    b = train("simple-skips", steps=6, batch_size=4, progress=False)
    assert a.losses == b.losses and len(a.losses) == 6
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    c = train("simple-skips", steps=6, batch_size=4, seed=1, progress=False)
    assert c.losses != a.losses
    assert not a.model.training


def test_cli_end_to_end_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "quick.safetensors"
    argv = ["train", "simple-noskips", "--steps", "3", "--batch-size", "2", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    meta = read_metadata(out)
    assert meta["recipe"] == "simple-noskips" and meta["steps"] == 3 and len(meta["loss_curve"]) == 3
    assert meta["command"] == "python -m unetlab train " + " ".join(argv[1:-1])
    ckpt = load_checkpoint(out, arch="SimpleUNet", config={"use_skips": False})
    assert ckpt.model.use_skips is False
    # the bytes are reproducible: the same command writes the same file
    first = out.read_bytes()
    assert cli.main(argv) == 0
    assert out.read_bytes() == first
    # the data/ manifest was not touched by a run with --out
    assert "quick" not in read_manifest()


def test_stop_after_replays_the_start_of_a_run():
    full = train("simple-skips", steps=8, batch_size=2, progress=False)
    part = train("simple-skips", steps=8, batch_size=2, progress=False, stop_after=3)
    assert part.losses == full.losses[:3]


@pytest.mark.parametrize("name", sorted(read_manifest()))
def test_shipped_checkpoint_command_replays_its_first_steps(name):
    """The manifest's command, run for its first steps, reproduces the stored loss curve's start."""
    entry = read_manifest()[name]
    argv = shlex.split(entry["command"])
    assert argv[:4] == ["python", "-m", "unetlab", "train"]
    args = cli.build_parser("train").parse_args(argv[3:])
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = train(args.recipe, steps=args.steps, batch_size=args.batch_size, seed=args.seed, lr=args.lr,
                       progress=False, stop_after=3)
    finally:
        torch.set_num_threads(threads)
    stored = read_metadata(DATA_DIR / entry["file"])["loss_curve"]
    assert len(stored) == entry["steps"]
    assert result.losses == pytest.approx(stored[:3], rel=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"), (dict(batch_size=0), "batch size"), (dict(steps=2.5), "steps"),
    (dict(seed=-1), "seed"), (dict(lr=0.0), "learning rate"),
])
def test_impossible_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train("simple-skips", progress=False, **kwargs)


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ValueError, match="simple-skips"):
        get_recipe("no-such-recipe")
    # the CLI turns it into a clean error and exit status 2
    assert cli.main(["train", "no-such-recipe"]) == 2


class TinyDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


def test_register_recipe():
    recipe = Recipe(name="test-tiny", arch="Conv", build_model=lambda cfg: TinyDenoiser(),
                    config={}, make_batch=shapes_batch, steps=2, batch_size=2, lr=1e-3)
    register_recipe(recipe, replace=True)
    assert get_recipe("test-tiny") is recipe
    with pytest.raises(ValueError, match="already registered"):
        register_recipe(recipe)
    result = train("test-tiny", progress=False)
    assert len(result.losses) == 2 and json.dumps(result.metadata)
