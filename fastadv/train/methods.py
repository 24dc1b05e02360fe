"""The training methods: what each minimises per batch. Each yields ``(loss, logits)`` once
per optimizer step it wants (free AT: ``m`` times); the loop does backward and the step in
between, so a method can read gradients the backward left (free AT's input gradient).

- ``pgd``: Madry et al., CE at the PGD-k point (restarts: the worst kept);
- ``fgsm``: Goodfellow et al., CE at the one ε-step point from x (the paper's FGSM training);
- ``fgsm-rs``: Wong et al., CE at one α-step from a uniform random start;
- ``n-fgsm``: de Jorge et al., CE at one α-step (α = ε) from noise of k·ε (k = 2), not
  projected back to the ε-ball (or to a ``--nfgsm-clip`` ball);
- ``free``: Shafahi et al., m replays of each batch, each one backward for the weights and
  the perturbation, the perturbation carried over to the next batch;
- ``trades``: Zhang et al., CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' maximising the KL by PGD;
- ``mart``: Wang et al., BCE(f(x'), y) + β·KL(f(x) ‖ f(x'))·(1 − f(x)_y), x' by PGD on CE;
- ``standard``: CE on clean inputs.

Every CE of a training loss takes ``--label-smoothing`` (the attacks' never do). With
``--awp``, ``pgd``, ``trades`` and ``mart`` take their loss at adversarially perturbed
weights (:mod:`.awp`), restored by :meth:`Method.after_step`.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import attacks, ops
from ..attacks.core import precision_autocast
from .awp import WeightPerturbation
from .config import TrainConfig


def autocast(device: torch.device, precision: str):
    return precision_autocast(device.type, precision)


class Method:
    """``model`` is what training runs (DDP-wrapped and/or compiled); ``attack_model`` the
    same weights unwrapped, for attacks (no gradient all-reduce, frozen parameters)."""

    # The validation figure best.pt is chosen by (Rice et al.: robust accuracy).
    selection_metric = "val_robust_acc"
    # Trained on single-step attacks: the catastrophic-overfitting check applies (own_attack).
    single_step = False

    @classmethod
    def steps_per_batch(cls, cfg: TrainConfig) -> int:
        """Optimizer steps the method takes per batch (what the schedule counts)."""
        return 1

    def __init__(self, cfg: TrainConfig, model: nn.Module, attack_model: nn.Module,
                 device: torch.device, awp: WeightPerturbation | None = None):
        self.cfg, self.model, self.attack_model, self.device = cfg, model, attack_model, device
        # Named terms of the loss just yielded, logged per epoch next to it (TRADES).
        self.loss_parts: dict[str, Tensor] = {}
        self.awp, self.awp_on = awp, False
        self.set_eps_scale(1.0)

    def set_epoch(self, epoch: int) -> None:
        """Called as each epoch starts (0-based): AWP starts after its warm-up epochs."""
        self.awp_on = self.awp is not None and epoch >= self.cfg.awp_warmup

    def after_step(self) -> None:
        """Called after each optimizer step: the weights go back from where AWP moved them."""
        if self.awp is not None:
            self.awp.restore()

    def ce(self, logits: Tensor, y: Tensor) -> Tensor:
        """The training cross-entropy (with --label-smoothing)."""
        return F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)

    def own_attack(self, x: Tensor, y: Tensor) -> Tensor:
        """The method's own training attack, for the catastrophic-overfitting check."""
        return self.adversarial(x, y)

    def set_eps_scale(self, scale: float) -> None:
        """Train at ``scale`` times --eps and --alpha (the ε warm-up). A CUDA graph is used at
        full ε only: it is captured per ε, and the ramp changes ε every step."""
        self.eps, self.alpha = self.cfg.eps * scale, self.cfg.alpha * scale
        self.cuda_graph = self.cfg.cuda_graph and scale == 1.0

    def logits(self, x: Tensor, model: nn.Module | None = None) -> Tensor:
        """fp32 logits of ``model`` (the training model unless given) at the run's precision."""
        with autocast(self.device, self.cfg.precision):
            return (self.model if model is None else model)(x).float()

    def losses(self, x: Tensor, y: Tensor):
        raise NotImplementedError

    def state(self) -> dict:
        """What a checkpoint must hold to continue this method exactly (per rank)."""
        return {}

    def load_state(self, state: dict) -> None:
        pass


