"""The critic's mini-epochs on a second thread (``overlap_critic``) give the serial loop's numbers bit for bit: every
parameter, optimizer moment, normalizer statistic and random-generator state, after every window, through a checkpoint
and its resume, for SAPO (two critics) and SHAC (a target critic); a non-finite critic still stops the run, and a window
that fails leaves its critic job undone."""

import pytest
import torch
from point_mass import PointMass1D

import rl.trainers.first_order as first_order
from rl.modules import ObservationNormalizer, SquashedGaussianActor, ValueEnsemble
from rl.objectives import SAPOLoss, SHACLoss
from rl.trainers import FirstOrderTrainer, NonFiniteError, TrainerConfig
from rl.trainers.critic_worker import overlap_allowed, overlap_mode


@pytest.fixture(autouse=True)
def two_cores(monkeypatch):
    """The rule needs a spare core; the numbers do not: let the test run on any machine."""
    monkeypatch.setattr(first_order, "usable_cores", lambda: torch.get_num_threads() + 1)


def make(overlap: str, algo: str = "sapo", seed: int = 0, **cfg) -> FirstOrderTrainer:
    """A small SAPO or SHAC trainer; it seeds torch's global generator, which its windows draw from: build a trainer
    and run it before building the next."""
    torch.manual_seed(seed)
    env = PointMass1D(num_envs=4, horizon=12, dtype=torch.float32, seed=seed)
    norm = ObservationNormalizer(2)
    actor = SquashedGaussianActor(2, 1, (16,), normalizer=norm)
    if algo == "sapo":
        loss = SAPOLoss(env, actor, ValueEnsemble(2, (32, 16), normalizer=norm), horizon=5)
    else:
        loss = SHACLoss(env, actor, ValueEnsemble(2, (32, 16), num_critics=1, normalizer=norm), horizon=5, target_tau=0.9)
    config = TrainerConfig(total_steps=4 * 5 * 8, critic_iterations=3, critic_minibatches=2, progress=False, seed=seed,
                           eval_every=0, checkpoint_every=0, overlap_critic=overlap, **cfg)
    return FirstOrderTrainer(loss, config, normalizer=norm, logger="none")


