"""The training loop on the (very small) tiny model: what the UNet is conditioned on, learning, determinism,
checkpoint/resume, and errors before training."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from copying_study.diffusion.models import build_tiny_pipeline, encode_prompts, weights_checksum
from copying_study.diffusion.train import (
    draw_step,
    encode_latents,
    latest_checkpoint,
    make_plan,
    save_checkpoint,
    train,
)
from tests.conftest import make_training_set
from tests.finetune.helpers import TEST_TINY, small

CPU = torch.device("cpu")
SEED = 3


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_training_set(n=12, size=16, seed=2, n_dup_clusters=0)


class Recorder:
    """An observer that keeps what the UNet was fed, and can stop training at a given step (a simulated kill)."""

    def __init__(self, stop_at: int | None = None):
        self.batches, self.embeddings, self.stop_at = [], [], stop_at

    def __call__(self, batch, emb):
        if batch.step == self.stop_at:
            raise KeyboardInterrupt(f"killed at step {batch.step}")
        self.batches.append(batch)
        self.embeddings.append(emb.detach().clone())


def base_pipe(table, s):
    """The untrained base model exactly as ``train`` builds it (same captions, seed and sizes)."""
    plan = make_plan(table, s, SEED)
    captions = sorted({c for a in plan.alternatives for c in a} | set(plan.base_captions))
    return build_tiny_pipeline(captions, resolution=s.resolution, seed=SEED, **TEST_TINY)


def test_frozen_text_encoder_feeds_the_unet_the_drawn_captions_embeddings(table):
    s = small(mitigation="rt", train_text_encoder=False, steps=3)
    rec = Recorder()
    result = train(table, s, SEED, CPU, observer=rec)
    pipe = base_pipe(table, s)
    plan = make_plan(table, s, SEED)
    for step, (batch, emb) in enumerate(zip(rec.batches, rec.embeddings, strict=True)):
        assert batch.captions == draw_step(plan, s, step, SEED).captions
        assert torch.equal(emb, encode_prompts(pipe, batch.captions, CPU))
    # the text encoder did not change; the UNet did
    assert weights_checksum(result.pipe.text_encoder) == weights_checksum(pipe.text_encoder)
    assert weights_checksum(result.pipe.unet) != weights_checksum(pipe.unet)


def test_gaussian_noise_mitigation_perturbs_the_embeddings_by_lambda(table):
    s = small(mitigation="gn", gn_lambda=0.3, train_text_encoder=False, steps=2, batch_size=8)
    rec = Recorder()
    train(table, s, SEED, CPU, observer=rec)
    pipe = base_pipe(table, s)
    for batch, emb in zip(rec.batches, rec.embeddings, strict=True):
        clean = encode_prompts(pipe, batch.captions, CPU)
        assert batch.captions == [make_plan(table, s, SEED).base_captions[i] for i in batch.indices]
        assert (emb - clean).std().item() == pytest.approx(0.3, rel=0.05)
        assert abs((emb - clean).mean().item()) < 0.02
    assert not torch.equal(rec.embeddings[0][0] - encode_prompts(pipe, rec.batches[0].captions[:1], CPU)[0],
                           rec.embeddings[1][0] - encode_prompts(pipe, rec.batches[1].captions[:1], CPU)[0])


def test_trained_text_encoder_changes(table):
    s = small(train_text_encoder=True, steps=2)
    result = train(table, s, SEED, CPU)
    assert weights_checksum(result.pipe.text_encoder) != weights_checksum(base_pipe(table, s).text_encoder)
    assert result.components["text_encoder"] == "CLIPTextModel"
    assert result.components["vae"] == "PixelShuffleAutoencoder"


def test_latents_are_cached_for_both_flips(table):
    s = small()
    pipe = base_pipe(table, s)
    mean, std = encode_latents(pipe, list(table["image"][:3]), 16, True, CPU)
    assert std is None  # the stand-in autoencoder is deterministic
    assert mean.shape == (3, 2, 12, 8, 8)
    # flipping the image flips the decoded latents
    x = pipe.vae.decode(mean[:, 0]).sample
    assert torch.allclose(pipe.vae.decode(mean[:, 1]).sample, torch.flip(x, dims=[3]))


def test_loss_falls(table):
    s = small(steps=60, batch_size=12, learning_rate=3e-3, lr_warmup_steps=5, log_every=10)
    result = train(table, s, SEED, CPU)
    losses = [v for _, v in result.loss_history]
    assert [int(st) for st, _ in result.loss_history] == [10, 20, 30, 40, 50, 60]
    assert losses[-1] < 0.6 * losses[0]
    assert result.lr_history[-1][1] == pytest.approx(3e-3)
    assert result.samples_per_s > 0 and result.steps_run == 60


def test_same_seed_same_weights_and_other_seed_other_weights(table):
    s = small(steps=3, mitigation="rc")
    a, b = train(table, s, SEED, CPU), train(table, s, SEED, CPU)
    assert a.final_checksum == b.final_checksum and a.loss_history == b.loss_history
    assert train(table, s, SEED + 1, CPU).final_checksum != a.final_checksum


def test_killed_run_resumes_from_its_checkpoint_to_the_same_weights(table, tmp_path: Path):
    common = dict(steps=6, checkpoint_every=2, keep_checkpoints=2, train_text_encoder=True, mitigation="rt",
                  duplication="full", dup_fraction=0.2, ddf=3.0)
    reference = train(table, small(**common, checkpoint_dir=str(tmp_path / "ref")), SEED, CPU)

    s = small(**common, checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(KeyboardInterrupt):
        train(table, s, SEED, CPU, observer=Recorder(stop_at=5), run_id="r1")  # dies during step 6 of 6
    folder = next((tmp_path / "ckpt" / "r1").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["step_000000002.pt", "step_000000004.pt"]
    assert latest_checkpoint(folder).name == "step_000000004.pt"

    rec = Recorder()
    resumed = train(table, s, SEED, CPU, observer=rec, run_id="r1")  # the same run (e.g. the node retried)
    assert resumed.resumed_from == 4 and resumed.steps_run == 2
    assert [b.step for b in rec.batches] == [4, 5]
    for name, module in (("unet", "unet"), ("text_encoder", "text_encoder")):
        ref_state = getattr(reference.pipe, module).state_dict()
        for key, value in getattr(resumed.pipe, module).state_dict().items():
            assert torch.equal(value, ref_state[key]), f"{name}.{key} differs after resume"
    assert resumed.final_checksum == reference.final_checksum
    assert resumed.loss_history == reference.loss_history
    assert np.array_equal(resumed.samples_per_image, reference.samples_per_image)
    assert not (tmp_path / "ckpt" / "r1").exists()  # completed: its checkpoints are gone


def test_a_resumed_wen_run_keeps_its_calibration(table, tmp_path: Path):
    """Killed between calibration and the end, a wen_quantile run resumes with the threshold it calibrated (from
    the checkpoint) and ends with the uninterrupted run's weights and exclusions; killed during calibration, it
    resumes with the scores recorded so far."""
    common = dict(steps=6, checkpoint_every=2, keep_checkpoints=1, mitigation="wen", wen_quantile=0.5,
                  wen_calibration_steps=3, duplication="full", dup_fraction=0.2, ddf=3.0)
    reference = train(table, small(**common, checkpoint_dir=str(tmp_path / "ref")), SEED, CPU)
    assert reference.wen_threshold is not None and reference.wen_left_out > 0
    for stop_at, run_id in ((5, "after"), (3, "during")):  # killed in step 6 (checkpoint 4), in step 4 (checkpoint 2)
        s = small(**common, checkpoint_dir=str(tmp_path / "ckpt"))
        with pytest.raises(KeyboardInterrupt):
            train(table, s, SEED, CPU, observer=Recorder(stop_at=stop_at), run_id=run_id)
        resumed = train(table, s, SEED, CPU, run_id=run_id)
        assert resumed.resumed_from in (2, 4)
        assert resumed.wen_threshold == reference.wen_threshold
        assert resumed.final_checksum == reference.final_checksum
        assert resumed.loss_history == reference.loss_history
        assert resumed.wen_left_out == reference.wen_left_out
        assert resumed.wen_left_out_duplicated == reference.wen_left_out_duplicated


def test_another_run_resumes_only_a_checkpoint_it_names(table, tmp_path: Path):
    s = small(steps=4, checkpoint_every=2, checkpoint_dir=str(tmp_path))
    complete = train(table, s, SEED, CPU, run_id="a")
    assert not list(tmp_path.rglob("*")) and complete.resumed_from is None  # a completed run leaves nothing
    with pytest.raises(KeyboardInterrupt):
        train(table, s, SEED, CPU, observer=Recorder(stop_at=3), run_id="killed")
    (left,) = tmp_path.rglob("step_*.pt")
    again = train(table, s, SEED, CPU, run_id="b")  # an identical run: starts from the base model, silently nothing
    assert again.resumed_from is None and again.steps_run == 4 and again.final_checksum == complete.final_checksum
    named = train(table, s.model_copy(update={"resume_from": str(left)}), SEED, CPU, run_id="c")
    assert named.resumed_from == 2 and named.steps_run == 2 and named.resumed_checkpoint == str(left)
    assert named.final_checksum == complete.final_checksum
    assert list(tmp_path.rglob("step_*.pt")) == [left]  # the named checkpoint is the user's: kept


def test_a_checkpoint_of_other_settings_is_not_resumed(table, tmp_path: Path):
    s = small(steps=4, checkpoint_every=2, checkpoint_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        train(table, s, SEED, CPU, observer=Recorder(stop_at=3), run_id="a")
    (left,) = tmp_path.rglob("step_*.pt")
    other = small(steps=4, checkpoint_every=2, checkpoint_dir=str(tmp_path), learning_rate=2e-3,
                  resume_from=str(left))
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        train(table, other, SEED, CPU, run_id="b")


def test_checkpoint_temporary_files_are_unique_per_writer(tmp_path: Path, monkeypatch):
    """Two identical runs at once write the same step: each writes its own temporary file, then renames it."""
    written = []
    real_save = torch.save

    def spy(obj, path):
        written.append(Path(path).name)
        real_save(obj, path)

    monkeypatch.setattr(torch, "save", spy)
    save_checkpoint(tmp_path, 2, {"step": 2}, keep=1)
    save_checkpoint(tmp_path, 2, {"step": 2}, keep=1)
    assert len(set(written)) == 2 and all(name.startswith("step_000000002.pt.") for name in written)
    assert all(f".{os.getpid()}." in name for name in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000002.pt"]


def test_missing_base_model_fails_before_training(table, tmp_path: Path):
    rec = Recorder()
    with pytest.raises(FileNotFoundError, match="not found"):
        train(table, small(base_model=str(tmp_path / "no-model")), SEED, CPU, observer=rec)
    with pytest.raises(FileNotFoundError, match="not in the local cache"):
        train(table, small(base_model="nobody-here/no-such-model-xyz"), SEED, CPU, observer=rec)
    with pytest.raises(ValueError, match="empty"):
        train(table.iloc[:0], small(), SEED, CPU, observer=rec)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        train(table, small(mixed_precision="bf16"), SEED, CPU, observer=rec)
    assert rec.batches == []


def test_an_undecodable_image_is_named_by_its_image_id(table):
    broken = table.copy()
    broken.loc[5, "image"] = b"\x89PNG\r\n\x1a\n not an image"
    rec = Recorder()
    with pytest.raises(ValueError, match=f"finetune_set image_id '{broken.loc[5, 'image_id']}' cannot be decoded"):
        train(broken, small(), SEED, CPU, observer=rec)
    assert rec.batches == []


DDP_SCRIPT = """
import os, sys, torch
from copying_study.diffusion.train import train
from tests.conftest import make_training_set
from tests.finetune.helpers import small
table = make_training_set(n=12, size=16, seed=2, n_dup_clusters=0)
result = train(table, small(steps=3, batch_size=4, train_text_encoder=True), 3, torch.device("cpu"))
if int(os.environ.get("RANK", "0")) == 0:
    torch.save({"unet": result.pipe.unet.state_dict(), "loss": result.loss_history}, sys.argv[1])