class Standard(Method):
    selection_metric = "val_clean_acc"  # no attack: the clean accuracy is the goal

    def losses(self, x, y):
        logits = self.logits(x)
        yield self.ce(logits, y), logits


class PGDTraining(Method):
    """The adversarial point from ``adversarial``, the loss from ``objective``: the same
    objective, run on AWP's proxy first, moves the weights when --awp is on."""

    def adversarial(self, x, y):
        c = self.cfg
        return attacks.pgd(self.attack_model, x, y, eps=self.eps, alpha=self.alpha,
                           steps=c.steps, restarts=c.restarts, precision=c.precision,
                           eval_mode=c.attack_bn == "eval", cuda_graph=self.cuda_graph)

    def objective(self, forward, x: Tensor, x_adv: Tensor, y: Tensor):
        """(loss, logits at x_adv), ``forward`` mapping inputs to fp32 logits."""
        logits = forward(x_adv)
        return self.ce(logits, y), logits

    def losses(self, x, y):
        x_adv = self.adversarial(x, y)
        if self.awp_on:
            self.awp.perturb(lambda proxy: self.objective(partial(self.logits, model=proxy),
                                                          x, x_adv, y)[0])
        yield self.objective(self.logits, x, x_adv, y)


class FGSM(PGDTraining):
    single_step = True

    def adversarial(self, x, y):
        c = self.cfg
        return attacks.fgsm(self.attack_model, x, y, eps=self.eps, precision=c.precision,
                            eval_mode=c.attack_bn == "eval", cuda_graph=self.cuda_graph)


class FGSMRS(PGDTraining):
    single_step = True

    def adversarial(self, x, y):
        c = self.cfg
        return attacks.fgsm_rs(self.attack_model, x, y, eps=self.eps, alpha=self.alpha,
                               precision=c.precision, eval_mode=c.attack_bn == "eval",
                               cuda_graph=self.cuda_graph)