def flat_state(trainer: FirstOrderTrainer) -> dict[str, torch.Tensor]:
    """Every tensor of the trainer's checkpoint (the generators' states as tensors), by name."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            out[prefix] = value.detach().clone()  # state_dict's tensors are the live ones
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}[{i}]", item)
    walk("", trainer.state_dict())
    return out


def assert_same_state(a: FirstOrderTrainer, b: FirstOrderTrainer) -> None:
    sa, sb = flat_state(a), flat_state(b)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:8]


@pytest.mark.parametrize("algo", ["sapo", "shac"])
def test_overlapped_training_is_the_serial_loop_bit_for_bit(algo):
    serial = make("off", algo)
    serial.train()
    overlapped = make("on", algo)
    overlapped.train()
    assert overlapped.overlapping and not serial.overlapping
    assert overlapped.iteration == serial.iteration == 8
    assert overlapped.pending_window() is None  # train() joined the last window's critic
    assert_same_state(serial, overlapped)


def test_every_window_matches_and_the_critic_loss_is_reported_one_window_late():
    serial = make("off")
    serial_out = [serial.step() for _ in range(4)]
    overlapped = make("on")
    overlapped_out = [overlapped.step() for _ in range(4)]
    assert overlapped.worker is not None and overlapped.worker.process.is_alive()  # jobs 1-3 ran in the forked worker
    for s, o in zip(serial_out, overlapped_out):
        for key in ("loss/actor", "sapo/alpha", "sapo/entropy", "train/window_reward", "grad_norm/actor"):
            assert s[key] == o[key], key
    assert [o["loss/critic"] for o in overlapped_out[1:]] == [s["loss/critic"] for s in serial_out[:-1]]
    assert_same_state(serial, overlapped)  # state_dict joins the pending critic


def test_a_checkpoint_taken_mid_run_is_the_serial_one_and_resumes_either_way(tmp_path):
    serial = make("off")
    for _ in range(3):
        serial.step()
    serial_state = flat_state(serial)
    expected = [serial.step()["loss/actor"] for _ in range(3)]
    overlapped = make("on")
    for _ in range(3):
        overlapped.step()
    overlapped.save(tmp_path / "overlapped.pt")
    state = flat_state(overlapped)
    assert all(torch.equal(serial_state[k], state[k]) for k in state)
    for mode in ("on", "off"):
        resumed = make(mode, seed=1)
        resumed.resume(tmp_path / "overlapped.pt")
        assert [resumed.step()["loss/actor"] for _ in range(3)] == expected, mode


def test_a_nonfinite_critic_stops_the_run_naming_it_and_leaves_no_job_running():
    trainer = make("on", critic_lr=1e38)
    with pytest.raises(NonFiniteError, match="critic"):
        for _ in range(8):
            trainer.step()
    assert trainer.pending_window() is None


def test_a_window_whose_actor_gradient_is_nonfinite_leaves_the_critic_untrained():
    trainer = make("on")
    trainer.step()
    trainer.join_critic()
    with torch.no_grad():
        trainer.loss.actor.net.head.weight[0, 0] = float("nan")
    before = [p.clone() for p in trainer.loss.critic.parameters()]
    generator = trainer.generator.get_state()
    with pytest.raises(NonFiniteError, match="iteration 1"):
        trainer.step()
    assert trainer.pending_window() is None
    for b, p in zip(before, trainer.loss.critic.parameters()):
        assert torch.equal(b, p)
    assert torch.equal(generator, trainer.generator.get_state())


def test_the_rule_says_when_the_critic_may_run_beside_the_next_window():
    cpu = torch.device("cpu")
    ok = dict(has_critic=True, distributed=False, on_nonfinite="stop", device=cpu, threads=1, cores=2)
    assert overlap_allowed(**ok) is None
    for change, reason in [({"has_critic": False}, "no critic"), ({"distributed": True}, "data parallelism"),
                           ({"on_nonfinite": "skip"}, "on_nonfinite=skip"), ({"device": torch.device("meta")}, "device"),
                           ({"cores": 1}, "1 usable core"), ({"threads": 2}, "2 torch thread")]:
        assert reason in overlap_allowed(**{**ok, **change})
    assert [overlap_mode(v) for v in (True, False, "auto", "ON", "false")] == ["on", "off", "auto", "on", "off"]
    with pytest.raises(ValueError, match="overlap_critic"):
        overlap_mode("sometimes")


def test_on_raises_where_the_rule_forbids_and_auto_stays_serial():
    with pytest.raises(ValueError, match="overlap_critic=on is not possible here: on_nonfinite=skip"):
        make("on", on_nonfinite="skip")
    assert not make("auto", on_nonfinite="skip").overlapping
    assert make("auto").overlapping


def test_the_critic_job_leaves_torchrls_process_wide_exploration_setting_alone():
    """TorchRL's exploration type is one setting for the whole process, and the loss's ``*loss`` methods set it: a
    critic job that called one would make the rollout on the main thread deterministic for a while (found by the
    bit-for-bit test as a random mismatch)."""
    from torchrl.envs.utils import ExplorationType, exploration_type, set_exploration_type

    trainer = make("on")
    trainer.step()
    trainer.join_critic()
    batch = trainer.loss(trainer.state)["critic_batch"]
    seen = []
    trainer.loss.critic.critics[0].register_forward_pre_hook(lambda module, args: seen.append(exploration_type()))
    with set_exploration_type(ExplorationType.RANDOM):
        trainer.fit_critic(*trainer.loss.critic_data(batch))
    assert seen and set(seen) == {ExplorationType.RANDOM}


def test_the_worker_ends_quietly_when_the_parent_closes_mid_job():
    """A script that ends without ``close()`` shuts the pipe while a job runs: the job's reply has nowhere to go, and the
    worker must end with status 0, not print a BrokenPipeError traceback (what it did)."""
    import multiprocessing
    import time

    from rl.trainers import critic_worker

    def slow(message):
        time.sleep(0.5)
        return message

    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=critic_worker._serve, args=(child, parent, slow), daemon=True)
    process.start()
    child.close()
    parent.send("job")
    parent.close()  # the parent goes away while the job runs
    process.join(timeout=10)
    assert process.exitcode == 0