"""


@pytest.mark.slow
def test_two_processes_train_data_parallel_like_one(tmp_path: Path):
    """``torchrun``/``accelerate launch`` with 2 CPU processes (gloo): each trains on half of every global batch;
    the result matches one process up to float reduction order (Adam amplifies it to ~lr per step)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt")], env=env, capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                            str(tmp_path / "two.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["loss"][0][1] == pytest.approx(two["loss"][0][1], rel=1e-5)  # same batch, same start
    assert one["loss"][1][1] == pytest.approx(two["loss"][1][1], rel=1e-3)  # one (all-reduced) update later
    assert max((one["unet"][k] - two["unet"][k]).abs().max().item() for k in one["unet"]) < 1e-2


def test_wen_leaves_samples_above_the_threshold_out_of_the_loss(table):
    everything = train(table, small(mitigation="wen", wen_threshold=0.0, steps=3), SEED, CPU)
    nothing = train(table, small(mitigation="wen", wen_threshold=1e9, steps=3), SEED, CPU)
    plain = train(table, small(steps=3), SEED, CPU)
    batch = small().batch_size
    assert everything.wen_left_out == 3 * batch and nothing.wen_left_out == 0 and plain.wen_left_out is None
    # every sample left out: no loss; none left out: the plain loss (the same mean, summed in another order)
    assert all(loss == 0.0 for _, loss in everything.loss_history)
    np.testing.assert_allclose([v for _, v in nothing.loss_history], [v for _, v in plain.loss_history], rtol=1e-5)
    # the count of duplicated images' samples left out: all of them when every sample is, none when none is
    dup = dict(duplication="full", dup_fraction=0.2, ddf=5.0)
    every_dup = train(table, small(mitigation="wen", wen_threshold=0.0, steps=3, **dup), SEED, CPU)
    drawn_dup = int(every_dup.samples_per_image[every_dup.plan.duplicated].sum())
    assert 0 < drawn_dup < 3 * batch and every_dup.wen_left_out_duplicated == drawn_dup
    assert nothing.wen_left_out_duplicated == 0 and plain.wen_left_out_duplicated is None


