"""The whole K-step attack as one CUDA graph: captured once per input shape, replayed per
batch, so a small model's attack is not bound by kernel-launch overhead."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from .core import PRECISIONS, AttackConfig, attack_chunk, attack_mode, check_inputs


class GraphedPGD:
    """PGD with float ``eps``/``alpha``, captured in a CUDA graph per input shape (and
    layout, dtype, device) and replayed afterwards; the random start is drawn afresh on every
    replay. Call as ``x_adv, loss, fooled = graphed(x, y)``.

    A shape is captured the second time it is seen (``capture_after`` earlier calls run
    eagerly), so one-off shapes, such as the shrinking batches of early-stopped restarts,
    cost no capture; at most ``max_graphs`` shapes are kept, later ones run eagerly.

    The graph freezes the model's mode and parameters' ``requires_grad`` as they were at
    capture (eval mode and frozen parameters, as in :func:`fastadv.pgd`); a model whose
    weights are replaced (not updated in place) needs a new GraphedPGD. Labels are checked
    on the eager calls, not on replays.
    """

    def __init__(self, model: nn.Module, *, eps: float, alpha: float, steps: int,
                 norm: str = "linf", random_start: bool = True, loss: str = "ce",
                 targeted: bool = False, lower: float = 0.0, upper: float = 1.0,
                 precision: str = "fp32", eval_mode: bool = True, warmup: int = 2,
                 evaluate: bool = True, capture_after: int = 1, max_graphs: int = 8,
                 _weak_model: bool = False):
        for name, value in (("eps", eps), ("alpha", alpha), ("lower", lower), ("upper", upper)):
            if isinstance(value, Tensor):
                raise TypeError(f"{name} must be a float for a CUDA-graphed attack "
                                "(per-example tensors: use fastadv.pgd without cuda_graph)")
        for name, value in (("capture_after", capture_after), ("max_graphs", max_graphs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        # The cache below holds its GraphedPGDs weakly keyed by the model: a strong reference
        # back to the model would keep it (and its graphs' memory) alive forever.
        self._model = weakref.ref(model) if _weak_model else (lambda: model)
        self.cfg = AttackConfig(eps, alpha, steps, norm, random_start, loss, targeted, lower, upper,
                           precision, None)
        self.eval_mode = eval_mode
        self.warmup = warmup
        self.evaluate = evaluate  # False: no final forward; returns (x_adv, None, None)
        self.capture_after, self.max_graphs = capture_after, max_graphs
        self._graphs: dict = {}
        self._seen: dict = {}  # eager calls per shape not captured (yet)

    @property
    def model(self) -> nn.Module:
        return self._model()

    def _key(self, x: Tensor, y: Tensor):
        return tuple(x.shape), x.stride(), x.dtype, x.device, y.dtype

    def _capture(self, x: Tensor, y: Tensor):
        static_x, static_y = x.detach().clone(), y.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up compiles kernels and checks the labels
            for _ in range(self.warmup):
                attack_chunk(self.model, static_x, static_y, self.cfg, self.evaluate)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # A capture stream on x's device (torch's default one lives on whichever device was
        # current when it was first made).
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(device=x.device)):
            outputs = attack_chunk(self.model, static_x, static_y, self.cfg, self.evaluate)
        return graph, static_x, static_y, outputs

    def __call__(self, x: Tensor, y: Tensor):
        if x.device.type != "cuda":
            raise ValueError(f"a CUDA-graphed attack needs CUDA tensors, got x on {x.device}")
        x, y, *_ = check_inputs(self.model, x, y, self.cfg.eps, self.cfg.alpha, self.cfg.steps,
                                 1, self.cfg.norm, self.cfg.loss, self.cfg.targeted,
                                 self.cfg.lower, self.cfg.upper, self.cfg.precision, None)
        key = self._key(x, y)
        # x's device current: the copies into the static inputs and the replay then run in
        # order on that device's current stream.
        with torch.cuda.device(x.device), \
                attack_mode(self.model, eval_mode=self.eval_mode, input_grad_only=True):
            if key not in self._graphs:
                seen = self._seen.get(key, 0)
                if seen < self.capture_after or len(self._graphs) >= self.max_graphs:
                    self._seen[key] = seen + 1
                    return attack_chunk(self.model, x, y, self.cfg, self.evaluate)
                self._seen.pop(key, None)
                self._graphs[key] = self._capture(x, y)
            graph, static_x, static_y, outputs = self._graphs[key]
            static_x.copy_(x)
            static_y.copy_(y)
            graph.replay()
        return tuple(None if t is None else t.clone() for t in outputs)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def graphed_chunk_fn(model: nn.Module, x: Tensor, cfg: AttackConfig):
    """The chunk function fastadv.pgd(cuda_graph=True) uses: one GraphedPGD per model and
    attack configuration, reused across calls."""
    if x.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors, got x on {x.device}")
    if not isinstance(model, nn.Module):
        raise TypeError("cuda_graph=True needs an nn.Module model")
    if cfg.generator is not None:
        raise ValueError("cuda_graph=True draws its random starts from the device's default "
                         "generator; pass generator=None")
    # The mode is in the key: a graph captured with train-mode BatchNorm must not replay
    # for an eval-mode attack.
    key = (cfg.eps, cfg.alpha, cfg.steps, cfg.norm, cfg.random_start, cfg.loss, cfg.targeted,
           cfg.lower, cfg.upper, cfg.precision, model.training)
    per_model = _CACHE.setdefault(model, {})

    def graphed(evaluate: bool) -> GraphedPGD:
        # One graph with the final forward pass (restarts to compare) and one without.
        if (key, evaluate) not in per_model:
            per_model[key, evaluate] = GraphedPGD(
                model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, norm=cfg.norm,
                random_start=cfg.random_start, loss=cfg.loss, targeted=cfg.targeted,
                lower=cfg.lower, upper=cfg.upper, precision=cfg.precision,
                eval_mode=not model.training, evaluate=evaluate, _weak_model=True)
        return per_model[key, evaluate]

    def chunk_fn(x_c, y_c, _cfg, evaluate):
        return graphed(evaluate)(x_c, y_c)

    return chunk_fn