class NFGSM(PGDTraining):
    """de Jorge et al. 2022: x + U(−kε, kε) noise (k = --nfgsm-noise, 2), one signed step of α
    (ε) on the CE gradient there, clipped to [0, 1] only: the fused step with ``eps=inf``
    (or ``--nfgsm-clip`` times ε: that ball's projection)."""

    single_step = True

    def adversarial(self, x, y):
        c = self.cfg
        radius = math.inf if c.nfgsm_clip is None else c.nfgsm_clip * self.eps
        ball = ops.ball_args(x, radius, self.alpha, 0.0, 1.0, "linf")
        with attacks.attack_mode(self.attack_model, eval_mode=c.attack_bn == "eval"):
            x_adv = x.clone()
            if c.nfgsm_noise * self.eps > 0:
                ops.random_init_(x_adv, x, eps=c.nfgsm_noise * self.eps)
            x_adv.requires_grad_(True)
            with torch.enable_grad(), autocast(self.device, c.precision):
                loss = F.cross_entropy(self.attack_model(x_adv).float(), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach()
            _step(x_adv, grad, x, ball)
        return x_adv


class Free(Method):
    """The perturbation δ lives across batches (zeros at the start); each replay takes one
    signed step of α on it from the input gradient the weight update's backward computed."""

    single_step = True

    def __init__(self, *args):
        super().__init__(*args)
        self.delta: Tensor | None = None

    def own_attack(self, x, y):  # each replay is an FGSM step: its one-step form
        c = self.cfg
        return attacks.fgsm(self.attack_model, x, y, eps=self.eps, precision=c.precision,
                            eval_mode=c.attack_bn == "eval")

    @classmethod
    def steps_per_batch(cls, cfg: TrainConfig) -> int:
        return cfg.free_replays

    def losses(self, x, y):
        c = self.cfg
        if self.delta is None or self.delta.shape != x.shape:
            self.delta = torch.zeros_like(x)
        for _ in range(c.free_replays):
            leaf = (x + self.delta).clamp_(0.0, 1.0).requires_grad_(True)
            logits = self.logits(leaf)
            yield self.ce(logits, y), logits
            # The loop's backward left the input gradient on the leaf: one signed step on δ.
            grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            x_adv = leaf.detach()
            _step(x_adv, grad, x, ops.ball_args(x, self.eps, self.alpha, 0.0, 1.0, "linf"))
            self.delta = x_adv - x

    def state(self):
        return {"delta": None if self.delta is None else self.delta.cpu()}

    def load_state(self, state):
        delta = state.get("delta")
        self.delta = None if delta is None else delta.to(self.device)


def _step(x_adv: Tensor, grad: Tensor, x: Tensor, ball: tuple) -> None:
    """The fused l-inf step with parameters checked once (ops.ball_args): the registered op,
    as the attacks call it, without the public op's per-call checks of a user's tensors."""
    with torch.no_grad():
        torch.ops.fastadv.pgd_(x_adv, grad, x, *ball)


class TRADES(PGDTraining):
    """The inner maximisation of TRADES in a plain loop on the fused op: PGD on
    KL(f(x) ‖ f(x')) from x + 0.001·N(0, 1), the model in attack mode (eval BN by default,
    parameters frozen, so only the input gradient is computed)."""

    def adversarial(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        c = self.cfg
        with attacks.attack_mode(self.attack_model, eval_mode=c.attack_bn == "eval"):
            with torch.no_grad(), autocast(self.device, c.precision):
                p_nat = F.softmax(self.attack_model(x).float(), dim=1)
            ball = ops.ball_args(x, self.eps, self.alpha, 0.0, 1.0, "linf")
            x_adv = x + 0.001 * torch.randn_like(x)
            _step(x_adv, torch.zeros_like(x_adv), x, ball)  # no step, just into the ball
            for _ in range(c.steps):
                x_adv.requires_grad_(True)
                with torch.enable_grad(), autocast(self.device, c.precision):
                    log_p_adv = F.log_softmax(self.attack_model(x_adv).float(), dim=1)
                    kl = F.kl_div(log_p_adv, p_nat, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
                x_adv = x_adv.detach()
                _step(x_adv, grad, x, ball)
        return x_adv

    def objective(self, forward, x, x_adv, y):
        logits_nat = forward(x)
        logits_adv = forward(x_adv)
        kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1),
                      reduction="batchmean")
        natural = self.ce(logits_nat, y)
        self.loss_parts = {"natural_ce": natural.detach(), "robust_kl": kl.detach()}
        return natural + self.cfg.trades_beta * kl, logits_adv


class MART(PGDTraining):
    """Wang et al. 2020 (their released loss): at x' from PGD on CE,
    BCE = CE(f(x'), y) − log(1 − max_{k≠y} p'_k) and
    β · mean over the batch of KL(p(x) ‖ p(x')) · (1 − p(x)_y)."""

    def objective(self, forward, x, x_adv, y):
        logits_nat = forward(x)
        logits_adv = forward(x_adv)
        p_adv, p_nat = F.softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1)
        top2 = torch.argsort(p_adv, dim=1)[:, -2:]
        runner_up = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        bce = self.ce(logits_adv, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), runner_up)
        kl = F.kl_div(torch.log(p_adv + 1e-12), p_nat, reduction="none").sum(dim=1)
        true_prob = p_nat.gather(1, y.unsqueeze(1)).squeeze(1)
        robust = (kl * (1.0000001 - true_prob)).mean()
        self.loss_parts = {"bce": bce.detach(), "robust_kl": robust.detach()}
        return bce + self.cfg.mart_beta * robust, logits_adv


METHOD_CLASSES = {"pgd": PGDTraining, "fgsm": FGSM, "fgsm-rs": FGSMRS, "n-fgsm": NFGSM,
                  "free": Free, "trades": TRADES, "mart": MART, "standard": Standard}


def method_class(cfg: TrainConfig) -> type[Method]:
    return METHOD_CLASSES[cfg.method]


def make_method(cfg: TrainConfig, model, attack_model, device,
                awp: WeightPerturbation | None = None) -> Method:
    return method_class(cfg)(cfg, model, attack_model, device, awp)
