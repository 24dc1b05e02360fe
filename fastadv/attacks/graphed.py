"""The whole K-step attack as one CUDA graph: captured once per input shape, replayed per
batch, so a small model's attack is not bound by kernel-launch overhead."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from .pgd import PRECISIONS, _check_inputs, _Config, attack_chunk, attack_mode


class GraphedPGD:
    """PGD with float ``eps``/``alpha``, captured in a CUDA graph for each new input shape
    (and layout, dtype, device) and replayed afterwards; the random start is drawn afresh on
    every replay. Call as ``x_adv, loss, fooled = graphed(x, y)``.

    The graph freezes the model's mode and parameters' ``requires_grad`` as they were at
    capture (eval mode and frozen parameters, as in :func:`fastadv.pgd`); a model whose
    weights are replaced (not updated in place) needs a new GraphedPGD.
    """

    def __init__(self, model: nn.Module, *, eps: float, alpha: float, steps: int,
                 norm: str = "linf", random_start: bool = True, loss: str = "ce",
                 targeted: bool = False, lower: float = 0.0, upper: float = 1.0,
                 precision: str = "fp32", eval_mode: bool = True, warmup: int = 2,
                 evaluate: bool = True):
        for name, value in (("eps", eps), ("alpha", alpha), ("lower", lower), ("upper", upper)):
            if isinstance(value, Tensor):
                raise TypeError(f"{name} must be a float for a CUDA-graphed attack "
                                "(per-example tensors: use fastadv.pgd without cuda_graph)")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model = model
        self.cfg = _Config(eps, alpha, steps, norm, random_start, loss, targeted, lower, upper,
                           precision, None)
        self.eval_mode = eval_mode
        self.warmup = warmup
        self.evaluate = evaluate  # False: no final forward; returns (x_adv, None, None)
        self._graphs: dict = {}

    def _key(self, x: Tensor, y: Tensor):
        return tuple(x.shape), x.stride(), x.dtype, x.device, y.dtype

    def _capture(self, x: Tensor, y: Tensor):
        static_x, static_y = x.clone(), y.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up compiles kernels and checks the labels
            for _ in range(self.warmup):
                attack_chunk(self.model, static_x, static_y, self.cfg, self.evaluate)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = attack_chunk(self.model, static_x, static_y, self.cfg, self.evaluate)
        return graph, static_x, static_y, outputs

    def __call__(self, x: Tensor, y: Tensor):
        if x.device.type != "cuda":
            raise ValueError(f"a CUDA-graphed attack needs CUDA tensors, got x on {x.device}")
        x, y, *_ = _check_inputs(self.model, x, y, self.cfg.eps, self.cfg.alpha, self.cfg.steps,
                                 1, self.cfg.norm, self.cfg.loss, self.cfg.targeted,
                                 self.cfg.lower, self.cfg.upper, self.cfg.precision, None)
        key = self._key(x, y)
        with attack_mode(self.model, eval_mode=self.eval_mode, input_grad_only=True):
            if key not in self._graphs:
                self._graphs[key] = self._capture(x, y)
            graph, static_x, static_y, outputs = self._graphs[key]
            static_x.copy_(x)
            static_y.copy_(y)
            graph.replay()
        return tuple(None if t is None else t.clone() for t in outputs)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def graphed_chunk_fn(model: nn.Module, x: Tensor, cfg: _Config):
    """The chunk function fastadv.pgd(cuda_graph=True) uses: one GraphedPGD per model and
    attack configuration, reused across calls."""
    if x.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors, got x on {x.device}")
    if not isinstance(model, nn.Module):
        raise TypeError("cuda_graph=True needs an nn.Module model")
    if cfg.generator is not None:
        raise ValueError("cuda_graph=True draws its random starts from the device's default "
                         "generator; pass generator=None")
    key = (cfg.eps, cfg.alpha, cfg.steps, cfg.norm, cfg.random_start, cfg.loss, cfg.targeted,
           cfg.lower, cfg.upper, cfg.precision)
    per_model = _CACHE.setdefault(model, {})

    def graphed(evaluate: bool) -> GraphedPGD:
        # One graph with the final forward pass (restarts to compare) and one without.
        if (key, evaluate) not in per_model:
            per_model[key, evaluate] = GraphedPGD(
                model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, norm=cfg.norm,
                random_start=cfg.random_start, loss=cfg.loss, targeted=cfg.targeted,
                lower=cfg.lower, upper=cfg.upper, precision=cfg.precision,
                eval_mode=not model.training, evaluate=evaluate)
        return per_model[key, evaluate]

    def chunk_fn(x_c, y_c, _cfg, evaluate):
        return graphed(evaluate)(x_c, y_c)

    return chunk_fn