def test_wen_without_a_threshold_is_an_error_naming_it():
    from copying_study.schemas import FinetuneParams

    with pytest.raises(ValueError, match="wen_threshold"):
        FinetuneParams.from_params({"mitigation": "wen"})
    with pytest.raises(ValueError, match="exactly one"):
        FinetuneParams.from_params({"mitigation": "wen", "wen_threshold": 1.0, "wen_quantile": 0.9})
    with pytest.raises(ValueError, match="wen_calibration_steps"):
        FinetuneParams.from_params({"mitigation": "wen", "wen_quantile": 0.9, "steps": 10,
                                    "wen_calibration_steps": 10})


def test_wen_calibrated_threshold_is_numpys_quantile_of_every_recorded_score():
    from copying_study.diffusion.train import wen_calibrated_threshold

    scores = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0])]
    assert wen_calibrated_threshold(scores, 0.5) == pytest.approx(2.5)
    assert wen_calibrated_threshold(scores, 0.75) == pytest.approx(3.25)  # linear: 3 + 0.25 * (4 - 3)
    with pytest.raises(ValueError, match="wen_quantile"):
        wen_calibrated_threshold([], 0.5)


def test_wen_quantile_keeps_every_sample_while_calibrating_then_leaves_out_those_above(table, monkeypatch):
    """With known scores (0, 1, ..., batch-1 in every step) the calibrated threshold is their median; the two
    calibration steps keep every sample (the plain loss), and each later step leaves out the samples above it."""
    import copying_study.diffusion.train as train_module

    batch = small().batch_size
    monkeypatch.setattr(train_module, "_wen_scores",
                        lambda *args, **kwargs: torch.arange(batch, dtype=torch.float32))
    s = small(mitigation="wen", wen_quantile=0.5, wen_calibration_steps=2, steps=4, log_every=1)
    mitigated = train(table, s, SEED, CPU)
    plain = train(table, small(steps=4, log_every=1), SEED, CPU)
    median = float(np.median(np.arange(batch)))
    assert mitigated.wen_threshold == pytest.approx(median)
    assert mitigated.wen_left_out == 2 * int((np.arange(batch) > median).sum())
    np.testing.assert_allclose([v for _, v in mitigated.loss_history[:2]], [v for _, v in plain.loss_history[:2]],
                               rtol=1e-5)
    assert mitigated.loss_history[2][1] != pytest.approx(plain.loss_history[2][1], rel=1e-6)
