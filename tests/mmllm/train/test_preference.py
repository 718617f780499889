"""Preference tuning's losses (mmllm.train.preference) against the papers' formulas and TRL's DPOTrainer on fixed
log-probabilities, and the reference under LoRA (adapters switched off) against the base model."""

from collections import defaultdict
from types import SimpleNamespace

import math

import pytest
import torch

from mmllm.train.preference import adapters_off, preference_loss, preference_options, sequence_logps

PAIRS, LENGTH = 3, 7


def fixed_logps(seed: int = 0):
    """(per-token log-probs (2P, T-1) with grad, the answer mask (2P, T-1), reference sequence log-probs (2P,))."""
    generator = torch.Generator().manual_seed(seed)
    logps = -torch.rand(2 * PAIRS, LENGTH - 1, generator=generator, dtype=torch.float64) * 3
    mask = torch.zeros(2 * PAIRS, LENGTH - 1, dtype=torch.bool)
    for row, start in enumerate([2, 3, 1, 4, 2, 5]):  # answers of different lengths
        mask[row, start:] = True
    reference = -torch.rand(2 * PAIRS, generator=generator, dtype=torch.float64) * 10
    return logps.requires_grad_(), mask, reference


def ours(logps, mask, reference, loss: str, beta: float, sft_weight: float = 0.0):
    """Our loss from the same log-probs, through the token losses VLM.forward returns."""
    token_losses = -(logps * mask)  # cross-entropy of each target, 0 where unsupervised
    labels = torch.full((2 * PAIRS, LENGTH), -100)
    labels[:, 1:][mask] = 1
    policy, tokens = sequence_logps(token_losses, labels)
    return preference_loss(policy, reference, tokens, loss, beta, sft_weight)


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_the_losses_equal_the_papers_formulas_with_their_gradients(loss):
    beta = 0.3
    logps, mask, reference = fixed_logps()
    value, metrics = ours(logps, mask, reference, loss, beta)
    value.backward()
    ours_grad = logps.grad.clone()
    logps.grad = None
    by_hand = 0.0
    for pair in range(PAIRS):
        chosen, rejected = pair, PAIRS + pair
        c, r = (logps[i][mask[i]].sum() for i in (chosen, rejected))
        c_ratio, r_ratio = c - reference[chosen], r - reference[rejected]
        if loss == "dpo":  # Rafailov et al. 2023, eq. 7
            by_hand = by_hand - torch.log(torch.sigmoid(beta * (c_ratio - r_ratio)))
        else:  # Azar et al. 2023, eq. 17, per answer token as TRL
            n_c, n_r = mask[chosen].sum(), mask[rejected].sum()
            by_hand = by_hand + (c_ratio / n_c - r_ratio / n_r - 1 / (2 * beta)) ** 2
    by_hand = by_hand / PAIRS
    by_hand.backward()
    torch.testing.assert_close(value, by_hand, rtol=0, atol=1e-9)
    torch.testing.assert_close(ours_grad, logps.grad, rtol=0, atol=1e-9)
    chosen_reward = beta * ((logps.detach() * mask).sum(1)[:PAIRS] - reference[:PAIRS])
    rejected_reward = beta * ((logps.detach() * mask).sum(1)[PAIRS:] - reference[PAIRS:])
    torch.testing.assert_close(metrics["rewards_margin"], (chosen_reward - rejected_reward).mean())
    assert math.isclose(float(metrics["preference_accuracy"]), float((chosen_reward > rejected_reward).double().mean()), abs_tol=1e-6)


@pytest.mark.parametrize("loss, trl_loss, sft_weight", [("dpo", "sigmoid", 0.0), ("ipo", "ipo", 0.0),
                                                     ("dpo", "sigmoid", 0.7)])
def test_the_losses_equal_trl_dpo_trainer_on_fixed_log_probs(loss, trl_loss, sft_weight):
    """TRL's own DPOTrainer._compute_loss, given a stand-in model that returns these log-probs (TRL's fused head
    output) and the reference log-probs precomputed, as TRL's `precompute_ref_log_probs` feeds them."""
    from trl.trainer.dpo_trainer import DPOTrainer

    beta = 0.2
    logps, mask, reference = fixed_logps(1)
    value, metrics = ours(logps, mask, reference, loss, beta, sft_weight)
    value.backward()
    ours_grad, logps.grad = logps.grad.clone(), None

    completion_mask = torch.cat([torch.zeros(2 * PAIRS, 1, dtype=torch.long), mask.long()], dim=1)  # (2P, T)
    zeros = torch.zeros(2 * PAIRS, LENGTH - 1)
    model = lambda **_: SimpleNamespace(log_probs=logps * mask, entropy=zeros, mean_logits=zeros,  # noqa: E731
                                         is_top1=zeros.bool())
    model.training = True
    trainer = SimpleNamespace(
        model=model, beta=beta, loss_types=[trl_loss, "sft"] if sft_weight else [trl_loss],
        loss_weights=[1.0, sft_weight] if sft_weight else [1.0], f_divergence_type="reverse_kl",
        ld_alpha=None, precompute_ref_logps=True, aux_loss_enabled=False, use_weighting=False, label_smoothing=0.0,
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.ones(2 * PAIRS, LENGTH, dtype=torch.long), "attention_mask": torch.ones(2 * PAIRS, LENGTH),
              "completion_mask": completion_mask, "ref_chosen_logps": reference[:PAIRS],
              "ref_rejected_logps": reference[PAIRS:]}
    theirs = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    theirs.backward()
    torch.testing.assert_close(value, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_grad, logps.grad, rtol=0, atol=1e-6)
    logged = trainer._metrics["train"]
    for name, trl_name in (("rewards_chosen", "rewards/chosen"), ("rewards_rejected", "rewards/rejected"),
                           ("rewards_margin", "rewards/margins"), ("preference_accuracy", "rewards/accuracies")):
        assert math.isclose(float(metrics[name]), logged[trl_name][0], abs_tol=1e-6), name


def test_options_are_checked_in_one_line():
    assert preference_options(None) == {"loss": "dpo", "beta": 0.1, "reference": "frozen", "sft_weight": 0.0}
    assert preference_options({"loss": "ipo", "beta": 1})["beta"] == 1.0
    for wrong, said in (({"loss": "kto"}, "dpo or ipo"), ({"beta": 0}, "positive"), ({"betta": 1}, "takes"),
                        ({"reference": "copy"}, "frozen or adapters_off"),
                        ({"sft_weight": -1}, "0 or more")):
        with pytest.raises(ValueError, match=said):
            preference_options(wrong)


def test_adapters_off_is_the_base_model_and_comes_back_on():
    from mmllm.model.lora import LoRAConfig, add_lora

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))

        def forward(self, x):
            return self.lm(x)

    torch.manual_seed(0)
    model, x = Tiny(), torch.randn(5, 8)
    base = model(x)
    add_lora(model, LoRAConfig(rank=2, alpha=4, dropout=0.0, targets=["0", "2"], modules=["lm"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # a trained adapter: the model no longer equals its base
    tuned = model(x)
    assert not torch.allclose(tuned, base)
    with adapters_off(model):
        torch.testing.assert_close(model(x), base, rtol=0, atol=0)
    torch.testing.assert_close(model(x), tuned, rtol=0, atol=0)
